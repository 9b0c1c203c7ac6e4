"""Throughput and memory of batch rendering (scenecomp-render).

    python tools/bench_render.py                              # default-size networks, random weights
    python tools/bench_render.py --threads 1 --images 128 --cli-layouts 1000
    python tools/bench_render.py --checkpoint run/composer.pt --device cuda --dtype bfloat16 --batch-size 256

Reports, in one process:

1. the machine's own fp32 matmul rate (``torch.mm`` of n x n matrices,
   2n^3 FLOPs each), on the device and with the threads used below;
2. the model's FLOPs per image (64x64 layouts with ``--objects`` objects),
   counted with ``torch.utils.flop_counter.FlopCounterMode`` over a real
   batch: the background generator plus one foreground call per object;
3. images/s rendering batched (``--batch-size``, the CLI's network call
   `scenecomp.render.render_padded`, rasterisation included, PNG writing
   not) against one layout at a time (batch size 1), and the fraction of the
   matmul rate that the batched path reaches;
4. the scenecomp-render command line on ``--cli-layouts`` layout files written
   to a temporary folder (a bundle of the same networks; PNGs, manifest and
   all): images/s and the peak resident memory of that process, and of one
   on a tenth as many layouts, to show that memory does not grow with their
   number.

Weights do not change the cost, so random ones measure the same thing as
trained ones. On a machine busy with other work, say so next to the figures;
``--threads 1`` avoids oversubscribing cores another process is using.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from scenecomp.compose import Composer, bundle_dict, save_bundle
from scenecomp.layout import Layout, LayoutObject
from scenecomp.render import fill_seeds, render_padded


def random_layouts(count: int, objects: int, size: int, categories, seed: int = 0) -> list[Layout]:
    """Layouts of ``objects`` boxes and ellipses (as polygons), sizes 1/8 to 1/2 of the canvas."""
    rng = np.random.default_rng(seed)
    layouts = []
    for i in range(count):
        objs = []
        for k in range(objects):
            w, h = (int(v) for v in rng.integers(size // 8, size // 2, 2))
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            if rng.random() < 0.5:
                shape = {"bbox": [x, y, w, h]}
            else:
                t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
                shape = {"polygon": [[round(x + w / 2 * (1 + np.cos(a)), 2), round(y + h / 2 * (1 + np.sin(a)), 2)]
                                     for a in t]}
            objs.append(LayoutObject(categories[int(rng.integers(len(categories)))], shape))
        layouts.append(Layout((size, size), objs))
    return layouts


def matmul_gflops(device: torch.device, n: int = 1024, seconds: float = 2.0) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    rates = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 5:
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        rates.append(2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


def images_per_second(composer: Composer, layouts: list[Layout], batch_size: int, sync) -> float:
    seeded = [fill_seeds(composer, layout, i) for i, layout in enumerate(layouts)]
    render_padded(composer, seeded[:batch_size], batch_size)  # warm-up
    sync()
    t = time.perf_counter()
    for start in range(0, len(seeded), batch_size):
        render_padded(composer, seeded[start:start + batch_size], batch_size)
    sync()
    return len(seeded) / (time.perf_counter() - t)


def flops_per_image(composer: Composer, layouts: list[Layout], batch_size: int) -> float:
    seeded = [fill_seeds(composer, layout, i) for i, layout in enumerate(layouts[:batch_size])]
    with FlopCounterMode(display=False) as counter:
        render_padded(composer, seeded, len(seeded))
    return counter.get_total_flops() / len(seeded)


def cli_run(layout_dir: Path, bundle: Path, out: Path, args) -> dict:
    """Run scenecomp-render in a fresh process; its peak RSS comes from a wrapper
    that has no other child."""
    command = [sys.executable, "-m", "scenecomp.render", str(layout_dir), "--checkpoint", str(bundle), "--out",
               str(out), "--batch-size", str(args.batch_size), "--device", args.device, "--dtype", args.dtype, "-q"]
    if args.threads:
        command += ["--threads", str(args.threads)]
    wrapper = ("import json, resource, subprocess, sys, time\n"
               "t = time.perf_counter()\n"
               f"r = subprocess.run({command!r}, capture_output=True, text=True)\n"
               "print(json.dumps({'rc': r.returncode, 'seconds': time.perf_counter() - t, 'stderr': r.stderr[-2000:],"
               " 'max_rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n")
    result = json.loads(subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True,
                                       check=True).stdout)
    if result["rc"] != 0:
        raise SystemExit(f"scenecomp-render failed:\n{result['stderr']}")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a composer.pt bundle (default: default-size networks, random weights)")
    parser.add_argument("--objects", type=int, default=4, help="objects per layout (default 4)")
    parser.add_argument("--batch-size", type=int, default=32, help="batched path's batch size (default 32)")
    parser.add_argument("--images", type=int, default=128, help="images timed on the batched path (default 128)")
    parser.add_argument("--single-images", type=int, default=32, help="images timed one at a time (default 32)")
    parser.add_argument("--cli-layouts", type=int, default=1000,
                        help="layout files for the command-line run (default 1000; 0 skips it)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    if args.checkpoint:
        composer = Composer.from_checkpoint(args.checkpoint, device=device, dtype=dtype)
        bundle = Path(args.checkpoint)
    else:
        from scenecomp.nets import ForegroundGenerator, LayoutGenerator
        torch.manual_seed(0)
        composer = Composer(LayoutGenerator(z_dim=64, resolution=64, channels=16, max_channels=128),
                            ForegroundGenerator(z_dim=64, resolution=64, channels=16, max_channels=128),
                            [f"c{i}" for i in range(5)], device=device, dtype=dtype)
        bundle = None
    R = composer.resolution
    layouts = random_layouts(max(args.images, args.single_images, args.batch_size), args.objects, R,
                             composer.categories)
    n_bg = sum(p.numel() for p in composer.background_net.parameters())
    n_fg = sum(p.numel() for p in composer.foreground_net.parameters())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{R}x{R} layouts with {args.objects} objects; G_bg {n_bg / 1e6:.2f}M, G_fg {n_fg / 1e6:.2f}M parameters; "
          f"{device} {args.dtype}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {load:.2f} before the run")

    peak = matmul_gflops(device)
    flops = flops_per_image(composer, layouts, args.batch_size)
    batched = images_per_second(composer, layouts[:args.images], args.batch_size, sync)
    single = images_per_second(composer, layouts[:args.single_images], 1, sync)
    print(f"fp32 matmul (1024x1024): {peak:.1f} GFLOP/s")
    print(f"model: {flops / 1e9:.3f} GFLOP per image (FlopCounterMode: background + {args.objects} foreground calls)")
    print(f"batched (batch {args.batch_size}): {batched:.1f} images/s = {batched * flops / 1e9:.1f} GFLOP/s = "
          f"{batched * flops / 1e9 / peak:.0%} of matmul peak")
    print(f"one at a time (batch 1): {single:.1f} images/s = {single * flops / 1e9:.1f} GFLOP/s = "
          f"{single * flops / 1e9 / peak:.0%} of matmul peak")
    print(f"batched / one at a time: {batched / single:.2f}x")

    if args.cli_layouts:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            if bundle is None:
                bundle = tmp / "composer.pt"
                save_bundle(bundle, bundle_dict(list(composer.categories), background=composer.background_net,
                                                foreground=composer.foreground_net))
            results = {}
            for count in sorted({max(1, args.cli_layouts // 10), args.cli_layouts}):
                folder = tmp / f"layouts{count}"
                folder.mkdir()
                for i, layout in enumerate(random_layouts(count, args.objects, R, composer.categories, seed=1)):
                    layout.path = folder / f"layout{i:05d}.json"
                    layout.save(layout.path)
                results[count] = cli_run(folder, bundle, tmp / f"out{count}", args)
                r = results[count]
                print(f"scenecomp-render on {count} layout files: {count / r['seconds']:.1f} images/s "
                      f"({r['seconds']:.1f} s including start-up and PNG/manifest writing), "
                      f"peak RSS {r['max_rss_kb'] / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
