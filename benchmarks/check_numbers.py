"""Do the numbers README.md and BENCHMARKS.md cite agree with the raw results they come from?

A citation names a document, a piece of the line that cites the number (`where`), a file under
`benchmarks/results/`, the path to the value inside it (keys, list indices, and `{field: value}`
steps that pick the one row of a list holding those fields) and how the document prints it: a
format string, or a small function for a derived figure (a ratio, a change in percent, MiB to GB).
Units as BENCHMARKS.md states them: GB = 10^9 bytes, GiB = 2^30, MiB = 2^20; the raw files'
`peak_rss_mb` is `ru_maxrss / 1024`, so MiB. A citation holds when some line of the document that
contains `where` (or the line `below` lines under it, for prose wrapped over lines) also contains
the formatted value.

Only numbers whose raw value was found and agrees are listed here; a number the documents give
without a raw value behind it is not.

Usage:
    python benchmarks/check_numbers.py            # one line per citation; exit 1 on any failure
    python benchmarks/check_numbers.py --failures # only the failures

From Python (tests/test_cited_numbers.py): `check()` returns the failures, `[]` when every cited
number agrees; `check(docs={"README.md": text})` checks a given text instead of the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache

from paths import HERE, ROOT

RESULTS = HERE / "results"
B, R = "BENCHMARKS.md", "README.md"
MINUS = "\u2212"  # the documents' prose minus; their tables use "-"
GB, MIB = 10**9, 2**20


@dataclass(frozen=True)
class Cite:
    """One cited number (or one group of adjacent cells): see the module docstring.

    `more` holds further values handed to `fmt` after the first: a list is a path in the same file,
    a `(file, path)` pair a path in another file.
    """

    doc: str
    where: str
    file: str
    path: tuple | list
    fmt: str | Callable[..., str] = "{:.4f}"
    more: tuple = ()
    below: int = 0


# --- formats --------------------------------------------------------------------------------------

def signed(v: float, digits: int = 1, minus: str = MINUS) -> str:
    """`+0.0`, `-18.1` (with the given minus sign); a value that rounds to zero is `+0.0`."""
    text = f"{abs(v):.{digits}f}"
    return (minus if v < 0 and float(text) != 0 else "+") + text


def change(a: float, b: float, digits: int = 1, minus: str = MINUS) -> str:
    """`a` against `b` in percent: `-18.1%`."""
    return signed(100 * (a / b - 1), digits, minus) + "%"


def tchange(a: float, b: float) -> str:
    """`change` as the tables print it (ASCII minus)."""
    return change(a, b, minus="-")


def br(a: float, original: float) -> str:
    """Bits per byte with its ratio to the original: `2.5494 (1.420)`."""
    return f"{a:.4f} ({a / original:.3f})"


def gb(mib: float, digits: int = 2) -> str:
    """MiB (`peak_rss_mb`) as GB: `3.80 GB`."""
    return f"{mib * MIB / GB:.{digits}f} GB"


def cells(*fmts: str | Callable) -> Callable[..., str]:
    """Adjacent table cells `| x | y |`, one value (and format) each."""
    def fmt(*values):
        out = [f(v) if callable(f) else f.format(v) for f, v in zip(fmts, values)]
        return "| " + " | ".join(out) + " |"
    return fmt


def row(**fields) -> dict:
    """A path step: the one row of a list whose fields hold these values."""
    return fields


# --- the citations, by section ----------------------------------------------------------------------

def _harness() -> list[Cite]:
    """BENCHMARKS' harness table (both parts, every row), its findings, README's summary table."""
    rows = {
        "de": "original hypernet+cal hypernet tokenadapt+cal tokenadapt knn fvt+cal hull focus fvt wechsel "
              "peer:wechsel+exact peer:deepfocus peer:wechsel",
        "fr": "original hypernet tokenadapt fvt",
        "es": "original hypernet tokenadapt+cal tokenadapt fvt+cal fvt",
        "code": "original hypernet tokenadapt+cal fvt+cal tokenadapt fvt",
        "s2g": "original hypernet+cal omp fvt+cal hypernet fvt peer:tokensurgeon-subword",
        "g2s": "original hypernet fvt+cal fvt peer:tokensurgeon-subword",
    }
    out = []
    H = "harness.json"

    def p(task, method, *tail):
        return ["results", row(task=task, method=method), *tail]

    for task, methods in rows.items():
        for method in methods.split():
            where = f"| {task} | {method} |"
            for part in ((), ("tune",)):
                bpb, orig, fvt = (p(task, m, *part, "bpb") for m in (method, "original", "fvt"))
                if method == "original":
                    out.append(Cite(B, where, H, bpb, lambda a, o: f"| {a:.4f} | {a / o:.3f} |", (orig,)))
                elif part or not method.startswith("peer:"):  # the peers ran on the tune part only
                    out.append(Cite(B, where, H, bpb, lambda a, o, f: f"| {a:.4f} | {a / o:.3f} | {tchange(a, f)} |",
                                    (orig, fvt)))
            out.append(Cite(B, where, H, p(task, method, "bytes_per_token"),
                            lambda bpt, rep, tune: f"| {bpt:.2f} | {'–' if rep is None else rep} / {tune} |",
                            (p(task, method, "eval_bytes"), p(task, method, "tune", "eval_bytes"))))
            if method != "original":
                out.append(Cite(B, where, H, p(task, method, "transplant_seconds"), cells("{:.1f}", "{}"),
                                (p(task, method, "peak_rss_mib"),)))

    def pair(where, method, task, base="fvt", below=0, lead=""):
        """`lead` + `-17.5% / -16.3%`: the report / tune change of `method` against `base` on `task`."""
        return Cite(B, where, H, p(task, method, "bpb"),
                    lambda a, b, c, d: f"{lead}{change(a, b)} / {change(c, d)}",
                    (p(task, base, "bpb"), p(task, method, "tune", "bpb"), p(task, base, "tune", "bpb")), below)

    beats, cal = "The shipped `hypernet` beats every heuristic", "- Output calibration (4,096 tokens):"
    out += [
        pair(beats, "hypernet", "de", below=1),
        pair(beats, "hypernet", "fr", below=1, lead="fr "),
        pair(beats, "hypernet", "es", below=1, lead="es "),
        pair(beats, "hypernet", "code", below=1, lead="code "),
        Cite(B, "calibration adds", H, p("de", "hypernet+cal", "bpb"),
             lambda a, b: f"calibration adds {-100 * (a / b - 1):.1f}% on German", (p("de", "hypernet", "bpb"),)),
        Cite(B, "is better than the network", H, p("s2g", "omp", "bpb"),
             "({:.3f} / {:.3f}, defaults section) is better than the network ({:.3f} / {:.3f})",
             (p("s2g", "omp", "tune", "bpb"), p("s2g", "hypernet", "bpb"), p("s2g", "hypernet", "tune", "bpb"))),
        Cite(B, "is better than the network", H, p("s2g", "hypernet+cal", "bpb"), "`hypernet+cal` ({:.3f} / {:.3f})",
             (p("s2g", "hypernet+cal", "tune", "bpb"),), below=1),
        pair("on French. `knn`", "tokenadapt", "fr"),
        pair("on French. `knn`", "knn", "de", lead="`knn` ("),
        Cite(B, "`focus` gains", H, p("de", "focus", "bpb"),
             lambda a, b, c, d: f"`focus` gains {-100 * (a / b - 1):.1f}% on report and loses {100 * (c / d - 1):.1f}%",
             (p("de", "fvt", "bpb"), p("de", "focus", "tune", "bpb"), p("de", "fvt", "tune", "bpb"))),
        pair("`focus` gains", "wechsel", "de", below=1, lead="loses on both ("),
        Cite(B, "new German tokens occur", H, p("de", "focus", "counts", "focus"), "only {:,} of 20k"),
        Cite(B, "vectors (wechsel 0.0.4:", H, p("de", "peer:wechsel", "tune", "bpb"),
             "(wechsel 0.0.4: {:.2f}, {:.2f} once exact overlaps are copied; deepfocus 1.0.1: {:.2f}, tune",
             (p("de", "peer:wechsel+exact", "tune", "bpb"), p("de", "peer:deepfocus", "tune", "bpb"))),
        pair(cal, "fvt+cal", "de"),
        pair(cal, "fvt+cal", "es"),
        pair(cal, "fvt+cal", "code", below=1),
        pair(cal, "fvt+cal", "s2g", below=1),
        pair(cal, "fvt+cal", "g2s", below=1),
        pair("on top of `tokenadapt`", "tokenadapt+cal", "de", base="tokenadapt"),
        Cite(B, "mergekit-tokensurgeon's `subword` is", H, p("s2g", "peer:tokensurgeon-subword", "tune", "bpb"),
             lambda a, b: f"is {-100 * (a / b - 1):.1f}% better than our FVT", (p("s2g", "fvt", "tune", "bpb"),)),
        Cite(B, "mergekit-tokensurgeon's `subword` is", H, p("g2s", "peer:tokensurgeon-subword", "tune", "bpb"),
             lambda a, b: f"{100 * (a / b - 1):.1f}% worse", (p("g2s", "fvt", "tune", "bpb"),)),
    ]
    # README: the summary table, report part (`lead`: what precedes the number in its cell), and the
    # peers' tune part beside ours.
    names = {"de": "SmolLM2 → German BPE", "fr": "SmolLM2 → French BPE", "es": "SmolLM2 → Spanish BPE",
             "code": "SmolLM2 → Python-code BPE", "s2g": "SmolLM2 → Gemma's tokenizer",
             "g2s": "Gemma → SmolLM2's tokenizer"}
    shown = [("de", "fvt", "| "), ("de", "tokenadapt+cal", "`tokenadapt+cal` "), ("de", "hypernet", "| **"),
             ("de", "hypernet+cal", "+cal **"),
             ("fr", "fvt", "| "), ("fr", "tokenadapt", "`tokenadapt` "), ("fr", "hypernet", "| **"),
             ("es", "fvt", "| "), ("es", "tokenadapt+cal", "`tokenadapt+cal` "), ("es", "hypernet", "| **"),
             ("code", "fvt", "| "), ("code", "tokenadapt+cal", "`tokenadapt+cal` "), ("code", "hypernet", "| **"),
             ("s2g", "fvt", "| "), ("s2g", "omp", "`omp` **"), ("s2g", "hypernet", "| "),
             ("s2g", "hypernet+cal", "+cal **"),
             ("g2s", "fvt", "| "), ("g2s", "fvt+cal", "`fvt+cal` "), ("g2s", "hypernet", "| **")]
    for task, method, lead in shown:
        out.append(Cite(R, f"| {names[task]} |", H, p(task, method, "bpb"), lambda a, o, lead=lead: lead + br(a, o),
                        (p(task, "original", "bpb"),)))
    peers = {"de": ("peer:wechsel+exact", "hypernet+cal", "wechsel + exact overlap "),
             "s2g": ("peer:tokensurgeon-subword", "omp", "tokensurgeon subword "),
             "g2s": ("peer:tokensurgeon-subword", "hypernet", "tokensurgeon subword ")}
    for task, (peer, ours, lead) in peers.items():
        out.append(Cite(R, f"| {names[task]} |", H, p(task, peer, "tune", "bpb"), lead + "{:.4f} / {:.4f} |",
                        (p(task, ours, "tune", "bpb"),)))
    # The cross-model rows (FVT, tune part), by provenance: `special` counts the `special-*` rows too.
    def provenance(counts, o, a):
        merged = {}
        for kind, n in counts.items():
            kind = "special" if kind.startswith("special") else kind
            merged[kind] = merged.get(kind, 0) + n
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(merged.items(), key=lambda kv: -kv[1]))
        return f"| {kinds} | {o:.4f} | {a:.4f} | {a / o:.3f} |"

    for task, where in (("g2s", "| Gemma-3-270M → SmolLM2's (49k) |"), ("s2g", "| SmolLM2-135M → Gemma's (262k) |")):
        out.append(Cite(B, where, H, p(task, "fvt", "counts"), provenance,
                        (p(task, "original", "tune", "bpb"), p(task, "fvt", "tune", "bpb"))))
    out += [
        Cite(B, "The 6,267 `mean` rows", H, p("s2g", "fvt", "counts", "mean"), "The {:,} `mean` rows"),
        Cite(B, "FVT, the tune part of `en/dev.txt`", H, p("g2s", "fvt", "tune", "eval_bytes"), "documents, {:,} bytes)"),
    ]
    return out


def _default_vs_fvt() -> list[Cite]:
    """The default against `--method fvt`: BENCHMARKS' table (three texts), README's (two)."""
    D = "default_vs_fvt.json"
    out = []

    def p(task, method, text):
        return ["results", row(task=task, method=method), text, "bpb"]

    def row_cites(doc, where, task, text, default="default", below=0, minus="-", bold=False):
        o, f, d = p(task, "original", text), p(task, "fvt", text), p(task, default, text)
        b = "**" if bold else ""
        res = [Cite(doc, where, D, o, "| {:.4f} |", below=below),
               Cite(doc, where, D, f, br, (o,), below),
               Cite(doc, where, D, d, lambda a, o: f"{b}{br(a, o)}{b}", (o,), below)]
        if doc == B:
            res.append(Cite(doc, where, D, d, lambda a, f, o: f"| {change(a, f, minus='-')} | {a / o:.3f} |",
                            (f, o), below))
        else:
            res.append(Cite(doc, where, D, d, lambda a, f: f"| {change(a, f)} |", (f,), below))
        return res

    for task in ("de", "fr", "es", "it", "code", "s2g", "g2s"):
        for text in ("dev", "dev-tune", "other"):
            out += row_cites(B, f"| {task} | {text} |", task, text)
    for task in ("s2g", "g2s"):
        for text in ("dev-tune", "other"):
            out += row_cites(B, f"| {task} | {text}, default + `--calibrate-text en/train.txt` |", task, text,
                             default="default+text")
    names = {"de": "SmolLM2 → German BPE", "fr": "SmolLM2 → French BPE", "es": "SmolLM2 → Spanish BPE",
             "it": "SmolLM2 → Italian BPE", "code": "SmolLM2 → Python-code BPE",
             "s2g": "SmolLM2 → Gemma's tokenizer", "g2s": "Gemma → SmolLM2's tokenizer"}
    for task, name in names.items():
        out += row_cites(R, f"| {name} | dev |", task, "dev", bold=True)
        out += row_cites(R, f"| {name} | dev |", task, "other", below=1, bold=True)

    def changes(*tasks, text="dev"):
        paths = [q for t in tasks for q in (p(t, "default", text), p(t, "fvt", text))]
        return paths[0], tuple(paths[1:])

    fvt_tune = ["results", row(task="de", method="fvt"), "dev-tune"]
    out += [
        Cite(B, "SmolLM2-135M onto the German BPE (fvt, uncalibrated),", D, fvt_tune + ["bytes"],
             lambda b, t: f"{b:,} bytes of `de/dev.txt` ({b / t:,.0f}", (fvt_tune + ["bytes_per_token"],)),
        Cite(B, "SmolLM2-135M onto the German BPE (fvt, uncalibrated),", D, fvt_tune + ["bpb"],
             lambda a, o: f"tokens): {a:.4f} bits per byte against the original's {o:.4f} (ratio {a / o:.3f}",
             (p("de", "original", "dev-tune"),), below=1),
        Cite(R, "smollm2-de-fvt  ", D, fvt_tune + ["bpb"], lambda a, t, o: f"{a:.4f}         {t:.2f}   {a / o:.3f}",
             (fvt_tune + ["bytes_per_token"], p("de", "original", "dev-tune"))),
        Cite(R, "smollm2-135m-instruct       ", D, p("de", "original", "dev-tune"), "{:.4f}         {:.2f}   1.000",
             (["results", row(task="de", method="original"), "dev-tune", "bytes_per_token"],)),
        Cite(B, "on German dev it is 2% behind that network", D, p("de", "default", "dev-tune"),
             lambda a, o: f"({a / o:.3f} with calibration against", (p("de", "original", "dev-tune"),), below=1),
        Cite(B, "on German dev it is 2% behind that network", D, p("s2g", "default", "dev-tune"),
             lambda a, o: f"Gemma's tokenizer ({a / o:.3f} against", (p("s2g", "original", "dev-tune"),), below=2),
    ]
    first, rest = changes("de", "fr", "it", "code")
    out.append(Cite(B, "dev** (report:", D, first,
                    lambda *v: "report: " + ", ".join(change(v[i], v[i + 1]) for i in range(0, len(v), 2)), rest))
    first, rest = changes("de", "fr", "it", "code", text="dev-tune")
    out.append(Cite(B, "dev** (report:", D, first,
                    lambda *v: "tune: " + ", ".join(change(v[i], v[i + 1]) for i in range(0, len(v), 2)), rest))
    out.append(Cite(B, "dev** (report:", D, p("es", "default", "dev"), lambda a, b: f"es {change(a, b)}",
                    (p("es", "fvt", "dev"),)))
    out.append(Cite(B, "dev** (report:", D, p("es", "default", "dev-tune"), lambda a, b: f"/ {change(a, b)})",
                    (p("es", "fvt", "dev-tune"),), below=1))
    first, rest = changes("de", "fr", "es", "code", text="other")
    out.append(Cite(B, "On the other genre: de", D, first,
                    lambda *v: ", ".join(f"{t} {change(v[i], v[i + 1])}" for t, i in
                                         zip(("de", "fr", "es", "code"), range(0, len(v), 2))), rest))
    out.append(Cite(B, "On the other genre: de", D, p("it", "default", "other"), lambda a, b: f"it {change(a, b)}",
                    (p("it", "fvt", "other"),)))
    out.append(Cite(B, "**Gemma → SmolLM2's tokenizer:", D, p("g2s", "default", "dev"),
                    lambda a, o, b, q: f"{a / o:.3f} on the report part (target ≤ 1.08: met there), {b / q:.3f} on",
                    (p("g2s", "original", "dev"), p("g2s", "default", "dev-tune"), p("g2s", "original", "dev-tune"))))
    out.append(Cite(B, "the shipped network gives", D, p("s2g", "default", "dev"),
                    lambda a, o, b, q: f"gives {a / o:.3f} / {b / q:.3f} (report / tune)",
                    (p("s2g", "original", "dev"), p("s2g", "default", "dev-tune"), p("s2g", "original", "dev-tune"))))
    out.append(Cite(B, "the shipped network gives", D, p("s2g", "default+text", "dev-tune"),
                    lambda a, o: f"text and {a / o:.3f} (tune) with English calibration text",
                    (p("s2g", "original", "dev-tune"),), below=1))
    out.append(Cite(R, "`--calibrate-text` they reach", D, p("s2g", "default+text", "other"),
                    lambda a, o, b, q: f"they reach {a / o:.3f} and {b / q:.3f} on the",
                    (p("s2g", "original", "other"), p("g2s", "default+text", "other"), p("g2s", "original", "other"))))
    return out


def _defaults_split() -> list[Cite]:
    """BENCHMARKS' table of each default against the settings it was chosen over (ranks within a group)."""
    S = "defaults_split.json"
    table = {
        ("word_start", "de"): ["WORD_START 0.2 (default)", "WORD_START 0", "WORD_START 0.1", "WORD_START 0.3"],
        ("tokenadapt", "de"): ["defaults (T 0.3, k 3, sim 0.6, weight 0.7)", "local_temperature 0.1",
                               "local_temperature 1.0", "global_k 10", "min_similarity 0.4", "local_weight 0.5",
                               "local_weight 1.0"],
        ("focus", "de"): ["temperature 0.1 (default)", "temperature 0.05", "temperature 0.3",
                          "temperature 1.0 (the paper's)"],
        ("omp", "s2g"): ["max_norm median (default)", "max_norm atoms", "max_norm none"],
        ("knn_space", "de"): ["space minilm (default)", "space model"],
        ("tokenadapt_space", "de"): ["space minilm (default)", "space model"],
        ("roles", "g2s"): ["sequence roles first (default)", "chat roles first"],
    }

    def ranked(group, variant):
        def fmt(rows):
            mine = [r for r in rows if r["group"] == group]
            me = next(r for r in mine if r["variant"] == variant)
            rank = {part: 1 + sum(r[part]["bpb"] < me[part]["bpb"] for r in mine) for part in ("tune", "report")}
            return f"| {me['tune']['bpb']:.4f} | {rank['tune']} | {me['report']['bpb']:.4f} | {rank['report']} |"
        return fmt

    out = [Cite(B, f"| {group} | {task} | {variant} |", S, ["results"], ranked(group, variant))
           for (group, task), variants in table.items() for variant in variants]

    def p(group, variant, part):
        return ["results", row(group=group, variant=variant), part, "bpb"]

    med, atoms = "max_norm median (default)", "max_norm atoms"
    out += [
        Cite(B, "`median` is lower (", S, p("omp", med, "tune"), "`median` is lower ({:.4f} against {:.4f})",
             (p("omp", atoms, "tune"),)),
        Cite(B, "`median` is lower (", S, p("omp", med, "report"), "agrees ({:.3f}", below=1),
        Cite(B, "`median` is lower (", S, p("omp", atoms, "report"), "against {:.3f})", below=2),
        Cite(B, "tokenadapt is 0.5% better at 0.3", S, p("word_start", "WORD_START 0.3", "tune"),
             lambda a, b, c, d: f"{-100 * (a / b - 1):.1f}% better at 0.3 on both"
             if f"{-100 * (a / b - 1):.1f}" == f"{-100 * (c / d - 1):.1f}" else "parts differ",
             (p("word_start", "WORD_START 0.2 (default)", "tune"), p("word_start", "WORD_START 0.3", "report"),
              p("word_start", "WORD_START 0.2 (default)", "report"))),
        Cite(B, "`min_similarity 0.4` is", S, p("tokenadapt", "min_similarity 0.4", "tune"),
             lambda a, b, c, d: f"is {-100 * (a / b - 1):.1f}% / {-100 * (c / d - 1):.1f}% better",
             (p("tokenadapt", "defaults (T 0.3, k 3, sim 0.6, weight 0.7)", "tune"),
              p("tokenadapt", "min_similarity 0.4", "report"),
              p("tokenadapt", "defaults (T 0.3, k 3, sim 0.6, weight 0.7)", "report"))),
        Cite(B, "for knn (", S, p("knn_space", "space minilm (default)", "report"),
             "for knn ({:.4f} / {:.4f} against {:.4f} / {:.4f})",
             (p("knn_space", "space minilm (default)", "tune"), p("knn_space", "space model", "report"),
              p("knn_space", "space model", "tune"))),
        Cite(B, "input embeddings for knn", S, p("tokenadapt_space", "space minilm (default)", "report"),
             "tokenadapt ({:.4f} /"),
        Cite(B, "input embeddings for knn", S, p("tokenadapt_space", "space minilm (default)", "tune"),
             "{:.4f} against {:.4f} / {:.4f})", (p("tokenadapt_space", "space model", "report"),
                                                 p("tokenadapt_space", "space model", "tune")), below=1),
        Cite(B, "before chat roles for a token", S, p("roles", "sequence roles first (default)", "tune"),
             "({:.4f} / {:.4f} against {:.4f} / {:.4f} on g2s",
             (p("roles", "sequence roles first (default)", "report"), p("roles", "chat roles first", "tune"),
              p("roles", "chat roles first", "report"))),
        Cite(B, "instead of `<start_of_turn>`'s", S, p("roles", "chat roles first", "tune"),
             "moved the first line from {:.4f} to {:.4f}", (p("roles", "sequence roles first (default)", "tune"),)),
        Cite(B, "instead of `<start_of_turn>`'s", S, p("roles", "chat roles first", "report"),
             "from {:.4f} to {:.4f} on the report part", (p("roles", "sequence roles first (default)", "report"),),
             below=1),
    ]
    return out


