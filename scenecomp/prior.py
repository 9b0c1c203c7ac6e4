"""The layout prior: where synthetic layouts come from when none are given.

Fitted on a model's training layouts (any COCO instances file), it keeps

- how many objects an image holds (a histogram),
- how often each category occurs (instances per category),
- a bank of real objects per category (at most ``shapes_per_category``,
  drawn at random): each object's shape (its mask cropped to its box, COCO
  RLE), its box (x, y, w, h as fractions of the image) and its paint rank
  (its position in its image's paint order, 0 = first/back .. 1 = last/front).

`LayoutPrior.sample` draws one layout: the object count from the histogram;
each object's category by a quota (`Quota`: the prior's own shares, equal
shares, or given ones); its *placement* (box and paint rank) from one real
object of that category and its *shape* from another, scaled to the
placement's area (keeping its own aspect ratio), standing on the placement's
bottom centre, flipped left-right half the time. Objects are painted in order
of their placements' ranks (so sky objects go first and near objects last, as
in the data), and an object left with fewer than `min_object_pixels` visible
pixels is dropped, as Shapes drops hidden objects.

The prior is plain JSON (``scenecomp/assets/prior.json`` beside the shipped
bundle; ``scenecomp-synth fit-prior`` fits one)::

    {"format": "scenecomp-layout-prior", "version": 1,
     "source": {"file": "annotations.json", "sha256": "...", "images": 20000, "objects": 66977},
     "categories": ["tree", ...],
     "objects_per_image": [[1, 3463], [2, 3548], ...],     # [count, images]
     "instances": {"tree": 18133, ...},
     "shapes": {"tree": [{"box": [x, y, w, h], "rank": 0.25, "rle": {"size": [h, w], "counts": "..."}}, ...]}}
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenecomp.atomic import write_atomically
from scenecomp.layout import LayoutError, encode_rle, quote, rasterize, read_coco
from scenecomp.shapes import min_object_pixels

PRIOR_FORMAT = "scenecomp-layout-prior"
PRIOR_VERSION = 1
DEFAULT_PRIOR = Path(__file__).parent / "assets" / "prior.json"
MAX_PRIOR_BYTES = 64 * 2**20  # a prior is read whole: bound it first
MAX_BANK = 10_000  # objects per category in a prior file
MAX_COUNT = 1000  # objects per image (as layouts: scenecomp.layout.MAX_OBJECTS)


class PriorError(ValueError):
    """A prior file that cannot be used, or input it cannot be fitted on; the message names the file."""


@dataclass(frozen=True)
class Shape:
    """One real object of the bank: its mask cropped to its box (bool ``[h,w]``), its box as
    fractions of its image ``(x, y, w, h)`` and its paint rank in [0, 1]."""

    crop: np.ndarray
    box: tuple[float, float, float, float]
    rank: float


# ----------------------------------------------------------------------------- placing masks


def place(crop: np.ndarray, box, size, flip: bool = False) -> np.ndarray:
    """``crop`` (bool ``[h,w]``) scaled to fill ``box`` = (x, y, w, h) in pixels of a canvas of
    ``size`` (height, width), nearest neighbour, mirrored left-right when ``flip``; parts off the
    canvas are cut off. Returns bool ``[H,W]`` (possibly empty)."""
    H, W = size
    x, y, w, h = (float(v) for v in box)
    ch, cw = crop.shape
    if w <= 0 or h <= 0:
        return np.zeros((H, W), bool)
    # each canvas pixel centre samples the crop pixel under it
    sy = np.floor((np.arange(H) + 0.5 - y) / h * ch).astype(np.int64)
    sx = np.floor((np.arange(W) + 0.5 - x) / w * cw).astype(np.int64)
    if flip:
        sx = cw - 1 - sx
    valid = ((sy >= 0) & (sy < ch))[:, None] & ((sx >= 0) & (sx < cw))[None]
    return valid & crop[np.clip(sy, 0, ch - 1)[:, None], np.clip(sx, 0, cw - 1)[None]]


def crop_to_box(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A non-empty bool mask ``[H,W]`` cut to its bounding box: (crop, (x, y, w, h) in pixels)."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return mask[y0:y1, x0:x1].copy(), (int(x0), int(y0), int(x1 - x0), int(y1 - y0))


def keep_visible(masks: list[np.ndarray], min_pixels: int) -> list[int]:
    """Indices (in paint order) of the objects that keep at least ``min_pixels`` visible pixels,
    deciding front to back, so a dropped object uncovers nothing it did not cover."""
    covered, keep = None, []
    for i in reversed(range(len(masks))):
        covered = np.zeros_like(masks[i]) if covered is None else covered
        if np.count_nonzero(masks[i] & ~covered) >= min_pixels:
            keep.append(i)
            covered = covered | masks[i]
    return keep[::-1]


# ----------------------------------------------------------------------------- category quotas


class Quota:
    """Draws categories so that instance counts follow ``shares`` (``{name: share}``, summing to 1).

    A category is drawn with probability proportional to what it still lacks for
    the count ``window`` objects from now; counts of the objects actually kept
    are added with `take`. So counts stay within about ``window * share`` of their
    targets whatever the run's length, yet draws stay random (an image may hold
    two trees). ``window`` defaults to twice the number of categories with a share.
    """

    def __init__(self, shares: dict[str, float], window: int | None = None):
        self.names = [c for c, s in shares.items() if s > 0]
        self.shares = np.array([shares[c] for c in self.names], np.float64)
        self.shares /= self.shares.sum()
        self.counts = np.zeros(len(self.names), np.int64)
        self.window = window or 2 * len(self.names)

    def lacking(self, extra: int = 0) -> dict[str, float]:
        """What each category lacks for the count ``window + extra`` objects from now (may be negative)."""
        total = self.counts.sum() + self.window + extra
        return dict(zip(self.names, self.shares * total - self.counts, strict=False))

    def draw(self, rng: np.random.Generator, pending: list[str] = ()) -> str:
        """One category, given the ``pending`` ones already drawn for the image being made."""
        lack = self.lacking(len(pending))
        for c in pending:
            lack[c] -= 1
        weights = np.maximum([lack[c] for c in self.names], 0.0) + 1e-9
        return self.names[int(rng.choice(len(self.names), p=weights / weights.sum()))]

    def take(self, categories) -> None:
        for c in categories:
            if c in self.names:
                self.counts[self.names.index(c)] += 1


# ----------------------------------------------------------------------------- the prior


class LayoutPrior:
    """Per-category counts, sizes, positions and paint order of a set of layouts (module docstring)."""

    def __init__(self, data: dict, path=None):
        self.data, self.path = data, path
        self.categories: list[str] = list(data["categories"])
        counts = np.array([n for n, _ in data["objects_per_image"]], np.int64)
        images = np.array([k for _, k in data["objects_per_image"]], np.float64)
        self._counts, self._count_p = counts, images / images.sum()
        self.bank: dict[str, list[Shape]] = {
            c: [
                Shape(rasterize({"rle": e["rle"]}, e["rle"]["size"]), tuple(e["box"]), float(e["rank"]))
                for e in data["shapes"].get(c, [])
            ]
            for c in self.categories
        }

    # --- shares

    def shares(self) -> dict[str, float]:
        """Each category's share of the instances in the data the prior was fitted on
        (categories without a shape in the bank get none)."""
        counts = {c: self.data["instances"].get(c, 0) if self.bank[c] else 0 for c in self.categories}
        total = sum(counts.values())
        return {c: n / total for c, n in counts.items()}

    # --- sampling

    def sample(self, rng: np.random.Generator, size, quota: Quota) -> list[tuple[str, np.ndarray]]:
        """One layout at ``size`` (height, width): ``(category, bool mask)`` in paint order,
        every object keeping at least `min_object_pixels` visible pixels. ``quota`` picks the
        categories and is told which were kept."""
        H, W = size
        n = int(rng.choice(self._counts, p=self._count_p))
        picked: list[str] = []
        for _ in range(n):
            picked.append(quota.draw(rng, picked))
        placed = []
        for c in picked:
            spot, shape = (self.bank[c][int(rng.integers(len(self.bank[c])))] for _ in range(2))
            x, y, w, h = spot.box
            ch, cw = shape.crop.shape
            # the shape's own aspect ratio (in pixels), the spot's area, standing on the spot's bottom centre
            area = w * W * h * H
            new_w = math.sqrt(area * cw / ch)
            new_h = area / new_w
            box = ((x + w / 2) * W - new_w / 2, (y + h) * H - new_h, new_w, new_h)
            mask = place(shape.crop, box, size, flip=bool(rng.random() < 0.5))
            if mask.any():
                placed.append((spot.rank, c, mask))
        placed.sort(key=lambda p: p[0])  # stable: equal ranks keep their draw order
        kept = [placed[i] for i in keep_visible([m for _, _, m in placed], min_object_pixels(min(H, W)))]
        quota.take(c for _, c, _ in kept)
        return [(c, m) for _, c, m in kept]

    # --- files

    @classmethod
    def fit(cls, annotations, shapes_per_category: int = 256, seed: int = 0, categories=None) -> LayoutPrior:
        """Fit on a COCO instances file (paint order as `scenecomp.layout.CocoFile.paint_order`
        reads it); ``categories`` keeps only those names (default: all of the file's)."""
        path = Path(annotations)
        try:
            coco = read_coco(path)
            layouts = coco.layouts()
        except LayoutError as e:
            raise PriorError(str(e)) from None
        names = [name for _, name in sorted(coco.categories.items())]
        if categories is not None:
            unknown = [c for c in categories if c not in names]
            if unknown:
                raise PriorError(
                    f"{path}: no category {', '.join(map(quote, unknown))} in the file; "
                    f"its categories: {', '.join(names)}"
                )
            names = list(categories)
        histogram: dict[int, int] = {}
        instances = {c: 0 for c in names}
        objects: dict[str, list] = {c: [] for c in names}
        for layout in layouts:
            H, W = layout.size
            kept = [o for o in layout.objects if o.category in instances]
            histogram[len(kept)] = histogram.get(len(kept), 0) + 1
            for k, obj in enumerate(kept):
                instances[obj.category] += 1
                objects[obj.category].append((layout, k, len(kept), obj))
        if not any(instances.values()):
            raise PriorError(f"{path}: no object of the categories {', '.join(names)} to fit a prior on")
        rng = np.random.default_rng(seed)
        shapes = {}
        for c in names:
            chosen = (
                sorted(rng.choice(len(objects[c]), min(shapes_per_category, len(objects[c])), replace=False))
                if objects[c]
                else []
            )
            shapes[c] = []
            for i in chosen:
                layout, k, n, obj = objects[c][int(i)]
                H, W = layout.size
                crop, (x, y, w, h) = crop_to_box(rasterize(obj.shape, layout.size))
                shapes[c].append(
                    {
                        "box": [round(x / W, 5), round(y / H, 5), round(w / W, 5), round(h / H, 5)],
                        "rank": round(k / (n - 1), 5) if n > 1 else 0.5,
                        "rle": encode_rle(crop),
                    }
                )
        data = {
            "format": PRIOR_FORMAT,
            "version": PRIOR_VERSION,
            "source": {
                "file": path.name,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "images": len(layouts),
                "objects": sum(instances.values()),
            },
            "categories": names,
            "objects_per_image": [[n, k] for n, k in sorted(histogram.items())],
            "instances": instances,
            "shapes": shapes,
        }
        return cls(_checked(data, path), path)

    def save(self, path) -> None:
        """Write the prior's JSON atomically (one bank entry per line: small diffs)."""
        d = self.data
        head = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items() if k != "shapes"]
        banks = ",\n".join(
            f"    {json.dumps(c)}: [\n" + ",\n".join(f"      {json.dumps(e)}" for e in entries) + "\n    ]"
            for c, entries in d["shapes"].items()
        )
        text = "{\n" + ",\n".join(head) + ',\n  "shapes": {\n' + banks + "\n  }\n}\n"
        write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path) -> LayoutPrior:
        """Read and check a prior file; `PriorError` names the file and what is wrong."""
        path = Path(path)
        try:
            if path.stat().st_size > MAX_PRIOR_BYTES:
                raise PriorError(f"{path}: {path.stat().st_size} bytes; a layout prior has at most {MAX_PRIOR_BYTES}")
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise PriorError(f"{path}: no such layout prior file") from None
        except (OSError, ValueError) as e:
            if isinstance(e, PriorError):
                raise
            raise PriorError(f"{path}: not a readable JSON layout prior ({e})") from None
        return cls(_checked(data, path), path)


