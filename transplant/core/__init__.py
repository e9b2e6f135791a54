"""Layer 1, the model-free core: vocabularies, how old and new tokens align, and the plan.

No model is loaded here; everything works on tokenizers and arrays.

    vocab.py   canonical token forms (the bytes a token stands for) of every tokenizer family,
               special-token roles, `load_tokenizer`
    align.py   old against new vocabulary: exact overlap, special tokens by role, decompositions
               of new tokens into old ones
    plan/      the plan: how each new embedding row is made from the old matrix (row types,
               assembly of a method chain, applying it chunk by chunk, saving and loading)

Uses only `transplant.common` (see `transplant.common` for the layer rule).
"""