def _omp() -> list[Cite]:
    """OMP over Gemma's 262k vocabulary: the cap's table (omp_speed*, defaults_split, harness)."""
    O, U, S = "omp_speed.json", "omp_speed_uncapped.json", "defaults_split.json"

    def split(variant, part):
        return (S, ["results", row(group="omp", variant=variant), part, "bpb"])

    speed = cells("{:.1f} s", "{:.1f} s", "{} MiB", "{:.4f}", "{:.4f}")
    return [
        Cite(B, "| `none` (before the cap) |", U, ["speed", "wall_seconds"], speed,
             (["speed", "planning_seconds"], ["speed", "peak_rss_mib"], ["speed", "bpb_omp"],
              split("max_norm none", "report"))),
        Cite(B, "| `none` (before the cap) |", U, ["speed", "bpb_fvt"], "| {:.4f} / {:.4f} |",
             (("harness.json", ["results", row(task="s2g", method="fvt"), "bpb"]),)),
        Cite(B, "| `atoms` (the default until the tune/report split) |", O, ["speed", "wall_seconds"], speed,
             (["speed", "planning_seconds"], ["speed", "peak_rss_mib"], ["speed", "bpb_omp"],
              split("max_norm atoms", "report"))),
        Cite(B, "| `median` (the default now) |", S, split("max_norm median (default)", "tune")[1],
             "**{:.4f}** | **{:.4f}**", (["results", row(group="omp", variant="max_norm median (default)"),
                                         "report", "bpb"],)),
        Cite(B, "uncalibrated; 215,885 rows made", O, ["speed", "counts", "omp"], "{:,} rows made over {:,} shared",
             (["speed", "atoms"],)),
        Cite(B, "against FVT onto the same tokenizer (original", O, ["speed", "bpb_original"], "(original {:.4f})"),
        Cite(B, "over the same rows:", O, ["speed", "exact_seconds_per_token"], "{:.3f} s/token, {:.0f} min",
             (["speed", "exact_projected_minutes_all"],)),
        Cite(B, "so their difference (", O, ["speed", "wall_seconds"], lambda a, b: f"difference ({a - b:.0f} s)",
             ((U, ["speed", "wall_seconds"]),)),
    ]


