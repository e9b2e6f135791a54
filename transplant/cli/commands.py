"""`transplant` command line: run, eval, apply, demo, methods, recipes.

Example:
    $ transplant run --model smollm2-135m-instruct --new-tok de/tokenizer.json --out smollm2-de --method fvt
    $ transplant eval --model smollm2-de --text dev.txt --compare smollm2-135m-instruct
    $ transplant run --recipe smollm2-de --new-tok de/tokenizer.json --out smollm2-de
"""

from __future__ import annotations

import logging
import sys

import click

from transplant.cli.spec_options import (
    as_fields,
    dataclass_options,
    frozen_body_options,
    given_on_command_line,
    spec_options,
)
from transplant.cli.tables import print_eval_table as _print_eval_table
from transplant.common.errors import TransplantError, disk_full_hint
from transplant.runspec import RunSpec, cli_flags, parse_settings
from transplant.train.heal_settings import HealConfig


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress.")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress bars or stage messages (progress bars alone: HF_HUB_DISABLE_PROGRESS_BARS=1).")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Move a pretrained Hugging Face language model onto a new tokenizer."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if quiet:
        from transplant.common.progress import set_quiet

        ctx.call_on_close(set_quiet(True))


@cli.command()
@click.option("--recipe", default=None, metavar="FILE_OR_NAME",
              help="A YAML recipe (or a shipped one by name, see `transplant recipes`): its fields fill every "
                   "flag not given here; flags given here win.")
@spec_options(RunSpec)
def run(recipe, **values) -> None:
    """Transplant MODEL onto NEW_TOK and write a checkpoint to OUT (or as a --recipe says)."""
    ctx = click.get_current_context()
    if recipe:  # the recipe fills the fields whose flags were not given here
        from transplant.recipes import recipe_spec

        spec = recipe_spec(recipe, as_fields({k: values[k] for k in given_on_command_line(ctx, values)}))
    else:
        for name, flag in cli_flags().items():
            if name in ("model", "new_tokenizer", "out") and not values[name]:
                raise click.UsageError(f"Missing option '{flag}' (or give it in a --recipe)")
        spec = RunSpec.model_validate(as_fields(values), strict=False)
    if not spec.calibrate and spec.calibrate_texts:
        raise click.UsageError("--no-calibrate and --calibrate-text contradict each other (keep one)")
    if not spec.quality_check and spec.eval_texts:
        raise click.UsageError("--no-eval and --eval-text contradict each other (keep one)")
    from transplant.io.sources import resolve_model

    resolve_model(spec.model)  # torch-free: a missing or broken model is one line in a fraction of a second
    from transplant.api import transplant

    spec.check()  # bad methods and options fail before anything is loaded
    result = transplant(spec)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.plan.counts().items(), key=lambda kv: -kv[1]))
    click.echo(f"wrote {result.output_dir} ({result.plan.new_size} rows: {counts})")
    if result.evaluation:
        _print_eval_table(result.evaluation)
    if result.quality:
        click.echo(result.quality)


@cli.command("recipes")
@click.option("--check", "checks", multiple=True, metavar="FILE_OR_NAME",
              help="Validate this recipe (schema, methods, options) without running it; repeatable.")
@click.option("--show", default=None, metavar="NAME", help="Print a shipped recipe (to start one of your own from).")
def recipes_cmd(checks, show) -> None:
    """List the shipped recipes (`transplant run --recipe NAME`), or check or show one."""
    from transplant.recipes import check_recipe, recipe_text, shipped_recipes, variables

    if show:
        click.echo(recipe_text(show)[0], nl=False)
        return
    for spec in checks:
        recipe = check_recipe(spec)
        needs = variables(recipe)
        click.echo(f"ok: {recipe.where}" + (f" (reads {', '.join('$' + v for v in needs)})" if needs else ""))
    if checks:
        return
    found = shipped_recipes()
    width = max(len(n) for n in found) + 2
    for name, description in found.items():
        click.echo(f"{name:<{width}}{description}")
    click.echo("\nRun one with `transplant run --recipe NAME` (flags given there override its fields); "
               "`transplant recipes --show NAME` prints it.")


