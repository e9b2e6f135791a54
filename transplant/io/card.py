"""The model card (`README.md`) of every output: `transplant run`, `extend`, `heal` and `apply`
all build it with `build_card`, from the facts listed in `CardInfo`.

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

import json
import re
from pathlib import Path
from typing import TypedDict

from huggingface_hub import ModelCard, ModelCardData

from transplant.core.vocab import TokenizerSource
from transplant.io.gguf_header import file_type_name, gguf_metadata
from transplant.io.sources import HUB_IDS, PACKAGED, packaged_gguf

_WINDOWS_ABS = re.compile(r"^[A-Za-z]:[\\/]")
# An absolute path inside free text: after a start, space, backtick, quote or bracket.
_ABS_PATH = re.compile(r"(^|[\s`'\"(\[=])((?:/|~/|[A-Za-z]:[\\/])[^\s`'\"()\[\],]+)")
TOOL = "[tokentransplant](https://pypi.org/project/tokentransplant/)"
# The usage snippet's prompt, in the card's language when one is known.
PROMPTS = {"en": "Once upon a time", "de": "Es war einmal", "fr": "Il était une fois", "es": "Érase una vez",
           "it": "C'era una volta", "pt": "Era uma vez", "nl": "Er was eens", "code": "def fibonacci(n):"}


class CardInfo(TypedDict, total=False):
    """What a model card is built from; every key but `counts` may be missing.

    Saved with the plan (`transplant_plan.json`, meta "card"; see `stored_facts`), so `heal`
    rebuilds the same card with its own section.
    """

    # The source model.
    base_model: str  # the model argument as given (a local path shows as its folder name)
    base_model_id: str | None  # its hub id, for the YAML `base_model`
    source_note: str  # how its weights were read, e.g. "weights dequantized to float32 from the ... GGUF file"
    license: str
    language: list[str] | str
    # What was done.
    kind: str  # "transplant" (default) or "extension"
    method: str
    extension: dict  # kind "extension": {"added": n, "texts": "train.txt", "examples": [...]}
    heal: dict  # a healing run's summary (`heal_section`), with "teacher": the model as given
    # The target tokenizer.
    new_tokenizer: str  # as given: a path, a repo id, a model argument
    new_tokenizer_about: str  # what it is (`describe_tokenizer`)
    # How the rows were made, and what the output holds.
    counts: dict[str, int]
    old_family: str
    new_family: str
    old_vocab: int
    new_vocab: int
    old_rows: int
    new_rows: int
    chain: str
    auto: str
    options: str
    resources: str
    calibration: str
    chat_template: str
    special_ids: str
    encode_convention: str
    notes: list[str]
    head_note: str  # " and LM head" when the head has rows of its own
    forced_tokenizer: dict  # `ForcedClass.card()`: the tokenizer must be loaded generically
    plan_files: str
    plan_ref: str  # where this model is (a local path shows as `path/to/<name>`)
    # The evaluation (not saved with the plan: it scores this output only).
    eval_text: str
    eval_bytes: int
    eval_note: str  # which part of `eval_text` was scored, when not all of it
    eval_ratio: str  # the transplant's bits per byte over the original's
    evaluation: list[dict]
    title: str  # overrides the title made from the above


_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ intro }}

## How to use
{% if forced_tokenizer %}
### Loading the tokenizer

Load the tokenizer with `{{ loader }}`, not `AutoTokenizer`: {{ forced_tokenizer.cause }},
so `AutoTokenizer.from_pretrained` would encode text differently from the `tokenizer.json` this model's
embeddings were made for (written with `{{ forced_tokenizer.flag }}`).
{% endif %}
```python
from transformers import AutoModelForCausalLM, {{ loader }}

tokenizer = {{ loader }}.from_pretrained("{{ plan_ref }}")
model = AutoModelForCausalLM.from_pretrained("{{ plan_ref }}")
```

Then, e.g.:

```python
inputs = tokenizer({{ prompt }}, return_tensors="pt")
outputs = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=40)
print(tokenizer.decode(outputs[0], skip_special_tokens=True))
```

`{{ plan_ref }}` stands for this model's folder or hub repo id.
{% if forced_tokenizer %}
A target tokenizer trained with `transplant tokenizer train --like MODEL` pre-tokenizes and normalizes as
{{ forced_tokenizer.loaded }} does, and loads right with `AutoTokenizer`.
{% endif %}
## Tokenizers

| | source | target |
|---|---|---|
| family | {{ old_family }} | {{ new_family }} |
| vocabulary | {{ old_vocab }} | {{ new_vocab }} |
| embedding rows | {{ old_rows }} | {{ new_rows }} |

Target tokenizer: {{ target }}.
{% if extension %}
## Added tokens

{{ extension.added }} tokens were learned on {{ extension.texts }}: BPE merges over the source tokenizer's own
tokens, appended after its merges, so every old token keeps its id and its embedding row, and a text where
no new merge applies encodes exactly as before.{% if extension.examples %} The first ones: {{ extension.examples }}.{% endif %}
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

Bits per byte (lower is better) on {{ eval_bytes }} bytes of `{{ eval_text }}`{% if eval_note %} ({{ eval_note }}){% endif %}; same bytes for both tokenizers.{% if eval_ratio %}
The transplant's bits per byte are {{ eval_ratio }}× the original's.{% endif %}

| model | bits per byte | bytes per token |
|---|---:|---:|
{% for row in evaluation -%}
| {{ row.name }} | {{ row.bpb }} | {{ row.bpt }} |
{% endfor %}{% endif %}{% if heal_text %}
{{ heal_text }}{% endif %}
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


def build_card(info: CardInfo | dict) -> ModelCard:
    """The model card of a run, an extension or a healed model, from the facts in `info` (`CardInfo`).

    Every card has the same parts: YAML metadata (`base_model` when a hub id is known, `license`,
    `language`, `library_name`, tags), a title naming the source model and what was done, a
    paragraph saying it (with the source's GGUF dequantization when there was one), a "How to
    use" snippet, the tokenizers, the added tokens (an extension), how the rows were made, the
    evaluation, the healing (a healed model) and how to re-apply the plan. No local absolute path
    is written into the card.
    """
    info = dict(info)
    kind, ext, heal = info.get("kind") or "transplant", info.get("extension"), info.get("heal")
    base_id = info.get("base_model_id")
    language = _languages(info.get("language"))
    tags = ["tokenizer-transplant", "tokentransplant", f"init-{info.get('method', '?')}"]
    tags += ["vocabulary-extension"] * (kind == "extension") + ["healed"] * bool(heal)
    data = ModelCardData(
        base_model=base_id if base_id and not _is_local_path(str(base_id)) else None,
        license=info.get("license") or None,
        language=language,
        library_name="transformers",
        tags=tags,
        pipeline_tag="text-generation",
    )
    base = display_name(info.get("base_model")) or base_id or "the source model"
    plan_ref = info.get("plan_ref")
    if not plan_ref or _is_local_path(str(plan_ref)):
        plan_ref = f"path/to/{display_name(plan_ref) or 'this-model'}"
    if info.get("eval_text"):
        info["eval_text"] = ", ".join(display_name(t) or t for t in str(info["eval_text"]).split(", "))
    forced = info.get("forced_tokenizer")
    info.update(base_model=base, plan_ref=plan_ref, intro=_intro(info, base, kind, ext, heal),
                target=_target(info, kind, ext), loader=forced["loader"] if forced else "AutoTokenizer",
                prompt=json.dumps(PROMPTS.get((language or ["en"])[0], PROMPTS["en"]), ensure_ascii=False),
                heal_text=heal_section(heal) if heal else "")
    info = _clean(info)
    counts = info.get("counts") or {}
    total = max(sum(counts.values()), 1)
    counts = [(k, v, f"{100 * v / total:.1f}%") for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
    done = "extended tokenizer, +{:,} tokens".format(ext["added"]) if ext else "transplanted tokenizer"
    title = info.get("title") or f"{base} ({done}{', healed' if heal else ''})"
    skip = ("counts", "title", "license", "language", "base_model_id", "heal", "extension")
    return ModelCard.from_template(
        data, template_str=_TEMPLATE, title=title, counts=counts,
        extension=_extension(ext) if ext else None, **{k: v for k, v in info.items() if k not in skip})


def _intro(info: dict, base: str, kind: str, ext: dict | None, heal: dict | None) -> str:
    """The paragraph under the title: which model, read how, what was done to it."""
    source = f"`{base}`" + (f" ({info['source_note']})" if info.get("source_note") else "")
    head = info.get("head_note") or ""
    if kind == "extension" and ext:
        text = (f"{source} with its tokenizer extended by {ext['added']:,} new tokens with {TOOL} (`transplant "
                f"extend`): every old token keeps its id and its embedding rows bit for bit, the new tokens' input "
                f"embeddings{head} were built from the old ones, and every other weight is unchanged.")
    else:
        text = (f"{source} moved onto a new tokenizer with {TOOL}: new input embeddings{head} were built from the "
                "old ones; every other weight is unchanged.")
    if heal:
        return text + " The rows it made were then trained with `transplant heal` (see *Healing*)."
    return text + " Fine-tune briefly before serious use."


def _target(info: dict, kind: str, ext: dict | None) -> str:
    """The target tokenizer named by its source, then what it is."""
    about = info.get("new_tokenizer_about")
    if kind == "extension" and ext:
        return f"the source model's own, with {ext['added']:,} tokens appended" + (f" ({about})" if about else "")
    name = display_name(info.get("new_tokenizer"))
    return (f"`{name}`" if name else "the new tokenizer") + (f" ({about})" if about else "")


def _extension(ext: dict) -> dict:
    """An extension's facts as the card shows them: text names, and the first new tokens quoted."""
    texts = ", ".join(f"`{display_name(t) or t}`" for t in ext.get("texts") or []) or "the training text"
    examples = ", ".join(f"`{json.dumps(t, ensure_ascii=False)}`" for t in (ext.get("examples") or [])[:12])
    return {"added": f"{ext['added']:,}", "texts": texts, "examples": examples}


def describe_tokenizer(src: TokenizerSource) -> str:
    """What a tokenizer is, for the card: algorithm, byte handling, size, and the model type of the
    model it came from (when it was given as a model).

    Example:
        >>> from transplant.core.vocab import load_tokenizer
        >>> describe_tokenizer(load_tokenizer(model_dir)), describe_tokenizer(load_tokenizer(tok_json))
        ('byte-level BPE, 500 tokens, from a llama model', 'BPE with byte fallback, 759 tokens')
    """
    algorithm = type(src.tokenizer.model).__name__  # BPE, Unigram, WordPiece, WordLevel
    if src.vocabulary().family == "byte_level":
        algorithm = f"byte-level {algorithm}"
    elif src.tokenizer.token_to_id("<0x00>") is not None:
        algorithm += " with byte fallback"
    parts = [algorithm, f"{len(src.vocabulary()):,} tokens"]
    config = src.folder / "config.json" if src.folder is not None else None
    if config is not None and config.is_file():
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            model_type = None
        if isinstance(model_type, str) and model_type:
            parts.append(f"from a {model_type} model")
    return ", ".join(parts)


def stored_facts(info: CardInfo | dict) -> dict:
    """The facts of a card worth keeping with the plan: all but this output's own evaluation and place."""
    drop = ("evaluation", "eval_text", "eval_bytes", "eval_note", "eval_ratio", "plan_ref", "heal", "title")
    return {k: v for k, v in info.items() if k not in drop}


def heal_section(s: dict) -> str:
    """The card's "Healing" section, from a healing run's summary (`teacher`: the model as given).

    Example:
        >>> s = dict(rows_trained=900, rows_made=1200, step=150, seconds=300.0, processes=1, best_step=125,
        ...          teacher_bpb=1.1, start_bpb=1.4, best_bpb=1.25)
        >>> print(heal_section(s).splitlines()[-3])
        | after healing | 1.2500 |
    """
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    teacher = f" (`{display_name(s['teacher'])}`)" if s.get("teacher") else ""
    return (
        "## Healing\n\n"
        f"After the transplant, {s['rows_trained']:,} of the {s['rows_made']:,} rows it made (those the healing "
        f"text uses) were trained for {s['step']:,} steps ({s['seconds'] / 60:.1f} min of training, {s['processes']} "
        f"process(es)) with `transplant heal`, distilling the original model{teacher}: its likelihood of the "
        "same text (the rest of the model frozen). The best held-out state was kept "
        f"(step {s['best_step']}).\n\n"
        "| held-out text | bits per byte |\n|---|---|\n"
        f"| original model | {fmt(s['teacher_bpb'])} |\n"
        f"| transplant, before healing | {fmt(s['start_bpb'])} |\n"
        f"| after healing | {fmt(s['best_bpb'])} |\n\n"
        "The plan file describes the rows before healing: re-applying it (`transplant apply`) gives the "
        "unhealed rows.\n")


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
        qtype = file_type_name(meta.get("general.file_type"))
        out["source_note"] = f"weights dequantized to float32 from the {qtype + ' ' if qtype else ''}GGUF file `{gguf.name}`"
        repo = meta.get("general.source.huggingface.repository") or ""
        url = str(meta.get("general.source.url") or meta.get("general.source.repo_url") or "")
        if not repo and url.startswith("https://huggingface.co/"):
            repo = url[len("https://huggingface.co/"):].strip("/")
        if isinstance(repo, str) and repo.count("/") == 1:
            out["base_model_id"] = repo
    if str(spec) in HUB_IDS:  # a packaged model: its hub id is known exactly
        out["base_model_id"] = HUB_IDS[str(spec)]
    return out


def _gguf_path(spec: str | Path) -> Path | None:
    text = str(spec)
    if text in PACKAGED:
        try:
            return packaged_gguf(text)
        except Exception:
            return None
    path = Path(text)
    return path if path.suffix == ".gguf" and path.is_file() else None
