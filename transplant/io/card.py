"""The model card (`README.md`) written next to every transplanted checkpoint.

Example:
    >>> card = build_card({"base_model": "/home/me/models/tiny-model", "method": "fvt",
    ...                    "new_tokenizer": "/home/me/new-tok/tokenizer.json", "license": "apache-2.0",
    ...                    "counts": {"fvt": 700, "exact": 56, "special": 3}})
    >>> card.data.tags
    ['tokenizer-transplant', 'tokentransplant', 'init-fvt']
    >>> print("\\n".join(line for line in str(card).splitlines() if line.startswith(("# ", "Target", "| fvt"))))
    # tiny-model (transplanted tokenizer)
    Target tokenizer: `new-tok/tokenizer.json`.
    | fvt | 700 | 92.2% |
    >>> "/home/me" in str(card)  # no local absolute path in a card that may be published
    False
    >>> card.save("README.md")
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

_WINDOWS_ABS = re.compile(r"^[A-Za-z]:[\\/]")
# An absolute path inside free text: after a start, space, backtick, quote or bracket.
_ABS_PATH = re.compile(r"(^|[\s`'\"(\[=])((?:/|~/|[A-Za-z]:[\\/])[^\s`'\"()\[\],]+)")

_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

`{{ base_model }}`{% if source_note %} ({{ source_note }}){% endif %} moved onto a new tokenizer with
[tokentransplant](https://pypi.org/project/tokentransplant/): new input embeddings{{ head_note }}
were built from the old ones; every other weight is unchanged. Fine-tune briefly before serious use.

## Tokenizers

| | source | target |
|---|---|---|
| family | {{ old_family }} | {{ new_family }} |
| vocabulary | {{ old_vocab }} | {{ new_vocab }} |
| embedding rows | {{ old_rows }} | {{ new_rows }} |

Target tokenizer: `{{ new_tokenizer }}`.
{% if forced_tokenizer %}
## Loading the tokenizer

Load the tokenizer with `{{ forced_tokenizer.loader }}`, not `AutoTokenizer`: {{ forced_tokenizer.cause }},
so `AutoTokenizer.from_pretrained` would encode text differently from the `tokenizer.json` this model's
embeddings were made for (written with `{{ forced_tokenizer.flag }}`).

```python
from transformers import AutoModelForCausalLM, {{ forced_tokenizer.loader }}

tokenizer = {{ forced_tokenizer.loader }}.from_pretrained("{{ plan_ref }}")
model = AutoModelForCausalLM.from_pretrained("{{ plan_ref }}")
```

A target tokenizer trained with `transplant tokenizer train --like MODEL` pre-tokenizes and normalizes as
{{ forced_tokenizer.loaded }} does, and loads right with `AutoTokenizer`.
{% endif %}
## How each new token was initialized

Method chain: {{ chain }} (each token takes the first step that can make it).
{% if auto %}
Chosen by `--method auto`: {{ auto }}.
{% endif %}{% if options %}
Options: {{ options }}.
{% endif %}{% if resources %}
Resources: {{ resources }}.
{% endif %}{% if calibration %}
Output calibration: {{ calibration }}.
{% endif %}
| provenance | tokens | share |
|---|---:|---:|
{% for name, count, share in counts -%}
| {{ name }} | {{ count }} | {{ share }} |
{% endfor %}
Chat template: {{ chat_template }}
{% if special_ids %}
Special tokens: {{ special_ids }} (generation stops at every eos id listed).
{% endif %}{% if encode_convention %}
What `tokenizer(text)` adds: {{ encode_convention }}.
{% endif %}{% if notes %}
Notes:
{% for n in notes -%}
- {{ n }}
{% endfor %}{% endif %}
{% if evaluation %}
## Evaluation

Bits per byte (lower is better) on {{ eval_bytes }} bytes of `{{ eval_text }}`; same bytes for both tokenizers.

| model | bits per byte | bytes per token |
|---|---:|---:|
{% for row in evaluation -%}
| {{ row.name }} | {{ row.bpb }} | {{ row.bpt }} |
{% endfor %}{% endif %}
## Re-apply to a fine-tune of the same base model

The plan is saved here as {{ plan_files }}. To move any fine-tune of `{{ base_model }}` onto the
same tokenizer in seconds (`{{ plan_ref }}` being this model's folder):

```bash
transplant apply --plan {{ plan_ref }} --model path/to/finetune --out path/to/finetune-new-tok
```
"""


