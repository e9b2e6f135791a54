from . import load_dataset  # noqa: F401  (deepfocus imports it from here)
