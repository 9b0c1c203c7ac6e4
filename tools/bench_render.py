"""Throughput and memory of batch rendering (scenecomp-render), default dtype against float32.

    python tools/bench_render.py                              # shipped-size networks, random weights
    python tools/bench_render.py --checkpoint scenecomp/assets/composer.safetensors --cli-layouts 300
    python tools/bench_render.py --threads 1 --images 256 --profile
    python tools/bench_render.py --dtypes auto float32 bfloat16 --compile
    python tools/bench_render.py --images 8 --single-images 2 --batch-size 8 --rounds 1 --cli-layouts 2 \
        --cli-rounds 1  # smoke

Reports, in one process:

1. the machine's bf16 and fp32 matmul rates (``tools/peak.py``), the yardstick,
   measured once per round between the timings below (medians reported);
2. the model's FLOPs per image (64x64 layouts with ``--objects`` objects),
   counted with ``torch.utils.flop_counter.FlopCounterMode`` over a real
   batch: the background generator plus one foreground call per object;
3. for each of ``--dtypes`` (default: ``auto``, what scenecomp-render uses,
   and ``float32``): images/s rendering batched (``--batch-size``, the CLI's
   network call `scenecomp.render.render_padded`, rasterisation included, PNG
   writing not) and one layout at a time, as GFLOP/s and fractions of both
   matmul rates, and each dtype's speed as a ratio to the last one's;
4. the scenecomp-render command line on ``--cli-layouts`` layout files written
   to a temporary folder (a bundle of the same networks; PNGs, manifest and
   all) and on a tenth as many, dtypes taking turns, ``--cli-rounds`` times:
   images/s and CPU seconds of each run, the ratio between dtypes (one per
   round, as their median, min and max: dtypes of one round ran back to back,
   so a machine busy with other work slows them alike), the rate without
   start-up (the extra images over the extra time), and the peak resident
   memory of each process (flat in the number of layouts).

``--compile`` adds a variant of the first dtype with both generators compiled
(``torch.compile``, inductor) to the in-process figures, its compile time
included separately. ``--profile`` prints the ops that take the time on the
batched path of the first dtype. Weights do not change the cost, so random
ones measure the same thing as trained ones. On a machine busy with other
work, say so next to the figures: ratios measured in one run still hold.
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
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from peak import Peak
from torch.utils.flop_counter import FlopCounterMode

from scenecomp.compose import Composer, bundle_dict, save_bundle
from scenecomp.layout import Layout, LayoutObject
from scenecomp.render import DTYPES, render_padded


def random_layouts(count: int, objects: int, size: int, categories, seed: int = 0) -> list[Layout]:
    """Layouts of ``objects`` boxes and ellipses (as polygons), sizes 1/8 to 1/2 of the canvas."""
    rng = np.random.default_rng(seed)
    layouts = []
    for _i in range(count):
        objs = []
        for _k in range(objects):
            w, h = (int(v) for v in rng.integers(size // 8, size // 2, 2))
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            if rng.random() < 0.5:
                shape = {"bbox": [x, y, w, h]}
            else:
                t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
                shape = {
                    "polygon": [
                        [round(x + w / 2 * (1 + np.cos(a)), 2), round(y + h / 2 * (1 + np.sin(a)), 2)] for a in t
                    ]
                }
            objs.append(LayoutObject(categories[int(rng.integers(len(categories)))], shape))
        layouts.append(Layout((size, size), objs))
    return layouts


def images_per_second(composer: Composer, layouts: list[Layout], batch_size: int) -> float:
    """Rate of `render_padded` over ``layouts``, ``batch_size`` at a time, after one warm-up call."""
    sync = torch.cuda.synchronize if composer.device.type == "cuda" else (lambda: None)
    seeded = [composer.seeded(layout, i) for i, layout in enumerate(layouts)]
    render_padded(composer, seeded[:batch_size], batch_size)  # warm-up
    sync()
    t = time.perf_counter()
    for start in range(0, len(seeded), batch_size):
        render_padded(composer, seeded[start : start + batch_size], batch_size)
    sync()
    return len(seeded) / (time.perf_counter() - t)


def flops_per_image(composer: Composer, layouts: list[Layout], batch_size: int) -> float:
    seeded = [composer.seeded(layout, i) for i, layout in enumerate(layouts[:batch_size])]
    with FlopCounterMode(display=False) as counter:
        render_padded(composer, seeded, len(seeded))
    return counter.get_total_flops() / len(seeded)


def cli_run(layout_dir: Path, bundle: Path, out: Path, dtype: str, args) -> dict:
    """Run scenecomp-render in a fresh process; its peak RSS comes from a wrapper
    that has no other child."""
    command = [
        sys.executable,
        "-m",
        "scenecomp.render",
        str(layout_dir),
        "--checkpoint",
        str(bundle),
        "--out",
        str(out),
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
        "--dtype",
        dtype,
        "-q",
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    wrapper = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        f"r = subprocess.run({command!r}, capture_output=True, text=True)\n"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'rc': r.returncode, 'seconds': time.perf_counter() - t, 'stderr': r.stderr[-2000:],"
        " 'cpu_seconds': u.ru_utime + u.ru_stime, 'max_rss_kb': u.ru_maxrss}))\n"
    )
    result = json.loads(
        subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True).stdout
    )
    if result["rc"] != 0:
        raise SystemExit(f"scenecomp-render failed:\n{result['stderr']}")
    return result


def load(args, dtype: str) -> Composer:
    """The composer to measure, in ``dtype`` (a `scenecomp.render.DTYPES` name or ``auto``)."""
    dt = "auto" if dtype == "auto" else DTYPES[dtype]
    if args.checkpoint:
        return Composer.from_checkpoint(args.checkpoint, device=args.device, dtype=dt)
    from scenecomp.nets import ForegroundGenerator, LayoutGenerator

    torch.manual_seed(0)  # the shipped model's sizes (scenecomp/assets/composer.safetensors)
    return Composer(
        LayoutGenerator(z_dim=64, resolution=64, channels=16, max_channels=128, style_dim=128),
        ForegroundGenerator(z_dim=64, resolution=64, channels=16, max_channels=128, embed_dim=16),
        ["tree", "house", "sun", "cloud", "rock"],
        device=args.device,
        dtype=dt,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", help="a composer.safetensors bundle (default: shipped-size networks, random weights)"
    )
    parser.add_argument("--objects", type=int, default=4, help="objects per layout (default 4)")
    parser.add_argument("--batch-size", type=int, default=32, help="batched path's batch size (default 32)")
    parser.add_argument("--images", type=int, default=256, help="images timed on the batched path (default 256)")
    parser.add_argument("--single-images", type=int, default=16, help="images timed one at a time (default 16)")
    parser.add_argument(
        "--cli-layouts",
        type=int,
        default=300,
        help="layout files for the command-line runs (default 300; 0 skips them)",
    )
    parser.add_argument(
        "--cli-rounds",
        type=int,
        default=3,
        help="rounds of the command-line runs; the ratios are per round, their median printed (default 3)",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=["auto", *DTYPES],
        default=["auto", "float32"],
        help="dtypes to compare, the last as the reference (default: auto float32)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the in-process timings (default 3)")
    parser.add_argument("--compile", action="store_true", help="also time the first dtype with compiled generators")
    parser.add_argument("--profile", action="store_true", help="print the top ops of the first dtype's batched path")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    composers = {dtype: load(args, dtype) for dtype in args.dtypes}
    first = composers[args.dtypes[0]]
    R = first.resolution
    layouts = random_layouts(max(args.images, args.single_images, args.batch_size), args.objects, R, first.categories)
    n_bg = sum(p.numel() for p in first.background_net.parameters())
    n_fg = sum(p.numel() for p in first.foreground_net.parameters())
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{R}x{R} layouts with {args.objects} objects; G_bg {n_bg / 1e6:.2f}M, G_fg {n_fg / 1e6:.2f}M parameters; "
        f"{args.device}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
        f"load average {load_avg:.2f} before the run"
    )
    flops = flops_per_image(first, layouts, args.batch_size)
    print(f"model: {flops / 1e9:.3f} GFLOP per image (FlopCounterMode: background + {args.objects} foreground calls)")

    variants = {(f"{d} ({str(c.dtype).removeprefix('torch.')})" if d == "auto" else d): c for d, c in composers.items()}
    reference = list(variants)[-1]
    if args.compile:
        compiled = load(args, args.dtypes[0])
        t = time.perf_counter()
        for net in (compiled.background_net, compiled.foreground_net):
            net.compile()
        images_per_second(compiled, layouts[: args.batch_size], args.batch_size)  # compiles (batch and padding)
        images_per_second(compiled, layouts[:1], 1)
        print(f"torch.compile: first calls (compiling) {time.perf_counter() - t:.1f} s")
        variants[f"{args.dtypes[0]} compiled"] = compiled
    # variants and the matmul yardstick take turns, round after round, and medians count:
    # a machine busy with other work then slows them alike
    batched, single = ({name: [] for name in variants} for _ in range(2))
    peaks = []
    for _ in range(args.rounds):
        peaks.append(Peak.measure(args.device))
        for name, composer in variants.items():
            batched[name].append(images_per_second(composer, layouts[: args.images], args.batch_size))
            single[name].append(images_per_second(composer, layouts[: args.single_images], 1))
    peak = replace(
        peaks[0], fp32=statistics.median(p.fp32 for p in peaks), bf16=statistics.median(p.bf16 for p in peaks)
    )
    print(f"{peak} (median of {args.rounds} rounds)")
    rates = {name: statistics.median(batched[name]) for name in variants}
    for name in variants:
        one = statistics.median(single[name])
        print(
            f"{name:>18s} batched (batch {args.batch_size}): {rates[name]:7.1f} images/s, "
            f"{peak.describe(rates[name] * flops / 1e9)}"
        )
        print(
            f"{name:>18s} one at a time:   {one:7.1f} images/s, {peak.describe(one * flops / 1e9)}; "
            f"batched / one at a time {rates[name] / one:.2f}x"
        )
    print(
        f"batched speed vs {reference} (median of {args.rounds} rounds): "
        + ", ".join(f"{name} {rate / rates[reference]:.2f}x" for name, rate in rates.items() if name != reference)
    )
    if args.profile:
        first = next(iter(variants.values()))
        with torch.profiler.profile() as profiler:
            images_per_second(first, layouts[: args.images], args.batch_size)
        print(f"profile of {next(iter(variants))}, batched:")
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    if args.cli_layouts:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            bundle = Path(args.checkpoint) if args.checkpoint else tmp / "composer.safetensors"
            if not args.checkpoint:
                save_bundle(
                    bundle,
                    bundle_dict(
                        list(first.categories), background=first.background_net, foreground=first.foreground_net
                    ),
                )
            counts = [args.cli_layouts // 10, args.cli_layouts] if args.cli_layouts >= 10 else [args.cli_layouts]
            folders = {}
            for count in counts:
                folders[count] = tmp / f"layouts{count}"
                folders[count].mkdir()
                for i, layout in enumerate(random_layouts(count, args.objects, R, first.categories, seed=1)):
                    layout.save(folders[count] / f"layout{i:05d}.json")
            seconds = {}  # (dtype, count) -> wall seconds of each round
            for round_ in range(args.cli_rounds):  # dtypes take turns, small runs first, round after round
                for count in counts:
                    for dtype in args.dtypes:
                        r = cli_run(folders[count], bundle, tmp / f"out-{dtype}-{count}-{round_}", dtype, args)
                        seconds.setdefault((dtype, count), []).append(r["seconds"])
                        rate = count / r["seconds"]
                        print(
                            f"scenecomp-render --dtype {dtype} on {count} layout files: {rate:.1f} images/s "
                            f"({r['seconds']:.1f} s including start-up and PNG/manifest writing, "
                            f"{r['cpu_seconds']:.1f} s of CPU; {peak.describe(rate * flops / 1e9)}), "
                            f"peak RSS {r['max_rss_kb'] / 1024:.0f} MiB"
                        )
            ref, n = args.dtypes[-1], counts[-1]

            def spread(ratios: list[float]) -> str:
                if len(ratios) == 1:
                    return f"{ratios[0]:.2f}x"
                return f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x)"

            rounds = f"median of {args.cli_rounds} rounds" if args.cli_rounds > 1 else "one round"
            print(  # each round's dtypes ran back to back: a ratio per round, then their median
                f"scenecomp-render on {n} layouts, speed vs --dtype {ref} ({rounds}): "
                + ", ".join(
                    f"{d} {spread([a / b for a, b in zip(seconds[ref, n], seconds[d, n], strict=True)])}"
                    for d in args.dtypes
                    if d != ref
                )
            )
            if len(counts) == 2:  # the extra images over the extra time: start-up cancels out
                steady = {
                    d: [
                        (counts[1] - counts[0]) / (big - small)
                        for small, big in zip(seconds[d, counts[0]], seconds[d, counts[1]], strict=True)
                    ]
                    for d in args.dtypes
                }
                print(
                    f"without start-up ({counts[0]} to {counts[1]} layouts, {rounds}): "
                    + ", ".join(f"{d} {statistics.median(steady[d]):.1f} images/s" for d in args.dtypes)
                    + f"; vs --dtype {ref}: "
                    + ", ".join(
                        f"{d} {spread([a / b for a, b in zip(steady[d], steady[ref], strict=True)])}"
                        for d in args.dtypes
                        if d != ref
                    )
                )


if __name__ == "__main__":
    main()