def _is_local_path(text: str) -> bool:
    """A filesystem path rather than a hub id or a packaged model name."""
    if not text:
        return False
    if text.startswith(("/", "~", "./", "../", "\\")) or _WINDOWS_ABS.match(text):
        return True
    return Path(text).exists()


def display_name(value: str | Path | None) -> str | None:
    """What a card may show for a model/tokenizer argument: a hub id or packaged name as given,
    a local path as its last component (no local absolute paths in a published card).

    Example:
        >>> display_name("/home/me/models/tiny-model"), display_name("smollm2-135m-instruct")
        ('tiny-model', 'smollm2-135m-instruct')
    """
    if value is None:
        return None
    text = str(value)
    if not _is_local_path(text):
        return text
    path = Path(text.rstrip("/\\"))
    if path.name == "tokenizer.json" and path.parent.name:  # say whose tokenizer
        return f"{path.parent.name}/{path.name}"
    return path.name or text


def _scrub(text: str) -> str:
    """Replace every absolute local path inside free text by its last component."""
    return _ABS_PATH.sub(lambda m: m.group(1) + (Path(m.group(2).rstrip("/\\")).name or m.group(2)), text)


def _clean(value):
    if isinstance(value, str):
        return _scrub(value)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _languages(value) -> list[str] | None:
    if not value:
        return None
    items = [value] if isinstance(value, str) else list(value)
    out = [str(v).strip() for v in items if str(v).strip()]
    return list(dict.fromkeys(out)) or None


def build_card(info: dict) -> ModelCard:
    """Render the card from the facts gathered during a transplant (see `api.transplant`).

    Keys read (besides the table facts): `base_model` (the argument as given; a local path shows as
    its folder name), `base_model_id` (hub id for the YAML `base_model`, optional), `source_note`
    (e.g. "GGUF Q4_1, dequantized to float32"), `license`, `language` (str or list), `plan_ref`
    (where the re-apply command finds this model: a local path shows as `path/to/<name>`),
    `title`. No local absolute path is written into the card.
    """
    info = dict(info)
    base_id = info.get("base_model_id")
    data = ModelCardData(
        base_model=base_id if base_id and not _is_local_path(str(base_id)) else None,
        license=info.get("license") or None,
        language=_languages(info.get("language")),
        library_name="transformers",
        tags=["tokenizer-transplant", "tokentransplant", f"init-{info['method']}"],
        pipeline_tag="text-generation",
    )
    base = display_name(info.get("base_model")) or base_id or "the source model"
    plan_ref = info.get("plan_ref")
    if not plan_ref or _is_local_path(str(plan_ref)):
        plan_ref = f"path/to/{display_name(plan_ref) or 'this-model'}"
    info.update(base_model=base, plan_ref=plan_ref, source_note=info.get("source_note") or "")
    if info.get("new_tokenizer") and _is_local_path(str(info["new_tokenizer"])):
        info["new_tokenizer"] = display_name(info["new_tokenizer"])
    if info.get("eval_text"):
        info["eval_text"] = ", ".join(display_name(t) or t for t in str(info["eval_text"]).split(", "))
    info = _clean(info)
    total = max(sum(info["counts"].values()), 1)
    counts = [(k, v, f"{100 * v / total:.1f}%") for k, v in sorted(info["counts"].items(), key=lambda kv: -kv[1])]
    skip = ("counts", "title", "license", "language", "base_model_id")
    return ModelCard.from_template(
        data, template_str=_TEMPLATE, title=info.get("title") or f"{base} (transplanted tokenizer)",
        counts=counts, **{k: v for k, v in info.items() if k not in skip})


# -- facts about the source model, for the card ----------------------------------------------------

