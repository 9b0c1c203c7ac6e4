"""COCO-format scene data: a Dataset and ``scenecomp-data`` (the LightningDataModule
is in scenecomp/datamodule.py, so that this module does not import Lightning).

Any COCO *instances* JSON plus an image folder works: Shapes output
(``scenecomp-data shapes``), a prepared subset (``scenecomp-data coco``) or real
COCO. Each sample is one image in [-1, 1] with its objects in paint order (back
to front) as float masks and category indices, padded to a fixed count with
empty masks (an empty mask is a no-op when composing).

Geometry: every image is centre-cropped to a square of its shorter side and
that square is resized to ``resolution`` (the same as scaling the shorter side
to ``resolution`` and centre-cropping). Images use area interpolation when
shrinking and bilinear when enlarging; masks use nearest neighbour.

Images are read lazily, one per ``__getitem__``: building a dataset over COCO's
118k images reads only the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from scenecomp.atomic import new_folder, write_atomically
from scenecomp.images import from_array
from scenecomp.layout import CocoAnnotation, CocoFile, CocoImage, LayoutError, read_coco

__all__ = [
    "DataError",
    "SceneDataset",
    "crop_box",
    "fit_image",
    "fit_mask",
    "main",
]


class DataError(ValueError):
    """Bad dataset input; the message names the file and the problem."""


# --------------------------------------------------------------------------- geometry
def crop_box(height: int, width: int) -> tuple[int, int, int]:
    """The centre square ``(top, left, side)`` of a ``height`` x ``width`` image."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def fit_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """Centre-crop an ``[H, W, C]`` uint8 image to a square, resize to ``resolution``."""
    top, left, side = crop_box(*image.shape[:2])
    square = image[top : top + side, left : left + side]
    if side == resolution:
        return np.ascontiguousarray(square)
    interpolation = cv2.INTER_AREA if side > resolution else cv2.INTER_LINEAR
    return cv2.resize(square, (resolution, resolution), interpolation=interpolation)


def fit_mask(mask: np.ndarray, resolution: int) -> np.ndarray:
    """Centre-crop an ``[H, W]`` uint8 {0,1} mask to a square, resize (nearest)."""
    top, left, side = crop_box(*mask.shape[:2])
    square = mask[top : top + side, left : left + side]
    if side == resolution:
        return np.ascontiguousarray(square)
    return cv2.resize(square, (resolution, resolution), interpolation=cv2.INTER_NEAREST_EXACT)


# --------------------------------------------------------------------------- COCO files
def _read_coco(path: Path) -> CocoFile:
    """The checked COCO file (`scenecomp.layout.read_coco`); its errors as `DataError`."""
    try:
        return read_coco(path)
    except LayoutError as e:
        raise DataError(str(e)) from None


def _area_in_crop(annotation: CocoAnnotation, rle: dict, height: int, width: int) -> float:
    """Object area (original pixels) inside the image's centre square."""
    top, left, side = crop_box(height, width)
    if annotation.area is not None and annotation.bbox is not None:
        x, y, w, h = annotation.bbox
        if x >= left and y >= top and x + w <= left + side and y + h <= top + side:
            return annotation.area  # wholly inside: trust the file's area
        if x >= left + side or y >= top + side or x + w <= left or y + h <= top:
            return 0.0  # wholly outside
    square = mask_utils.frPyObjects(np.array([[left, top, side, side]], dtype=np.float64), height, width)[0]
    return float(mask_utils.area(mask_utils.merge([rle, square], intersect=True)))


def _as_name_list(categories) -> list[str] | None:
    if categories is None:
        return None
    if isinstance(categories, str):
        return [c.strip() for c in categories.split(",") if c.strip()]
    return [str(c) for c in categories]


