"""The post-write check: a staged output that breaks a special-token rule is never published.

Checked on the files as written (config.json, generation_config.json, the tokenizer files) and the
plan, so whatever produced them, what a user loads agrees:

* every special id in the configs and the tokenizer is a row of the embedding;
* bos, pad and unk ids are the same in config.json, generation_config.json and the tokenizer;
* the tokenizer's eos is config.json's (first) eos and one of the generation config's eos ids;
* the pad row (when pad is not itself an end of sequence) is not a copy of an eos row, which a
  tied head would pick instead of eos;
* a plan with LM-head rows of its own is written with an untied head;
* the chat template names no special token of the source that the new vocabulary lacks.

Example:
    >>> from transplant import transplant
    >>> result = transplant(model_dir, new_tok_dir, "out", method="fvt")  # validated before it was published
    >>> validate_output(Path("out"), result.plan, result.special_ids, prefix=[], template=None)
    >>> config = json.loads(Path("out/config.json").read_text())
    >>> _ = Path("out/config.json").write_text(json.dumps(dict(config, bos_token_id=5)))
    >>> validate_output(Path("out"), result.plan, result.special_ids, prefix=[], template=None)
    Traceback (most recent call last):
    ...
    transplant.common.errors.TransplantError: refusing to finish: config.json bos_token_id is 5 but the tokenizer's bos is 1 (internal check; ...)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from transplant.common.config_dict import text_section
from transplant.common.errors import TransplantError
from transplant.core.plan import Plan
from transplant.io.specials import SpecialIds


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _section(cfg: dict) -> dict:
    return text_section(cfg)


def _same_row(plan: Plan, a: int, b: int) -> bool:
    if plan.kinds[a] != plan.kinds[b]:
        return False
    sa, ea, sb, eb = plan.indptr[a], plan.indptr[a + 1], plan.indptr[b], plan.indptr[b + 1]
    if plan.kinds[a] != 0:  # statistical rows: the same kind means the same row only for the mean
        return int(plan.kinds[a]) == 1
    return bool(np.array_equal(plan.indices[sa:ea], plan.indices[sb:eb])
                and np.array_equal(plan.weights[sa:ea], plan.weights[sb:eb]))


def validate_output(folder: Path, plan: Plan, ids: SpecialIds, prefix: list[int], template: str | None,
                    missing_markers: set[str] | None = None) -> None:
    """Raise TransplantError naming the first broken rule (see the module docstring)."""
    problems: list[str] = []
    config = _section(json.loads((folder / "config.json").read_text()))
    gen = json.loads((folder / "generation_config.json").read_text())
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    rows = plan.new_size

    def tok_id(role: str) -> int | None:
        value = tok_cfg.get(f"{role}_token")
        content = value.get("content") if isinstance(value, dict) else value
        return None if content is None else raw.token_to_id(content)

    for where, doc in (("config.json", config), ("generation_config.json", gen)):
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "decoder_start_token_id"):
            bad = [i for i in _ids(doc.get(key)) if not 0 <= i < rows]
            if bad:
                problems.append(f"{where} {key} {bad} is not a row of the {rows}-row embedding")
    for role in ("bos", "pad", "unk"):
        want = tok_id(role)
        for where, doc in (("config.json", config), ("generation_config.json", gen)):
            key = f"{role}_token_id"
            if key in doc and doc[key] != want and not (role == "unk" and doc[key] is None and want is None):
                problems.append(f"{where} {key} is {doc[key]} but the tokenizer's {role} is {want}")
    eos_tok = tok_id("eos")
    cfg_eos, gen_eos = _ids(config.get("eos_token_id")), _ids(gen.get("eos_token_id"))
    if eos_tok is not None:
        if cfg_eos and cfg_eos[0] != eos_tok:
            problems.append(f"config.json eos_token_id {cfg_eos} does not start with the tokenizer's eos {eos_tok}")
        if eos_tok not in gen_eos:
            problems.append(f"generation_config.json eos_token_id {gen_eos} lacks the tokenizer's eos {eos_tok}")
    if ids.eos and gen_eos != ids.eos:
        problems.append(f"generation_config.json eos_token_id {gen_eos} is not the decided {ids.eos}")
    if ids.pad is not None and ids.pad not in gen_eos:
        for e in gen_eos:
            if e != ids.pad and _same_row(plan.side("output"), ids.pad, e):
                problems.append(f"pad {ids.pad} has the same row as eos {e}; greedy decoding could pick it instead")
    full = json.loads((folder / "config.json").read_text())
    if plan.output is not None and (full.get("tie_word_embeddings") or config.get("tie_word_embeddings")):
        problems.append("the plan makes LM-head rows of their own but config.json ties the head to the input "
                        "embedding (transformers would drop them on load)")
    if template and missing_markers:
        named = sorted(m for m in missing_markers if m in template)
        if named:
            problems.append(f"the chat template names {', '.join(named)}, absent from the new vocabulary")
    if any(not 0 <= i < rows for i in prefix):
        problems.append(f"start tokens {prefix} are not rows of the embedding")
    if problems:
        raise TransplantError(f"refusing to finish: {problems[0]} (internal check; nothing was written — "
                              "please report this with both tokenizers)")
