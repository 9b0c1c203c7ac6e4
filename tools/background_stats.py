"""What tells a model's backgrounds from real Shapes backgrounds, in numbers a person can read.

    python tools/background_stats.py --checkpoint scenecomp/assets/composer.safetensors
    python tools/background_stats.py --checkpoint runs/bg3/composer.safetensors --real data/shapes64/test/backgrounds -n 1000

Renders ``-n`` backgrounds (``Composer.background(seed)``, seeds 10000, 10001, ...) and reads
as many real object-free backgrounds (Shapes' ``backgrounds/`` folder, kept for evaluation only),
then prints for each side, with the real set split in two halves as the floor:

- light: the share of day / dusk / night skies, told by the mean brightness of the top four rows
  (Shapes' night skies are below 50 of 255, dusk skies 50-110, day skies above), and beside them
  the mix Shapes draws from (``shapes.LIGHT_SHARES``, the training split's mix in expectation): a
  model that learned the training split should match that, within the standard error at ``-n``, not
  the sampled real set's own shares;
- grain: the standard deviation of horizontal pixel differences in the bottom quarter (ground)
  and the top eighth (sky): Shapes grains its ground and leaves its sky smooth;
- horizon: the median of each image's largest row-to-row jump of mean brightness (a sharp
  horizon is one large jump, a soft one several small ones);
- ground along rows / down columns: the median RMS, over the bottom quarter, of the brightness
  detail along 9 pixels of a row and of a column (`scenecomp.training.texture_stats`'s directional
  bands, which G_bg's texture loss matches): Shapes' ground blotches are wider than tall, so real
  grounds vary less along their rows than down their columns, and round blotches (read as rocks at
  night) show as too much along the rows;
- purity, and what spoils it: the share of backgrounds in which the evaluation's feature network
  (``--features``, the shipped in-domain one) detects no object, and the share detected as each
  category (a pale blob in the sky reads as a cloud, a dark smudge or coarse grain on the ground
  as a rock); printed when the network's resolution is the model's.

The two-sample test of ``scenecomp-eval`` says *whether* backgrounds can be told apart; this
says *by what*. Standard errors of the shares are sqrt(p(1-p)/n).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scenecomp.compose import Composer
from scenecomp.eval.features import DEFAULT_FEATURES, load_features
from scenecomp.eval.metrics import background_purity
from scenecomp.shapes import LIGHT_SHARES, LIGHTS
from scenecomp.training import texture_stats


def read_real(folder: Path, count: int, resolution: int) -> np.ndarray:
    """``[N,H,W,3]`` float32 in [0,255]: the first ``count`` PNGs of ``folder`` in name order."""
    paths = sorted(folder.glob("*.png"))[:count]
    if not paths:
        raise SystemExit(f"error: {folder}: no PNG backgrounds")
    images = [np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths]
    for p, im in zip(paths, images, strict=True):
        if im.shape[:2] != (resolution, resolution):
            raise SystemExit(f"error: {p}: {im.shape[1]}x{im.shape[0]}, the model paints {resolution}x{resolution}")
    return np.stack(images)


def statistics(images: np.ndarray) -> dict[str, float]:
    """``images [N,H,W,3]`` in [0,255] -> the figures the docstring lists."""
    H = images.shape[1]
    sky = images[:, :4].mean((1, 2, 3))
    rows = images.mean((2, 3))  # [N,H]
    # the directional bands of the channel sum (channels 15, 19), in the bottom quarter's 8x8 cells
    bands = torch.cat([texture_stats(b) for b in torch.from_numpy(images).permute(0, 3, 1, 2).split(100)])
    ground = bands[:, [15, 19], -max(H // 32, 1) :].mean((2, 3)).numpy() / 3  # per channel, as the grain
    return {
        "night": float(np.mean(sky < 50)),
        "dusk": float(np.mean((sky >= 50) & (sky < 110))),
        "day": float(np.mean(sky >= 110)),
        "grain_ground": float(np.median(np.diff(images[:, -H // 4 :], axis=2).std((1, 2, 3)))),
        "grain_sky": float(np.median(np.diff(images[:, : max(H // 8, 2)], axis=2).std((1, 2, 3)))),
        "horizon_jump": float(np.median(np.abs(np.diff(rows, axis=1)).max(1))),
        "ground_along_rows": float(np.median(ground[:, 0])),
        "ground_down_columns": float(np.median(ground[:, 1])),
    }


def row(name: str, n: int, s: dict[str, float]) -> str:
    se = max(np.sqrt(s[k] * (1 - s[k]) / n) for k in ("day", "dusk", "night"))
    return (
        f"{name:28s} n={n:5d}  day {s['day']:.2f}  dusk {s['dusk']:.2f}  night {s['night']:.2f} (se <= {se:.2f})"
        f"  grain: ground {s['grain_ground']:5.2f} sky {s['grain_sky']:5.2f}  horizon jump {s['horizon_jump']:5.1f}"
        f"  ground along rows {s['ground_along_rows']:4.2f} down columns {s['ground_down_columns']:4.2f}"
    )


def detections(net, images: np.ndarray, categories: list[str]) -> str:
    """Purity and the share detected as each category of ``images [N,H,W,3]`` in [0,255]."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2) / 127.5 - 1
    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(net.presence_logits(b)) for b in x.split(100)])
    shares = " ".join(f"{c} {float(s):.3f}" for c, s in zip(categories, (probs >= 0.5).double().mean(0), strict=True))
    return f"purity {background_purity(probs):.3f}  detected as: {shares}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a composer bundle (or a run folder holding one)")
    ap.add_argument("--real", type=Path, default=Path("data/shapes64/test/backgrounds"))
    ap.add_argument("-n", type=int, default=400, help="backgrounds on each side (default 400)")
    ap.add_argument(
        "--features", type=Path, default=DEFAULT_FEATURES, help="the object detector (default: the shipped)"
    )
    args = ap.parse_args(argv)
    composer = Composer.from_checkpoint(args.checkpoint)
    real = read_real(args.real, args.n, composer.resolution)
    fake = np.stack([np.asarray(composer.background(seed=10_000 + i).to_pil(), np.float32) for i in range(args.n)])
    half = len(real) // 2
    print(row("real, first half", half, statistics(real[:half])))
    print(row("real, second half", len(real) - half, statistics(real[half:])))
    print(row("real", len(real), statistics(real)))
    print(row(Path(args.checkpoint).name, len(fake), statistics(fake)))
    se = max(np.sqrt(p * (1 - p) / args.n) for p in LIGHT_SHARES)
    drawn = "  ".join(f"{name} {p:.2f}" for name, p in zip(LIGHTS, LIGHT_SHARES, strict=True))
    print(f"{'Shapes draws':28s} {drawn} (a sample of {args.n} varies by se <= {se:.3f})")
    net = load_features(args.features)
    if net.resolution != composer.resolution:
        print(f"detections: not measured ({args.features.name} sees {net.resolution}x{net.resolution} images)")
        return
    print(f"{'real':28s} {detections(net, real, net.categories)}")
    print(f"{Path(args.checkpoint).name:28s} {detections(net, fake, net.categories)}")


if __name__ == "__main__":
    main()
