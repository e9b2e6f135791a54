"""`transplant eval`: bits per byte of a model on a text, and where its loss is.

Example:
    $ transplant eval --model smollm2-de --text dev.txt
    $ transplant eval --model smollm2-de --text dev.txt --compare smollm2-135m-instruct --plot where.png
    $ transplant eval --model smollm2-de --text dev.txt --compare smollm2-135m-instruct --json
    $ transplant eval --model smollm2-on-gemma-tok --assist gemma-3-270m --text dev.txt   # as a draft
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from transplant.cli.tables import print_breakdown, print_eval_table, print_top_tokens
from transplant.common.errors import TransplantError
from transplant.common.texts import read_texts
from transplant.measure.assist import SCHEDULES, DraftSettings


def model_label(spec: str) -> str:
    """How a model argument is named in tables: a local folder by its name, anything else as given.

    Example:
        >>> model_label("smollm2-135m-instruct"), model_label(model_dir)
        ('smollm2-135m-instruct', 'tiny-model')
    """
    path = Path(spec)
    if path.exists():
        return path.resolve().name if path.is_dir() else path.name
    return spec


@click.command("eval")
@click.option("--model", required=True, help="Model folder (or any model argument `run` accepts).")
@click.option("--tokenizer", default=None, help="Tokenizer to use (default: the model's own).")
@click.option("--text", "texts", multiple=True, required=True, help="UTF-8 text file(s); documents separated by blank lines.")
@click.option("--max-bytes", type=click.IntRange(min=0), default=50_000, show_default=True,
              help="Score only the leading whole documents up to this many bytes (as `run --eval-bytes`; 0 = "
                   "every document).")
@click.option("--ctx", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Context length in tokens: documents are packed into chunks of at most this many tokens.")
@click.option("--compare", default=None,
              help="Also score this model (with its own tokenizer), print MODEL's ratio of bits per byte to it and "
                   "the tokens that cost most against it on the same bytes.")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many tokens to list by excess loss against --compare.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, metavar="FILE.png",
              help="Draw the per-kind shares of tokens, loss and probability mass into this PNG "
                   "(needs matplotlib: pip install 'tokentransplant[plot]').")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow custom model code (config.json auto_map) from the model folders; refused otherwise.")
@click.option("--assist", default=None, metavar="TARGET",
              help="Measure MODEL as a draft for speculative decoding of TARGET instead: greedy assisted generation "
                   "(transformers' generate(assistant_model=MODEL); universal assisted generation when the "
                   "tokenizers differ) on prompts cut from TEXT, against TARGET alone.")
@click.option("--prompts", type=click.IntRange(min=1), default=8, show_default=True,
              help="With --assist: how many prompts (one per document long enough).")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="With --assist: prompt length in TARGET's tokens.")
@click.option("--new-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="With --assist: tokens generated per prompt.")
@click.option("--draft-tokens", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --assist: draft tokens proposed per target pass (the draft's num_assistant_tokens; "
                   "default: its generation config, else transformers' 20).")
@click.option("--draft-schedule", type=click.Choice(SCHEDULES), default=None,
              help="With --assist: whether --draft-tokens adapts to what the target accepts "
                   "(num_assistant_tokens_schedule; default: the draft's generation config, else constant).")
@click.option("--draft-confidence", type=click.FloatRange(min=0, max=1, max_open=True), default=None, metavar="P",
              help="With --assist: the draft stops proposing when its top token's probability is below P "
                   "(assistant_confidence_threshold; 0 turns it off; default: the draft's generation config, "
                   "else transformers' 0.4). --draft-tokens 1 --draft-confidence 0 measures plain greedy agreement.")
@click.option("--dynamic", is_flag=True,
              help="Score dynamic tokenization: a continuation after a prefix read statically and with each batch's "
                   "merges embedded by the model's hypernetwork (README: Dynamic tokenization).")
@click.option("--merges", default="50,100,200,400", show_default=True, metavar="N,N,...",
              help="With --dynamic: the merge budgets scored (merges per batch of 16 prefixes).")
@click.option("--prefix-tokens", type=click.IntRange(min=8), default=256, show_default=True,
              help="With --dynamic: base tokens of each prefix.")
@click.option("--continuation-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="With --dynamic: base tokens of each scored continuation.")
@click.option("--samples", type=click.IntRange(min=1), default=32, show_default=True,
              help="With --dynamic: prefix and continuation pairs scored.")
@click.option("--json", "as_json", is_flag=True,
              help='Print JSON: {"model": {...}, "compare": {...}, "ratio": ..., "excess": {...}}, each model with its '
                   '"name" and its "breakdown" (one row per kind of token).')
def eval_cmd(model, tokenizer, texts, max_bytes, ctx, compare, top, plot, trust_remote_code, assist, prompts,
             prompt_tokens, new_tokens, draft_tokens, draft_schedule, draft_confidence, dynamic, merges, prefix_tokens,
             continuation_tokens, samples, as_json) -> None:
    """Bits per byte and bytes per token of MODEL on TEXT, and where the loss is.

    A transplanted MODEL's loss is split by where each token's row came from (copied exactly,
    special, or made by a method), with the probability mass the model puts on each kind.
    With --assist TARGET: MODEL's acceptance rate as a draft for TARGET.
    """
    from transplant.io.sources import check_model_config, resolve_model

    source = click.get_current_context().get_parameter_source  # (`ctx` is the --ctx option here)
    given = {name for name in ("merges", "prefix_tokens", "continuation_tokens", "samples", "max_bytes")
             if source(name) != click.core.ParameterSource.DEFAULT}
    if dynamic:
        if compare or assist or tokenizer:
            raise TransplantError("--dynamic scores MODEL with its own tokenizer and hypernetwork: it takes no "
                                  "--compare, --assist or --tokenizer")
        from transplant.cli.dynamic_cmd import run_dynamic

        # Without --max-bytes the samples take what they need (50 kB holds ~32 German prefixes).
        return run_dynamic(model, model_label(model), texts, max_bytes if "max_bytes" in given else 0, plot, trust_remote_code,
                           parse_budgets(merges), prefix_tokens, continuation_tokens, samples, as_json)
    stray = sorted(given - {"max_bytes"})
    if stray:
        raise TransplantError(f"{', '.join('--' + s.replace('_', '-') for s in stray)}: only with --dynamic")
    if assist:
        if compare or plot or tokenizer:
            raise TransplantError("--assist measures MODEL as a draft: it takes no --compare, --plot or --tokenizer "
                                  "(run a second eval for those)")
        for spec in (assist, model):  # both, before either loads
            check_model_config(resolve_model(spec), trust_remote_code)
        settings = DraftSettings(tokens=draft_tokens, schedule=draft_schedule, confidence=draft_confidence)
        return _assist(model, assist, read_texts(texts, max_bytes or None), prompts, prompt_tokens, new_tokens,
                       settings, trust_remote_code, as_json)
    given = [flag for flag, value in (("--draft-tokens", draft_tokens), ("--draft-schedule", draft_schedule),
                                      ("--draft-confidence", draft_confidence)) if value is not None]
    if given:
        raise TransplantError(f"{', '.join(given)}: only with --assist TARGET (how a draft proposes for a target)")

    if plot:  # before minutes of scoring
        from transplant.measure.breakdown_plot import check_plot_path, require_matplotlib

        require_matplotlib()
        inputs = [*texts, *(p for spec in (model, compare, tokenizer) if spec for p in _local(spec))]
        check_plot_path(plot, inputs)
    data = read_texts(texts, max_bytes or None)
    # Refuse a config transformers cannot build, or custom code, in either model before spending
    # minutes scoring the other.
    for spec in [s for s in (compare, model) if s]:
        check_model_config(resolve_model(spec), trust_remote_code)
    name = model_label(model)
    other = model_label(compare) if compare else None
    if other is not None and other == name:
        name, other = (model, compare) if model != compare else (f"{name} (model)", f"{other} (compare)")
    from transplant.measure.breakdown import breakdown_bpb, compare_on_bytes

    found = {}
    if compare:
        found["compare"] = breakdown_bpb(compare, data, ctx=ctx, trust_remote_code=trust_remote_code, label=other)
    found["model"] = breakdown_bpb(model, data, tokenizer=tokenizer, ctx=ctx, trust_remote_code=trust_remote_code,
                                   label=name)
    versus = compare_on_bytes(found["model"], found["compare"], top=top) if compare else None
    bd = found["model"]
    if plot:
        from transplant.measure.breakdown_plot import plot_breakdown

        plot_breakdown(bd.kinds, plot, title=f"{name}: {bd.result.bpb:.4f} bits/byte on {bd.result.bytes:,} bytes")
    if as_json:
        doc = {"model": {"name": name, **bd.result.as_dict(), "breakdown": bd.as_dict()}}
        if compare:
            ref = found["compare"]
            doc["compare"] = {"name": other, **ref.result.as_dict(), "breakdown": ref.as_dict()}
            doc["ratio"] = bd.result.bpb / ref.result.bpb
            doc["excess"] = versus.as_dict()
        click.echo(json.dumps(doc, indent=2))
        return
    if compare:
        print_eval_table({other: found["compare"].result, name: bd.result}, base=other)
    else:
        print_eval_table({name: bd.result}, base=None)
    if len(bd.kinds) > 1 or versus is not None:  # a model without a plan is one kind: nothing to split
        click.echo()
        print_breakdown(name, bd.kinds, bd.result.bytes, versus.by_kind if versus else None, other)
    if versus is not None and versus.tokens:
        click.echo()
        print_top_tokens(versus.tokens, other)


def _assist(draft: str, target: str, data: list[str], prompts: int, prompt_tokens: int, new_tokens: int,
            settings: DraftSettings, trust_remote_code: bool, as_json: bool) -> None:
    from transplant.measure.assist import measure_assist

    r = measure_assist(draft, target, data, prompts=prompts, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                       settings=settings, trust_remote_code=trust_remote_code)
    if as_json:
        click.echo(json.dumps({"draft": model_label(draft), "target": model_label(target), "assist": r.as_dict()},
                              indent=2))
        return
    click.echo(f"{model_label(draft)} as a draft for {model_label(target)} ({r.mode}), greedy, "
               f"{r.prompts} prompts of {r.prompt_tokens} tokens, {r.new_tokens} tokens generated")
    cfg = r.assistant_config
    tokens, schedule, confidence = (cfg.get("num_assistant_tokens"), cfg.get("num_assistant_tokens_schedule"),
                                    cfg.get("assistant_confidence_threshold"))
    click.echo(f"  draft settings       {tokens if tokens is not None else 'default'} tokens per pass, "
               f"{schedule or 'default'} schedule, confidence "
               f"{confidence if confidence is not None else 'default'} (transformers' defaults: 20, constant, 0.4)")
    click.echo(f"  acceptance rate      {100 * r.acceptance_rate:.1f}% ({r.accepted} of {r.proposed} draft tokens)")
    click.echo(f"  tokens per target pass {r.tokens_per_step:.2f} (accepted per pass {r.accepted_per_step:.2f})")
    click.echo(f"  wall time            {r.seconds_assisted:.1f} s assisted, {r.seconds_target:.1f} s target alone "
               f"(x{r.speedup:.2f})")
    click.echo(f"  identical to the target's greedy output: {r.identical} of {r.prompts} prompts")


def parse_budgets(text: str) -> list[int]:
    """`--merges 50,100,200` as numbers (each a whole number >= 1, at most 100,000).

    Example:
        >>> parse_budgets("50, 100,200")
        [50, 100, 200]
    """
    try:
        budgets = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        budgets = []
    if not budgets or any(not 1 <= b <= 100_000 for b in budgets):
        raise TransplantError(f"--merges {text!r}: give merge budgets as whole numbers from 1 to 100,000, separated "
                              "by commas (e.g. --merges 50,100,200)")
    return sorted(set(budgets))


def _local(spec: str) -> list[Path]:
    """The file or folder on disk a model or tokenizer argument names (none for a packaged name)."""
    path = Path(spec)
    return [path] if path.exists() else []
