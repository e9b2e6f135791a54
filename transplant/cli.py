"""`transplant` command line: run, eval, apply, demo, methods.

Example:
    $ transplant run --model smollm2-135m-instruct --new-tok de/tokenizer.json --out smollm2-de --method fvt
    $ transplant eval --model smollm2-de --text dev.txt --compare smollm2-135m-instruct
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from .errors import TransplantError


def _read_texts(paths: tuple[str, ...], max_bytes: int | None) -> list[str]:
    from .evaluate import take_bytes

    texts = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise TransplantError(f"text file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise TransplantError(f"{path} is not UTF-8 text (convert it with iconv first)") from None
        texts.append(take_bytes(text, max_bytes) if max_bytes else text)
    return texts


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress.")
def cli(verbose: bool) -> None:
    """Move a pretrained Hugging Face language model onto a new tokenizer."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@cli.command()
@click.option("--model", required=True, help="Model folder, cached hub id, .gguf file, or smollm2-135m-instruct / gemma-3-270m.")
@click.option("--new-tok", required=True, help="Target tokenizer.json or tokenizer folder.")
@click.option("--out", required=True, type=click.Path(), help="Output folder (written atomically).")
@click.option("--method", default="fvt", show_default=True, help="Initializer after exact overlap (see `transplant methods`).")
@click.option("--fallback", default="mean", show_default=True, help="Initializer for tokens the method cannot make.")
@click.option("--old-tok", default=None, help="Source tokenizer, if not the one in the model folder.")
@click.option("--pad-to-multiple-of", type=int, default=None, help="Round embedding rows up to a multiple.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--link", is_flag=True, help="Hard-link untouched shards instead of copying.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code from the model folder.")
@click.option("--eval-text", multiple=True, help="Score original and new model on this text (model card).")
@click.option("--eval-bytes", type=int, default=50_000, show_default=True, help="Score the leading whole documents up to this many bytes.")
@click.option("--ctx", type=int, default=1024, show_default=True, help="Evaluation context length.")
def run(model, new_tok, out, method, fallback, old_tok, pad_to_multiple_of, seed, link, overwrite,
        trust_remote_code, eval_text, eval_bytes, ctx) -> None:
    """Transplant MODEL onto NEW_TOK and write a checkpoint to OUT."""
    from .api import transplant

    texts = _read_texts(eval_text, eval_bytes) if eval_text else None
    result = transplant(model, new_tok, out, method=[m for m in method.split("+")] if "+" in method else method,
                        fallback=fallback, old_tokenizer=old_tok, pad_to_multiple_of=pad_to_multiple_of, seed=seed,
                        overwrite=overwrite, link=link, trust_remote_code=trust_remote_code, eval_texts=texts,
                        eval_name=", ".join(eval_text), eval_ctx=ctx)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.plan.counts().items(), key=lambda kv: -kv[1]))
    click.echo(f"wrote {result.output_dir} ({result.plan.new_size} rows: {counts})")
    if result.evaluation:
        _print_eval_table(result.evaluation)


def _print_eval_table(evaluation: dict) -> None:
    base = evaluation.get("original")
    click.echo(f"{'model':<14}{'bits/byte':>11}{'bytes/token':>13}" + (f"{'ratio':>8}" if base else ""))
    for name, r in evaluation.items():
        ratio = f"{r.bpb / base.bpb:>8.3f}" if base else ""
        click.echo(f"{name:<14}{r.bpb:>11.4f}{r.bytes_per_token:>13.2f}{ratio}")


@cli.command("eval")
@click.option("--model", required=True, help="Model folder (or any model argument `run` accepts).")
@click.option("--tokenizer", default=None, help="Tokenizer to use (default: the model's own).")
@click.option("--text", "texts", multiple=True, required=True, help="UTF-8 text file(s); documents separated by blank lines.")
@click.option("--max-bytes", type=int, default=None, help="Score only the leading whole documents up to this many bytes.")
@click.option("--ctx", type=int, default=1024, show_default=True)
@click.option("--compare", default=None, help="Also score this model (with its own tokenizer) and print the ratio.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def eval_cmd(model, tokenizer, texts, max_bytes, ctx, compare, as_json) -> None:
    """Bits per byte and bytes per token of MODEL on TEXT."""
    from .evaluate import evaluate_bpb

    data = _read_texts(texts, max_bytes)
    results = {}
    if compare:
        results["original"] = evaluate_bpb(compare, data, ctx=ctx)
    results["model"] = evaluate_bpb(model, data, tokenizer=tokenizer, ctx=ctx)
    if as_json:
        doc = {k: v.as_dict() for k, v in results.items()}
        if compare:
            doc["ratio"] = results["model"].bpb / results["original"].bpb
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_eval_table(results if compare else {"model": results["model"]})


@cli.command()
@click.option("--plan", "plan_dir", required=True, help="Output folder of an earlier `transplant run` (holds the plan).")
@click.option("--model", required=True, help="Another checkpoint of the same base model (e.g. a fine-tune).")
@click.option("--out", required=True, type=click.Path())
@click.option("--link", is_flag=True)
@click.option("--overwrite", is_flag=True)
@click.option("--trust-remote-code", is_flag=True)
def apply(plan_dir, model, out, link, overwrite, trust_remote_code) -> None:
    """Re-apply a saved plan to MODEL."""
    from .api import apply_plan

    result = apply_plan(plan_dir, model, out, overwrite=overwrite, link=link, trust_remote_code=trust_remote_code)
    click.echo(f"wrote {result.output_dir} ({result.plan.new_size} rows)")


@cli.command()
@click.option("--out", default="smollm2-es", show_default=True, type=click.Path())
@click.option("--method", default="fvt", show_default=True)
@click.option("--vocab-size", default=8192, show_default=True)
@click.option("--overwrite", is_flag=True)
def demo(out, method, vocab_size, overwrite) -> None:
    """SmolLM2-135M-Instruct onto a Spanish tokenizer; prints before/after bits per byte."""
    from .demo import run_demo

    click.echo("SmolLM2-135M-Instruct -> Spanish byte-level BPE (Reina-Valera 1909 sample); first run converts the GGUF")
    info = run_demo(out, method=method, vocab_size=vocab_size, overwrite=overwrite)
    result = info["result"]
    click.echo(f"held-out text: {info['held_out_bytes']} bytes; tokenizer: {info['tokenizer']}")
    _print_eval_table(result.evaluation)
    click.echo(f"transplanted checkpoint: {result.output_dir}")


@cli.command()
def methods() -> None:
    """List the registered initializers."""
    from .initializers import available

    click.echo("\n".join(available()))


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except TransplantError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (OSError, MemoryError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
