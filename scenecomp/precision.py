"""How fast this machine computes: the number format (bf16 where the hardware does it fast, fp32
elsewhere) and, for the command-line tools, the memory allocator (`keep_freed_memory`).

CPUs with AVX512-BF16 or AMX-BF16 multiply bf16 matrices 4-5x faster than fp32
(measured by ``tools/bench_*.py`` on this project's 2-core machines); older
CPUs emulate bf16 and run it slower than fp32, so there ``auto`` means fp32.
GPUs with bf16 support (Ampere and newer) always get bf16 under ``auto``.
"""

from __future__ import annotations

import ctypes
import functools
import warnings

import torch


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 dot products (AVX512-BF16 or AMX-BF16)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def auto_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on a CUDA device that supports it and on a CPU with native bf16, else fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.float32


def training_precision(precision: str, accelerator: str) -> str:
    """Lightning's ``precision`` for a run: ``bf16-mixed`` asked for on a CPU without native
    bf16 falls back to ``32-true`` (emulated bf16 would be slower), saying so once."""
    if str(precision).startswith("bf16") and accelerator == "cpu" and not cpu_has_fast_bf16():
        warnings.warn(
            "this CPU has no native bf16 (AVX512-BF16 or AMX); training in 32-true instead of "
            f"{precision} (set trainer.precision=32-true to silence this)",
            stacklevel=2,
        )
        return "32-true"
    return str(precision)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of handing it back to the
    system; the command-line tools (train, eval, render) call it first, the library never does.

    Why: by default a block above malloc's mmap threshold (128 KiB, adapting up to 32 MiB, never above) is
    mapped fresh and unmapped when freed, and a GAN batch frees and allocates its activations every step
    (one 128-channel layer of a 64x64 batch of 32 is 64 MiB), so their pages fault in again. Measured on a
    2-core EPYC: a G_bg training batch spent about 40 % of its CPU time in the kernel, and this gives the
    background stage 1.88x the batches/s, both stages 1.37x (``tools/bench_train.py --keep-freed-memory``,
    docs/RESULTS.md "Speed"). The price: the process keeps its peak memory until it exits. Returns False
    where there is no glibc (macOS, Windows, musl), which then keeps its own allocator's behaviour."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, (1 << 31) - 1), (_M_TOP_PAD, 1 << 29))
    return all(mallopt(option, value) == 1 for option, value in settings)
