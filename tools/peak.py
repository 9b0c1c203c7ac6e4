"""This machine's own matrix-multiply rates, the yardstick every ``tools/bench_*.py`` reports against.

from peak import Peak
peak = Peak.measure(device)          # fp32 and bf16 n x n matmul, GFLOP/s, in this process
print(peak.describe(achieved))       # "123.4 GFLOP/s = 0.15 of bf16 matmul, 0.66 of fp32 matmul"

python tools/peak.py                 # this machine's rates, now
python tools/peak.py --n 4096 --seconds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from scenecomp.precision import cpu_has_fast_bf16


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int = 2048, seconds: float = 1.0) -> float:
    """Median rate of ``a @ b`` for n x n matrices (2n^3 FLOPs each) over about ``seconds``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 3:
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


# bf16 matmul side on a CPU without native bf16: about 1 GFLOP/s there, so one 2048^2 product takes 10+ s
EMULATED_N = 256


@dataclass
class Peak:
    fp32: float
    bf16: float
    n: int = 2048
    bf16_n: int = 2048  # smaller where bf16 is emulated (no AVX512-BF16 or AMX): the rate is what it is at any size

    @classmethod
    def measure(cls, device="cpu", n: int = 2048, seconds: float = 1.0) -> Peak:
        device = torch.device(device)
        bf16_n = n if device.type != "cpu" or cpu_has_fast_bf16() else min(n, EMULATED_N)
        fp32 = matmul_gflops(device, torch.float32, n, seconds)
        return cls(fp32, matmul_gflops(device, torch.bfloat16, bf16_n, seconds), n, bf16_n)

    def __str__(self) -> str:
        emulated = "" if self.bf16_n == self.n else f" at {self.bf16_n}^2, emulated: this CPU has no native bf16"
        return (
            f"matmul {self.n}^2 in this process: fp32 {self.fp32:.1f} GFLOP/s, bf16 {self.bf16:.1f} GFLOP/s "
            f"({self.bf16 / self.fp32:.1f}x{emulated})"
        )

    def describe(self, gflops: float) -> str:
        return (
            f"{gflops:.1f} GFLOP/s = {gflops / self.bf16:.2f} of bf16 matmul, {gflops / self.fp32:.2f} of fp32 matmul"
        )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=2048, help="matrix side (default 2048)")
    ap.add_argument("--seconds", type=float, default=1.0, help="timing per dtype (default 1)")
    args = ap.parse_args(argv)
    print(Peak.measure(args.device, args.n, args.seconds))


if __name__ == "__main__":
    main()
