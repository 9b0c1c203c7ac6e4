"""Cost of editing one object of a scene against a full re-render.

    python tools/bench_edit.py                          # shipped-size networks, random weights, T=6
    python tools/bench_edit.py --objects 10 --runs 21 --threads 2
    python tools/bench_edit.py --checkpoint scenecomp/assets/composer.safetensors --dtype float32
    python tools/bench_edit.py --objects 2 --runs 3             # smoke test

Builds the default-size generators (or loads ``--checkpoint``), composes a
scene of T objects with random box and ellipse masks, and times, for each k,
``scene.replace(k, seed=...)`` (which re-runs objects k..T-1 from the cached
canvas before k) against a full re-render (``scene.with_background(...)``:
the background and all T objects). Times are medians over ``--runs``. The
"expected" column is (T-k) foreground calls over one background plus T
foreground calls, from the measured cost of each network call. The full
re-render's FLOPs (``torch.utils.flop_counter``) over its time give its
GFLOP/s, printed as fractions of the bf16 and fp32 2048² matmul rates measured
in the same process (``tools/peak.py``); one image at a time is far from
either. ``--dtype auto`` (default) is what `Composer` picks on this machine.
Weights do not change the cost, so random ones measure the same thing as
trained ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from peak import Peak
from torch.utils.flop_counter import FlopCounterMode

from scenecomp.compose import Composer
from scenecomp.nets import ForegroundGenerator, LayoutGenerator
from scenecomp.render import DTYPES


def random_masks(count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    ys, xs = np.mgrid[:size, :size] + 0.5
    masks = []
    while len(masks) < count:
        w, h = rng.integers(size // 8, size // 2, 2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        if rng.random() < 0.5:
            m = (xs >= x) & (xs < x + w) & (ys >= y) & (ys < y + h)
        else:
            m = ((xs - x - w / 2) / (w / 2)) ** 2 + ((ys - y - h / 2) / (h / 2)) ** 2 <= 1
        if m.any():
            masks.append(m)
    return masks


def median_ms(fn, runs: int, sync) -> float:
    times = []
    for r in range(runs):
        sync()
        t = time.perf_counter()
        fn(r)
        sync()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", help="a composer.safetensors bundle (default: default-size networks, random weights)"
    )
    parser.add_argument("--objects", "-T", type=int, default=6, help="objects in the scene (default 6)")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per figure; the median is reported")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype",
        choices=["auto", *DTYPES],
        default="auto",
        help="network precision (default auto: bf16 where the CPU or GPU has it, as Composer)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = "auto" if args.dtype == "auto" else DTYPES[args.dtype]
    peak = Peak.measure(args.device)
    print(peak)

    if args.checkpoint:
        composer = Composer.from_checkpoint(args.checkpoint, device=args.device, dtype=dtype)
    else:
        torch.manual_seed(0)
        categories = [f"c{i}" for i in range(5)]
        composer = Composer(
            LayoutGenerator(z_dim=64, resolution=64, channels=16, max_channels=128, style_dim=128),
            ForegroundGenerator(z_dim=64, resolution=64, channels=16, max_channels=128, embed_dim=16),
            categories,
            device=args.device,
            dtype=dtype,
        )
    sync = torch.cuda.synchronize if composer.device.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    T, R = args.objects, composer.resolution
    scene = composer.background(0)
    for i, mask in enumerate(random_masks(T, R, rng)):
        scene = scene.add(composer.categories[i % len(composer.categories)], mask, seed=i)

    for _ in range(3):  # warm-up
        scene.with_background(1)
        scene.replace(0, seed=10**6)
    t_bg = median_ms(lambda r: composer.background(100 + r), args.runs, sync)
    t_fg = median_ms(lambda r: scene.add(composer.categories[0], scene.objects[0].mask, seed=r), args.runs, sync)
    t_full = median_ms(lambda r: scene.with_background(1 + r), args.runs, sync)
    with FlopCounterMode(display=False) as counter:
        scene.with_background(10**6)
    full_gflops = counter.get_total_flops() / 1e9
    n_fg = sum(p.numel() for p in composer.foreground_net.parameters())
    n_bg = sum(p.numel() for p in composer.background_net.parameters())

    print(
        f"scene: {T} objects at {R}x{R}, {composer.device} {str(composer.dtype).removeprefix('torch.')}, "
        f"{torch.get_num_threads()} threads, "
        f"G_bg {n_bg / 1e6:.2f}M / G_fg {n_fg / 1e6:.2f}M parameters, median of {args.runs} runs"
    )
    print(f"one background call {t_bg:.2f} ms, one foreground call (add) {t_fg:.2f} ms")
    print(
        f"full re-render (background + {T} objects): {t_full:.2f} ms, {full_gflops:.3f} GFLOP, "
        f"{peak.describe(full_gflops / (t_full / 1000))}\n"
    )
    print(" k | objects re-run | replace(k) ms | / full | expected")
    print("---|----------------|---------------|--------|---------")
    for k in range(T):
        t = median_ms(lambda r, k=k: scene.replace(k, seed=10**6 + r), args.runs, sync)
        expected = (T - k) * t_fg / (t_bg + T * t_fg)
        print(f"{k:2d} | {T - k:14d} | {t:13.2f} | {t / t_full:6.2f} | {expected:8.2f}")


if __name__ == "__main__":
    main()
