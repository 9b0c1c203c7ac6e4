"""Does synthetic data from scenecomp-synth help a downstream segmenter? One command, one table.

A small plain U-Net semantic segmenter (background + each category) is trained on
  (a) a small imbalanced real Shapes set: the first --real scenes of --train whose
      rarest category is cut to --rare instances (scenes holding more are skipped);
  (b) (a) plus --synthetic balanced scenes from scenecomp-synth (the shipped model by default);
  (c) the synthetic scenes only;
each with --seeds training seeds, and measured on the first --test scenes of --test-data:
per-category IoU and mIoU (over the object categories), as mean ± spread (half the range).
It also reports how often the real-scene object classifier (scenecomp/eval, features.pt)
names the synthetic objects' categories, beside the same on real test objects.

Examples:
  OMP_NUM_THREADS=1 nice -n 10 python tools/synth_benefit.py            # the table in docs/RESULTS.md
  python tools/synth_benefit.py --rows a --seeds 0                        # one row, one seed
  python tools/synth_benefit.py --real 40 --synthetic 16 --test 20 --steps 5 --seeds 0 --work /tmp/sb  # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scenecomp.compose import DEFAULT_MODEL
from scenecomp.data import SceneDataset
from scenecomp.eval.features import DEFAULT_FEATURES, load_features
from scenecomp.eval.protocol import MIN_VISIBLE
from scenecomp.images import from_array
from scenecomp.nets import object_crops
from scenecomp.render import file_sha256
from scenecomp.synth import synthesize

ROOT = Path(__file__).resolve().parent.parent


class UNet(nn.Module):
    """Plain U-Net: images ``[B,3,H,W]`` in [-1,1] -> logits ``[B,classes,H,W]``; two downsamplings."""

    def __init__(self, classes: int, width: int = 16):
        super().__init__()

        def block(i, o):
            return nn.Sequential(
                nn.Conv2d(i, o, 3, padding=1),
                nn.BatchNorm2d(o),
                nn.ReLU(),
                nn.Conv2d(o, o, 3, padding=1),
                nn.BatchNorm2d(o),
                nn.ReLU(),
            )

        w = width
        self.down1, self.down2, self.mid = block(3, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.up2, self.up1 = block(6 * w, 2 * w), block(3 * w, w)
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x):
        d1 = self.down1(x)
        d2 = self.down2(F.max_pool2d(d1, 2))
        m = self.mid(F.max_pool2d(d2, 2))
        u2 = self.up2(torch.cat([F.interpolate(m, scale_factor=2.0), d2], 1))
        u1 = self.up1(torch.cat([F.interpolate(u2, scale_factor=2.0), d1], 1))
        return self.head(u1)


def load_set(annotations, indices=None, rare: str | None = None, rare_limit: int = 0, count: int | None = None):
    """Images ``[N,3,R,R]`` float and label maps ``[N,R,R]`` (0 background, c + 1 category c: the
    objects painted in order, so each pixel has its visible object's label). With ``rare``, scenes
    are taken in order and a scene that would bring ``rare``'s instances above ``rare_limit`` is skipped."""
    ds = SceneDataset(annotations, max_objects=None, limit=None if count is None else 4 * count)
    images, labels, rare_seen = [], [], 0
    for i in range(len(ds)) if indices is None else indices:
        s = ds.read(i)
        if rare is not None:
            n = int((s["categories"] == ds.categories.index(rare)).sum())
            if rare_seen + n > rare_limit:
                continue
            rare_seen += n
        label = np.zeros(s["image"].shape[:2], np.int64)
        for m, c in zip(s["masks"], s["categories"], strict=False):
            label[m > 0] = c + 1
        images.append(from_array(s["image"]))
        labels.append(torch.from_numpy(label))
        if count is not None and len(images) == count:
            break
    return torch.stack(images), torch.stack(labels), ds.categories


def train(images, labels, classes: int, steps: int, seed: int, batch: int = 32, lr: float = 3e-3) -> UNet:
    torch.manual_seed(seed)
    net = UNet(classes).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(images), (batch,), generator=gen)
        x, y = images[idx], labels[idx]
        flip = torch.rand(batch, generator=gen) < 0.5  # left-right flips: Shapes scenes are symmetric
        x, y = torch.where(flip[:, None, None, None], x.flip(-1), x), torch.where(flip[:, None, None], y.flip(-1), y)
        with torch.autocast("cpu", torch.bfloat16):
            loss = F.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def iou(net: UNet, images, labels, classes: int) -> np.ndarray:
    """Per-class IoU over all test pixels ``[classes]`` (NaN where a class is absent from both)."""
    inter, union = np.zeros(classes), np.zeros(classes)
    for a in range(0, len(images), 64):
        with torch.autocast("cpu", torch.bfloat16):
            pred = net(images[a : a + 64].contiguous(memory_format=torch.channels_last)).argmax(1)
        y = labels[a : a + 64]
        for c in range(classes):
            p, t = pred == c, y == c
            inter[c] += (p & t).sum().item()
            union[c] += (p | t).sum().item()
    with np.errstate(invalid="ignore"):
        return inter / union