# --------------------------------------------------------------------------- dataset
class SceneDataset(torch.utils.data.Dataset):
    """Images with ordered instance masks from a COCO instances JSON.

    Args:
        annotations: a COCO instances JSON, or a folder holding ``annotations.json``.
        images: the image folder (``file_name`` is relative to it); default
            ``images/`` beside the JSON.
        categories: names to keep, in this order = category indices 0..C-1
            (a list, or one comma-separated string); default all categories of
            the file in id order. Objects of other categories are dropped.
        resolution: side R of the square samples.
        max_objects: K, the padded object count. An image with more objects
            keeps its K *largest* (area inside the crop; ties go to the earlier
            one in paint order), still in paint order. ``None``: no cap, K is
            the largest object count in the dataset.
        min_area: minimum object area as a fraction of the cropped image;
            smaller objects are dropped. Objects wholly outside the crop are
            always dropped.
        limit: keep at most this many images (the first usable ones, in file order).

    The file is read and checked by ``scenecomp.layout.read_coco`` (as layouts
    are; its errors become `DataError`). Paint order is ``CocoFile.paint_order``:
    the file's annotation order when ``info.paint_order == "annotation_order"``
    (Shapes, prepared subsets), else largest first (real COCO has no paint
    order). For ordering and filtering the area counted is the area inside the
    centre crop. The file's ``area`` and ``bbox`` are trusted when present; crowd
    (``iscrowd``) regions are kept as objects of their category; an object whose
    segmentation covers no pixel is dropped. Images left with no object are dropped.

    Sample ``dataset[i]``: ``image`` float32 [3,R,R] in [-1,1]; ``masks`` float32
    [K,1,R,R] in {0,1}; ``categories`` int64 [K] (0 for padding); ``valid`` bool
    [K] (False for padding and for an object that vanished in the resize);
    ``index`` int.
    """

    def __init__(
        self,
        annotations,
        images=None,
        categories=None,
        resolution: int = 64,
        max_objects: int | None = 8,
        min_area: float = 0.0,
        limit: int | None = None,
    ):
        path = Path(annotations)
        if path.is_dir():
            path = path / "annotations.json"
        if not isinstance(resolution, int) or resolution < 1:
            raise DataError(f"{path}: resolution must be a positive integer, got {resolution!r}")
        if max_objects is not None and (not isinstance(max_objects, int) or max_objects < 1):
            raise DataError(f"{path}: max_objects must be a positive integer, got {max_objects!r}")
        if not 0.0 <= float(min_area) < 1.0:
            raise DataError(f"{path}: min_area is a fraction of the image, in [0, 1); got {min_area!r}")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise DataError(f"{path}: limit must be a positive integer, got {limit!r}")
        coco = _read_coco(path)
        self.annotations_path = path
        self.images_dir = Path(images) if images is not None else path.parent / "images"
        if not self.images_dir.is_dir():
            raise DataError(f"{self.images_dir}: image folder not found (images of {path})")
        self.resolution = resolution
        self.min_area = float(min_area)
        self.info = coco.info
        self.has_paint_order = coco.annotation_order

        # categories: file id -> model index
        by_name = {name: cid for cid, name in sorted(coco.categories.items())}
        wanted = _as_name_list(categories)
        if wanted is None:
            wanted = list(by_name)
        if not wanted:
            raise DataError(f"{path}: no categories selected")
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise DataError(
                f"{path}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                f"{', '.join(repr(n) for n in unknown)}; known: {', '.join(by_name) or '(none)'}"
            )
        if len(set(wanted)) != len(wanted):
            raise DataError(f"{path}: categories repeat a name: {', '.join(wanted)}")
        self.categories: list[str] = list(wanted)
        self.category_ids: list[int] = [by_name[n] for n in wanted]  # file's ids, by model index
        index_of = {by_name[n]: i for i, n in enumerate(wanted)}

        self.max_objects = max_objects
        self._records: list[dict] = []
        for image in coco.images:
            objects = self._select(coco, image, index_of)
            if objects:
                self._records.append(
                    {"id": image.id, "file_name": image.file_name, "height": image.height, "width": image.width}
                    | {"objects": objects}
                )
                if limit is not None and len(self._records) >= limit:
                    break
        if not self._records:
            raise DataError(
                f"{path}: no usable object after filters (categories: {', '.join(self.categories)}; "
                f"min_area: {self.min_area}; {len(coco.images)} images, "
                f"{sum(len(image.annotations) for image in coco.images)} annotations in the file)"
            )
        if self.max_objects is None:
            self.max_objects = max(len(r["objects"]) for r in self._records)

    def _select(self, coco: CocoFile, image: CocoImage, index_of: dict[int, int]) -> list[dict]:
        """Kept objects of one image, in paint order: dicts with rle, category, annotation id and iscrowd."""
        side = min(image.height, image.width)
        candidates = []
        for ann in image.annotations:
            if ann.category_id not in index_of:
                continue
            try:
                rle = coco.rle(image, ann, allow_empty=True)  # an empty shape is dropped like a tiny one
            except LayoutError as e:
                raise DataError(str(e)) from None
            area = 0.0 if rle is None else _area_in_crop(ann, rle, image.height, image.width)
            if area <= 0 or area / (side * side) < self.min_area:
                continue
            candidates.append((ann, rle, area))
        ordered = coco.paint_order(candidates, lambda c: c[2])  # by the area inside the crop
        if self.max_objects is not None and len(ordered) > self.max_objects:
            rank = sorted(range(len(ordered)), key=lambda i: (-ordered[i][2], i))
            keep = set(rank[: self.max_objects])
            ordered = [c for i, c in enumerate(ordered) if i in keep]
        return [
            {"rle": rle, "category": index_of[ann.category_id], "annotation_id": ann.id, "iscrowd": ann.iscrowd}
            for ann, rle, _ in ordered
        ]

    def __len__(self) -> int:
        return len(self._records)

    def image_info(self, i: int) -> dict:
        """``id``, ``file_name``, ``path``, ``height``, ``width`` and object count of sample ``i``."""
        r = self._records[i]
        return {
            "id": r["id"],
            "file_name": r["file_name"],
            "path": self.images_dir / r["file_name"],
            "height": r["height"],
            "width": r["width"],
            "objects": len(r["objects"]),
        }

    def read(self, i: int) -> dict:
        """Sample ``i`` unpadded, at the model resolution, as numpy.

        ``image`` uint8 [R,R,3]; ``masks`` uint8 [N,R,R] in {0,1} in paint order;
        ``categories`` int64 [N]; ``annotation_ids`` and ``iscrowd`` lists.
        """
        r = self._records[i]
        file = self.images_dir / r["file_name"]
        if not file.is_file():
            raise DataError(f"{file}: image file not found (image {r['id']} of {self.annotations_path})")
        try:
            from PIL import Image

            with Image.open(file) as im:
                pixels = np.array(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
            raise DataError(f"{file}: cannot read image: {e}") from None
        if pixels.shape[:2] != (r["height"], r["width"]):
            raise DataError(
                f"{file}: image is {pixels.shape[0]}x{pixels.shape[1]} (HxW) but "
                f"{self.annotations_path} says {r['height']}x{r['width']}"
            )
        R = self.resolution
        objects = r["objects"]
        masks = np.zeros((len(objects), R, R), dtype=np.uint8)
        for k, obj in enumerate(objects):
            masks[k] = fit_mask(mask_utils.decode(obj["rle"]), R)
        return {
            "image": fit_image(pixels, R),
            "masks": masks,
            "categories": np.array([o["category"] for o in objects], dtype=np.int64),
            "annotation_ids": [o["annotation_id"] for o in objects],
            "iscrowd": [o["iscrowd"] for o in objects],
        }

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        s = self.read(i)
        K, R, n = self.max_objects, self.resolution, len(s["masks"])
        masks = torch.zeros(K, 1, R, R, dtype=torch.float32)
        masks[:n, 0] = torch.from_numpy(s["masks"]).float()
        categories = torch.zeros(K, dtype=torch.int64)
        categories[:n] = torch.from_numpy(s["categories"])
        valid = torch.zeros(K, dtype=torch.bool)
        valid[:n] = masks[:n].flatten(1).amax(1) > 0
        image = from_array(s["image"])
        return {"image": image.contiguous(), "masks": masks, "categories": categories, "valid": valid, "index": i}


# --------------------------------------------------------------------------- command line
def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def prepare_coco(
    annotations,
    images,
    out,
    categories=None,
    size: int = 128,
    max_objects: int | None = None,
    min_area: float = 0.0,
    limit: int | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> dict:
    """Write a resized, filtered COCO subset to ``out`` (see ``scenecomp-data coco --help``),
    as a whole (`scenecomp.atomic.new_folder`: a non-empty ``out`` is refused unless ``overwrite``).

    Returns a summary dict: ``images``, ``objects``, ``categories``, ``annotations`` (path), ``seconds``.
    """
    start = time.perf_counter()
    dataset = SceneDataset(annotations, images, categories, size, max_objects, min_area, limit)
    final = Path(out)
    if _inside(dataset.images_dir, final) or _inside(dataset.annotations_path, final):
        raise DataError(
            f"{final}: the output folder holds the source images or annotations, which writing "
            "it would replace; choose another --out"
        )
    with new_folder(final, overwrite) as out:
        result = _write_coco_subset(dataset, out, size, max_objects, progress)
    return {
        "images": len(result["images"]),
        "objects": len(result["annotations"]),
        "categories": dataset.categories,
        "annotations": final / "annotations.json",
        "seconds": time.perf_counter() - start,
    }


def _write_coco_subset(dataset: SceneDataset, out: Path, size: int, max_objects, progress: bool) -> dict:
    (out / "images").mkdir(parents=True, exist_ok=True)
    from PIL import Image

    images_out, anns_out = [], []
    indices = range(len(dataset))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="coco", unit="img", file=sys.stderr, disable=None)
    for i in indices:
        info, sample = dataset.image_info(i), dataset.read(i)
        # named for the image id; string ids (COCO allows them) by position, in names no integer id gives
        name = f"{info['id']:012d}.png" if isinstance(info["id"], int) else f"image_{i:012d}.png"
        Image.fromarray(sample["image"]).save(out / "images" / name)
        images_out.append(
            {"id": info["id"], "file_name": name, "height": size, "width": size, "source_file_name": info["file_name"]}
        )
        objects = []
        for mask, cat, aid, crowd in zip(
            sample["masks"], sample["categories"], sample["annotation_ids"], sample["iscrowd"], strict=False
        ):
            area = int(mask.sum())
            if area == 0:
                continue  # vanished in the resize
            rle = mask_utils.encode(np.asfortranarray(mask))
            objects.append(
                {
                    "image_id": info["id"],
                    "category_id": int(cat) + 1,
                    "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")},
                    "area": area,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": crowd,
                    "source_annotation_id": aid,
                }
            )
        if not dataset.has_paint_order:
            objects.sort(key=lambda a: -a["area"])  # stable: ties keep the dataset's order
        anns_out.extend(objects)
    for n, ann in enumerate(anns_out, 1):
        ann["id"] = n
    if dataset.has_paint_order:
        note = "annotations keep the paint order (back to front) of the source file"
    else:
        note = (
            "annotations of each image are ordered largest first (area after resize): the source has no "
            "paint order (COCO does not record one), and large regions are usually behind small ones"
        )
    result = {
        "info": {
            "description": f"scenecomp subset of {dataset.annotations_path.name}",
            "source": str(dataset.annotations_path),
            "resolution": size,
            "paint_order": "annotation_order",
            "note": note,
            "min_area": dataset.min_area,
            "max_objects": max_objects,
        },
        "images": images_out,
        "annotations": anns_out,
        "categories": [
            {"id": i + 1, "name": n, "source_id": dataset.category_ids[i]} for i, n in enumerate(dataset.categories)
        ],
    }
    write_atomically(out / "annotations.json", lambda tmp: tmp.write_text(json.dumps(result), encoding="utf-8"))
    return result


