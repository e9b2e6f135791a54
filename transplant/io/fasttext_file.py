"""Check a fastText model file (`.bin`, or a quantized `.ftz`) before the `fasttext` library reads it.

The library trusts its input: a negative `bucket` in the header makes it index far outside its
matrix (the process dies with SIGSEGV), a zero one divides by zero (SIGFPE), and a truncated file
is read silently, the missing floats left as whatever the allocation held. So the file is walked
here first, field by field as fastText's `FastText::loadModel` reads it, and every count and size
is checked against the others and against the file's length:

    int32 magic (793712314), int32 version (11 or 12)
    args:  int32 dim, ws, epoch, minCount, neg, wordNgrams, loss, model, bucket, minn, maxn,
           lrUpdateRate; float64 t
    dictionary: int32 size, nwords, nlabels; int64 ntokens, pruneidx_size;
           size x (NUL-terminated word, int64 count, int8 type); pruneidx_size x (int32, int32)
    bool quantized input; input matrix; bool quantized output; output matrix
    dense matrix: int64 m, n; m * n float32
    quantized matrix: bool qnorm; int64 m, n; int32 codesize; codesize bytes; product quantizer;
           with qnorm: m bytes and a second product quantizer
    product quantizer: int32 dim, nsubq, dsub, lastdsub; dim * 256 float32

Reading walks the dictionary without loading the matrices (the file is memory-mapped): about a
second for a 2M-word vocabulary.

Example:
    >>> check_fasttext_file("en.bin")  # doctest: +SKIP
    >>> check_fasttext_file("en-truncated.bin")  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    transplant.common.errors.TransplantError: fastText vectors en-truncated.bin are truncated: the input matrix ends at byte 4,812,356 but the file has 4,000,000 bytes (copy or train them again)
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path

from transplant.common.errors import TransplantError

MAGIC = 793712314  # fastText's FASTTEXT_FILEFORMAT_MAGIC_INT32
VERSIONS = (11, 12)  # 12: fastText 0.9; 11: older files, still read by it
_KSUB = 256  # centroids per sub-quantizer (fastText's ProductQuantizer: 8 bits)
_LOSSES = {1: "hs", 2: "ns", 3: "softmax", 4: "ova"}
_MODELS = {1: "cbow", 2: "skipgram", 3: "supervised"}
_ARGS = struct.Struct("<12id")
_ARG_NAMES = ("dim", "ws", "epoch", "minCount", "neg", "wordNgrams", "loss", "model", "bucket", "minn", "maxn",
              "lrUpdateRate")
_DICT = struct.Struct("<iiiqq")
_ENTRY = struct.Struct("<qb")
_PAIR = struct.Struct("<ii")


class _Damaged(Exception):
    pass


class _Short(Exception):
    def __init__(self, what: str, end: int) -> None:
        super().__init__(what)
        self.what, self.end = what, end


class _Reader:
    def __init__(self, data, size: int) -> None:
        self.data, self.size, self.pos = data, size, 0

    def skip(self, n: int, what: str) -> None:
        if n < 0:
            raise _Damaged(f"{what} has a negative size ({n})")
        if self.pos + n > self.size:
            raise _Short(what, self.pos + n)
        self.pos += n

    def take(self, fmt: struct.Struct, what: str) -> tuple:
        start = self.pos
        self.skip(fmt.size, what)
        return fmt.unpack_from(self.data, start)

    def flag(self, what: str) -> bool:
        (value,) = self.take(struct.Struct("<B"), what)
        if value not in (0, 1):
            raise _Damaged(f"{what} is {value}, not a boolean")
        return bool(value)


def _pq(r: _Reader, what: str) -> int:
    """Skip a product quantizer; returns its sub-quantizer count."""
    dim, nsubq, dsub, lastdsub = r.take(struct.Struct("<iiii"), what)
    if dim < 1 or dsub < 1 or nsubq != -(-dim // dsub) or lastdsub != dim - (nsubq - 1) * dsub:
        raise _Damaged(f"{what} has inconsistent sizes (dim {dim}, nsubq {nsubq}, dsub {dsub}, lastdsub {lastdsub})")
    r.skip(dim * _KSUB * 4, what)
    return nsubq


def _matrix(r: _Reader, quantized: bool, what: str, dim: int) -> int:
    """Skip a dense or quantized matrix of `dim` columns; returns its row count."""
    if not quantized:
        m, n = r.take(struct.Struct("<qq"), f"the {what}'s shape")
        if m < 0 or n != dim:
            raise _Damaged(f"the {what} is {m} x {n}, but the vectors have {dim} dimensions")
        r.skip(m * n * 4, f"the {what}")
        return m
    qnorm = r.flag(f"the {what}'s norm flag")
    m, n, codesize = r.take(struct.Struct("<qqi"), f"the {what}'s shape")
    if m < 0 or n != dim:
        raise _Damaged(f"the quantized {what} is {m} x {n}, but the vectors have {dim} dimensions")
    r.skip(codesize, f"the {what}'s codes")
    nsubq = _pq(r, f"the {what}'s quantizer")
    if codesize != m * nsubq:
        raise _Damaged(f"the quantized {what} has {codesize:,} codes for {m:,} rows of {nsubq} sub-quantizers")
    if qnorm:
        r.skip(m, f"the {what}'s norm codes")
        _pq(r, f"the {what}'s norm quantizer")
    return m


def _walk(r: _Reader) -> None:
    magic, version = r.take(struct.Struct("<ii"), "the header")
    if magic != MAGIC:
        raise _Damaged("no fastText header (not a fastText model file)")
    if version not in VERSIONS:
        raise _Damaged(f"fastText format version {version} (fastText reads {' and '.join(map(str, VERSIONS))})")
    *ints, t = r.take(_ARGS, "the settings")
    args = dict(zip(_ARG_NAMES, ints))
    if args["dim"] < 1:
        raise _Damaged(f"dim is {args['dim']} (must be at least 1)")
    if args["bucket"] < 0:
        raise _Damaged(f"bucket is {args['bucket']} (must be at least 0)")
    if args["loss"] not in _LOSSES or args["model"] not in _MODELS:
        raise _Damaged(f"unknown loss {args['loss']} or model {args['model']} in the settings")
    for name in ("ws", "epoch", "minCount", "neg", "wordNgrams", "minn", "maxn", "lrUpdateRate"):
        if args[name] < 0:
            raise _Damaged(f"{name} is {args[name]} (must be at least 0)")
    if not math.isfinite(t) or t < 0:
        raise _Damaged(f"t is {t} (must be a finite number at least 0)")
    maxn = 0 if version == 11 and args["model"] == 3 else args["maxn"]  # as fastText reads old supervised models
    hashed = (maxn >= 1 and maxn >= args["minn"]) or args["wordNgrams"] > 1
    if hashed and args["bucket"] == 0:
        raise _Damaged(f"bucket is 0 but the model hashes n-grams (minn {args['minn']}, maxn {maxn}, "
                       f"wordNgrams {args['wordNgrams']})")

    size, nwords, nlabels, ntokens, prune = r.take(_DICT, "the dictionary's counts")
    if nwords < 0 or nlabels < 0 or ntokens < 0 or prune < -1 or size != nwords + nlabels:
        raise _Damaged(f"the dictionary's counts do not add up (size {size}, nwords {nwords}, nlabels {nlabels}, "
                       f"ntokens {ntokens}, pruneidx_size {prune})")
    if nwords < 1:
        raise _Damaged("the dictionary holds no words")
    data, find = r.data, r.data.find
    for i in range(size):
        end = find(b"\0", r.pos, r.size)
        if end < 0:
            raise _Short(f"word {i + 1:,} of {size:,} of the dictionary", r.size + 1)
        r.pos = end + 1
        count, kind = r.take(_ENTRY, f"word {i + 1:,} of {size:,} of the dictionary")
        if count < 0 or kind != (0 if i < nwords else 1):
            raise _Damaged(f"dictionary entry {i + 1:,} is damaged (count {count}, type {kind}; fastText "
                           f"lists {nwords:,} words, then {nlabels:,} labels)")
    # Rows the input matrix must have: one per word, then one per bucket, or, for a pruned
    # (quantized) dictionary, one per n-gram id its index maps to (none when it keeps none).
    rows_needed = nwords + (args["bucket"] if hashed and prune < 0 else 0)
    if prune > 0:
        start = r.pos
        r.skip(prune * _PAIR.size, "the pruned n-gram index")
        pairs = list(_PAIR.iter_unpack(data[start:r.pos]))
        if min(min(pair) for pair in pairs) < 0:
            raise _Damaged("the pruned n-gram index holds a negative id")
        rows_needed = nwords + (max(second for _, second in pairs) + 1 if hashed else 0)

    quantized = r.flag("the input matrix's quantized flag")
    if prune >= 0 and not quantized:
        raise _Damaged("a pruned dictionary with a dense input matrix (an old fastText file: download it again)")
    rows = _matrix(r, quantized, "input matrix", args["dim"])
    if rows < rows_needed:
        raise _Damaged(f"the input matrix has {rows:,} rows but the dictionary and buckets need {rows_needed:,}")
    qout = r.flag("the output matrix's quantized flag")
    rows = _matrix(r, quantized and qout, "output matrix", args["dim"])
    targets = nlabels if args["model"] == 3 else nwords
    if rows != targets:
        raise _Damaged(f"the output matrix has {rows:,} rows for {targets:,} "
                       f"{'labels' if args['model'] == 3 else 'words'}")


def check_fasttext_file(path: str | Path) -> None:
    """Refuse, in one line, a fastText model file the `fasttext` library would crash on or read
    wrongly (module docstring): damaged header fields, sizes that disagree, a truncated file, or
    bytes after its end.

    Raises:
        TransplantError: naming the file, what is wrong and the fix.
    """
    path = Path(path)
    fix = "pass a .bin written by fastText or `transplant vectors train`"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if size < 8:
                raise TransplantError(f"{path} is not fastText vectors: {size} bytes, shorter than any "
                                      f"fastText header ({fix})")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                reader = _Reader(data, size)
                try:
                    _walk(reader)
                except _Short as short:
                    raise TransplantError(
                        f"fastText vectors {path} are truncated: {short.what} ends at byte {short.end:,} but the "
                        f"file has {size:,} bytes (copy or train them again)") from None
                except _Damaged as damaged:
                    raise TransplantError(f"fastText vectors {path} are damaged: {damaged} ({fix})") from None
                if reader.pos != size:
                    raise TransplantError(f"fastText vectors {path} are damaged: {size - reader.pos:,} bytes follow "
                                          f"the end of the model at byte {reader.pos:,} ({fix})")
    except OSError as exc:
        raise TransplantError(f"cannot read fastText vectors {path}: {exc.strerror or exc}") from None


__all__ = ["MAGIC", "check_fasttext_file"]