@torch.no_grad()
def classifier_accuracy(annotations, limit: int) -> tuple[float, int]:
    """Share of objects (visible share >= MIN_VISIBLE) whose category the real-scene classifier names."""
    net = load_features(DEFAULT_FEATURES)
    ds = SceneDataset(annotations, max_objects=None)
    crops, cats = [], []
    for i in range(min(limit, len(ds))):
        s = ds.read(i)
        image = from_array(s["image"])
        masks = torch.from_numpy(s["masks"]).float()[:, None]
        covered = torch.zeros_like(masks[0])
        for k in reversed(range(len(masks))):  # visible masks (synthetic labels already are)
            vis = masks[k] * (1 - covered)
            covered = torch.maximum(covered, masks[k])
            if vis.mean() >= MIN_VISIBLE:
                crops.append(object_crops(image[None], vis[None], net.crop_size)[0])
                cats.append(net.categories.index(ds.categories[s["categories"][k]]))
    logits = torch.cat([net.object_logits(torch.stack(crops[a : a + 256])) for a in range(0, len(crops), 256)])
    return float((logits.argmax(1) == torch.tensor(cats)).float().mean()), len(cats)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", default=str(ROOT / "data/shapes64/train/annotations.json"))
    p.add_argument("--test-data", default=str(ROOT / "data/shapes64/test/annotations.json"))
    p.add_argument("--checkpoint", default=str(DEFAULT_MODEL), help="model that makes the synthetic scenes")
    p.add_argument("--work", default=str(ROOT / "runs/synth_benefit"), help="folder for the synthetic set")
    p.add_argument("--real", type=int, default=300, help="real training scenes (a)")
    p.add_argument("--rare", default="sun", help="the category cut in (a) (default sun, Shapes' rarest)")
    p.add_argument("--rare-instances", type=int, default=10)
    p.add_argument("--synthetic", type=int, default=300, help="balanced synthetic scenes (b, c)")
    p.add_argument("--synth-seed", type=int, default=1)
    p.add_argument("--test", type=int, default=500, help="held-out real test scenes")
    p.add_argument("--steps", type=int, default=400, help="training steps per run (batch 32)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds")
    p.add_argument("--rows", default="a,b,c", help="which rows: a real, b real + synthetic, c synthetic only")
    p.add_argument("--json", help="write the numbers here too")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = args.rows.split(",")
    started = time.perf_counter()

    real_x, real_y, categories = load_set(args.train, rare=args.rare, rare_limit=args.rare_instances, count=args.real)
    test_x, test_y, _ = load_set(args.test_data, count=args.test)
    classes = len(categories) + 1
    counts = lambda y: {c: int(sum((torch.unique(im) == k + 1).any() for im in y)) for k, c in enumerate(categories)}  # noqa: E731
    # one folder per model: re-running after the shipped model changes makes a new set
    synth_dir = Path(args.work) / f"synth-{args.synthetic}-seed{args.synth_seed}-{file_sha256(args.checkpoint)[:12]}"
    data = {"real": (real_x, real_y)}
    if "b" in rows or "c" in rows:
        status = synthesize(
            synth_dir, args.synthetic, args.checkpoint, balance=True, seed=args.synth_seed, quiet=True, threads=1
        )
        if status:
            return status
        sx, sy, synth_categories = load_set(synth_dir / "annotations.json")
        assert synth_categories == categories, (synth_categories, categories)
        data["synthetic"] = (sx, sy)
        data["both"] = (torch.cat([real_x, sx]), torch.cat([real_y, sy]))
    print(f"real training scenes: {len(real_x)}, scenes holding each category: {counts(real_y)}", file=sys.stderr)
    setups = {
        "a": ("real", f"(a) {len(real_x)} real ({args.rare} cut to {args.rare_instances} instances)"),
        "b": ("both", f"(b) (a) + {args.synthetic} synthetic, balanced"),
        "c": ("synthetic", f"(c) {args.synthetic} synthetic only"),
    }
    results = {}
    for row in rows:
        key, title = setups[row]
        x, y = data[key]
        scores = np.stack([iou(train(x, y, classes, args.steps, s), test_x, test_y, classes) for s in seeds])
        results[row] = {"title": title, "iou": scores.tolist()}
        print(
            f"{title}: mIoU {np.nanmean(scores[:, 1:], 1).mean():.3f} ({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
        )

    head = "| training data | " + " | ".join(categories) + " | mIoU | command |"
    lines = [head, "|" + "---|" * (len(categories) + 3)]
    for row, r in results.items():
        s = np.array(r["iou"])
        m = np.nanmean(s[:, 1:], 1)
        cell = lambda v: f"{np.mean(v):.3f} ± {(np.max(v) - np.min(v)) / 2:.3f}"  # noqa: E731
        cells = [
            (f"**{cell(s[:, k + 1])}**" if c == args.rare else cell(s[:, k + 1])) for k, c in enumerate(categories)
        ]
        lines.append(
            f"| {r['title']} | " + " | ".join(cells) + f" | {cell(m)} | `python tools/synth_benefit.py --rows {row}` |"
        )
    print("\n".join(lines))
    accuracy = {}
    if "synthetic" in data:
        accuracy["synthetic"] = classifier_accuracy(synth_dir / "annotations.json", args.synthetic)
        accuracy["real test"] = classifier_accuracy(args.test_data, args.test)
        print(
            "\nreal-scene object classifier (scenecomp/assets/features.pt) names the category of: "
            + "; ".join(f"{k} objects {a:.1%} of {n}" for k, (a, n) in accuracy.items())
        )
    seconds = time.perf_counter() - started
    print(
        f"\nmodel {args.checkpoint} (SHA-256 {file_sha256(args.checkpoint)[:12]}...); "
        f"{len(seeds)} seeds x {len(rows)} rows, {args.steps} steps of batch 32 each; "
        f"{torch.get_num_threads()} thread(s); {seconds / 60:.1f} min in all"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "results": results, "classifier": accuracy, "seconds": seconds}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
