"""Benchmark the Shapes generator: scenes per second, with and without writing files.

Examples:
    python tools/bench_shapes.py                 # 2000 scenes at 64x64, one process
    python tools/bench_shapes.py -n 5000 --size 128 --workers 2
    python tools/bench_shapes.py -n 20           # smoke test

Prints figures only (no pass/fail); the target in issue 2 is >= 300 scenes/s
at 64x64 on the 2-core development machine, files included. Drawing scenes is
numpy and PIL rasterisation, not matrix work, so its "achieved GFLOP/s" is
printed as 0 of the bf16 and fp32 matmul rates (``tools/peak.py``); those
rates, measured first in the same process, show how busy the machine was.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
from peak import Peak

from scenecomp.shapes import make_scene, write_dataset


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--count", type=int, default=2000, help="scenes to generate (default 2000)")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="processes for write_dataset (default 1)")
    args = ap.parse_args(argv)

    peak = Peak.measure()
    print(peak)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"scenes: {args.count} at {args.size}x{args.size}, seed {args.seed}, workers {args.workers}")

    t0 = time.perf_counter()
    objects = 0
    for i in range(args.count):
        objects += len(make_scene(np.random.default_rng([args.seed, i]), args.size).objects)
    gen = time.perf_counter() - t0
    print(
        f"generation only (make_scene):   {args.count / gen:8.1f} scenes/s  "
        f"({gen:.2f} s, {objects / args.count:.2f} objects/scene)"
    )

    with tempfile.TemporaryDirectory(prefix="bench_shapes_") as tmp:
        stats = write_dataset(tmp, args.count, size=args.size, seed=args.seed, workers=args.workers)
        nbytes = sum(e.stat().st_size for d in ("images", "backgrounds") for e in os.scandir(os.path.join(tmp, d)))
        nbytes += os.path.getsize(os.path.join(tmp, "annotations.json"))
    print(
        f"write_dataset (files included): {stats['scenes_per_s']:8.1f} scenes/s  "
        f"({stats['seconds']:.2f} s, {nbytes / 2**20:.1f} MiB written)"
    )
    print(f"objects per category: {stats['per_category']}")
    print(f"scenes per light:     {stats['per_light']}")
    print(f"matrix work: {peak.describe(0.0)} (rasterisation only)")


if __name__ == "__main__":
    main()
