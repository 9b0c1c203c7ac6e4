"""The results figure: composition steps beside the single-shot baseline, and one object edited in both.

    python tools/make_figure.py --checkpoint runs/shapes64/composer.safetensors --baseline runs/baseline/baseline.safetensors \\
        --layout examples/layouts/village.json --edit 3 --category house --out docs/figure.png

Row 1: scenecomp's canvas after each step (background, then each object), then
the baseline's image for the same layout. Row 2: the same after changing object
``--edit`` to ``--category`` (same seeds in both models), then each model's
change outside the edited object's masks, amplified 4x (black = unchanged).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scenecomp import Composer, Layout
from scenecomp.compose import build_network, load_bundle, noise
from scenecomp.images import to_array
from scenecomp.nets import layout_map


def baseline_image(net, layout: Layout, seed: int, R: int, categories) -> torch.Tensor:
    masks = torch.from_numpy(layout.masks((R, R)))[None, :, None]
    cats = torch.tensor([[categories.index(o.category) for o in layout.objects]])
    with torch.no_grad():
        return net(noise(seed, net.z_dim)[None], layout_map(masks, cats, len(categories)))[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--baseline", type=Path, required=True)
    ap.add_argument("--layout", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--edit", type=int, default=0, help="index of the object to edit")
    ap.add_argument("--category", required=True, help="its new category")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scale", type=int, default=3)
    args = ap.parse_args()

    composer = Composer.from_checkpoint(args.checkpoint)
    R, cats = composer.resolution, list(composer.categories)
    base = build_network(load_bundle(args.baseline), "baseline", args.baseline)
    scene = composer.scene(Layout.load(args.layout, categories=cats), seed=args.seed)
    edited = scene.replace(args.edit, category=args.category)
    layout = scene.layout()  # every seed filled in: the baseline gets the same background seed
    edited_layout = edited.layout()
    b0 = baseline_image(base, layout, scene.background_seed, R, cats)
    b1 = baseline_image(base, edited_layout, scene.background_seed, R, cats)

    mask = torch.from_numpy(layout.masks((R, R))[args.edit] + edited_layout.masks((R, R))[args.edit]) > 0
    outside = (~mask).float()

    def change(a, b):
        return ((a - b).abs().mean(0, keepdim=True) * outside * 4 - 1).expand(3, -1, -1)

    gap = torch.ones(3, R, R // 8)
    row1 = [*scene.steps, gap, b0]
    row2 = [*edited.steps, gap, b1, gap, change(scene.image, edited.image), change(b0, b1)]
    width = max(sum(t.shape[-1] for t in row1), sum(t.shape[-1] for t in row2))
    canvas = np.full((2 * R + 4, width, 3), 255, np.uint8)
    for y, row in ((0, row1), (R + 4, row2)):
        x = 0
        for t in row:
            canvas[y : y + R, x : x + t.shape[-1]] = to_array(t)
            x += t.shape[-1]
    img = Image.fromarray(canvas)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.resize((img.width * args.scale, img.height * args.scale), Image.NEAREST).save(args.out)
    s_out = float((scene.image - edited.image).abs().mul(outside).sum() / outside.sum() / 3)
    b_out = float((b0 - b1).abs().mul(outside).sum() / outside.sum() / 3)
    print(f"wrote {args.out}; mean |change| outside the edited object: scenecomp {s_out:.2e}, baseline {b_out:.2e}")


if __name__ == "__main__":
    main()