_EPILOG = """examples:
  scenecomp-data shapes --out data/shapes64 --count 10000 --size 64 --seed 0
  scenecomp-data coco --annotations coco/annotations/instances_train2017.json \\
      --images coco/train2017 --out data/coco-animals128 \\
      --categories giraffe,elephant,zebra,sheep,cow,bear --size 128 --min-area 0.01
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scenecomp-data",
        description="Make and prepare scenecomp datasets.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{shapes,coco}")
    s = sub.add_parser(
        "shapes",
        help="generate a procedural Shapes dataset (no downloads)",
        epilog="example:\n  scenecomp-data shapes --out data/shapes64 --count 10000 --size 64 --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--out", required=True, help="output folder (images/, backgrounds/, annotations.json)")
    s.add_argument("--count", type=int, required=True, help="number of scenes")
    s.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    s.add_argument("--seed", type=int, default=0, help="random seed, a non-negative integer (default 0)")
    s.add_argument("--workers", type=int, default=1, help="processes to render with (default 1; same output)")
    c = sub.add_parser(
        "coco",
        help="prepare a resized subset of a COCO instances file",
        epilog="example:\n" + _EPILOG.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--annotations", required=True, help="COCO instances JSON (e.g. instances_train2017.json)")
    c.add_argument("--images", help="its image folder (default: images/ beside the JSON)")
    c.add_argument("--out", required=True, help="output folder (images/*.png and annotations.json)")
    c.add_argument("--categories", help="comma-separated names to keep, in index order (default: all)")
    c.add_argument("--size", type=int, default=128, help="output side in pixels (default 128)")
    c.add_argument("--max-objects", type=int, help="keep at most this many (largest) objects per image")
    c.add_argument(
        "--min-area", type=float, default=0.0, help="drop objects smaller than this fraction of the image (default 0)"
    )
    c.add_argument("--limit", type=int, help="write at most this many images")
    for parser in (s, c):
        parser.add_argument(
            "--overwrite", action="store_true", help="replace a non-empty --out folder as a whole (default: refuse it)"
        )
    return p


def _positive(name: str, value) -> None:
    if value is not None and value < 1:
        raise DataError(f"--{name} must be a positive integer, got {value}")


def main(argv: list[str] | None = None) -> int:
    """``scenecomp-data``: errors print one line to stderr and exit 2."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "shapes":
            _positive("count", args.count)
            _positive("size", args.size)
            from scenecomp.shapes import write_dataset

            _positive("workers", args.workers)
            if args.seed < 0:
                raise DataError(f"--seed must be a non-negative integer, got {args.seed}")
            start = time.perf_counter()
            stats = (
                write_dataset(
                    args.out,
                    count=args.count,
                    size=args.size,
                    seed=args.seed,
                    workers=args.workers,
                    overwrite=args.overwrite,
                )
                or {}
            )
            seconds = time.perf_counter() - start
            out = Path(args.out)
            objects = f" with {stats['objects']} objects" if "objects" in stats else ""
            print(
                f"wrote {args.count} scenes ({args.size}x{args.size}){objects} to {out} "
                f"in {seconds:.2f} s ({args.count / max(seconds, 1e-9):.0f} scenes/s)"
            )
            print(f"annotations: {out / 'annotations.json'}")
            if (out / "preview.png").is_file():
                print(f"preview: {out / 'preview.png'}")
        else:
            _positive("size", args.size)
            _positive("max-objects", args.max_objects)
            _positive("limit", args.limit)
            r = prepare_coco(
                args.annotations,
                args.images,
                args.out,
                args.categories,
                args.size,
                args.max_objects,
                args.min_area,
                args.limit,
                progress=True,
                overwrite=args.overwrite,
            )
            print(
                f"wrote {r['images']} images ({args.size}x{args.size}) with {r['objects']} objects of "
                f"{len(r['categories'])} categories ({', '.join(r['categories'])}) in {r['seconds']:.1f} s"
            )
            print(f"annotations: {r['annotations']}")
    except (ValueError, OSError) as e:  # DataError, LayoutError-like errors, missing files
        print(f"scenecomp-data: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
