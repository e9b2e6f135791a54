"""Model types whose tokenizer class transformers forces, whatever the folder's files say.

transformers 5 loads the tokenizer of some model types (`qwen2`, `qwen3_5`, ...: the
`MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS` list of `transformers.models.auto.tokenization_auto`
whose registered class is a specific one) with the class it registers for that type, and such a
class (e.g. `Qwen2Tokenizer`) rebuilds its BPE from the vocabulary with its own pre-tokenizer and
normalizer: a `tokenizer.json` of another family then loads as a different tokenizer.

The rule here is the mechanism, not a list: `AutoTokenizer.from_pretrained` is asked, on a tiny
folder holding the model's `model_type` and a generic `tokenizer_class`, which class it gives;
any class but the generic one is forced (cached per model type: ~20 ms once).

The ways through: write anyway and load with the generic class (`SNIPPET_CLASS`, named in the
model card), or train a target tokenizer with the forced class's own pipeline
(`transplant tokenizer train --like MODEL` uses `forced_pipeline`).

Example:
    >>> forced_class({"model_type": "qwen2"}).loaded
    'Qwen2Tokenizer'
    >>> forced_class({"model_type": "llama"}) is None  # AutoTokenizer reads tokenizer.json as written
    True
    >>> forced_pipeline({"model_type": "qwen2"}).normalizer  # what Qwen2Tokenizer rebuilds with
    NFC()
"""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, models

# Classes that read tokenizer.json as it is written.
GENERIC_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast", "PythonBackend"})
# What the model card's loading snippet (and the check of an output written anyway) uses: the
# generic class under the name both transformers 4 and 5 export.
SNIPPET_CLASS = "PreTrainedTokenizerFast"
FLAG = "--allow-forced-tokenizer-class"
KEYWORD = "allow_forced_tokenizer_class"


@dataclass(frozen=True)
class ForcedClass:
    """transformers gives `loaded` for every `model_type` folder, not the generic class written."""

    model_type: str
    loaded: str

    def cause(self) -> str:
        """Why the written tokenizer does not reload as written (one clause, no fix)."""
        return (f"transformers loads the tokenizer of every `{self.model_type}` model as {self.loaded} whatever "
                f"tokenizer_config.json says, and {self.loaded} rebuilds the tokenizer with its own pre-tokenizer "
                "and normalizer instead of reading tokenizer.json")

    def refusal(self, problem: str) -> str:
        """The one-line refusal: cause, what differs, the ways through."""
        like = ("train the target tokenizer with `transplant tokenizer train --like MODEL`, which pre-tokenizes "
                f"and normalizes as {self.loaded} does" if self.like_possible()
                else f"`transplant tokenizer train --like` cannot make a tokenizer {self.loaded} keeps as written")
        return (f"the new tokenizer would not load as written: {self.cause()} ({problem}); nothing was written "
                f"(pass {FLAG} / {KEYWORD}=True to write it anyway, with a loading snippet in the model card, "
                f"or {like})")

    def note(self) -> str:
        """The card note of an output written anyway."""
        return (f"written with {FLAG}: AutoTokenizer loads this tokenizer as {self.loaded}, which encodes "
                f"differently from tokenizer.json; load it with {SNIPPET_CLASS}.from_pretrained (model card)")

    def card(self) -> dict:
        """What the model card's loading section shows."""
        return {"cause": self.cause(), "loader": SNIPPET_CLASS, "model_type": self.model_type,
                "loaded": self.loaded, "flag": FLAG}

    def like_possible(self) -> bool:
        """Whether a trained tokenizer can carry this class's pipeline (a byte-level BPE without fallback)."""
        backend = forced_pipeline({"model_type": self.model_type})
        return backend is not None and supports_like(backend)


def supports_like(backend: Tokenizer) -> bool:
    """A BPE without byte fallback or unknown token over bytes: what `tokenizer train` can learn.

    Example:
        >>> supports_like(forced_pipeline({"model_type": "qwen2"}))  # Qwen2Tokenizer: a byte-level BPE
        True
    """
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    return (model.get("type") == "BPE" and not model.get("byte_fallback") and model.get("unk_token") is None
            and "ByteLevel" in json.dumps(spec.get("pre_tokenizer")))


def _identity(config: dict) -> tuple[str, str | None] | None:
    """(model_type, model_name): what AutoTokenizer reads from config.json to choose a class."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        return None
    name = config.get("model_name")
    return model_type, name if isinstance(name, str) else None


@functools.lru_cache(maxsize=None)
def _probe(model_type: str, model_name: str | None):
    """The tokenizer AutoTokenizer gives for a tiny folder of `model_type` written as generic, or None."""
    from transformers import AutoTokenizer

    tiny = Tokenizer(models.BPE(vocab={"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3}, merges=[("a", "b")]))
    config = {"model_type": model_type, **({"model_name": model_name} if model_name else {})}
    with tempfile.TemporaryDirectory(prefix="tt-class-probe-") as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend"}))
        tiny.save(str(folder / "tokenizer.json"))
        try:
            return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except Exception:  # a type this transformers cannot load at all: nothing to say about its class
            return None


def forced_class(config: dict) -> ForcedClass | None:
    """The class AutoTokenizer forces on a folder with this config.json, when not the generic one.

    Example:
        >>> forced_class({"model_type": "qwen2"})
        ForcedClass(model_type='qwen2', loaded='Qwen2Tokenizer')
    """
    identity = _identity(config)
    tok = _probe(*identity) if identity else None
    if tok is None or type(tok).__name__ in GENERIC_CLASSES:
        return None
    return ForcedClass(identity[0], type(tok).__name__)


def forced_pipeline(config: dict) -> Tokenizer | None:
    """The forced class's own backend (normalizer, pre-tokenizer, decoder, model options), or None.

    Example:
        >>> forced_pipeline({"model_type": "qwen2"}).pre_tokenizer.__class__.__name__
        'Sequence'
    """
    if forced_class(config) is None:
        return None
    return Tokenizer.from_str(_probe(*_identity(config)).backend_tokenizer.to_str())


def model_config(folder: Path | None) -> dict:
    """A folder's config.json as a dict ({} when there is none or it does not parse).

    Example:
        >>> model_config(Path(model_dir))["model_type"], model_config(Path(new_tok_dir))
        ('llama', {})
    """
    path = None if folder is None else Path(folder) / "config.json"
    if path is None or not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def load_snippet_tokenizer(folder: Path):
    """The tokenizer the model card's snippet loads: `PreTrainedTokenizerFast.from_pretrained(folder)`.

    Example:
        >>> load_snippet_tokenizer(Path(new_tok_dir))("In the beginning", add_special_tokens=False).input_ids[:2]
        [...]
    """
    import transformers

    return getattr(transformers, SNIPPET_CLASS).from_pretrained(str(folder))


__all__ = ["ForcedClass", "forced_class", "forced_pipeline", "supports_like", "model_config",
           "load_snippet_tokenizer", "GENERIC_CLASSES", "SNIPPET_CLASS", "FLAG", "KEYWORD"]