def _extend() -> list[Cite]:
    """Vocabulary extension: the `fvt`, HF `mean_resizing` and original rows (not `hypernet`)."""
    E = "extend.json"
    out = [Cite(B, "| 0 (original) |", E, ["original", "bytes_per_token"], "| {:.3f} | {:.4f} |",
                (["original", "bpb"],))]
    for n, label in (("1000", "| 1,000 |"), ("4000", "| 4,000 |"), ("16000", "(16,000 asked) |")):
        out += [
            Cite(B, label, E, [f"{n}-fvt", "bytes_per_token"], lambda t, a, o: f"| {t:.3f} | {br(a, o)} |",
                 ([f"{n}-fvt", "bpb"], ["original", "bpb"])),
            Cite(B, label, E, [f"{n}-hf-mean-resizing", "bpb"], lambda a, o: f"| {br(a, o)} |", (["original", "bpb"],)),
        ]
    out += [
        Cite(B, "(16,000 asked) |", E, ["added", "16000"], "| {:,} (16,000 asked) |"),
        Cite(B, "The corpus (850 kB) has", E, ["added", "16000"], "has {:,} pairs seen at least twice"),
    ]
    out += [
        Cite(B, "extension packs German far better", E, ["1000-fvt", "bytes_per_token"],
             lambda a, c, o: f"(+{100 * (a / o - 1):.0f}% to +{100 * (c / o - 1):.0f}% bytes per token)",
             (["16000-fvt", "bytes_per_token"], ["original", "bytes_per_token"])),
        Cite(B, "FVT's rows cost", E, ["1000-fvt", "bpb"],
             lambda a, c, o: f"FVT's rows cost {100 * (a / o - 1):.0f}–{100 * (c / o - 1):.0f}%",
             (["16000-fvt", "bpb"], ["original", "bpb"])),
        Cite(R, "- **Extension** with 1k / 4k / 10k German tokens", E, ["original", "bytes_per_token"],
             "token {:.2f} → {:.2f} / {:.2f} / {:.2f}; bits per byte",
             (["1000-fvt", "bytes_per_token"], ["4000-fvt", "bytes_per_token"], ["16000-fvt", "bytes_per_token"]),
             below=1),
        Cite(R, "- **Extension** with 1k / 4k / 10k German tokens", E, ["1000-fvt", "bpb"],
             lambda a, b, c, o: f"bits per byte {a / o:.3f} / {b / o:.3f} / {c / o:.3f} with `fvt` rows",
             (["4000-fvt", "bpb"], ["16000-fvt", "bpb"], ["original", "bpb"]), below=1),
    ]
    return out


