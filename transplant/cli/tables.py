"""Tables the commands print: bits per byte per model, and where a model's loss is.

Torch-free (the rows come in as plain objects), so `--help` stays light.

Example:
    >>> from types import SimpleNamespace as R
    >>> print_eval_table({"original": R(bpb=1.5, bytes_per_token=3.0), "new": R(bpb=1.8, bytes_per_token=4.0)})
    model            bits/byte  bytes/token   ratio
    original            1.5000         3.00   1.000
    new                 1.8000         4.00   1.200
"""

from __future__ import annotations

import math

import click


def print_eval_table(evaluation: dict, base: str | None = "original") -> None:
    """One row per model; with `base` (a key of `evaluation`) a ratio column of bits per byte against it."""
    ref = evaluation.get(base) if base else None
    width = max([14] + [len(name) + 2 for name in evaluation])
    click.echo(f"{'model':<{width}}{'bits/byte':>11}{'bytes/token':>13}" + (f"{'ratio':>8}" if ref else ""))
    for name, r in evaluation.items():
        ratio = f"{r.bpb / ref.bpb:>8.3f}" if ref else ""
        click.echo(f"{name:<{width}}{r.bpb:>11.4f}{r.bytes_per_token:>13.2f}{ratio}")
    scored = {getattr(r, "bytes", None) for r in evaluation.values()} - {None}
    if len(scored) == 1:  # what was scored, not what was asked for (whole documents only)
        click.echo(f"(scored on {scored.pop():,} bytes of text)", err=True)
    for name, r in evaluation.items():
        if not getattr(r, "lossless", True):
            click.echo(f"warning: {name}'s tokenizer does not reproduce the text (decode(encode(text)) != text): "
                       "its bits per byte are not comparable with another tokenizer's", err=True)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_breakdown(name: str, kinds: list, total_bytes: int, excess: dict[str, float] | None = None,
                    reference: str | None = None) -> None:
    """Where `name`'s loss is: one row per kind of token (`KindRow`s of `transplant.measure.breakdown`).

    `excess` (kind -> nats more than `reference` on the same bytes) adds a column in bits per
    byte: the kinds' parts of the difference of the two models' bits per byte.

    Example:
        >>> from types import SimpleNamespace as R
        >>> rows = [R(kind="exact", rows=300, token_share=0.6, loss_share=0.4, nats_per_token=2.0, bits_per_byte=0.9,
        ...           mass=0.45, gap=-0.15), R(kind="fvt", rows=200, token_share=0.4, loss_share=0.6,
        ...           nats_per_token=4.5, bits_per_byte=1.6, mass=0.55, gap=0.15)]
        >>> print_breakdown("new", rows, 1000, {"exact": 13.9, "fvt": 69.3}, "original")
        where new's loss is, by kind of token (mass: mean probability the model puts on the kind;
        gap: mass - tokens; excess: bits/byte above original on the same bytes)
        kind          rows  tokens    loss  nats/token  bits/byte    mass     gap    excess
        exact          300   60.0%   40.0%       2.000     0.9000   45.0%  -15.0%   +0.0201
        fvt            200   40.0%   60.0%       4.500     1.6000   55.0%  +15.0%   +0.1000
    """
    width = max([10] + [len(r.kind) + 2 for r in kinds])
    legend = "mass: mean probability the model puts on the kind; gap: mass - tokens"
    if excess is not None:
        legend += f"; excess: bits/byte above {reference} on the same bytes"
    click.echo(f"where {name}'s loss is, by kind of token ({legend})")
    click.echo(f"{'kind':<{width}}{'rows':>8}{'tokens':>8}{'loss':>8}{'nats/token':>12}{'bits/byte':>11}"
               f"{'mass':>8}{'gap':>8}" + (f"{'excess':>10}" if excess is not None else ""))
    for r in kinds:
        line = (f"{r.kind:<{width}}{r.rows:>8,}{r.token_share:>8.1%}{r.loss_share:>8.1%}"
                f"{_num(r.nats_per_token, '.3f'):>12}{_num(r.bits_per_byte, '.4f'):>11}{r.mass:>8.1%}{r.gap:>+8.1%}")
        if excess is not None:
            line += f"{excess.get(r.kind, 0.0) / math.log(2) / max(total_bytes, 1):>+10.4f}"
        click.echo(line)


def print_top_tokens(tokens: list, reference: str) -> None:
    """The tokens that cost most against `reference` on the same bytes (`TokenExcess`es).

    Example:
        >>> from types import SimpleNamespace as R
        >>> print_top_tokens([R(token=" the", kind="exact", count=40, nats=12.5, per_occurrence=0.3125)], "original")
        tokens that cost most against original on the same bytes (nats)
        token                 kind        count    excess  per token
        ' the'                exact          40    +12.50    +0.3125
    """
    click.echo(f"tokens that cost most against {reference} on the same bytes (nats)")
    kind_width = max([10] + [len(t.kind) + 2 for t in tokens])
    click.echo(f"{'token':<22}{'kind':<{kind_width}}{'count':>7}{'excess':>10}{'per token':>11}")
    for t in tokens:
        shown = repr(t.token) if len(t.token) <= 18 else repr(t.token[:16]) + "…"
        click.echo(f"{shown:<22}{t.kind:<{kind_width}}{t.count:>7,}{t.nats:>+10.2f}{t.per_occurrence:>+11.4f}")
