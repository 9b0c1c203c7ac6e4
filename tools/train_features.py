"""Train the in-domain feature network that ``scenecomp-eval`` uses (FID/KID features and the classifier).

    python tools/train_features.py --data data/shapes64/train --out scenecomp/assets/features.pt
    python tools/train_features.py --data data/shapes64/train --out /tmp/features.pt --steps 300 --images 1000

Trains `scenecomp.evaluate.FeatureNet` with `scenecomp.evaluate.train_features`
on real images and object crops of a training split (Shapes: also on its
object-free ``backgrounds/``, as negatives for the presence head; this is
evaluation tooling, the generators never see them), reports its accuracy on
held-out images of the same split (the last ``--holdout``, never trained on)
and writes plain data loadable with ``torch.load(weights_only=True)``, weights
in float16. One CPU thread by default, so that it can run beside training.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from scenecomp.evaluate import save_features, train_features


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="example:\n  python tools/train_features.py --data data/shapes64/train "
                                       "--out scenecomp/assets/features.pt",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="training split: COCO JSON or folder holding annotations.json")
    p.add_argument("--out", required=True, help="where to write the network (.pt)")
    p.add_argument("--images", type=int, default=6000, help="training images, the first of the split (default 6000)")
    p.add_argument("--holdout", type=int, default=1000, help="held-out images, the last of the split (default 1000)")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    p.add_argument("--batch-size", type=int, default=64, help="object crops per step; whole images: half (default 64)")
    p.add_argument("--resolution", type=int, help="image side (default: the split's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        net = train_features(args.data, images=args.images, holdout=args.holdout, steps=args.steps,
                             batch_size=args.batch_size, seed=args.seed, resolution=args.resolution,
                             progress=False, log=lambda m: print(m, flush=True))
        save_features(args.out, net, net.categories, net.meta)
    except (ValueError, OSError) as e:
        print(f"train_features: error: {e}", file=sys.stderr)
        return 2
    m = net.meta
    size = Path(args.out).stat().st_size
    print(f"held-out ({m['heldout_images']} images, {m['heldout_objects']} objects): object accuracy "
          f"{m['heldout_object_accuracy']:.3f}, silhouette-swapped {m['heldout_swapped_accuracy']:.3f}, "
          f"presence: all labels right {m['heldout_presence_accuracy']:.3f}, per label "
          f"{m['heldout_presence_label_accuracy']:.3f}, objects found {m['heldout_presence_object_recall']:.3f}"
          + (f", background purity {m['heldout_background_purity']:.3f}" if "heldout_background_purity" in m else ""))
    print(f"wrote {args.out} ({size / 1e6:.2f} MB, {sum(p.numel() for p in net.parameters())} parameters) "
          f"in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