def _heal() -> list[Cite]:
    """Healing: the FVT table, the default's, the extension's, the two settings, and the prose."""
    H = "heal.json"
    out = []

    def scored(where, key, texts, steps=None, bold=()):
        res = [] if steps is None else [Cite(B, where, H, [key, "heal", "steps"], "| {} |")]
        for text in texts:
            b = "**" if text in bold else ""
            res.append(Cite(B, where, H, [key, text, "bpb"], lambda a, o, b=b: f"{b}{br(a, o)}{b}",
                            (["original", text, "bpb"],)))
        return res

    three = ("de-dev", "de-ui", "en-dev")
    four = ("de-dev", "de-dev-report", "de-ui", "en-dev")
    out.append(Cite(B, "| original SmolLM2 | |", H, ["original", "de-dev", "bpb"], "| {:.4f} | {:.4f} | {:.4f} |",
                    (["original", "de-ui", "bpb"], ["original", "en-dev", "bpb"])))
    out.append(Cite(B, "| original SmolLM2 | |", H, ["original", "de-dev", "bpb"],
                    "| {:.4f} | {:.4f} | {:.4f} | {:.4f} |",
                    (["original", "de-dev-report", "bpb"], ["original", "de-ui", "bpb"], ["original", "en-dev", "bpb"])))
    out += scored("| FVT transplant | 0 |", "fvt", three)
    out += scored("| healed 5 min |", "heal-5min", three, steps=True)
    out += scored("| healed 15 min |", "heal-15min", three, steps=True)
    out += scored("| healed 60 min |", "heal-60min", three, steps=True, bold=("de-dev", "de-ui"))
    out += scored("| default transplant | 0 |", "default", four)
    out += scored("| healed 15 min |", "heal-default-15min", four, steps=True)
    out += scored("| healed 60 min |", "heal-default-60min", four, steps=True, bold=("de-dev", "de-dev-report", "de-ui"))
    out += scored("| extended by 4,000 (default rows) | 0 |", "extend", four)
    out += scored("| healed 15 min |", "heal-extend-15min", four, steps=True, bold=("de-dev", "de-dev-report", "de-ui"))
    for key, where in (("symmetric-lr2e-2-5min", "| symmetric distillation (`lm_weight=0`), lr 2e-2 |"),
                       ("symmetric-5min", "| symmetric distillation (`lm_weight=0`), lr 1e-2 |"),
                       ("heal-5min", "| one-sided (`lm_weight=1`, the default), lr 1e-2 |")):
        out.append(Cite(B, where, H, [key, "heal", "steps"], cells("{}", "{:.4f}", "{:.4f}", "{:.4f}", "{:.4f}"),
                        ([key, "de-dev", "bpb"], [key, "de-ui", "bpb"], [key, "en-dev", "bpb"],
                         [key, "heal", "held_out_best"])))

    out += [
        Cite(B, "steps), so the early stop never fired", H, ["heal-60min", "de-dev", "bpb"],
             lambda a, o: f"the ≤ 1.10 goal is missed: {a / o:.3f} at 60 minutes", (["original", "de-dev", "bpb"],)),
        Cite(B, "CPU cores 60 minutes is", H, ["heal-60min", "heal", "steps"], "60 minutes is {} steps of 4 windows"),
        Cite(B, "the other-genre text gains about as much", H, ["fvt", "de-ui", "bpb"],
             lambda f, h, o, g, k, q: f"(−{(f - h) / o:.3f} against −{(g - k) / q:.3f} in ratio at 60 minutes)",
             (["heal-60min", "de-ui", "bpb"], ["original", "de-ui", "bpb"], ["fvt", "de-dev", "bpb"],
              ["heal-60min", "de-dev", "bpb"], ["original", "de-dev", "bpb"]), below=1),
        Cite(B, "slice of the healing text went from", H, ["heal-60min", "heal", "held_out_start"],
             "went from {:.4f} to {:.4f} bits per byte", (["heal-60min", "heal", "held_out_best"],)),
        Cite(B, "slice of the healing text went from", H, ["heal-60min", "heal", "held_out_teacher"],
             "{:.4f} on the same characters", below=1),
        Cite(B, "test run for 15 of the 60 minutes.", H, ["heal-60min", "heal", "rows"], "{:,} of the 20,252 made rows"),
        Cite(B, "within 60 minutes: met** (", H, ["heal-default-60min", "de-dev", "bpb"],
             lambda a, o, b, q: f"met** ({a / o:.3f}; {b / q:.3f} on the report part)",
             (["original", "de-dev", "bpb"], ["heal-default-60min", "de-dev-report", "bpb"],
              ["original", "de-dev-report", "bpb"])),
        Cite(B, "the 60-minute best state is step", H, ["heal-default-60min", "heal", "best_step"],
             "best state is step {}"),
        Cite(B, "the 60-minute best state is step", H, ["heal-default-60min", "heal", "held_out_best"],
             "score of the healing text, {:.4f} bits per byte against the original's {:.4f} there",
             (["heal-default-60min", "heal", "held_out_teacher"],), below=1),
        Cite(B, "Steps are faster too (", H, ["heal-default-60min", "heal", "steps"], "({} in 60 minutes against"),
        Cite(B, "on that text; old ids and rows unchanged), then healed", H, ["heal-extend-15min", "heal", "rows"],
             "({:,} of the"),
        Cite(B, "- 15 minutes take the extension from", H, ["extend", "de-dev", "bpb"],
             lambda a, b, o: f"from {a / o:.3f} to {b / o:.3f} of the original's",
             (["heal-extend-15min", "de-dev", "bpb"], ["original", "de-dev", "bpb"])),
        Cite(B, "The symmetric run's held-out score then stalled", H, ["symmetric-5min", "heal", "held_out_best"],
             "its best, {:.4f} at step {}", (["symmetric-5min", "heal", "steps"],)),
        Cite(R, "- **Healing** the default German transplant", H, ["default", "de-dev", "bpb"],
             lambda a, b, c, o: f"{a / o:.3f} → {b / o:.3f} (15 min) → **{c / o:.3f}",
             (["heal-default-15min", "de-dev", "bpb"], ["heal-default-60min", "de-dev", "bpb"],
              ["original", "de-dev", "bpb"]), below=1),
        Cite(R, "- **Healing** the default German transplant", H, ["heal-default-60min", "de-dev-report", "bpb"],
             lambda a, o: f"({a / o:.3f} on the report part)", (["original", "de-dev-report", "bpb"],), below=2),
        Cite(R, "- **Healing** the default German transplant", H, ["default", "de-ui", "bpb"],
             lambda a, b, o: f"went {a / o:.3f} → {b / o:.3f} and English prose",
             (["heal-default-60min", "de-ui", "bpb"], ["original", "de-ui", "bpb"]), below=3),
        Cite(R, "- **Healing** the default German transplant", H, ["default", "en-dev", "bpb"],
             lambda a, b, o: f"{a / o:.3f} → {b / o:.3f}: no genre got worse",
             (["heal-default-60min", "en-dev", "bpb"], ["original", "en-dev", "bpb"]), below=4),
        Cite(R, "- **Healing** the default German transplant", H, ["fvt", "de-dev", "bpb"],
             lambda a, b, o: f"the same hour gives {a / o:.3f} → {b / o:.3f}",
             (["heal-60min", "de-dev", "bpb"], ["original", "de-dev", "bpb"]), below=4),
        Cite(R, "`transplant extend`'s default (", H, ["extend", "de-dev", "bpb"],
             lambda a, b, o: f"default ({a / o:.3f}) reaches {b / o:.3f} after",
             (["heal-extend-15min", "de-dev", "bpb"], ["original", "de-dev", "bpb"])),
    ]
    return out


