"""Training speed on this machine, for several precisions and memory formats in one run.

    python tools/bench_train.py                               # experiment=shapes64: bf16 vs fp32, NCHW vs channels_last
    python tools/bench_train.py --batches 50 --variants bf16-mixed:cl 32-true:nchw
    python tools/bench_train.py --experiment tiny --batches 2 --warmup 1     # smoke test
    python tools/bench_train.py --profile                     # also: the ops that take the time (default variant)
    python tools/bench_train.py --experiment shapes64_background --variants 32-true:cl --keep-freed-memory

Generates a small Shapes set in a temporary folder and, for each variant
(``PRECISION:cl`` or ``PRECISION:nchw``), runs the real ``scenecomp-train`` code
path (Hydra compose + ``build`` + Lightning ``Trainer.fit``), times the batches
after a warm-up and counts one batch's FLOPs (all stages, forward and backward)
with ``torch.utils.flop_counter``'s formulas. Rates are printed as fractions of the bf16
and fp32 2048² matmul rates measured in the same process, and every variant
as a ratio to the first ``32-true`` one. ``--keep-freed-memory`` then calls
`scenecomp.precision.keep_freed_memory` (what ``scenecomp-train`` does first)
and times every variant again (``+kept``), each as a ratio to itself before:
the allocator's share, measured in one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from peak import Peak
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from scenecomp.precision import keep_freed_memory
from scenecomp.train import CONF, build

DEFAULT_VARIANTS = ["32-true:nchw", "32-true:cl", "bf16-mixed:nchw", "bf16-mixed:cl"]


class FlopCount(TorchDispatchMode):
    """Total FLOPs of the ops run under it, by the formulas of ``torch.utils.flop_counter``.
    ``FlopCounterMode`` itself cannot count a training step with R1: its per-module tracker hooks the
    backward pass, which ``torch.autograd.grad`` (the R1 penalty) refuses ("A leaf node was passed to
    _will_engine_execute_node")."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


class Timer(L.Callback):
    """Counts the FLOPs of the first batch, then times the batches after the warm-up."""

    def __init__(self, warmup: int, profile: bool):
        self.warmup, self.start, self.batches, self.flops, self.seen = warmup, None, 0, 0, 0
        self.counter = FlopCount()
        self.profiler = torch.profiler.profile() if profile else None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.seen == 0:
            self.counter.__enter__()
        if self.profiler and self.seen == self.warmup:
            self.profiler.__enter__()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seen += 1  # count batches ourselves: batch_idx restarts every epoch
        if self.seen == 1:
            self.counter.__exit__(None, None, None)
            self.flops = self.counter.total
        if self.seen == self.warmup:
            self.start = time.perf_counter()
        elif self.seen > self.warmup:
            self.batches += 1

    def on_train_end(self, trainer, module):
        self.seconds = time.perf_counter() - self.start
        if self.profiler:
            self.profiler.__exit__(None, None, None)


def run_variant(args, tmp: str, precision: str, layout: str, suffix: str = "") -> tuple[dict, Timer]:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"experiment={args.experiment}",
                f"out={tmp}/run-{precision}-{layout}{suffix}",
                f"data.train={tmp}/data/annotations.json",
                "data.val=null",
                "data.generate.train_count=256",
                "data.generate.val_count=0",
                f"steps={args.batches + args.warmup}",
                "preview_every=0",
                "checkpoint_every=100000",
                "trainer.enable_progress_bar=false",
                "trainer.accelerator=cpu",
                f"trainer.precision={precision}",
                f"channels_last={layout == 'cl'}",
                *args.override,
            ],
        )
    L.seed_everything(0, verbose=False)
    datamodule, model, trainer = build(cfg)
    timer = Timer(args.warmup, args.profile)
    trainer.callbacks.append(timer)
    trainer.fit(model, datamodule=datamodule)
    rate = timer.batches / timer.seconds
    info = dict(
        stages=model.stages,
        batch=cfg.data.batch_size,
        resolution=cfg.data.resolution,
        precision=trainer.precision,
        rate=rate,
        steps_per_batch=model.optimizer_steps_per_batch,
        params={
            n: sum(p.numel() for p in getattr(model, n).parameters()) / 1e6
            for n in ("g_bg", "d_bg", "g_fg", "d_fg", "d_obj", "g_base", "d_base", "g_plate")
            if hasattr(model, n)
        },
    )
    return info, timer


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="shapes64")
    ap.add_argument("--batches", type=int, default=20, help="timed batches per variant (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed batches first (default 3)")
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, metavar="PRECISION:{cl,nchw}")
    ap.add_argument("--override", nargs="*", default=[], help="more Hydra overrides, e.g. model.foreground.channels=24")
    ap.add_argument("--profile", action="store_true", help="print the top ops of the first variant's timed batches")
    ap.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="then time every variant again after keep_freed_memory() (as scenecomp-train runs): +kept",
    )
    args = ap.parse_args(argv)
    for variant in args.variants:
        if variant.partition(":")[2] not in ("cl", "nchw"):
            ap.error(f"--variants: {variant!r} is not PRECISION:cl or PRECISION:nchw")
    peak = Peak.measure()
    print(peak)
    results = []
    rounds = [""] + (["+kept"] if args.keep_freed_memory else [])
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in rounds:
            if suffix and not keep_freed_memory():
                ap.error("--keep-freed-memory: this system's C library is not glibc (nothing to change)")
            for variant in args.variants:
                precision, _, layout = variant.partition(":")
                info, timer = run_variant(args, tmp, precision, layout, suffix)
                results.append((variant + suffix, info, timer))
                if args.profile and len(results) == 1:
                    print(timer.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    variant, info, _ = results[0]
    print(f"experiment={args.experiment} stages={info['stages']} batch={info['batch']} resolution={info['resolution']}")
    print("parameters (M): " + ", ".join(f"{k} {v:.2f}" for k, v in info["params"].items()))
    reference = next((r for r in results if r[0].startswith("32")), results[0])
    rates = {variant: info["rate"] for variant, info, _ in results}
    for variant, info, timer in results:
        gflops = timer.flops * info["rate"] / 1e9
        before = variant.removesuffix("+kept")
        kept = f"; {info['rate'] / rates[before]:.2f}x {before}" if before not in (variant, reference[0]) else ""
        print(
            f"{variant:21s} (ran as {info['precision']}): {info['rate']:.2f} batches/s, "
            f"{info['rate'] * info['batch']:.1f} samples/s, {timer.flops / 1e9:.1f} GFLOP/batch, "
            f"{peak.describe(gflops)}; {info['rate'] / reference[1]['rate']:.2f}x {reference[0]}{kept}"
        )


if __name__ == "__main__":
    main()