@cli.command()
@click.option("--plan", "plan_dir", required=True, help="Output folder of an earlier `transplant run` (holds the plan).")
@click.option("--model", required=True, help="Another checkpoint of the same base model (e.g. a fine-tune).")
@click.option("--out", required=True, type=click.Path(), help="Output folder (written atomically).")
@click.option("--link", is_flag=True, help="Hard-link untouched shards instead of copying.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code from the model folder.")
def apply(plan_dir, model, out, link, overwrite, trust_remote_code) -> None:
    """Re-apply a saved plan to MODEL."""
    from transplant.api import apply_plan

    result = apply_plan(plan_dir, model, out, overwrite=overwrite, link=link, trust_remote_code=trust_remote_code)
    click.echo(f"wrote {result.output_dir} ({result.plan.new_size} rows)")


@cli.command()
@click.option("--out", default=None, type=click.Path(),
              help="Output folder [default: smollm2-es-METHOD in the tokentransplant cache, replaced on each run].")
@click.option("--method", default="auto", show_default=True,
              help="Initializer after exact overlap (see `transplant methods`); with auto, plain fvt is scored too.")
@click.option("--vocab-size", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Size of the Spanish tokenizer to train (trained once per size, then cached).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder (the default folder is always replaced).")
def demo(out, method, vocab_size, overwrite) -> None:
    """SmolLM2-135M-Instruct onto a Spanish tokenizer; prints before/after bits per byte."""
    from transplant.demo import run_demo

    info = run_demo(out, method=method, vocab_size=vocab_size, overwrite=overwrite)
    result = info["result"]
    click.echo(f"held-out text: {info['held_out_bytes']} bytes; tokenizer: {info['tokenizer']}")
    auto = result.plan.meta.get("auto")
    rows = dict(result.evaluation)
    if auto:
        click.echo(auto["line"])
        rows = {"original": rows["original"], f"default ({auto['method']}"
                f"{'+cal' if 'calibration' in result.plan.meta else ''})": rows["transplanted"]}
    if "fvt" in info:
        rows["--method fvt"] = info["fvt"]
    _print_eval_table(rows)
    click.echo(f"transplanted checkpoint: {result.output_dir}")


def method_descriptions() -> dict[str, str]:
    """Registered initializer -> one-line description (its `description`, else its docstring's first line)."""
    from transplant.methods.initializers import available, get_initializer

    out = {}
    for name in available():
        try:
            init = get_initializer(name)
        except TransplantError as exc:  # an optional dependency is missing
            out[name] = f"(unavailable: {exc})"
            continue
        # The declared description, else the first line of the class docstring (BaseInitializer's contract).
        out[name] = init.description or next(iter((type(init).__doc__ or "").strip().splitlines()), "")
    return out


def method_options(name: str) -> list[str]:
    """`NAME (TYPE, default VALUE): HELP` for each option of method `name` (none when unavailable)."""
    from transplant.methods.initializers import declared_options

    try:
        declared = declared_options(name)
    except TransplantError:  # an optional dependency is missing: already said in its description
        return []
    return [f"{key} ({opt.describe()})" + (f": {opt.help}" if opt.help else "") for key, opt in declared.items()]


@cli.command("extend")
@click.option("--model", required=True, help="Model to extend: folder, .gguf, cached hub id or packaged name.")
@click.option("--text", "texts", multiple=True, required=True, help="Text of the language or domain (repeatable).")
@click.option("--add", type=click.IntRange(min=1), required=True, help="How many new tokens to learn.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output checkpoint folder.")
@click.option("--method", default="auto", show_default=True,
              help="Initializer of the new rows (old rows are copied); auto: the hypernetwork known for this model, "
                   "else fvt, with output calibration on TEXT.")
@click.option("--set", "settings", multiple=True, metavar="METHOD.OPTION=VALUE", help="A method option (repeatable).")
@click.option("--pad-to-multiple-of", type=click.IntRange(min=1), default=None, help="Pad the vocabulary rows.")
@click.option("--eval-text", "eval_texts", multiple=True, help="Score before/after into the model card.")
@click.option("--allow-forced-tokenizer-class", "allow_forced", is_flag=True,
              help="Write the output even where transformers loads the extended tokenizer with a class of its own "
                   "that encodes differently (the model card shows how to load it).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier output folder.")
def extend_cmd(model, texts, add, out, method, settings, pad_to_multiple_of, eval_texts, allow_forced,
               overwrite) -> None:
    """Learn ADD new tokens from TEXT on top of MODEL's tokenizer (old ids unchanged) and write the checkpoint."""
    from transplant.common.texts import read_texts
    from transplant.extend import extend

    res = extend(model, list(texts), add, out, method=method, options=parse_settings(settings) or None,
                 pad_to_multiple_of=pad_to_multiple_of, overwrite=overwrite,
                 eval_texts=read_texts(eval_texts, what="evaluation text") or None,
                 allow_forced_tokenizer_class=allow_forced)
    click.echo(f"extended: {len(res.new_tokens):,} new tokens -> {out}")
    for note in res.transplant.notes:
        click.echo(f"note: {note}")


@cli.command("heal")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML file of healing settings (the fields of HealConfig: model, texts, out, minutes, lr, ...); "
                   "flags given here win.")
