"""What memory this process may still use, and the one-line refusal when a heavy step would not fit.

A command that loads a model says what it expects its peak to be before it loads, and refuses
in one line (naming what would make it fit) rather than be killed by the kernel halfway. The
limit is the smallest of what the machine has available (`MemAvailable`), the cgroup's limit
less what the cgroup already uses (containers, `systemd-run -p MemoryMax=`), and
`TOKENTRANSPLANT_MAX_MEMORY` (bytes, or with a K/M/G suffix) when set.

Example:
    >>> parse_size("16G"), parse_size("512M"), parse_size("1024")
    (17179869184, 536870912, 1024)
    >>> human(3 << 30)
    '3.2 GB'
    >>> check_fits(1 << 20, "a read", "pass --smaller")  # a megabyte fits anywhere
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from transplant.common.config_dict import text_section
from transplant.common.errors import TransplantError
from transplant.common.progress import stage

ENV = "TOKENTRANSPLANT_MAX_MEMORY"
MARGIN = 1.3  # a heavy step is refused when its estimate times this exceeds what is available


def parse_size(text: str) -> int:
    """Bytes from `123`, `512M`, `16G`, `1.5T` (binary units)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)i?B?\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise TransplantError(f"cannot read a memory size from {text!r} (write e.g. 16G or 512M in {ENV})")
    return int(float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper()))


def human(n: int) -> str:
    """Decimal gigabytes, as the benchmarks report them."""
    return f"{n / 1e9:.1f} GB"


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_room() -> int | None:
    """The memory cgroup's limit less what it holds that cannot be reclaimed (its processes'
    anonymous memory and shared memory; the page cache it also counts gives way under pressure);
    None without a limit. cgroup v2 (`0::/path`) or v1 (the `memory` controller's line)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, rel = parts
        if hid == "0" and not controllers:
            mount, files = Path("/sys/fs/cgroup"), ("memory.max", ("anon", "shmem"))
        elif "memory" in controllers.split(","):
            mount, files = Path("/sys/fs/cgroup/memory"), ("memory.limit_in_bytes", ("total_rss", "total_shmem"))
        else:
            continue
        folder = mount / rel.lstrip("/")
        folder = folder if folder.is_dir() else mount  # inside a container its own group is the mount
        try:
            limit = (folder / files[0]).read_text().strip()
            stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines() if " " in line)
        except (OSError, ValueError):
            continue
        if not limit.isdigit() or int(limit) >= 1 << 60:
            continue
        used = sum(int(stat.get(k, 0)) for k in files[1])
        rooms.append(max(0, int(limit) - used))
    return min(rooms) if rooms else None


def resident_bytes() -> int:
    """This process's resident memory now."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def available_bytes() -> int | None:
    """What this process may still add to its resident memory (None: unknown)."""
    found = [v for v in (_meminfo_available(), _cgroup_room()) if v is not None]
    if os.environ.get(ENV):
        found.append(max(0, parse_size(os.environ[ENV]) - resident_bytes()))
    return min(found) if found else None


def check_fits(expected: int, what: str, fixes: str) -> None:
    """Say the expected peak of `what` (bytes on top of what this process holds now) and refuse in
    one line when less than that is available; `fixes` names the options that make it fit."""
    room = available_bytes()
    stage(f"{what}: expected peak {human(resident_bytes() + expected)}"
          + (f" ({human(room)} available)" if room is not None else ""))
    # The estimates count the large tensors, not the allocator's slack or the libraries' working
    # memory (measured peaks: 0.84x to 1.35x the estimate, calibration and heal, SmolLM2 to 7B
    # widths): refuse within that margin rather than be killed.
    if room is not None and expected * MARGIN > room:
        raise TransplantError(f"{what} needs about {human(expected)} more memory than this process holds (up to "
                              f"{human(int(expected * MARGIN))} with the estimate's margin), and only "
                              f"{human(room)} is available ({fixes})")


def _glibc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's `malloc_trim`; elsewhere nothing).

    glibc keeps freed blocks on its heap, and those below a block still in use are never
    returned: a loop that allocates and frees large tensors (a model read layer by layer) grows
    the process by what it freed. A trim after each such step keeps it at what is in use.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def checkpoint_bytes(folder: Path) -> int:
    """The bytes of every tensor a checkpoint folder stores (its safetensors shards' data)."""
    from transplant.common.safetensors_header import read_header, shard_map

    total = 0
    for shard in set(shard_map(Path(folder)).values()):
        header, _ = read_header(Path(folder) / shard)
        total += sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    return total


def sharded_body_bytes(whole: int, embedding_bytes: int, config: dict, shards: int) -> int:
    """What one of `shards` processes holds of a checkpoint of `whole` bytes whose decoder layers
    are sharded (`io.sharded_load`): the embedding rows whole, 1/`shards` of the rest, and one
    whole layer gathered while it runs.

    Example:
        >>> sharded_body_bytes(10_000, 1_000, {"num_hidden_layers": 9}, 3)
        5000
    """
    text = text_section(config)
    layers = max(1, int(text.get("num_hidden_layers") or text.get("n_layer") or text.get("num_layers") or 1))
    body = max(0, whole - embedding_bytes)
    return embedding_bytes + body // shards + body // layers


def training_activation_bytes(config: dict, tokens: int, vocab: int, stored: int, checkpointed: bool = False) -> int:
    """Activations kept for the backward pass of `tokens` tokens through a frozen body (every
    layer's inputs to its attention and MLP products, in the body's dtype `stored` bytes), plus
    the float32 logits, their log-softmax and its gradient over `vocab` columns. `checkpointed`
    (layers recomputed in the backward pass): each layer keeps only its input, and one layer at a
    time its products."""
    text = text_section(config)
    width = int(text.get("hidden_size") or text.get("n_embd") or text.get("d_model") or 0)
    inner = int(text.get("intermediate_size") or text.get("n_inner") or text.get("ffn_dim") or 4 * width)
    layers = int(text.get("num_hidden_layers") or text.get("n_layer") or text.get("num_layers") or 0)
    per_layer = (8 * width + 3 * inner) * stored
    kept = layers * width * stored + per_layer if checkpointed else layers * per_layer
    return tokens * (kept + 3 * vocab * 4)