def _big_models() -> list[Cite]:
    """Healing memory, the sharded body, the CPU backward, the 7B-class hypernetwork's cost."""
    F32, ADAM, ROW = "heal_memory.json", "heal_memory-bf16-adam.json", "heal_memory-row-adam.json"
    ONE, REP, SH = "heal_memory_1proc_routed.json", "heal_memory_2proc_replicas.json", "heal_memory_2proc_sharded.json"
    FL, HN = "frozen_linear_speed.json", "hypernet_7b_cost.json"
    f32 = ["rows", "float32"]
    this = ["rows", "this"]
    share = (F32, f32 + ["peak_rss_mb"])
    out = [
        Cite(B, "| before: student and teacher in float32 (3d6c3f3) |", F32, f32 + ["wall_s"],
             lambda w, m, s: f"| {w:.1f} | {gb(m)} | 100% | {s:.4f} |", (f32 + ["peak_rss_mb"], f32 + ["summary", "best_bpb"])),
        Cite(B, "| now, bf16 body and teacher, Adam |", ADAM, this + ["wall_s"],
             lambda w, m, s, f: f"| {w:.1f} | {gb(m)} | {100 * m / f:.0f}% | {s:.4f} |",
             (this + ["peak_rss_mb"], this + ["result", "best_bpb"], share)),
        Cite(B, "(factored form) |", ROW, this + ["wall_s"], "| **{:.1f}** |"),
        Cite(B, "(factored form) |", ROW, this + ["peak_rss_mb"], lambda m, f: f"| **{gb(m)}** | **{100 * m / f:.0f}%** |",
             (share,)),
        Cite(B, "(factored form) |", ROW, this + ["result", "best_bpb"], "| {:.4f} |"),
        Cite(B, "Target ≤ 55% of the float32 run", ROW, this + ["peak_rss_mb"],
             lambda m, f: f"`--optimizer row-adam` ({100 * m / f:.0f}%)", (share,)),
        Cite(B, "Target ≤ 55% of the float32 run", ADAM, this + ["peak_rss_mb"],
             lambda m, f: f"({100 * m / f:.0f}%).**", (share,), below=1),
        Cite(B, "Raw files: `heal_memory.json` (the float32 row", F32, this + ["wall_s"],
             lambda w, m: f"bf16 row of {w:.1f} s / {gb(m)}", (this + ["peak_rss_mb"],)),
        Cite(B, "128-token window:", F32, this + ["summary", "rows_trained"], "{:,} of the 20,252 made rows train"),
        Cite(R, "checkpoint's German transplant (", ROW, this + ["peak_rss_mb"],
             lambda m, w, a: f"{gb(m)} and {w:.0f} s with `row-adam`, {gb(a)} with",
             (this + ["wall_s"], (ADAM, this + ["peak_rss_mb"]))),
        Cite(R, "checkpoint's German transplant (", F32, f32 + ["peak_rss_mb"],
             lambda m, w: f"against {gb(m)} and {w:.0f} s when both", (f32 + ["wall_s"],), below=1),
        Cite(R, "checkpoint's German transplant (", ROW, this + ["result", "rows_trained"], "({:,} rows)"),
        # The frozen body sharded over processes.
        Cite(B, "| one process |", ONE, this + ["wall_s"],
             lambda w, m, s: f"| {w:.1f} | {gb(m)} ({m:,.0f} MiB) | {s:.4f} |",
             (this + ["peak_rss_mb"], this + ["result", "best_bpb"])),
        Cite(B, "| two processes, each holding the whole body (DDP) |", REP, this + ["wall_s"],
             lambda w, m, s: f"| {w:.1f} | {gb(m)} ({m:,.0f} MiB) | {s:.4f} |",
             (this + ["peak_rss_mb"], this + ["result", "best_bpb"])),
        Cite(B, "| **two processes, `--shard-body`** |", SH, this + ["wall_s"],
             lambda w, m, s: f"| {w:.1f} | **{gb(m)} ({m:,.0f} MiB)** | {s:.4f} |",
             (this + ["peak_rss_mb"], this + ["result", "best_bpb"])),
        Cite(B, "de/train.txt (", ONE, this + ["result", "rows_trained"], "({:,} rows trained;"),
        Cite(B, "and each process holds its share of the layers:", SH, this + ["peak_rss_mb"],
             lambda s, r: f"{(r - s) * MIB / GB:.2f} GB less at 4", ((REP, this + ["peak_rss_mb"]),)),
        Cite(B, "with it the whole run took", ONE, this + ["wall_s"], "the whole run took {:.0f} s"),
        Cite(R, "the 4-layer 7B-width checkpoint:", SH, this + ["peak_rss_mb"],
             lambda s, r: f"{gb(s)} per process against {gb(r)} whole", ((REP, this + ["peak_rss_mb"]),)),
        # The CPU backward through a frozen bf16 layer.
        Cite(B, "| torch's bf16 kernels |", FL, ["rows", "torch", "forward_s"],
             "| {:.3f} s ({:.1f} GFLOPS) | **{:.1f} s ({:.1f} GFLOPS)** |",
             (["rows", "torch", "forward_gflops"], ["rows", "torch", "backward_s"], ["rows", "torch", "backward_gflops"])),
        Cite(B, "| `io/frozen_linear.py` (float32 blocks of W, 8,192 rows at a time) |", FL,
             ["rows", "routed", "forward_s"], "| {:.3f} s ({:.1f} GFLOPS) | **{:.2f} s ({:.1f} GFLOPS)** |",
             (["rows", "routed", "forward_gflops"], ["rows", "routed", "backward_s"],
              ["rows", "routed", "backward_gflops"])),
        Cite(B, "The gradients are identical here", FL, ["grad_max_abs_difference"], "(maximum difference {:g})"),
        Cite(R, "torch's own bf16 kernel ran it at", FL, ["rows", "torch", "backward_gflops"],
             lambda g, s: f"{g:.1f} GFLOPS here, {s:.0f}× slower", (["backward_speedup"],), below=1),
        # The 7B-class hypernetwork's cost.
        Cite(B, "`hypernet/recipes/7b-class.yaml`'s network (three", HN, ["network_params"],
             lambda n: f"{n / 1e6:.0f} M parameters", below=1),
        Cite(B, "| stage 1 step (", HN, ["stage1", "seconds_per_step"],
             lambda s, t, b, p: f"| stage 1 step ({b} rows, {p:.1f} pieces each) | {min(s):.1f} s | {t:.2f} TFLOP | "
                                f"{1000 * t / min(s):.0f} GFLOPS |",
             (["stage1", "tflop_per_step"], ["settings", "stage1_batch"], ["stage1", "pieces_per_row"])),
        Cite(B, "| stage 2 step (", HN, ["stage2"],
             lambda st: (f"| stage 2 step ({st[0]['tokens']} tokens, ~{sum(s['predicted'] for s in st) / len(st):.0f} "
                         f"rows predicted) | {min(s['seconds'] for s in st):.1f}–{max(s['seconds'] for s in st):.1f} s | "
                         f"{st[0]['body_tflop']:.2f} TFLOP body + {min(s['network_tflop'] for s in st):.2f}–"
                         f"{max(s['network_tflop'] for s in st):.2f} TFLOP network | "
                         f"{1000 * sum(s['body_tflop'] + s['network_tflop'] for s in st) / sum(s['seconds'] for s in st):.0f}"
                         f" GFLOPS |")),
        Cite(B, "| peak RSS |", HN, ["peak_rss_gb"],
             lambda g, n: f"| {g:.1f} GB | (body 2.55 GB, network with gradients and moments {n * 4 * 4 / 1e9:.1f} GB)",
             (["network_params"],)),
    ]
    return out


def _streaming() -> list[Cite]:
    """The plain transplant against `cp -r` (streaming*.json), the fixed cost phase by phase."""
    out = []
    for f, where, b in (("streaming.json", "| 2.55 GB, 4 layers |", ""),
                        ("streaming-32l.json", "| 14.8 GB, 32 layers |", "**")):
        s = ["summary"]
        out += [
            Cite(B, where, f, s + ["cp", "wall_s_min"], "| {:.2f} s | {:.2f} s | +{:.1f} s |",
                 (s + ["transplant", "wall_s_min"], s + ["transplant", "wall_s_over_floor"])),
            Cite(B, where, f, s + ["transplant", "wall_s_min"], lambda t, c, b=b: f"| {b}{t / c:.2f}{b} |",
                 (s + ["cp", "wall_s_min"],)),
            Cite(B, where, f, s + ["cp_sync", "wall_s_min"], lambda c, t: f"| {c:.2f} / {t:.2f} s ({t / c:.2f}) |",
                 (s + ["transplant_sync", "wall_s_min"],)),
            Cite(B, where, f, s + ["transplant_link", "wall_s_min"], "| {:.2f} s", ),
            Cite(B, where, f, s + ["transplant", "peak_rss_mb_max"], "| {:.0f} MiB"),
        ]
    out += [
        Cite(B, "| 14.8 GB, 32 layers |", "streaming-32l.json", ["summary", "transplant_link", "wall_s_min"],
             lambda t, c: f"| {t:.2f} s ({t / c:.2f}) |", (["summary", "cp", "wall_s_min"],)),
        Cite(B, "| 14.8 GB, 32 layers |", "streaming-32l.json", ["summary", "transplant", "peak_rss_mb_max"],
             lambda m: f"| {m:.0f} MiB ({m * MIB / GB:.2f} GB) |"),
        Cite(B, "6 shards; 4 layers =", "streaming.json", ["source", "bytes"],
             lambda a, b: f"4 layers = {a / GB:.2f} GB, 32 layers = {b / GB:.2f} GB",
             (("streaming-32l.json", ["source", "bytes"]),)),
        Cite(B, "Target: the German tokenizer above (", "streaming.json", ["new_tokenizer", "vocab"], "({:,} rows)"),
        Cite(B, "transformers and transplant alone takes", "streaming.json", ["summary", "imports_only", "wall_s_min"],
             "alone takes {:.1f}–{:.1f} s (the `imports_only` row; {:.1f} s in",
             (("streaming-32l.json", ["summary", "imports_only", "wall_s_min"]),
              ("profile_phases.json", ["phases_s", "this checkout", "import api (torch, transformers)"]))),
        Cite(B, "overhead is the same +", "streaming.json", ["summary", "transplant", "wall_s_over_floor"],
             lambda a, b: f"the same +{a:.1f} s at both sizes" if f"{a:.1f}" == f"{b:.1f}" else "differ",
             (("streaming-32l.json", ["summary", "transplant", "wall_s_over_floor"]),)),
    ]
    # The fixed cost, phase by phase.
    P = "profile_phases.json"
    phases = [("| import the CLI |", "import cli"), ("| `main()` |", "main()"),
              ("| · locate the embeddings |", "locate the embeddings"),
              ("| · vocabularies (2 builds: one per tokenizer) |", "vocabularies"), ("| · alignment |", "alignment"),
              ("| · plan (fvt) |", "plan (methods)"), ("| · write weights |", "write weights"),
              ("| · write tokenizer |", "write tokenizer"), ("| · validate output |", "validate output"),
              ("| exit after `main()` |", "exit after main()")]
    base, now = ["phases_s", "b7c9b27"], ["phases_s", "this checkout"]
    for where, key in phases:
        out.append(Cite(B, where, P, base + [key], "| {:.2f} | {:.2f} |", (now + [key],)))
    out += [
        Cite(B, "| import the API (torch, transformers) |", P, now + ["import api (torch, transformers)"],
             "| (in the CLI's) | {:.2f} |"),
        Cite(B, "| **wall of the process** |", P, base + ["wall (process)"], "| **{:.2f}** | **{:.2f}** |",
             (now + ["wall (process)"],)),
        Cite(B, "| `cp -r` of the model folder |", P, ["cp_r_s"], lambda c: f"| {c:.2f} | {c:.2f} |"),
        Cite(B, "**Against the target (≤ 3 s over `cp -r`): missed,", P, now + ["wall (process)"],
             lambda n, b, c: f"missed, {n - c:.2f} s over `cp -r`** ({b - c:.2f} s at b7c9b27 in",
             (base + ["wall (process)"], ["cp_r_s"])),
        Cite(B, "**Against the target (≤ 3 s over `cp -r`): missed,", P, now + ["import api (torch, transformers)"],
             "torch and transformers ({:.1f} s)", below=1),
        Cite(B, "- **Writing:**", P, base + ["write weights"], "**Writing:** {:.2f} → {:.2f} s", (now + ["write weights"],)),
        Cite(B, "- **Exit:**", P, base + ["exit after main()"], "**Exit:** {:.2f} → {:.2f} s",
             (now + ["exit after main()"],)),
        Cite(B, "- **Vocabularies:**", P, now + ["vocabularies"], "(2 builds, {:.2f} s)"),
        Cite(B, "What it is now is the next section's table", P, now + ["import api (torch, transformers)"],
             "imports {:.2f} + {:.2f} s", (now + ["import cli"],)),
        Cite(B, "What it is now is the next section's table", P, now + ["locate the embeddings"],
             "locating the embeddings {:.2f} s, writing the weights {:.2f} s, exit {:.2f} s",
             (now + ["write weights"], now + ["exit after main()"]), below=1),
    ]
    return out


