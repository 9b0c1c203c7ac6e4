"""``scenecomp-eval``: the command line of the evaluation (`main`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from scenecomp.compose import DEFAULT_MODEL
from scenecomp.eval import EvaluationError
from scenecomp.eval.features import DEFAULT_FEATURES, inception_features, load_features
from scenecomp.eval.protocol import evaluate, load_models
from scenecomp.eval.report import format_table, result_json, write_json
from scenecomp.eval.two_sample import REPEATS
from scenecomp.precision import keep_freed_memory

_EPILOG = """examples:
  scenecomp-eval --checkpoint runs/shapes64/composer.safetensors --baseline runs/shapes64-baseline/baseline.safetensors \\
      --baseline-matched runs/shapes64-baseline-matched/baseline.safetensors \\
      --data data/shapes64/test --samples 500 --seeds 2 --json results.json
  scenecomp-eval --baseline runs/shapes64-baseline/baseline.safetensors --data data/shapes64/test --samples 100
  scenecomp-eval --data data/shapes64/test --samples 100        # the shipped model
  python tools/train_features.py --generate-shapes 2 --data data/shapes64-features --out scenecomp/assets/features.safetensors

--samples N: the first N images of the split are the layouts (each rendered --seeds
times), the next N the reference that FID/KID are measured against, so the split
needs 2N images. Every distance and two-sample test has its real-vs-real figure
at the same sample size in the "real" column.
"""

# (option, column name, bundle file in a run folder, network required)
_MODELS = (
    ("checkpoint", None, "composer.safetensors", None),
    ("baseline", None, "baseline.safetensors", "baseline"),
    ("baseline_matched", "baseline-matched", "baseline.safetensors", "baseline"),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scenecomp-eval",
        description="Metrics of a scenecomp bundle and/or single-shot baseline bundles on a COCO-format test split.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        help="a bundle to evaluate (composer.safetensors, or a run folder holding one; "
        "a baseline.safetensors works too); without it and without --baseline: the shipped model",
    )
    p.add_argument(
        "--baseline",
        help="a single-shot baseline bundle trained for the same batches "
        "(baseline.safetensors, or a run folder holding one)",
    )
    p.add_argument(
        "--baseline-matched",
        help="a single-shot baseline bundle trained for the same wall-clock "
        "as the model (compute-matched); its own column, baseline-matched",
    )
    p.add_argument("--data", required=True, help="test split: a COCO JSON or a folder holding annotations.json")
    p.add_argument("--images", help="its image folder (default: images/ beside the JSON)")
    p.add_argument(
        "--features",
        default=str(DEFAULT_FEATURES),
        help="in-domain feature network file (default: the shipped scenecomp/assets/features.safetensors)",
    )
    p.add_argument(
        "--inception",
        metavar="WEIGHTS",
        help="also FID/KID with Inception-v3 from this local weights file (needs torch-fidelity)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=500,
        help="layouts, the first of the split; the next as many are the reference (default 500: a 1000-image split)",
    )
    p.add_argument("--seeds", type=int, default=2, help="samples per layout (default 2; diversity needs 2+)")
    p.add_argument(
        "--two-sample-repeats",
        type=int,
        default=REPEATS,
        help=f"classifiers per two-sample test, seeds 0.. (default {REPEATS}): the table gives their mean and range",
    )
    p.add_argument("--batch-size", type=int, default=32, help="layouts per batch (default 32)")
    p.add_argument("--max-objects", type=int, default=8, help="objects per layout, largest kept (default 8)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", help="write the results here as JSON")
    return p


def run(args: argparse.Namespace) -> dict:
    if not (args.checkpoint or args.baseline or args.baseline_matched):
        args.checkpoint = str(DEFAULT_MODEL)  # the shipped model, as scenecomp-render
    for name in ("samples", "seeds", "two_sample_repeats", "batch_size", "max_objects"):
        if getattr(args, name) < 1:
            raise EvaluationError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.features.startswith("inception:"):
        raise EvaluationError(
            "--features takes an in-domain feature network file; for Inception-v3 use "
            "--inception WEIGHTS (the in-domain network is still needed for the classifier metrics)"
        )
    net = load_features(args.features)
    inception = inception_features(args.inception) if args.inception else None
    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise EvaluationError(f"--device {args.device}: {e}") from None
    models: dict = {}
    for option, column, file, require in _MODELS:
        path = getattr(args, option)
        if not path:
            continue
        if Path(path).is_dir():  # a run folder: its bundle
            path = Path(path) / file
        if str(path).endswith(".ckpt"):
            raise EvaluationError(
                f"{path}: a Lightning checkpoint; evaluate the bundle the run wrote "
                f"(composer.safetensors or baseline.safetensors in its folder)"
            )
        categories, found = load_models(path, require)
        if categories != net.categories:
            raise EvaluationError(
                f"{path}: its categories {categories} differ from the feature network's "
                f"{net.categories} ({args.features})"
            )
        for m in found:
            if require and m.kind != require:
                continue
            name = column or m.kind
            name = name if name not in models else f"{name}:{Path(path).stem}"
            if name in models:
                raise EvaluationError(f"{path}: given twice")
            models[name] = m
    return evaluate(
        args.data,
        models,
        net,
        samples=args.samples,
        seeds=args.seeds,
        batch_size=args.batch_size,
        max_objects=args.max_objects,
        images=args.images,
        device=device,
        inception=inception,
        two_sample_repeats=args.two_sample_repeats,
        progress=True,
    )


def main(argv: list[str] | None = None) -> int:
    """``scenecomp-eval``: prints the table (and writes JSON); errors print one line and exit 2."""
    args = _parser().parse_args(argv)
    keep_freed_memory()
    try:
        result = run(args)
        print(format_table(result))
        if args.json:
            write_json(args.json, result_json(result))
            print(f"results: {args.json}")
    except (ValueError, OSError) as e:  # BundleError, DataError, LayoutError, EvaluationError, missing files
        print(f"scenecomp-eval: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
