from . import _WHY


class Hasher:
    def hash(self, value):
        raise RuntimeError(f"datasets.fingerprint.Hasher used: {_WHY}")
