"""Layer 3, measuring language models: bits per byte on held-out text, comparable across tokenizers.

    evaluate.py  bits per byte (and bytes per token) of a model on texts
    breakdown.py where the loss is: per kind of token (the plan's provenance) its share of the
                 tokens, the loss and the probability mass; excess loss against another model
    breakdown_plot.py  those shares as bars (matplotlib, optional)
    lm.py        what `transformers` does around a causal LM's body: the input-embedding scale,
                 what happens to the logits after the head, the start token a text is read after

Uses the layers below (common, core, io; see `transplant.common` for the layer rule).
"""