@dataclass_options(HealConfig)
@frozen_body_options("windows")
def heal_cmd(recipe, **flags) -> None:
    """Train the rows a transplant made, distilling the original model, and write the healed checkpoint.

    Two CPU processes: `accelerate launch --multi_gpu --num_processes 2 -m transplant.cli heal ...`.
    A run folder holds one run at a time: a second run on it is refused.
    """
    from transplant.common.specfile import config_values
    from transplant.train.heal import heal

    given = given_on_command_line(click.get_current_context(), flags)
    values = config_values(recipe, HealConfig, flags, given, lists=("texts",), flag_of={"texts": "--text"})
    if values.get("steps") is None:  # a recipe's `steps: null`: HealConfig's "no step budget"
        values["steps"] = 0
    for name, flag in (("model", "--model"), ("texts", "--text"), ("out", "--out")):
        if not values.get(name):
            raise click.UsageError(f"Missing option '{flag}' (or give {name} in a --recipe)")
    if values.get("minutes") is None and not values.get("steps"):
        raise click.UsageError("pass a budget: --minutes M or --steps N")
    if values.get("minutes") is not None and values.get("steps"):
        raise click.UsageError("pass one budget: --minutes M or --steps N, not both")
    cfg = HealConfig(**values)
    from transplant.train.heal_config import check_settings

    check_settings(cfg)  # a recipe's numbers too, before the accelerator or any model
    res = heal(cfg)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`, one process speaks
        return
    s = res.summary
    if s["best_bpb"] is not None:
        click.echo(f"healed: held-out {s['start_bpb']:.4f} -> {s['best_bpb']:.4f} bits/byte (original model "
                   f"{s['teacher_bpb']:.4f}), {s['rows_trained']:,} rows, {s['step']} steps in "
                   f"{s['seconds'] / 60:.1f} min of training (the budget; setup {s['setup_seconds']:.0f} s not "
                   f"counted) -> {res.out}")
    click.echo(f"run folder (log, checkpoints; --resume with a larger budget continues it): {res.run}")


@cli.command()
def methods() -> None:
    """List the initializers, each with a one-line description and its options."""
    descriptions = method_descriptions()
    fixed = ("special", "exact")
    width = max(len(n) for n in descriptions) + 2
    click.echo(f"{'auto':<{width}}the default: the hypernetwork known for the model, else fvt; then output calibration "
               "when calibration text is known (--calibrate-text, or the tokenizer's recorded training text)")
    for line in _known_network_lines():
        click.echo(f"{'':<{width}}  {line}")
    for name in [*fixed, *[n for n in descriptions if n not in fixed]]:
        if name in descriptions:
            note = " (always applied first)" if name in fixed else ""
            click.echo(f"{name:<{width}}{descriptions[name]}{note}")
            for line in method_options(name):
                click.echo(f"{'':<{width}}  {name}.{line}")
    click.echo("\nUse with `transplant run --method NAME` (chain several with +, e.g. fvt+multivariate), "
               "`--fallback NAME` and `--set METHOD.OPTION=VALUE` for an option.")


def _known_network_lines() -> list[str]:
    """One line per hypernetwork `auto` may pick (see `hypernet list`)."""
    from hypernet.registry import known_networks

    nets = known_networks()
    if not nets:
        return ["no hypernetwork known (train one with `hypernet train`; `hypernet list`)"]
    return [f"network {n.name} ({n.origin}) for {n.base_model or '?'}: {n.summary}" for n in nets]


_NoArgsIsHelp = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Interrupted(BaseException):
    """Ctrl-C, raised by our SIGINT handler instead of KeyboardInterrupt: click would print a bare
    newline for a KeyboardInterrupt; `main` prints one line instead."""


def _on_sigint(signum, frame) -> None:
    raise _Interrupted()


def _close_progress_bars() -> bool:
    """Close the progress bars still open (an interrupted loop); True if there were any."""
    std = sys.modules.get("tqdm.std")
    bars = list(getattr(getattr(std, "tqdm", None), "_instances", None) or [])
    for pbar in bars:
        try:
            pbar.close()
        except Exception:
            pass
    return bool(bars)


def main() -> None:
    """Entry point: every failure is one `error: <problem> (<fix>)` line on stderr and a non-zero exit."""
    import signal

    try:
        previous = signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread
        previous = None
    try:
        cli.main(prog_name="transplant", standalone_mode=False)
    except TransplantError as exc:
        click.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(2)
    except (_Interrupted, KeyboardInterrupt, click.exceptions.Abort):
        # Start a new line after the terminal's "^C" or an unfinished progress bar; outputs are
        # written atomically, so none is left.
        lead = "\n" if sys.stderr.isatty() or _close_progress_bars() else ""
        click.echo(f"{lead}error: interrupted (no output was written)", err=True)
        sys.exit(130)
    except _NoArgsIsHelp as exc:  # bare `transplant` (click >= 8.2): the help, not an error
        click.echo(exc.ctx.get_help())
    except click.UsageError as exc:
        # click would print usage + hint + error on three lines; keep to one.
        where = exc.ctx.command_path if exc.ctx is not None else "transplant"
        click.echo(f"error: {_one_line(exc.format_message())} (see `{where} --help`)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("transplant", "hypernet"):
            raise  # our own code is broken: that is a bug to see in full, not a missing package
        from transplant.common.optional import missing_package

        click.echo(f"error: {missing_package(exc)}", err=True)
        sys.exit(1)
    except (OSError, MemoryError) as exc:
        click.echo(f"error: {_one_line(exc)}{disk_full_hint(exc)}", err=True)
        sys.exit(1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def entry() -> None:
    """The `transplant` console script: `main()`, then leave at once.

    Once the output is published nothing is left to do, yet tearing the interpreter down (freeing
    the vocabularies' millions of small objects, torch's and transformers' module state) took ~2 s
    of a 16 s run. So stdout and stderr are flushed, logging is shut down, and the process exits
    with `os._exit`. `main()` itself returns normally (tests and embedding programs call it).
    """
    import os

    code = 0
    try:
        main()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:  # sys.exit("message"): printed, status 1, as Python does
            print(exc.code, file=sys.stderr)
            code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    logging.shutdown()
    os._exit(code)


from transplant.cli.vectors import vectors as vectors_group  # noqa: E402  (registered last: imports nothing of cli)
cli.add_command(vectors_group)
from transplant.cli.tokenizer import tokenizer as tokenizer_group  # noqa: E402
cli.add_command(tokenizer_group)
from transplant.cli.eval_cmd import eval_cmd  # noqa: E402
cli.add_command(eval_cmd)


class _HypernetGroup(click.Group):
    """`transplant hypernet ...`: the `hypernet` program's commands (train, export, list,
    unregister, info), read from `hypernet.cli` only when one is used, so `transplant --help`
    stays free of torch."""

    _names = ("export", "info", "list", "train", "unregister")

    def _real(self) -> click.Group:
        from hypernet.cli import cli as hypernet_cli

        return hypernet_cli

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self._names)

    def get_command(self, ctx: click.Context, name: str):
        return self._real().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        return self._real().invoke(ctx)


cli.add_command(_HypernetGroup(
    "hypernet", help="Train and inspect ZeTT-style hypernetworks (also installed as the `hypernet` program).",
    params=[click.Option(["--quiet"], is_flag=True, help="No progress bars or stage messages.")],
    callback=lambda quiet: _hypernet_quiet(quiet)))


def _hypernet_quiet(quiet: bool) -> None:
    if quiet:
        from transplant.common.progress import set_quiet

        set_quiet(True)


if __name__ == "__main__":
    entry()
