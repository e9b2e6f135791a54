"""`transplant eval --dynamic`: what dynamic tokenization saves and costs on a text.

Example:
    $ transplant eval --model smollm2-135m-instruct --text de/dev.txt --dynamic
    $ transplant eval --model gemma-3-270m --text code.txt --dynamic --merges 100,200 --json
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from transplant.common.errors import TransplantError


def run_dynamic(model: str, name: str, texts: tuple[str, ...], max_bytes: int, plot: str | None,
                trust_remote_code: bool, budgets: list[int], prefix_tokens: int, continuation_tokens: int,
                samples: int, as_json: bool) -> None:
    """Check everything, load the model and its network, score, print (a table, or one JSON object);
    `name` is how tables call the model."""
    from transplant.common.texts import read_texts
    from transplant.core.vocab import load_tokenizer
    from transplant.dynamic import DynamicTokenizer, known_network
    from transplant.dynamic_eval import cut_samples, evaluate_dynamic
    from transplant.io.sources import check_model_config, resolve_model
    from transplant.measure.lm import start_token

    if plot:  # before minutes of scoring
        from transplant.measure.breakdown_plot import check_plot_path, require_matplotlib

        require_matplotlib()
        check_plot_path(plot, [*texts, *([Path(model)] if Path(model).exists() else [])])
    data = read_texts(texts, max_bytes or None)
    folder = resolve_model(model)
    check_model_config(folder, trust_remote_code)
    network = known_network(folder, model)  # no network: one line, before the model loads
    source = load_tokenizer(folder)
    pairs = cut_samples(source.tokenizer, data, prefix_tokens, continuation_tokens, samples)
    if not pairs:
        within = f" within --max-bytes {max_bytes:,}" if max_bytes else ""
        raise TransplantError(f"the text gives no sample of {prefix_tokens} + {continuation_tokens} tokens{within}: "
                              "pass a longer text or smaller --prefix-tokens / --continuation-tokens")
    dyn = DynamicTokenizer.load(folder, network=network, trust_remote_code=trust_remote_code)
    table = evaluate_dynamic(dyn, pairs, budgets, start_token(source.vocabulary().roles))
    if plot:
        from transplant.measure.breakdown_plot import plot_dynamic

        plot_dynamic(table.rows, plot, title=f"{name}: dynamic tokens on {table.samples} prefixes")
    if as_json:
        click.echo(json.dumps({"model": name, "network": network.name, **table.as_dict()}, indent=2))
        return
    click.echo(f"{name}, network {network.name}: {table.samples} prefixes of ~{table.mean_prefix_tokens} tokens, "
               f"each followed by {table.continuation_tokens} scored tokens ({table.continuation_bytes:,} bytes)")
    click.echo(f"{'budget':<10}{'prefix tokens':>15}{'saved':>8}{'bits/byte':>11}{'ratio':>8}{'prefill s':>11}")
    static = table.rows[0]
    for r in table.rows:
        click.echo(f"{'static' if r.budget is None else r.budget:<10}{r.prefix_tokens:>15,}"
                   f"{100 * r.tokens_saved:>7.1f}%{r.continuation_bits_per_byte:>11.4f}"
                   f"{r.continuation_bits_per_byte / static.continuation_bits_per_byte:>8.3f}"
                   f"{r.prefill_seconds:>11.2f}")
