class Word2Vec:
    """Placeholder: no object is ever an instance of it."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("gensim is not installed in the peers' virtualenv (benchmarks/peers/stubs)")