def _checked(data, path) -> dict:
    """``data`` if it is a well-formed prior, else `PriorError` naming the file and the entry."""

    def bad(problem):
        return PriorError(f"{path}: {problem}")

    if not isinstance(data, dict) or data.get("format") != PRIOR_FORMAT:
        tag = data.get("format") if isinstance(data, dict) else None
        raise bad(f"not a scenecomp layout prior (format tag {tag!r}); fit one with scenecomp-synth fit-prior")
    if data.get("version") != PRIOR_VERSION:
        raise bad(f"layout prior version {data.get('version')!r}; this scenecomp reads version {PRIOR_VERSION}")
    cats = data.get("categories")
    if not (
        isinstance(cats, list) and cats and all(isinstance(c, str) and c for c in cats) and len(set(cats)) == len(cats)
    ):
        raise bad("'categories' must be a list of distinct non-empty names")
    hist = data.get("objects_per_image")
    if not (
        isinstance(hist, list)
        and hist
        and all(
            isinstance(e, list) and len(e) == 2 and all(_is_count(v) for v in e) and e[0] <= MAX_COUNT for e in hist
        )
        and sum(e[1] for e in hist) > 0
    ):
        raise bad(
            f"'objects_per_image' must be a list of [objects (0..{MAX_COUNT}), images] pairs of "
            "non-negative integers with some images"
        )
    inst = data.get("instances")
    if not (isinstance(inst, dict) and set(inst) <= set(cats) and all(_is_count(v) for v in inst.values())):
        raise bad("'instances' must map the prior's categories to non-negative integers")
    banks = data.get("shapes")
    if not (isinstance(banks, dict) and set(banks) <= set(cats)):
        raise bad("'shapes' must map the prior's categories to lists of objects")
    for c, entries in banks.items():
        if not isinstance(entries, list) or len(entries) > MAX_BANK:
            raise bad(f"shapes of {quote(c)} must be a list of at most {MAX_BANK} objects")
        for i, e in enumerate(entries):
            ok = (
                isinstance(e, dict)
                and isinstance(e.get("box"), list)
                and len(e["box"]) == 4
                and all(_is_fraction(v) for v in e["box"])
                and e["box"][2] > 0
                and e["box"][3] > 0
                and _is_fraction(e.get("rank"))
                and isinstance(e.get("rle"), dict)
            )
            if not ok:
                raise bad(
                    f"shapes of {quote(c)}, object {i}: needs 'box' [x, y, w, h] (fractions in [0, 1], "
                    "w and h > 0), 'rank' in [0, 1] and 'rle'"
                )
            try:
                size = e["rle"].get("size")
                if not rasterize({"rle": e["rle"]}, size).any():
                    raise LayoutError("the shape is empty")
            except LayoutError as err:
                raise bad(f"shapes of {quote(c)}, object {i}: {err.problem}") from None
    if not any(banks.get(c) for c in cats):
        raise bad("holds no shape at all")
    return data


def _is_count(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0


def _is_fraction(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1
