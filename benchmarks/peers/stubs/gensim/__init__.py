"""Stub of `gensim` for the peer benchmarks (see ../README.md): wechsel only checks
`isinstance(model, Word2Vec)`; a fastText model never is one."""