def _calibration() -> list[Cite]:
    """Calibration read one layer at a time (calibration_memory*), and its cost on the real models."""
    M, A, L, G, S = ("calibration_memory.json", "calibration_memory-auto.json", "calibration_memory-32l.json",
                     "calibration_memory-gemma-source.json", "calibration_speed.json")
    rows = ["rows"]

    def wall_gb(f, key, where, fmt=None):
        return Cite(B, where, f, rows + [key, "wall_s"], fmt or (lambda w, m: f"| {w:.1f} | {gb(m)}"),
                    (rows + [key, "peak_rss_mb"],))

    out = [
        wall_gb(M, "whole", "| 2.55 GB, 4 layers | whole, float32 (before) |"),
        wall_gb(M, "streamed", "| 2.55 GB, 4 layers | **one layer at a time, bf16** |",
                lambda w, m: f"| **{w:.1f}** | **{gb(m)}** |"),
        wall_gb(M, "plain", "| 2.55 GB, 4 layers | plain FVT, no calibration |"),
        wall_gb(A, "streamed", "| 2.55 GB, 4 layers, `--method auto` | one layer at a time |"),
        wall_gb(A, "plain", "| 2.55 GB, 4 layers, `--method auto` | plain, no calibration |"),
        wall_gb(L, "streamed", "| **14.8 GB, 32 layers, 16 GB cgroup** | **one layer at a time, bf16** |",
                lambda w, m: f"| **{w:.1f}** | **{gb(m)}** (whole"),
        wall_gb(L, "plain", "| 14.8 GB, 32 layers, 16 GB cgroup | plain FVT, no calibration |"),
        Cite(B, "2.55 GB checkpoint ≤ 2.0 GB peak", M, rows + ["streamed", "peak_rss_mb"],
             lambda m, s, w: f"peak ({m * MIB / GB:.2f}) and ≤ 2× the old wall time ({s / w:.2f}×",
             (rows + ["streamed", "wall_s"], rows + ["whole", "wall_s"])),
        Cite(B, "the 14.8 GB checkpoint completes inside 16 GB", L, rows + ["streamed", "peak_rss_mb"],
             lambda m, w: f"({gb(m)} peak, {w:.0f} s:", (rows + ["streamed", "wall_s"],)),
        Cite(B, "whole read", G, rows + ["whole", "wall_s"],
             lambda w, m, s, n: f"whole read {w:.1f} s / {gb(m)}, layer by layer {s:.1f} s / {gb(n)}",
             (rows + ["whole", "peak_rss_mb"], rows + ["streamed", "wall_s"], rows + ["streamed", "peak_rss_mb"])),
        Cite(B, "as recorded in the plan); plain FVT", G, rows + ["streamed", "result", "bucket_scales"],
             lambda s, w, m, o: f"({'/'.join(f'{x:.4f}' for x in s)} as recorded in the plan); plain FVT {w:.1f} s / "
                                f"{gb(m)}" if s == o else "scales differ",
             (rows + ["plain", "wall_s"], rows + ["plain", "peak_rss_mb"], rows + ["whole", "result", "bucket_scales"])),
        Cite(R, "calibrates inside a 16 GB memory limit", L, rows + ["streamed", "peak_rss_mb"],
             lambda m, w: f"at a {gb(m, 1)} peak in {w:.0f} s", (rows + ["streamed", "wall_s"],)),
        Cite(R, "calibrates inside a 16 GB memory limit", M, rows + ["streamed", "peak_rss_mb"],
             lambda m, w: f"(the 2.55 GB one: {gb(m, 1)} and {w:.0f} s,", (rows + ["streamed", "wall_s"],)),
    ]

    def run(task, code):
        return ["runs", row(task=task, code=code, calibrate=True)]

    for task, where in (("de", "| SmolLM2 → German 32k BPE |"), ("gemma", "| SmolLM2 → Gemma's 262k tokenizer |")):
        out.append(Cite(B, where, S, run(task, "old") + ["process_s"],
                        "| {:.1f} → {:.1f} s | {:.1f} → {:.1f} s | {:,} → {:,} MiB |",
                        (run(task, "new") + ["process_s"], run(task, "old") + ["calibration_s"],
                         run(task, "new") + ["calibration_s"], run(task, "old") + ["peak_rss_mb"],
                         run(task, "new") + ["peak_rss_mb"])))
    out += [
        Cite(B, "| SmolLM2 → German 32k BPE |", S, ["compare", "de", "scales_new"],
             lambda n, o: f"| identical ({'/'.join(f'{x:.4f}' for x in n)}) |" if n == o else "scales differ",
             (["compare", "de", "scales_old"],)),
        Cite(B, "| SmolLM2 → Gemma's 262k tokenizer |", S, ["compare", "gemma", "scales_old"],
             lambda o, n, d: f"| {o[0]:.10f} → {n[0]:.10f} ({d:.1e}".replace("e-0", "e-") + " relative",
             (["compare", "gemma", "scales_new"], ["compare", "gemma", "max_rel_scale_diff"])),
        Cite(B, "≤ 2.5 GB and ≤ 150 s on Gemma's 262k vocabulary", S, run("gemma", "new") + ["peak_rss_mb"],
             lambda m, w: f"({m:,} MiB = {gb(m)}, {w:.1f} s;", (run("gemma", "new") + ["process_s"],)),
        Cite(B, "The price on small models:", S, run("de", "new") + ["calibration_s"],
             lambda a, b, c, d: f"{a - b:.1f}–{c - d:.1f} s more",
             (run("de", "old") + ["calibration_s"], run("gemma", "new") + ["calibration_s"],
              run("gemma", "old") + ["calibration_s"])),
        Cite(B, "brought it to", S, run("gemma", "new") + ["peak_rss_mb"], lambda m: f"brought it to {gb(m)}"),
    ]
    # The output-side probe (harness findings).
    out.append(Cite(B, "came out nearly flat", "calibration_probe.json", ["results", 0, "bucket_scales"],
                    lambda s, b, one: f"({s[1]:.2f} / {s[2]:.2f} / {s[3]:.2f}) and gave {b:.4f} against {one:.4f}",
                    (["results", 0, "dev_bpb_output_side", "buckets"], ["results", 0, "dev_bpb_output_side", "scale"])))
    out.append(Cite(B, "came out nearly flat", "calibration_probe.json", ["results", 0, "dev_bpb_output_side", "none"],
                    "for one scale ({:.4f} uncalibrated)", below=1))
    return out


