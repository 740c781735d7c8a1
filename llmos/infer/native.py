"""The native decode path: `native.c` built at first use, and a decoder that calls it.

`NativeDecoder` has the torch `Decoder`'s interface (`__call__` for prefill and decode on a
shared-position cache, `decode_rows` for continuous batching) and runs each step as one C call:
no per-op overhead, weights streamed at memory speed in fp32, bf16 or Q8 (8-bit, blocks of 32,
as llama.cpp's Q8_0). The KV cache stays the engine's torch tensors (fp32), so forking and
growing a cache are unchanged.

The library is compiled with the machine's C compiler (`cc -O3 -march=native -fopenmp`) into
the cache directory, once per source and CPU. Where there is no compiler the engine falls back
to the torch decoder and says why (`native_error()`); `LLMOS_NATIVE=0` turns the path off.

    >>> # dec = NativeDecoder(model, "int8"); logits = dec(idx, cache=cache, last_only=True)
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from llmos.common import atomic_write, cache_dir, log
from llmos.model import KVCache, Transformer, rope_tables

SOURCE = Path(__file__).with_name("native.c")
KINDS = {"fp32": 0, "bf16": 1, "int8": 2}
QK = 32  # Q8 block size (native.c's QK)

_lib: ctypes.CDLL | None = None
_error: str | None = None


# -- building ---------------------------------------------------------------------------------


def _cpu_id() -> str:
    """What `-march=native` depends on: the CPU's model and flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise OSError("no C compiler (cc or gcc) on PATH")
    flags = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
    key = hashlib.sha256((SOURCE.read_text() + _cpu_id() + cc + " ".join(flags)).encode())
    lib = cache_dir() / "native" / f"llmos-{key.hexdigest()[:16]}.so"
    if not lib.exists():

        def compile_to(tmp: str) -> None:
            r = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True)
            if r.returncode:
                raise OSError(f"{cc} failed: {r.stderr.decode(errors='replace')[-2000:]}")

        log.info("building the native decode kernel (%s)", lib.name)
        atomic_write(lib, compile_to)
    so = ctypes.CDLL(str(lib))
    p, i = ctypes.c_void_p, ctypes.c_int
    so.llmos_step.argtypes = [p, i, p, p, p, p, p, p, i, p, p, i, p, p]
    so.llmos_step.restype = i
    so.llmos_set_threads.argtypes = [i]
    return so


def library() -> ctypes.CDLL | None:
    """The built library, or None (see native_error) when it cannot be built or is off."""
    global _lib, _error
    if _lib is None and _error is None:
        if os.environ.get("LLMOS_NATIVE", "1") == "0":
            _error = "turned off by LLMOS_NATIVE=0"
        else:
            try:
                _lib = _build()
            except OSError as e:
                _error = str(e)
                log.warning("native decode unavailable, using torch: %s", _error)
    return _lib


def native_error() -> str | None:
    library()
    return _error


# -- the model as native.c sees it ------------------------------------------------------------


class Matrix(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int),
        ("rows", ctypes.c_int),
        ("cols", ctypes.c_int),
        ("w", ctypes.c_void_p),
    ]


class Layer(ctypes.Structure):
    _fields_ = [
        ("attn_norm", ctypes.c_void_p),
        ("ffn_norm", ctypes.c_void_p),
        ("qkv", Matrix),
        ("o", Matrix),
        ("gate_up", Matrix),
        ("down", Matrix),
    ]


class Model(ctypes.Structure):
    _fields_ = [
        *[(k, ctypes.c_int) for k in "dim n_layers n_heads n_kv_heads head_dim ffn vocab".split()],
        ("eps", ctypes.c_float),
        ("embed", ctypes.c_void_p),
        ("norm", ctypes.c_void_p),
        ("head", Matrix),
        ("layers", ctypes.POINTER(Layer)),
    ]


