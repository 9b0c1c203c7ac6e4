"""Train the in-domain feature network that ``scenecomp-eval`` uses (FID/KID features and the classifier).

    python tools/train_features.py --generate-shapes 2 --data data/shapes64-features --out scenecomp/assets/features.safetensors
    python tools/train_features.py --data data/shapes64-features --out /tmp/features.safetensors --steps 300 --images 1000

The network must not be trained on the generators' training data
(data/shapes64/train, Shapes seed 0) nor on the test split (seed 1):
``--generate-shapes SEED`` first writes its own Shapes split of ``--images +
--holdout`` scenes with that seed into ``--data`` (unless one is there
already), 64x64 unless ``--resolution`` says otherwise. The shipped
``scenecomp/assets/features.safetensors`` records the split and its seed in its meta.

Trains `scenecomp.eval.features.FeatureNet` with `scenecomp.eval.feature_training.train_features`
on real images and object crops of that split (Shapes: also on its
object-free ``backgrounds/``, as negatives for the presence head; this is
evaluation tooling, the generators never see them), reports its accuracy on
held-out images of the same split (the last ``--holdout``, never trained on)
and writes a safetensors bundle (`scenecomp.bundle`: loads without running code), weights
in float16. One CPU thread by default, so that it can run beside training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from scenecomp.eval.feature_training import train_features
from scenecomp.eval.features import save_features
from scenecomp.shapes import write_dataset

USED_SEEDS = {0: "the generators' training split (data/shapes64/train)", 1: "the test split (data/shapes64/test)"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="example:\n  python tools/train_features.py --generate-shapes 2 "
        "--data data/shapes64-features --out scenecomp/assets/features.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        required=True,
        help="training split: COCO JSON or folder holding annotations.json "
        "(with --generate-shapes: the folder to write it to)",
    )
    p.add_argument(
        "--generate-shapes",
        type=int,
        metavar="SEED",
        help="first write a Shapes split with this seed into --data unless it holds one (use a seed "
        "no generator trains or is tested on: not 0 or 1)",
    )
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
        if args.generate_shapes is not None:
            if args.generate_shapes in USED_SEEDS:
                raise ValueError(
                    f"--generate-shapes {args.generate_shapes}: that seed is {USED_SEEDS[args.generate_shapes]}; "
                    "the feature network needs scenes disjoint from it"
                )
            if not (Path(args.data) / "annotations.json").is_file():
                stats = write_dataset(
                    args.data, count=args.images + args.holdout, size=args.resolution or 64, seed=args.generate_shapes
                )
                print(
                    f"wrote {stats['count']} Shapes scenes (seed {args.generate_shapes}) to {args.data} "
                    f"in {stats['seconds']:.0f} s",
                    flush=True,
                )
        net = train_features(
            args.data,
            images=args.images,
            holdout=args.holdout,
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            resolution=args.resolution,
            progress=False,
            log=lambda m: print(m, flush=True),
        )
        save_features(args.out, net, net.categories, net.meta)
    except (ValueError, OSError) as e:
        print(f"train_features: error: {e}", file=sys.stderr)
        return 2
    m = net.meta
    size = Path(args.out).stat().st_size
    print(
        f"held-out ({m['heldout_images']} images, {m['heldout_objects']} objects): object accuracy "
        f"{m['heldout_object_accuracy']:.3f}, silhouette-swapped {m['heldout_swapped_accuracy']:.3f}, "
        f"presence: all labels right {m['heldout_presence_accuracy']:.3f}, per label "
        f"{m['heldout_presence_label_accuracy']:.3f}, objects found {m['heldout_presence_object_recall']:.3f}"
        + (f", background purity {m['heldout_background_purity']:.3f}" if "heldout_background_purity" in m else "")
    )
    print(
        f"wrote {args.out} ({size / 1e6:.2f} MB, {sum(p.numel() for p in net.parameters())} parameters) "
        f"in {time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
