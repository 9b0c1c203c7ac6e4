"""OpenRaster (``.ora``): a scene's layers for GIMP, Krita and MyPaint.

The file (OpenRaster 0.0.5, baseline) is a ZIP holding, in this order:

- ``mimetype``: ``image/openraster``, first and stored uncompressed, so tools
  recognise the file from its first bytes;
- ``stack.xml``: the canvas size and the layers, top layer first;
- ``data/NN.png``: one canvas-sized RGBA PNG per layer. ``00.png`` is the
  background (opaque); ``t.png`` is object t (paint order, from 1) as it was
  painted: the canvas after step t inside the object's own (whole) mask, alpha
  255 there and 0 elsewhere;
- ``mergedimage.png``: the finished image; ``Thumbnails/thumbnail.png``: it,
  at most 256 pixels a side.

Restacking is exact: a pixel's colour in the image is the colour the last
object covering it painted there (`composite` leaves the outside of each mask
unchanged), which is that object's layer's colour, and every later layer is
transparent there. Occluded parts of an object stay in its layer, so moving a
layer in an editor shows what the object painted behind the ones in front.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
from PIL import Image

from scenecomp.atomic import write_atomically

MIMETYPE = b"image/openraster"
VERSION = "0.0.5"
THUMBNAIL_SIDE = 256


def write_ora(path, steps: Sequence[Image.Image], masks: Sequence[np.ndarray], names: Sequence[str]) -> Path:
    """Write an OpenRaster file atomically (the old file or the new one, never half of one).

    ``steps``: RGB images, ``steps[0]`` the background and ``steps[t]`` the canvas
    after object t; ``masks[t - 1]``: bool ``[H,W]``, object t's mask; ``names``:
    one layer name per step. Returns the path.
    """
    if not (len(steps) == len(masks) + 1 == len(names)):
        raise ValueError(
            f"write_ora: {len(steps)} steps, {len(masks)} masks and {len(names)} names; "
            "need one step more than masks and one name per step"
        )
    width, height = steps[0].size
    layers = [steps[0].convert("RGBA")]
    for t, mask in enumerate(masks, 1):
        rgba = np.zeros((height, width, 4), np.uint8)
        rgba[mask, :3] = np.asarray(steps[t].convert("RGB"))[mask]
        rgba[mask, 3] = 255
        layers.append(Image.fromarray(rgba, "RGBA"))
    digits = max(2, len(str(len(masks))))
    sources = [f"data/{t:0{digits}d}.png" for t in range(len(layers))]

    image = ElementTree.Element("image", version=VERSION, w=str(width), h=str(height))
    stack = ElementTree.SubElement(image, "stack")
    for name, src in reversed(list(zip(names, sources, strict=False))):  # the top layer comes first
        ElementTree.SubElement(
            stack,
            "layer",
            name=name,
            src=src,
            x="0",
            y="0",
            opacity="1.0",
            visibility="visible",
            **{"composite-op": "svg:src-over"},
        )
    xml = ElementTree.tostring(image, encoding="UTF-8", xml_declaration=True)

    merged = steps[-1].convert("RGBA")
    thumbnail = merged.copy()
    thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w") as z:
            z.writestr(_entry("mimetype"), MIMETYPE, compress_type=zipfile.ZIP_STORED)
            z.writestr(_entry("stack.xml"), xml, compress_type=zipfile.ZIP_DEFLATED)
            for name, data in [
                *zip(sources, map(_png, layers), strict=True),
                ("mergedimage.png", _png(merged)),
                ("Thumbnails/thumbnail.png", _png(thumbnail)),
            ]:
                z.writestr(_entry(name), data, compress_type=zipfile.ZIP_STORED)  # PNG is compressed already

    return write_atomically(path, write)


def _entry(name: str) -> zipfile.ZipInfo:
    """A zip entry dated 1980-01-01 (zip's epoch), not by the clock, so the same scene gives the same bytes."""
    entry = zipfile.ZipInfo(name)
    entry.external_attr = 0o644 << 16  # rw-r--r-- when unpacked
    return entry


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def layer_names(background_seed: int, objects) -> list[str]:
    """Layer names, bottom up: ``0 background (seed s)``, then ``t category (seed s)`` for object t
    (paint order, from 1); ``objects`` have ``category`` and ``seed``."""
    return [
        f"0 background (seed {background_seed})",
        *(f"{t} {obj.category} (seed {obj.seed})" for t, obj in enumerate(objects, 1)),
    ]
