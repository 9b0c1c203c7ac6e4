"""Which number format to compute in: bf16 where the hardware does it fast, fp32 elsewhere.

CPUs with AVX512-BF16 or AMX-BF16 multiply bf16 matrices 4-5x faster than fp32
(measured by ``tools/bench_*.py`` on this project's 2-core machines); older
CPUs emulate bf16 and run it slower than fp32, so there ``auto`` means fp32.
GPUs with bf16 support (Ampere and newer) always get bf16 under ``auto``.
"""

from __future__ import annotations

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