def quantize_q8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values and one fp32 scale per 32 weights of a row (llama.cpp's Q8_0, with an
    fp32 scale): W[r, 32b:32b+32] ≈ scale[r, b] · q[r, 32b:32b+32]."""
    rows, cols = w.shape
    blocks = w.float().reshape(rows, cols // QK, QK)
    scale = blocks.abs().amax(-1).clamp(min=1e-12) / 127
    q = (blocks / scale[..., None]).round().clamp(-127, 127).to(torch.int8)
    return q.reshape(rows, cols), scale


def pack(w: torch.Tensor, kind: str) -> torch.Tensor:
    """W (rows, cols) in native.c's layout: each group of 4 rows one linear stream, as 8
    columns of each row in turn (fp32, bf16), or per 32 columns the 4 rows' scales and then
    their int8 blocks (int8). See the Matrix comment in native.c.

    >>> pack(torch.arange(16.).view(4, 4).repeat(1, 2), "fp32")[:10].tolist()  # 4 x 8
    [0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    """
    rows, cols = w.shape
    if kind != "int8":
        w = w.to(torch.bfloat16).view(torch.int16) if kind == "bf16" else w.float()
        return w.reshape(rows // 4, 4, cols // 8, 8).transpose(1, 2).contiguous().flatten()
    q, scale = quantize_q8(w)
    nb = cols // QK
    q = q.view(rows // 4, 4, nb, QK).transpose(1, 2).reshape(rows // 4, nb, 4 * QK)
    scale = scale.view(rows // 4, 4, nb).transpose(1, 2).contiguous()
    scale_bytes = scale.view(torch.uint8).view(rows // 4, nb, 16)
    return torch.cat([scale_bytes, q.view(torch.uint8)], dim=-1).contiguous().flatten()


class NativeDecoder:
    """The forward pass for inference as one C call per step (see the module docstring)."""

    def __init__(self, model: Transformer, dtype: str = "fp32"):
        lib = library()
        if lib is None:
            raise OSError(f"native decode unavailable: {_error}")
        if dtype not in KINDS:
            raise ValueError(f"dtype must be one of {', '.join(KINDS)}, got {dtype!r}")
        self.lib, self.cfg, self.weights = lib, model.cfg, dtype
        self.dtype = torch.float32  # activations and the KV cache
        self._keep: list[torch.Tensor] = []  # every buffer native.c points into

        def ptr(t: torch.Tensor) -> int:
            self._keep.append(t)
            return t.data_ptr()

        def matrix(*linears, pad: bool = False) -> Matrix:
            w = torch.cat([lin.weight.detach().float() for lin in linears])
            if w.shape[0] % 4 and pad:  # native.c works on 4 rows at a time: the head (a
                w = torch.cat([w, w.new_zeros(4 - w.shape[0] % 4, w.shape[1])])  # vocab) pads
            rows, cols = w.shape
            if rows % 4 or cols % 8:
                raise ValueError(f"native decode needs 4k x 8k matrices, not {rows} x {cols}")
            kind = dtype if (dtype != "int8" or cols % QK == 0) else "fp32"
            return Matrix(KINDS[kind], rows, cols, ptr(pack(w, kind)))

        def vec(norm) -> int:
            return ptr(norm.weight.detach().float().contiguous())

        blocks = model.model.layers
        layers = (Layer * len(blocks))()
        for i, b in enumerate(blocks):
            a, mlp = b.self_attn, b.mlp
            layers[i] = Layer(
                vec(b.input_layernorm),
                vec(b.post_attention_layernorm),
                matrix(a.q_proj, a.k_proj, a.v_proj),
                matrix(a.o_proj),
                matrix(mlp.gate_proj, mlp.up_proj),
                matrix(mlp.down_proj),
            )
        c = self.cfg
        self._layers = layers
        self.model = Model(
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.intermediate_size,
            c.vocab_size,
            c.rms_norm_eps,
            ptr(model.model.embed_tokens.weight.detach().float().contiguous()),
            vec(model.model.norm),
            matrix(model.lm_head, pad=True),
            layers,
        )
        self.rope = rope_tables(c, c.max_position_embeddings)

    def _rope(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary tables for at least n positions (replaced whole, never mutated)."""
        if n > self.rope[0].shape[0]:
            self.rope = rope_tables(self.cfg, max(n, 2 * self.rope[0].shape[0]))
        return self.rope

    def step(self, tokens, rows, slots, first, cache: KVCache, out_idx) -> torch.Tensor:
        """Run tokens (each at its row, slot and first attended slot) through the model;
        logits (len(out_idx), V) for the tokens listed in out_idx.

        The arguments are int arrays (numpy or torch). Decoding a 15M model takes ~3 ms a
        token, so the Python around the C call is kept to numpy (a numpy op costs ~1 us, a
        torch op ~5-10 us)."""
        tokens, rows, slots, first, out_idx = (
            np.ascontiguousarray(a, dtype=np.int32) for a in (tokens, rows, slots, first, out_idx)
        )
        if tokens.min() < 0 or tokens.max() >= self.cfg.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.cfg.vocab_size})")
        B, _, S, _ = cache.k[0].shape
        if slots.max() >= S or rows.max() >= B or rows.min() < 0 or slots.min() < 0:
            raise ValueError("a token's slot or row is outside the KV cache")
        cos, sin = self._rope(int((slots - first).max()) + 1)
        ptrs = self._pointers(cache)
        logits = torch.empty(len(out_idx), self.model.head.rows)  # rows padded to 4
        self.lib.llmos_set_threads(torch.get_num_threads())
        rc = self.lib.llmos_step(
            ctypes.byref(self.model), len(tokens), tokens.ctypes.data, rows.ctypes.data,
            slots.ctypes.data, first.ctypes.data, *ptrs, S, cos.data_ptr(), sin.data_ptr(),
            len(out_idx), out_idx.ctypes.data, logits.data_ptr(),
        )  # fmt: skip
        if rc:
            raise MemoryError("native decode step: out of memory")
        V = self.cfg.vocab_size
        return logits if logits.shape[1] == V else logits[:, :V].contiguous()

    def _pointers(self, cache: KVCache):
        """The cache's per-layer key and value addresses as C arrays, rebuilt only when the
        cache's tensors change (a fork or a grow replaces them)."""
        key = (cache.k[0].data_ptr(), cache.v[-1].data_ptr(), len(cache.k))
        if getattr(cache, "_native", (None,))[0] != key:
            n = len(cache.k)
            kc = (ctypes.c_void_p * n)(*[k.data_ptr() for k in cache.k])
            vc = (ctypes.c_void_p * n)(*[v.data_ptr() for v in cache.v])
            cache._native = (key, kc, vc)
        return cache._native[1:]

    @torch.inference_mode()
    def __call__(self, idx, cache: KVCache | None = None, pad=None, last_only: bool = False):
        """Logits (B, T, V) for `idx` (B, T), or (B, 1, V) with last_only; as Decoder."""
        B, T = idx.shape
        if cache is None:
            cache = KVCache(self.cfg, B, T, torch.float32)
        if cache.k[0].dtype != torch.float32:
            raise ValueError("the native decoder needs an fp32 KV cache")
        start = cache.pos
        rows = np.repeat(np.arange(B), T)
        slots = np.tile(start + np.arange(T), B)
        first = np.repeat(pad.numpy() if pad is not None else np.zeros(B, np.int32), T)
        out = np.arange(B) * T + T - 1 if last_only else np.arange(B * T)
        logits = self.step(idx.reshape(-1).numpy(), rows, slots, first, cache, out)
        cache.pos += T
        return logits.view(B, 1 if last_only else T, -1)

    @torch.inference_mode()
    def decode_rows(self, tokens, pos, cache: KVCache, rows) -> torch.Tensor:
        """One decode step for the given cache rows, token i at pos[i] of row rows[i] (as
        Decoder's). Only those rows run: each token carries its own row."""
        rows = np.asarray(rows)
        return self.step(tokens, rows, pos, np.zeros(len(rows)), cache, np.arange(len(rows)))
