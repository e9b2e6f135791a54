"""Training texts of the shipped hypernetworks that are not corpus files as they stand.

The dictionaries' word pairs (en-de, en-fr, en-es) become one source, `dictionaries.txt`, so
word lists weigh as one genre among the others in stage 2 (each file is one source, drawn
uniformly). Run once before `hypernet train --recipe hypernet/recipes/*.yaml`:

    CORPORA=../shared/corpora python benchmarks/hypernet_texts.py   # -> benchmarks/work/texts/
"""

from __future__ import annotations

from paths import CORPORA, HERE

OUT = HERE / "work" / "texts"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for name in ("en-de", "en-fr", "en-es"):
        lines += (CORPORA / "dictionaries" / f"{name}.tsv").read_text(encoding="utf-8").splitlines()
    target = OUT / "dictionaries.txt"
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{target}: {len(lines)} word pairs")


if __name__ == "__main__":
    main()
