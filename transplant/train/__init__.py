"""Layer 5, training after or around a transplant.

    trainloop.py        what every training loop shares (`transplant heal`, `hypernet train`):
                        per-step seeds, checkpoints renamed into place, a log trimmed on resume
    heal*.py            healing: a short training of a transplant's new rows
    tokenizer_train.py  training the target tokenizer (BPE or Unigram, supertokens, `like=MODEL`)

Uses every layer below (see `transplant.common` for the layer rule); the front ends
(`transplant.api`, `transplant.extend`, `cli/`, ...) sit above it.
"""