def source_card_metadata(folder: str | Path, spec: str | Path | None = None) -> dict:
    """License, language(s), quantization note and hub id known about the source model.

    Read from the source folder's `README.md` front matter (`license`, `language`) and, when the
    model came from a GGUF file (`spec` a `.gguf` path or a packaged model name), from the GGUF's
    own metadata (`general.license`, `general.languages`, `general.file_type`,
    `general.source.huggingface.repository`). Only known keys are returned:
    `license`, `language` (list), `source_note`, `base_model_id`.

    Example:
        >>> _ = open(f"{model_dir}/README.md", "w").write("---\\nlicense: apache-2.0\\nlanguage: en\\n---\\n# Tiny\\n")
        >>> source_card_metadata(model_dir)
        {'license': 'apache-2.0', 'language': ['en']}
        >>> source_card_metadata("smollm2-135m-instruct", "smollm2-135m-instruct")  # doctest: +SKIP
        {'source_note': 'weights dequantized to float32 from the ...GGUF file `...`', ...}
    """
    out: dict = {}
    readme = Path(folder) / "README.md"
    if readme.is_file():
        try:
            data = ModelCard.load(readme).data.to_dict()
        except Exception:  # a card without (or with broken) front matter tells us nothing
            data = {}
        if isinstance(data.get("license"), str) and data["license"]:
            out["license"] = data["license"]
        if _languages(data.get("language")):
            out["language"] = _languages(data.get("language"))
    gguf = _gguf_path(spec) if spec is not None else None
    if gguf is not None:
        meta = gguf_metadata(gguf)
        if isinstance(meta.get("general.license"), str) and "license" not in out:
            out["license"] = meta["general.license"]
        langs = _languages(meta.get("general.languages"))
        if langs and "language" not in out:
            out["language"] = langs
        qtype = _file_type_name(meta.get("general.file_type"))
        out["source_note"] = f"weights dequantized to float32 from the {qtype + ' ' if qtype else ''}GGUF file `{gguf.name}`"
        repo = meta.get("general.source.huggingface.repository") or ""
        url = str(meta.get("general.source.url") or meta.get("general.source.repo_url") or "")
        if not repo and url.startswith("https://huggingface.co/"):
            repo = url[len("https://huggingface.co/"):].strip("/")
        if isinstance(repo, str) and repo.count("/") == 1:
            out["base_model_id"] = repo
    return out


def _gguf_path(spec: str | Path) -> Path | None:
    from transplant.io.sources import PACKAGED, packaged_gguf

    text = str(spec)
    if text in PACKAGED:
        try:
            return packaged_gguf(text)
        except Exception:
            return None
    path = Path(text)
    return path if path.suffix == ".gguf" and path.is_file() else None


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path: str | Path, prefix: str = "general.") -> dict:
    """The key/value metadata of a GGUF file whose keys start with `prefix` (header only; fast)."""
    out: dict = {}
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                return out
            version, = struct.unpack("<I", fh.read(4))
            if version < 2:
                return out
            _tensors, n_kv = struct.unpack("<QQ", fh.read(16))

            def string() -> str:
                n, = struct.unpack("<Q", fh.read(8))
                return fh.read(n).decode("utf-8", "replace")

            def value(kind: int):
                if kind == 8:
                    return string()
                if kind == 9:
                    sub, n = struct.unpack("<IQ", fh.read(12))
                    return [value(sub) for _ in range(n)]
                fmt = _GGUF_SCALARS[kind]
                return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]

            for _ in range(n_kv):
                key = string()
                kind, = struct.unpack("<I", fh.read(4))
                if not key.startswith(prefix) and kind == 9:
                    # Skip big arrays (the vocabulary) without building them when possible.
                    sub, n = struct.unpack("<IQ", fh.read(12))
                    if sub in _GGUF_SCALARS:
                        fh.seek(n * struct.calcsize(_GGUF_SCALARS[sub]), 1)
                    else:
                        for _ in range(n):
                            value(sub)
                    continue
                v = value(kind)
                if key.startswith(prefix):
                    out[key] = v
    except (OSError, KeyError, struct.error, UnicodeDecodeError):
        pass
    return out


def _file_type_name(file_type) -> str | None:
    if not isinstance(file_type, int):
        return None
    try:
        from gguf import LlamaFileType

        return LlamaFileType(file_type).name.replace("MOSTLY_", "")
    except Exception:
        return {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 15: "Q4_K_M",
                17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}.get(file_type, f"GGUF file type {file_type}")
