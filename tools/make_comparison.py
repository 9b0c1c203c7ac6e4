"""Real scenes beside scenes composed from their layouts: the figure a person judges the model by.

    python tools/make_comparison.py --checkpoint scenecomp/assets/composer.safetensors --data data/shapes64/test \\
        --count 8 --out docs/real_vs_composed.png

Rows, for the first ``--count`` held-out scenes: the real image; the composed
image of its layout (objects in the real paint order, sample seed i for scene i);
a second sample (seed 1000 + i); and the composer's background alone (seed i),
which is the first sample's background. Images are
scaled 3x with nearest-neighbour so single pixels stay visible.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from scenecomp import Composer
from scenecomp.images import to_array
from scenecomp.layout import load_coco_layouts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a composer.safetensors bundle (default: the shipped model)")
    ap.add_argument("--data", type=Path, required=True, help="a Shapes split folder (annotations.json, images/)")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--scale", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    composer = Composer.from_checkpoint(args.checkpoint) if args.checkpoint else Composer.pretrained()
    layouts = load_coco_layouts(args.data / "annotations.json", composer.categories)[: args.count]
    files = {im["id"]: im["file_name"] for im in json.loads((args.data / "annotations.json").read_text())["images"]}
    real = [np.asarray(Image.open(args.data / "images" / files[layout.image_id]).convert("RGB")) for layout in layouts]
    samples = [composer.render(layout, seeds=[i, 1000 + i]) for i, layout in enumerate(layouts)]
    backgrounds = [composer.background(seed=i).image for i in range(len(layouts))]
    rows = [
        real,
        [to_array(s[0]) for s in samples],
        [to_array(s[1]) for s in samples],
        [to_array(b) for b in backgrounds],
    ]
    gap = 2
    R = real[0].shape[0]
    grid = np.full((len(rows) * (R + gap) - gap, len(layouts) * (R + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            grid[i * (R + gap) : i * (R + gap) + R, j * (R + gap) : j * (R + gap) + R] = image
    picture = Image.fromarray(grid)
    picture.resize((picture.width * args.scale, picture.height * args.scale), Image.NEAREST).save(args.out)
    print(
        f"wrote {args.out}: rows real / composed (seed i) / composed (seed 1000+i) / background only (seed i), {len(layouts)} scenes"
    )


if __name__ == "__main__":
    main()
