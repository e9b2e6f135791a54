"""Layer 3, measuring language models: bits per byte on held-out text, comparable across tokenizers.

    evaluate.py  bits per byte (and bytes per token) of a model on texts
    lm.py        what `transformers` does around a causal LM's body: the input-embedding scale,
                 what happens to the logits after the head, the start token a text is read after

Uses the layers below (common, core, io; see `transplant.common` for the layer rule).
"""