def _speed() -> list[Cite]:
    """The semantic methods' speed, and the draft for speculative decoding (assist.json)."""
    S = "semantic_speed.json"
    out = [Cite(B, where, S, ["rows", row(command=cmd), "wall_s"], fmt, (["rows", row(command=cmd), "x_fvt"],
                                                                        ["rows", row(command=cmd), "peak_rss_mib"]))
           for where, cmd, fmt in (("| `fvt` |", "fvt", "| {:.2f} | {:.2f} | {} |"),
                                   ("| `tokenadapt`, encodings cached |", "tokenadapt (cached)", "| {:.2f} | **{:.2f}** | {} |"),
                                   ("| `tokenadapt`, cold |", "tokenadapt (cold)", "| {:.2f} | **{:.1f}** | {} |"))]
    out.append(Cite(B, "- **Missed:** cached", S, ["rows", row(command="tokenadapt (cached)"), "x_fvt"],
                    "cached {:.2f}× (target 2×); cold {:.1f}× (target 4×)",
                    (["rows", row(command="tokenadapt (cold)"), "x_fvt"],)))
    A = "assist.json"
    labels = {"universal": "SmolLM2, own tokenizer (universal assisted generation)",
              "default": "SmolLM2 on Gemma's tokenizer, default method",
              "default+cal": "SmolLM2 on Gemma's tokenizer, default method calibrated on English",
              "fvt": "SmolLM2 on Gemma's tokenizer, fvt"}
    for settings in ("defaults", "k1", "k3"):
        for config, label in labels.items():
            key = config if settings == "defaults" else f"{config}@{settings}"
            where = f"| {label} | {settings} |"
            a = ["results", key, "assist"]
            out += [
                Cite(B, where, A, a, lambda s: f"| {s['acceptance_rate']:.3f} ({s['accepted']}/{s['proposed']}) | "
                                               f"{s['proposed'] / s['steps']:.2f} | {s['tokens_per_step']:.2f} |"),
                Cite(B, where, A, a, lambda s: f"| {s['seconds_assisted']:.1f} | {s['seconds_target']:.1f} | "
                                               f"x{s['speedup']:.2f} | {s['identical']}/{s['prompts']} |"),
            ]

    def rate(key):
        return ["results", key, "assist", "acceptance_rate"]

    out += [
        Cite(B, "draft had", A, rate("default"), "draft had {:.3f} of its tokens accepted against fvt's {:.3f}",
             (rate("fvt"),)),
        Cite(B, "Like for like (the same draft settings)", A, rate("universal@k1"),
             "{:.3f} against {:.3f} at one token per pass, {:.3f} against", (rate("default@k1"), rate("universal@k3")),
             below=1),
        Cite(B, "Like for like (the same draft settings)", A, rate("default@k3"), "{:.3f} at three", below=2),
        Cite(B, "Same runs before the fix", A, ["before_bos_fix", "default@k1", "acceptance_rate"],
             "default draft {:.3f} → {:.3f} at k1 and {:.3f} → {:.3f} at k3; `fvt` {:.3f} → {:.3f} at k1",
             (rate("default@k1"), ["before_bos_fix", "default@k3", "acceptance_rate"], rate("default@k3"),
              ["before_bos_fix", "fvt@k1", "acceptance_rate"], rate("fvt@k1")), below=1),
        Cite(B, "Same runs before the fix", A, ["before_bos_fix", "fvt@k3", "acceptance_rate"],
             "{:.3f} → {:.3f} at k3", (rate("fvt@k3"),), below=2),
        Cite(B, "k3 runs in", A, ["results", "universal@k3", "assist", "seconds_assisted"],
             "(universal {:.1f} s against {:.1f} s", (["results", "universal", "assist", "seconds_assisted"],)),
        Cite(R, "agrees more with Gemma-3-270M than SmolLM2 moved onto", A, rate("universal@k1"), "agreement {:.3f}"),
        Cite(R, "agrees more with Gemma-3-270M than SmolLM2 moved onto", A, rate("default@k1"),
             "against {:.3f} with the default method; {:.3f} against {:.3f} at three tokens per pass",
             (rate("universal@k3"), rate("default@k3")), below=1),
        Cite(R, "draft gives more tokens per target pass", A, ["results", "default", "assist"],
             lambda d, u: f"({d['tokens_per_step']:.2f} against {u['tokens_per_step']:.2f}) at a lower acceptance rate "
                          f"({d['acceptance_rate']:.2f}", (["results", "universal", "assist"],)),
        Cite(R, "draft gives more tokens per target pass", A, ["results", "default", "assist"],
             lambda d, u: f"against {u['acceptance_rate']:.2f}: it proposes {d['proposed'] / d['steps']:.0f} tokens per "
                          f"pass, universal {u['proposed'] / u['steps']:.1f})", (["results", "universal", "assist"],),
             below=1),
        Cite(B, "(x0.27–x0.69;", A, ["results"],
             lambda r: f"(x{min(v['assist']['speedup'] for v in r.values()):.2f}–"
                       f"x{max(v['assist']['speedup'] for v in r.values()):.2f};"),
    ]
    return out


def _quality() -> list[Cite]:
    """German quality per initializer, the FVT probe, supertokens, the hypernetwork curve, encodes."""
    Q, P, T, C, E = ("quality_de.json", "fvt_probe.json", "supertokens.json", "hypernet_curve.json",
                     "encode_convention.json")

    def q(name, *tail):
        return ["results", row(name=name), *tail]

    out = [
        Cite(B, "| original (SmolLM2 tokenizer) |", Q, q("original", "bpb"), "| {:.4f} | 1.000 | {:.2f} |",
             (q("original", "bytes_per_token"),)),
        Cite(R, "| original (SmolLM2 tokenizer) |", Q, q("original", "bpb"), "| {:.4f} | {:.2f} |",
             (q("original", "bytes_per_token"),)),
    ]
    for name in ("fvt", "multivariate", "mean", "random"):
        b = "**" if name == "fvt" else ""
        out += [
            Cite(B, f"| `{name}` | {b}", Q, q(name, "bpb"),
                 lambda a, o, t, s, b=b: f"| {b}{a:.4f}{b} | {a / o:.3f} | {t:.2f} | {s:.1f} |",
                 (q("original", "bpb"), q(name, "bytes_per_token"), q(name, "transplant_seconds"))),
            Cite(R, f"| `{name}` |", Q, q(name, "bpb"), "| {:.4f} | {:.2f} |", (q(name, "bytes_per_token"),)),
        ]
    out += [
        Cite(B, "corpus saturates at", Q, ["tokenizer", "vocab_size"], "saturates at **{:,}**"),
        Cite(B, "`de/dev.txt` (", Q, ["eval", "bytes"], "({:,} bytes, {} documents)",
             (q("original", "eval", "documents"),)),
        Cite(B, "The issue quoted an outside quick FVT at", Q, ["reference_bpb", "original"],
             lambda o, f, m: f"at {o:.3f} (original) / {f:.3f} (FVT, ratio {f / o:.3f}) / {m:.3f}",
             (["reference_bpb", "fvt"], ["reference_bpb", "mean"])),
        Cite(B, "Our `mean` is much better (", Q, ["reference_bpb", "mean"], lambda m, o: f"(mean, ratio {m / o:.2f})",
             (["reference_bpb", "original"],)),
        Cite(B, "uniform guess over", P, ["uniform_over_new_vocab_bpb"],
             lambda u, v, n, b: f"uniform guess over {v:,} tokens (log2 {v:,} bits per token × {n:,} tokens / {b:,} "
                                f"bytes = {u:.3f})",
             (["new_vocab"], (Q, q("fvt", "eval", "tokens")), (Q, ["eval", "bytes"]))),
        Cite(B, "Our `mean` is much better (", Q, q("mean", "bpb"), "Our `mean` is much better ({:.3f})"),
        Cite(B, "Our FVT ratio is", Q, q("fvt", "bpb"), lambda a, o: f"Our FVT ratio is {a / o:.3f}",
             (q("original", "bpb"),)),
        Cite(B, "instead of SmolLM2-Instruct's", P, ["protocol_bpb", "fvt float32 start=<|endoftext|>"],
             "FVT scores {:.4f}"),
        Cite(B, "instead of SmolLM2-Instruct's", P, ["protocol_bpb", "original float32 start=<|endoftext|>"],
             "and the original {:.4f}", below=1),
        Cite(B, "finds no alignment error (", P, ["audit", "decompositions_from_old_encoding"],
             "({:,} of {:,} FVT rows", (["audit", "alignment", "decomposable"],)),
        Cite(B, "SmolLM2's own encoding of the token, the other", P, ["audit", "decompositions_by_byte_segmentation_partial_utf8"],
             "the other {} are partial"),
    ]
    # Supertokens.
    for lang in ("de", "en"):
        where_plain, where_super = f"| {lang}/dev | plain BPE |", f"| {lang}/dev | supertokens |"
        out += [
            Cite(B, where_plain, T, [lang, "plain-tokenizer", "vocab_size"],
                 lambda v, t, a, o: f"| {v:,} (saturated) | {t:.3f} | {br(a, o)} |",
                 ([lang, "plain-fvt", "bytes_per_token"], [lang, "plain-fvt", "bpb"], [lang, "original", "bpb"])),
            Cite(B, where_plain, T, [lang, "plain-hypernet", "bpb"], lambda a, o: f"**{br(a, o)}**",
                 ([lang, "original", "bpb"],)),
            Cite(B, where_super, T, [lang, "super-tokenizer", "vocab_size"],
                 lambda v, n, t, p, a, h, o: f"| {v:,} ({n:,} multi-word) | {t:.3f} ({signed(100 * (p / t - 1))}% tokens)"
                                             f" | {br(a, o)} | {br(h, o)} |",
                 ([lang, "super-tokenizer", "supertokens"], [lang, "super-fvt", "bytes_per_token"],
                  [lang, "plain-fvt", "bytes_per_token"], [lang, "super-fvt", "bpb"], [lang, "super-hypernet", "bpb"],
                  [lang, "original", "bpb"])),
        ]
        orig = f"| {lang}/dev | SmolLM2's own |"
        out.append(Cite(B, orig, T, [lang, "original", "bytes_per_token"], "| {:.3f} | {:.4f} (original) |",
                        ([lang, "original", "bpb"],)))

    def fewer(d, s, e, t):
        return f"{100 * (1 - d / s):.1f}% (de: {d:.3f} → {s:.3f} bytes per token) and {100 * (1 - e / t):.1f}% (en: " \
               f"{e:.3f} → {t:.3f})"

    def tok(lang, kind, key):
        return [lang, f"{kind}-tokenizer", key]

    out += [
        Cite(B, "On the whole dev files, encoded line by line", T, tok("de", "plain", "whole_dev_bytes_per_token"),
             fewer, (tok("de", "super", "whole_dev_bytes_per_token"), tok("en", "plain", "whole_dev_bytes_per_token"),
                              tok("en", "super", "whole_dev_bytes_per_token")), below=1),
        Cite(B, "training summary reports) it is", T, tok("de", "plain", "held_out_bytes_per_token"),
             lambda d, s, e, t: f"it is {100 * (1 - d / s):.1f}% and {100 * (1 - e / t):.1f}%",
             (tok("de", "super", "held_out_bytes_per_token"), tok("en", "plain", "held_out_bytes_per_token"),
              tok("en", "super", "held_out_bytes_per_token"))),
        Cite(B, "cases: English with `fvt`", T, ["en", "super-fvt", "bpb"],
             lambda a, b, c, d: f"English with `fvt` +{100 * (a / b - 1):.0f}% BPB, with the hypernetwork "
                                f"+{100 * (c / d - 1):.0f}%",
             (["en", "plain-fvt", "bpb"], ["en", "super-hypernet", "bpb"], ["en", "plain-hypernet", "bpb"])),
        Cite(B, "cases: English with `fvt`", T, ["de", "super-hypernet", "bpb"],
             lambda a, b, c, d: f"+{100 * (a / b - 1):.0f}%; only German `fvt` gains ({change(c, d)})",
             (["de", "plain-hypernet", "bpb"], ["de", "super-fvt", "bpb"], ["de", "plain-fvt", "bpb"]), below=1),
        Cite(R, "- **Supertokens** (`python benchmarks/supertokens.py`):", T, ["de", "super-fvt", "bytes_per_token"],
             lambda a, b, c, d: f"{100 * (1 - b / a):.1f}% (de) and {100 * (1 - d / c):.1f}% (en) fewer tokens",
             (["de", "plain-fvt", "bytes_per_token"], ["en", "super-fvt", "bytes_per_token"],
              ["en", "plain-fvt", "bytes_per_token"])),
        Cite(R, "- **Supertokens** (`python benchmarks/supertokens.py`):", T, ["en", "super-fvt", "bpb"],
             lambda a, b: f"(en `fvt` +{100 * (a / b - 1):.0f}% BPB)", (["en", "plain-fvt", "bpb"],), below=2),
    ]
    # How BPB moves with training (es), and the encode convention (README).
    for step, where in ((0, "| 0 | untrained = FVT |"), (650, "| 650 | end of stage 1"), (900, "| 900 | stage 2, 253"),
                        (1230, "| 1230 | stage 2, 583")):
        me, first = ["rows", row(step=step)], ["rows", row(step=0)]
        if step == 0:
            out.append(Cite(B, where, C, me + ["dev"], "| {:.4f} | {:.4f} |", (me + ["other_genre"],)))
        else:
            out.append(Cite(B, where, C, me + ["dev"],
                            lambda a, b, c, d: f"| {a:.4f} ({change(a, b)}) | {c:.4f} ({change(c, d)}) |",
                            (first + ["dev"], me + ["other_genre"], first + ["other_genre"])))

    def enc(text, add):
        return ["results", row(text=text, add_special_tokens=add)]

    out.append(Cite(R, "adds the mapped start token (on the first", E, enc("en/dev.txt", True) + ["bytes"],
                    lambda b, w: f"whole documents, {b / 1000:.1f} kB, of `en/dev.txt`'s report part: {w:.2f} "
                                 f"nats/token with a plain encode,",
                    (enc("en/dev.txt", True) + ["nats_per_token"],), below=1))
    out.append(Cite(R, "without the start token; on", E, enc("en/dev.txt", False) + ["nats_per_token"],
                    lambda wo, b, w, x: f"{wo:.2f} without the start token; on {b / 1000:.1f} kB of `code/dev.txt` "
                                        f"{w:.2f} against {x:.2f}",
                    (enc("code/dev.txt", True) + ["bytes"], enc("code/dev.txt", True) + ["nats_per_token"],
                     enc("code/dev.txt", False) + ["nats_per_token"])))
    return out


