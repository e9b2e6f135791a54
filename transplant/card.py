"""The model card (`README.md`) written next to every transplanted checkpoint.

Example:
    >>> card = build_card(info)  # doctest: +SKIP
    >>> card.save("out/README.md")  # doctest: +SKIP
"""

from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData

_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

`{{ base_model }}` moved onto a new tokenizer with
[tokentransplant](https://pypi.org/project/tokentransplant/): new input embeddings{{ head_note }}
were built from the old ones; every other weight is unchanged. Fine-tune briefly before serious use.

## Tokenizers

| | source | target |
|---|---|---|
| family | {{ old_family }} | {{ new_family }} |
| vocabulary | {{ old_vocab }} | {{ new_vocab }} |
| embedding rows | {{ old_rows }} | {{ new_rows }} |

Target tokenizer: `{{ new_tokenizer }}`.

## How each new token was initialized

Method chain: {{ chain }} (each token takes the first step that can make it).

| provenance | tokens | share |
|---|---:|---:|
{% for name, count, share in counts -%}
| {{ name }} | {{ count }} | {{ share }} |
{% endfor %}
Chat template: {{ chat_template }}
{% if notes %}
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
same tokenizer in seconds:

```bash
transplant apply --plan {{ plan_ref }} --model path/to/finetune --out path/to/finetune-new-tok
```
"""


def build_card(info: dict) -> ModelCard:
    """Render the card from the facts gathered during a transplant (see `api.transplant`)."""
    data = ModelCardData(
        base_model=info.get("base_model_id"),
        library_name="transformers",
        tags=["tokenizer-transplant", "tokentransplant", f"init-{info['method']}"],
        pipeline_tag="text-generation",
    )
    total = max(sum(info["counts"].values()), 1)
    counts = [(k, v, f"{100 * v / total:.1f}%") for k, v in sorted(info["counts"].items(), key=lambda kv: -kv[1])]
    return ModelCard.from_template(
        data, template_str=_TEMPLATE, title=info.get("title") or f"{info['base_model']} (transplanted tokenizer)",
        counts=counts, **{k: v for k, v in info.items() if k not in ("counts", "title")})
