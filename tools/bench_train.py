"""Training speed of an experiment on this machine: batches/s, samples/s and the share of fp32 matmul peak.

    python tools/bench_train.py                       # experiment=shapes64, 30 timed batches
    python tools/bench_train.py --batches 50 --override model.foreground.channels=24

Generates a small Shapes set in a temporary folder, runs the real
``scenecomp-train`` code path (Hydra compose + Lightning ``Trainer.fit``), times
the batches after a warm-up, counts one batch's FLOPs with
``torch.utils.flop_counter`` and compares the achieved rate with a 2048² fp32
matmul measured in the same process.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from scenecomp.train import CONF, build


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


class Timer(L.Callback):
    """Counts the FLOPs of the first batch (forward and backward, all stages), then times the batches after the warm-up."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.batches, self.flops, self.seen = warmup, None, 0, 0, 0
        self.counter = FlopCounterMode(display=False)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.seen == 0:
            self.counter.__enter__()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        # count batches ourselves: batch_idx restarts every epoch
        self.seen += 1
        if self.seen == 1:
            self.counter.__exit__(None, None, None)
            self.flops = self.counter.get_total_flops()
        if self.seen == self.warmup:
            self.start = time.perf_counter()
        elif self.seen > self.warmup:
            self.batches += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="shapes64")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--override", nargs="*", default=[])
    args = ap.parse_args()
    peak = matmul_gflops()
    with tempfile.TemporaryDirectory() as tmp:
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("train", overrides=[
                f"experiment={args.experiment}", f"out={tmp}/run", f"data.train={tmp}/data/annotations.json",
                "data.val=null", "data.generate.train_count=256", "data.generate.val_count=0",
                f"steps={args.batches + args.warmup}", "preview_every=0", "checkpoint_every=100000",
                "trainer.enable_progress_bar=false", *args.override])
        datamodule, model, trainer = build(cfg)
        timer = Timer(args.warmup)
        trainer.callbacks.append(timer)
        trainer.fit(model, datamodule=datamodule)
        seconds = time.perf_counter() - timer.start
    flops = timer.flops
    bs = cfg.data.batch_size
    rate = timer.batches / seconds
    params = {name: sum(p.numel() for p in getattr(model, name).parameters()) / 1e6
              for name in ("g_bg", "d_bg", "g_fg", "d_fg", "d_obj", "g_base", "d_base") if hasattr(model, name)}
    print(f"experiment={args.experiment} stages={model.stages} batch={bs} resolution={cfg.data.resolution}")
    print("parameters (M): " + ", ".join(f"{k} {v:.2f}" for k, v in params.items()))
    print(f"batches/s {rate:.2f}   samples/s {rate * bs:.1f}   optimiser steps/s {rate * model.optimizer_steps_per_batch:.2f}")
    print(f"GFLOP per batch {flops / 1e9:.1f}   achieved {flops * rate / 1e9:.1f} GFLOP/s")
    print(f"fp32 matmul peak (2048^2, same process) {peak:.1f} GFLOP/s   fraction of peak {flops * rate / 1e9 / peak:.2f}")


if __name__ == "__main__":
    main()