def _quality_line() -> list[Cite]:
    """The quality line of a plain run: its cost and the line itself (`quality_line.py`)."""
    Q = "quality_line.json"
    out = []
    for i, (lang, label) in enumerate((("de", "German"), ("code", "code"))):
        out.append(Cite(B, f"| {label} | ", Q, ["rows", i, "best_without"],
                        lambda a, b, o: f"| {a:.1f} s | {b:.1f} s | +{100 * o:.1f}% |",
                        (["rows", i, "best_with"], ["rows", i, "overhead"])))
        out.append(Cite(B, f"| {label} | ", Q, ["rows", i, "quality_line"],
                        lambda line: line.split("quality: ")[1].split(" the original")[0].replace("'s", "")))
    out.append(Cite(R, "On SmolLM2 onto German and code it added", Q, ["rows", 1, "overhead"],
                    lambda c, d: f"added {100 * min(c, d):.0f}–{100 * max(c, d):.0f}% to the run's wall time",
                    (["rows", 0, "overhead"],)))
    out.append(Cite(R, "quality: 1.", Q, ["rows", 0, "quality_line"], "{}"))
    return out


def _extend_hypernet() -> list[Cite]:
    """The extension table's `hypernet` column (the shipped network, re-measured)."""
    E = "extend.json"
    return [Cite(B, f"| {label} | ", E, [f"{n}-hypernet", "bpb"], lambda b, o: f"**{b:.4f} ({b / o:.3f})**",
                 ([("original"), "bpb"],))
            for n, label in (("1000", "1,000"), ("4000", "4,000"), ("16000", "10,260 (16,000 asked)"))]


def citations() -> list[Cite]:
    return [*_harness(), *_default_vs_fvt(), *_defaults_split(), *_omp(), *_extend(), *_heal(), *_big_models(),
            *_streaming(), *_calibration(), *_speed(), *_quality(), *_quality_line(), *_extend_hypernet()]


# --- the check ---------------------------------------------------------------------------------------

@cache
def _result(file: str):
    return json.loads((RESULTS / file).read_text(encoding="utf-8"))


def lookup(data, path):
    """The value at `path` (keys, indices, `{field: value}` row selectors); LookupError when absent."""
    for step in path:
        if isinstance(step, dict):
            found = [x for x in data if isinstance(x, dict) and all(x.get(k) == v for k, v in step.items())]
            if len(found) != 1:
                raise LookupError(f"{len(found)} rows match {step}")
            data = found[0]
        elif isinstance(data, (dict, list)):
            data = data[step]
        else:
            raise TypeError(f"{step!r} in a {type(data).__name__}")
    return data


def show_path(file: str, path) -> str:
    steps = ["[" + ",".join(f"{k}={v}" for k, v in s.items()) + "]" if isinstance(s, dict) else str(s) for s in path]
    return f"{file}:{'/'.join(steps)}"


def _values(c: Cite) -> list:
    out = []
    for ref in (c.path, *c.more):
        file, path = ref if isinstance(ref, tuple) else (c.file, ref)
        try:
            out.append(lookup(_result(file), path))
        except FileNotFoundError as e:
            raise LookupError(f"no file {file}") from e
        except (KeyError, IndexError, TypeError, LookupError) as e:
            raise LookupError(f"{show_path(file, path)} ({e})") from e
    return out


def run(docs: Mapping[str, str] | None = None) -> list[tuple[bool, str]]:
    """Every citation checked: (holds, its line of report)."""
    docs = dict(docs or {})
    lines = {}
    out = []
    for c in citations():
        if c.doc not in lines:
            text = docs[c.doc] if c.doc in docs else (ROOT / c.doc).read_text(encoding="utf-8")
            lines[c.doc] = text.splitlines()
        doc = lines[c.doc]
        head = f"{c.doc} {c.where!r}" + (f" (+{c.below} lines)" if c.below else "")
        hits = [i + c.below for i, line in enumerate(doc) if c.where in line and 0 <= i + c.below < len(doc)]
        if not hits:
            out.append((False, f"MISSING line      {head}: no line holds it"))
            continue
        try:
            values = _values(c)
        except LookupError as e:
            out.append((False, f"MISSING json key  {head}: {e}"))
            continue
        try:
            expected = c.fmt(*values) if callable(c.fmt) else c.fmt.format(*values)
        except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError) as e:
            out.append((False, f"MISSING json key  {head}: {show_path(c.file, c.path)} cannot be formatted ({e})"))
            continue
        if any(expected in doc[i] for i in hits):
            out.append((True, f"ok                {head}: {expected!r} ({show_path(c.file, c.path)})"))
        else:
            context = " || ".join(doc[i].strip()[:200] for i in hits[:3])
            out.append((False, f"MISMATCH          {head}: {show_path(c.file, c.path)} gives {expected!r}; the "
                               + f"document has: {context}"))
    return out


def check(docs: Mapping[str, str] | None = None) -> list[str]:
    """The failures (MISMATCH / MISSING lines); [] when every cited number agrees with its raw file."""
    return [line for ok, line in run(docs) if not ok]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--failures", action="store_true", help="print only the citations that fail")
    args = ap.parse_args()
    results = run()
    for ok, line in results:
        if not (ok and args.failures):
            print(line)
    bad = sum(not ok for ok, _ in results)
    print(f"{len(results) - bad} of {len(results)} citations agree with benchmarks/results/")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
