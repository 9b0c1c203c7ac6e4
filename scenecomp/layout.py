"""Layout files: a canvas size, a background seed and objects in paint order.

A layout file (JSON, version 1; this docstring is its reference, docs/ARCHITECTURE.md shows where it fits)::

    {"size": [64, 64],                       # [height, width] in pixels
     "background": {"seed": 0},              # optional
     "objects": [                            # paint order: back to front
       {"category": "tree", "polygon": [[10, 60], [20, 20], [30, 60]], "seed": 3},
       {"category": "house", "bbox": [34, 30, 20, 22]},       # [x, y, w, h]
       {"category": "sun", "mask": "sun.png"},                # relative to this file
       {"category": "rock", "rle": {"size": [64, 64], "counts": "..."}}]}

Coordinates are pixels, x right, y down; a pixel is inside a polygon or box
when its centre is. A COCO instances JSON is also a source of layouts, one per
image (`read_coco` / `CocoFile` is the project's one COCO parser; training data
reads files through it too). Bad input raises `LayoutError`, whose message names
the file, the object (``object 2``, ``annotations[2] (id 3)``) and the problem.

Mask images: inside is alpha > 127 where the image has a varying alpha channel,
else luminance > 127 (`image_mask`); a flat image is an error. Mask files are
read only when they are regular files inside the layout file's folder, unless
the layout is loaded with ``trusted=True``. Sizes, point counts and coordinates
are bounded (`MAX_SIDE`, `MAX_PIXELS`, `MAX_OBJECTS`, `MAX_POLYGON_POINTS`, `MAX_COORDINATE`,
`MAX_OUTLINE`) and checked before anything is allocated, so a hostile file costs little.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from scenecomp.atomic import write_atomically

SHAPE_KINDS = ("polygon", "bbox", "mask", "rle")
_TOP_KEYS = {"version", "size", "background", "objects"}
_OBJECT_KEYS = {"category", "seed", *SHAPE_KINDS}

# torch's CPU generator keeps only the low 32 bits of a seed (2**32 + 5 draws what 5 draws),
# so larger seeds would silently repeat smaller ones.
SEED_LIMIT = 2**32

# Limits that keep a hostile file from costing more than a few hundred MB or a
# few seconds; every one is checked before anything is allocated. Sizes are those
# of the canvas, an RLE and a mask image's header alike.
MAX_SIDE = 8192  # pixels per side
MAX_PIXELS = 2**24  # height * width (16.7M, e.g. 4096 x 4096)
MAX_POLYGON_POINTS = 10_000
MAX_OBJECTS = 1000  # per layout: rendering holds a mask per object and batch entry
MAX_COORDINATE = 1e9  # |x|, |y| of polygon and bbox values
MAX_OUTLINE = 2**22  # pixels: a COCO polygon's outline length and coordinates (see _check_outline)
MAX_KEPT_PIXELS = 2**22  # objects * height * width of the masks a layout keeps (`Layout.from_dict`): 4 MiB
MAX_ECHO = 60  # characters of a user's string shown in a message


class LayoutError(ValueError):
    """Bad layout input. The message names the file (or '<layout>'), the
    object index when relevant, and the problem, e.g.
    ``scene.json: object 2: polygon needs at least 3 points, got 2``.
    """

    def __init__(self, problem: str, path=None, index=None, *, image: str | None = None):
        self.problem = problem
        self.path = path
        self.index = index
        self.image = image  # which image of a COCO file, when the layout came from one
        where = [str(path) if path is not None else "<layout>"]
        if image is not None:
            where.append(image)
        if index is not None:
            where.append(f"object {index}")
        super().__init__(": ".join([*where, problem]))


@dataclass(frozen=True)
class LayoutObject:
    """One object: its category, exactly one shape, and an optional seed.

    ``shape`` is one of ``{"polygon": [[x, y], ...]}``, ``{"bbox": [x, y, w, h]}``,
    ``{"mask": "file.png"}`` or ``{"rle": {"size": [h, w], "counts": ...}}``.
    """

    category: str
    shape: dict
    seed: int | None = None


@dataclass
class Layout:
    """A canvas size (height, width), objects in paint order, and seeds."""

    size: tuple[int, int]
    objects: list[LayoutObject]
    background_seed: int | None = None
    path: Path | None = None  # the file it came from; mask paths are relative to its folder
    # Mask files may lie outside the layout's folder (see `rasterize`); kept here
    # because masks are read again whenever `masks()` is called.
    trusted: bool = field(default=False, repr=False, compare=False, kw_only=True)
    # (id, file_name) of the COCO image this layout was made from; gives `name`
    # and error messages.
    _image: tuple | None = field(default=None, repr=False, compare=False)
    # From `from_dict(..., keep_masks=True)`: the masks rasterised to check the shapes,
    # (size, path, trusted, objects, bool [N,H,W]); `masks()` at that size returns them while the
    # rest is unchanged, so a layout read to be rendered is rasterised once.
    _kept: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.size = (int(self.size[0]), int(self.size[1]))
        self.objects = list(self.objects)
        if self.path is not None:
            self.path = Path(self.path)

    @property
    def image_id(self):
        """The COCO image id for a layout taken from a COCO file, else None."""
        return None if self._image is None else self._image[0]

    @property
    def label(self) -> str:
        """How the layout is named in messages: its file, and its image for a COCO file."""
        return f"{self.path or '<layout>'}" + ("" if self._image is None else f": {self._image_label}")

    @property
    def name(self) -> str:
        """Stem for output files: the layout file's stem, or
        ``{json stem}_{image stem}`` for a layout taken from a COCO file."""
        if self.path is None:
            return "layout"
        if self._image is not None:
            return f"{self.path.stem}_{Path(self._image[1]).stem}"
        return self.path.stem

    @classmethod
    def load(cls, path, categories=None, *, trusted: bool = False) -> Layout:
        """Read and validate a layout file (see `load_layouts` for COCO files).
        Mask files must lie inside the file's folder unless ``trusted``."""
        path = Path(path)
        data = _read_json(path)
        if _is_coco(data):
            raise LayoutError(
                f"this is a COCO instances file ({len(data['images'])} images), not a "
                "layout file; use load_layouts() or load_coco_layouts()",
                path,
            )
        return cls.from_dict(data, path, categories, trusted=trusted)

    @classmethod
    def from_dict(cls, d, path=None, categories=None, *, trusted: bool = False, keep_masks: bool = False) -> Layout:
        """Validate a parsed layout file; ``path`` is where mask files are found
        relative to (the working directory when None) and what errors name.
        Only mask files inside that folder are read unless ``trusted``.

        Each shape must cover at least one pixel at the layout's own size.
        ``keep_masks``: keep the masks rasterised for that check (up to `MAX_KEPT_PIXELS`),
        for `masks` at the layout's size to return (a renderer reads each file once).
        """
        path = None if path is None else Path(path)
        if not isinstance(d, dict):
            raise LayoutError(f"top level must be a JSON object, got {_show(d)}", path)
        unknown = sorted(set(d) - _TOP_KEYS)
        if unknown:
            raise LayoutError(f"unknown top-level key(s) {_names(unknown)}; allowed: {_names(sorted(_TOP_KEYS))}", path)
        if "version" in d and not (_is_int(d["version"]) and d["version"] == 1):
            raise LayoutError(f"version must be 1, got {_show(d['version'])}", path)
        if "size" not in d:
            raise LayoutError("missing 'size' ([height, width] in pixels)", path)
        try:
            size = _check_size(d["size"])
            background_seed = _check_background(d.get("background", {}))
        except LayoutError as e:
            raise LayoutError(e.problem, path) from None
        if "objects" not in d:
            raise LayoutError("missing 'objects' (a list, may be empty)", path)
        if not isinstance(d["objects"], list):
            raise LayoutError(f"objects must be a list, got {_show(d['objects'])}", path)
        if len(d["objects"]) > MAX_OBJECTS:
            raise LayoutError(f"{len(d['objects'])} objects; at most {MAX_OBJECTS} are accepted", path)

        base_dir = path.parent if path is not None else None
        keep_masks = keep_masks and len(d["objects"]) * size[0] * size[1] <= MAX_KEPT_PIXELS
        objects, masks = [], []
        for i, raw in enumerate(d["objects"]):
            try:
                obj = _parse_object(raw)
                kind, value = next(iter(obj.shape.items()))  # checked by _parse_object
                mask = _rasterize(kind, value, size, size, base_dir, trusted)
                # An object that covers no pixel is a mistake (e.g. coordinates
                # for another canvas), never something to skip silently.
                if not mask.any():
                    raise LayoutError(
                        f"{kind} is empty after rasterisation at size {list(size)} "
                        "(wholly off the canvas, or degenerate)"
                    )
            except LayoutError as e:
                raise LayoutError(e.problem, path, i) from None
            objects.append(obj)
            if keep_masks:
                masks.append(mask)

        layout = cls(size, objects, background_seed, path, trusted=trusted)
        if keep_masks:
            kept = np.stack(masks) if masks else np.zeros((0, *size), bool)
            layout._kept = (size, layout.path, trusted, tuple(objects), kept)
        if categories is not None:
            layout.check_categories(categories)
        return layout

    def to_dict(self) -> dict:
        """The layout file's content (version 1), ready for `json.dump`."""
        d = {"version": 1, "size": list(self.size)}
        if self.background_seed is not None:
            d["background"] = {"seed": self.background_seed}
        d["objects"] = []
        for obj in self.objects:
            entry = {"category": obj.category, **json.loads(json.dumps(obj.shape))}  # deep copy
            if obj.seed is not None:
                entry["seed"] = obj.seed
            d["objects"].append(entry)
        return d

    def save(self, path) -> None:
        """Write the layout file atomically: a reader sees the old file or the
        new one, never half of one. A mask file inside the new file's folder is
        referred to relative to it; any other mask file is embedded as an exact
        RLE (at the layout's size), since masks outside a layout's folder are
        read only from trusted layouts. Either way the file renders the same."""
        path = Path(path)
        d = self.to_dict()
        old_dir = self.path.parent if self.path is not None else Path(".")
        new_dir = os.path.realpath(path.parent)
        for i, (entry, obj) in enumerate(zip(d["objects"], self.objects, strict=False)):
            if "mask" not in entry:
                continue
            target = old_dir / entry["mask"]
            if os.path.commonpath([new_dir, os.path.realpath(target)]) == new_dir:
                entry["mask"] = Path(os.path.relpath(os.path.realpath(target), new_dir)).as_posix()
            else:
                mask = rasterize(obj.shape, self.size, base_dir=old_dir, path=self.path, index=i, trusted=self.trusted)
                d["objects"][i] = {k: v for k, v in entry.items() if k != "mask"} | {"rle": encode_rle(mask)}
        text = _layout_json(d)

        write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def masks(self, size=None) -> np.ndarray:
        """Object masks, float32 [N, H, W] in {0, 1}, in paint order, at ``size``
        (height, width; default the layout's own). Coordinates scale from the
        layout's size, so the same layout renders at any resolution."""
        try:
            out = self.size if size is None else _check_size(size, "masks size")
        except LayoutError as e:
            raise LayoutError(e.problem, self.path, image=self._image_label) from None
        if self._kept is not None:
            size, path, trusted, objects, kept = self._kept
            if (
                out == size == self.size
                and (path, trusted) == (self.path, self.trusted)
                and len(objects) == len(self.objects)
                and all(a is b for a, b in zip(objects, self.objects, strict=True))
            ):
                return kept.astype(np.float32)
        base_dir = self.path.parent if self.path is not None else None
        result = np.zeros((len(self.objects), *out), np.float32)
        for i, obj in enumerate(self.objects):
            result[i] = rasterize(obj.shape, self.size, out, base_dir, path=self.path, index=i, trusted=self.trusted)
        return result

    def check_categories(self, categories) -> None:
        """Raise LayoutError for the first object whose category is not in
        ``categories`` (any iterable of names); the message lists the known ones."""
        known = list(categories)
        known_set = set(known)
        for i, obj in enumerate(self.objects):
            if obj.category not in known_set:
                listed = ", ".join(known) if known else "(none)"
                raise LayoutError(
                    f"unknown category {quote(obj.category)}{did_you_mean(obj.category, known)}; "
                    f"known categories: {listed}",
                    self.path,
                    i,
                    image=self._image_label,
                )

    @property
    def _image_label(self) -> str | None:
        return None if self._image is None else _image_name(*self._image)


def encode_rle(mask: np.ndarray) -> dict:
    """The compressed COCO RLE of a 2-D mask, counts as str (as a layout file holds it)."""
    counts = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")
    return {"size": [int(v) for v in mask.shape], "counts": counts}


def did_you_mean(name: str, known) -> str:
    """`` (did you mean 'tree'?)`` for a near miss, else ``""``. Only names of
    sane length are compared: difflib is quadratic in the length."""
    if len(name) > 4 * MAX_ECHO:
        return ""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def rasterize(
    shape: dict, layout_size, out_size=None, base_dir=None, *, path=None, index=None, trusted: bool = False
) -> np.ndarray:
    """Boolean mask [H, W] of one shape at ``out_size`` (default ``layout_size``).

    Polygon and bbox coordinates are in the pixels of ``layout_size`` and scale
    by out_size / layout_size; a pixel is inside when its centre is, so a box
    [x, y, w, h] with integer values covers exactly w*h pixels. Mask images and
    RLEs of another size are first scaled to ``layout_size``, then to
    ``out_size``, nearest neighbour. Relative mask paths are resolved against
    ``base_dir`` (default: the working directory), and only files inside it are
    read unless ``trusted`` (`image_mask` says which pixels of an image are
    inside). Parts off the canvas are clipped; the result may be empty.
    ``path`` and ``index`` only label errors.
    """
    try:
        size = _check_size(layout_size, "layout_size")
        out = size if out_size is None else _check_size(out_size, "out_size")
        return _rasterize(*_check_shape(shape), size, out, base_dir, trusted)
    except LayoutError as e:
        raise LayoutError(e.problem, path, index) from None


def _rasterize(kind: str, value, size: tuple[int, int], out: tuple[int, int], base_dir, trusted: bool) -> np.ndarray:
    """`rasterize` of a checked shape (`_check_shape`'s kind and value) between checked sizes."""
    if kind == "bbox":
        x, y, w, h = value
        sx, sy = out[1] / size[1], out[0] / size[0]  # as the polygon of its corners would scale
        return _fill_box(float(x) * sx, float(y) * sy, float(x + w) * sx, float(y + h) * sy, out)
    if kind == "polygon":
        scale = np.array([out[1] / size[1], out[0] / size[0]])
        return _fill_polygon(np.asarray(value, np.float64) * scale, out)
    at_size = _read_mask(value, base_dir, trusted) if kind == "mask" else _decode_rle(value)
    return _resize_nearest(_resize_nearest(at_size, size), out)


def load_layouts(path, categories=None, *, trusted: bool = False, keep_masks: bool = False) -> list[Layout]:
    """Layouts from one file: a layout file gives one, a COCO instances JSON
    (one with "images" and "annotations") gives one per image. ``trusted`` as
    in `Layout.load`, ``keep_masks`` as in `Layout.from_dict` (layout files only)."""
    path = Path(path)
    data = _read_json(path)
    if _is_coco(data):
        return CocoFile.from_dict(data, path).layouts(categories)
    return [Layout.from_dict(data, path, categories, trusted=trusted, keep_masks=keep_masks)]


def load_coco_layouts(path, categories=None) -> list[Layout]:
    """One layout per image of a COCO instances JSON (`CocoFile.layouts`)."""
    return read_coco(path).layouts(categories)


# --- reading and validating --------------------------------------------------
# Validators raise LayoutError with the problem only; their callers know the
# file and the object index and re-raise with them.


def _read_json(path: Path, what: str = "file"):
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LayoutError(f"{what} not found", path) from None
    except IsADirectoryError:
        raise LayoutError("is a directory, not a JSON file", path) from None
    except OSError as e:
        raise LayoutError(f"cannot read file: {e.strerror}", path) from None
    return parse_json(raw, path)


def parse_json(raw: bytes, path=None):
    """A layout or COCO file's JSON from its bytes; errors are `LayoutError` naming ``path``
    (malformed JSON with line and column, not UTF-8, nested too deeply)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise LayoutError(f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}", path) from None
    except UnicodeDecodeError:
        raise LayoutError("not UTF-8 text", path) from None
    except RecursionError:
        raise LayoutError(
            "JSON nested too deeply (brackets inside brackets beyond Python's recursion "
            "limit); a layout file needs at most 5 levels",
            path,
        ) from None
    except ValueError as e:  # an integer longer than Python's int_max_str_digits
        raise LayoutError(f"unreadable JSON: {e}", path) from None


def _is_coco(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list)


def _parse_object(raw) -> LayoutObject:
    if not isinstance(raw, dict):
        raise LayoutError(f'must be an object like {{"category": "tree", "bbox": [x, y, w, h]}}, got {_show(raw)}')
    unknown = [k for k in raw if k not in _OBJECT_KEYS]
    if unknown:
        raise LayoutError(
            f"unknown key(s) {_names(unknown)}; allowed: category, seed and one shape of {_names(SHAPE_KINDS)}"
        )
    if "category" not in raw:
        raise LayoutError("missing 'category'")
    category = raw["category"]
    if not isinstance(category, str) or not category:
        raise LayoutError(f"category must be a non-empty string, got {_show(category)}")
    kind, value = _check_shape({k: raw[k] for k in raw if k in SHAPE_KINDS})
    seed = check_seed(raw["seed"], "seed") if "seed" in raw else None
    return LayoutObject(category, {kind: value}, seed)


def _check_background(background) -> int | None:
    if not isinstance(background, dict):
        raise LayoutError(f'background must be an object like {{"seed": 0}}, got {_show(background)}')
    unknown = [k for k in background if k != "seed"]
    if unknown:
        raise LayoutError(f"background: unknown key(s) {_names(unknown)}; allowed: 'seed'")
    return check_seed(background["seed"], "background seed") if "seed" in background else None


def check_seed(seed, what: str, error=None) -> int:
    """The one seed check of the project: an integer (not a bool) in [0, 2**32), returned as ``int``;
    anything else raises ``error`` (default `LayoutError`) naming ``what``."""
    if not (_is_int(seed) and 0 <= seed < SEED_LIMIT):
        raise (error or LayoutError)(f"{what} must be an integer in [0, 2**32), got {_show(seed)}")
    return int(seed)


def _check_size(size, what: str = "size") -> tuple[int, int]:
    """[height, width] within MAX_SIDE and MAX_PIXELS: checked before anything of that size is allocated."""
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        raise LayoutError(f"{what} must be [height, width], two positive integers, got {_show(size)}")
    _check_pixels(int(size[0]), int(size[1]), what)
    return int(size[0]), int(size[1])


def _check_pixels(height: int, width: int, what: str) -> None:
    if height > MAX_SIDE or width > MAX_SIDE or height * width > MAX_PIXELS:
        raise LayoutError(
            f"{what} {height}x{width} (height x width) is too large: at most {MAX_SIDE} pixels "
            f"a side and {MAX_PIXELS} pixels in all"
        )


def _check_shape(shape) -> tuple[str, object]:
    """(kind, normalised value) of a shape dict with exactly one known key."""
    if not isinstance(shape, dict):
        raise LayoutError(f"shape must be a dict with one of {_names(SHAPE_KINDS)}, got {_show(shape)}")
    unknown = [k for k in shape if k not in SHAPE_KINDS]
    if unknown:
        raise LayoutError(f"unknown shape key(s) {_names(unknown)}; use one of {_names(SHAPE_KINDS)}")
    if not shape:
        raise LayoutError(f"no shape; give one of {_names(SHAPE_KINDS)}")
    if len(shape) > 1:
        raise LayoutError(f"more than one shape ({_names(shape)}); give exactly one of {_names(SHAPE_KINDS)}")
    kind, value = next(iter(shape.items()))
    if kind == "polygon":
        return kind, _check_polygon(value)
    if kind == "bbox":
        return kind, _check_bbox(value)
    if kind == "mask":
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            raise LayoutError(f"mask must be a PNG file name, got {_show(value)}")
        return kind, os.fspath(value)
    return kind, _check_rle(value)


def _check_polygon(polygon) -> list[list[float]]:
    if not isinstance(polygon, (list, tuple, np.ndarray)):
        raise LayoutError(f"polygon must be a list of [x, y] points, got {_show(polygon)}")
    if len(polygon) > MAX_POLYGON_POINTS:
        raise LayoutError(f"polygon has {len(polygon)} points; at most {MAX_POLYGON_POINTS} are accepted")
    points = []
    for j, p in enumerate(polygon):
        if not (isinstance(p, (list, tuple, np.ndarray)) and len(p) == 2 and all(map(_is_number, p))):
            raise LayoutError(
                f"polygon point {j} must be [x, y], two finite numbers of magnitude at most "
                f"{MAX_COORDINATE:g}, got {_show(p)}"
            )
        points.append([_plain(v) for v in p])
    if len(points) < 3:
        raise LayoutError(f"polygon needs at least 3 points, got {len(points)}")
    return points


def _check_bbox(bbox) -> list[float]:
    if not (isinstance(bbox, (list, tuple, np.ndarray)) and len(bbox) == 4):
        raise LayoutError(f"bbox must be [x, y, width, height], got {_show(bbox)}")
    if not all(map(_is_number, bbox)):
        raise LayoutError(
            f"bbox values must be finite numbers of magnitude at most {MAX_COORDINATE:g}, got {_show(bbox)}"
        )
    if not (bbox[2] > 0 and bbox[3] > 0):
        raise LayoutError(f"bbox width and height must be positive, got width {bbox[2]}, height {bbox[3]}")
    return [_plain(v) for v in bbox]


def _check_rle(rle) -> dict:
    """A COCO RLE with counts that cover its size exactly.

    pycocotools rejects counts that overrun the mask but not ones that fall
    short (the rest of its buffer is left uninitialised), so both are checked here.
    """
    if not (isinstance(rle, dict) and set(rle) == {"size", "counts"}):
        raise LayoutError(f'rle must be {{"size": [height, width], "counts": ...}}, got {_show(rle)}')
    h, w = _check_size(rle["size"], "rle size")
    counts = rle["counts"]
    if isinstance(counts, bytes):  # pycocotools' own output
        counts = counts.decode("ascii", errors="replace")
    # A mask of h*w pixels has at most h*w + 1 runs (the first may be empty), each
    # at most 7 characters in a string: anything longer is refused unread.
    longest = (h * w + 1) * (_RLE_CHARS if isinstance(counts, str) else 1)
    if isinstance(counts, (str, list)) and len(counts) > longest:
        raise LayoutError(
            f"rle counts has {len(counts)} {'characters' if isinstance(counts, str) else 'runs'}, "
            f"more than a {h}x{w} mask can need ({longest})"
        )
    if isinstance(counts, str):
        total = int(_rle_string_runs(counts).sum())
    elif isinstance(counts, list) and all(_is_int(c) and c >= 0 for c in counts):
        counts = [int(c) for c in counts]
        total = sum(counts)
    else:
        raise LayoutError("rle counts must be a compressed string or a list of non-negative integers")
    if total != h * w:
        raise LayoutError(f"rle counts cover {total} pixels, but its size {[h, w]} has {h * w}")
    return {"size": [h, w], "counts": counts}


_RLE_CHARS = 7  # characters of one run length at most: 35 bits, more than any size allowed needs


def _rle_string_runs(s: str) -> np.ndarray:
    """Run lengths (int64) of a compressed COCO RLE string, as pycocotools'
    rleFrString reads it: 5 bits per character, a continuation bit, a sign bit,
    and runs after the third stored as differences to the run two before.
    Vectorised: a string may hold millions of runs."""
    try:
        c = np.frombuffer(s.encode("ascii"), np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError as e:
        raise LayoutError(f"rle counts string has an invalid character {s[e.start]!r}") from None
    bad = np.flatnonzero((c < 0) | (c >= 64))
    if len(bad):
        raise LayoutError(f"rle counts string has an invalid character {s[bad[0]]!r}")
    if len(c) == 0:
        return np.zeros(0, np.int64)
    last = (c & 0x20) == 0  # the last character of a value
    if not last[-1]:
        raise LayoutError("rle counts string is truncated")
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > _RLE_CHARS:
        raise LayoutError(f"rle counts string has a run of more than {_RLE_CHARS} characters")
    values = c[starts] & 0x1F
    for k in range(1, int(lengths.max())):  # most values take one or two characters
        has = lengths > k
        values[has] |= (c[starts[has] + k] & 0x1F) << (5 * k)
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    runs = values.copy()
    # run i (i > 2) is value i plus run i - 2: a running sum along each parity from runs 1 and 2
    for first in (1, 2):
        if len(runs) > first + 2:
            runs[first + 2 :: 2] = runs[first] + np.cumsum(values[first + 2 :: 2])
    if (runs < 0).any():
        raise LayoutError("rle counts string decodes to a negative run length")
    return runs


def _is_key(v) -> bool:
    """A value that can be a COCO image id: an integer or a string (a list is not hashable,
    and true would be the id 1)."""
    return _is_int(v) or isinstance(v, str)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    """A finite coordinate, small enough that scaling and differences stay finite."""
    # JSON numbers are exactly int or float: they skip the abstract-class check, which costs
    # most of the time of reading a polygon
    if type(v) is not float and type(v) is not int and (not isinstance(v, numbers.Real) or isinstance(v, bool)):
        return False
    try:
        return math.isfinite(v) and abs(v) <= MAX_COORDINATE
    except OverflowError:  # an int too large for a float
        return False


def _plain(v):
    """A JSON-ready Python number (numpy scalars in, int or float out)."""
    if type(v) is float or type(v) is int:
        return v
    return int(v) if isinstance(v, numbers.Integral) else float(v)


def _show(value, limit: int = MAX_ECHO) -> str:
    """A value as the user wrote it (JSON), shortened for messages."""
    if isinstance(value, str):
        return quote(value, limit, json.dumps)
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):  # not JSON, an int too long to print, or nested too deep
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote(text: str, limit: int = MAX_ECHO, show=repr) -> str:
    """``repr(text)`` for a message, cut to ``limit`` characters plus the full
    length, so a huge string from a file cannot flood the terminal."""
    if len(text) <= limit:
        return show(text)
    shown = show(text[:limit])
    return f"{shown[:-1]}…{shown[-1]} ({len(text)} characters)"


def _names(keys, limit: int = 10) -> str:
    keys = list(keys)
    shown = ", ".join(quote(k) if isinstance(k, str) else repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


# --- rasterising ---------------------------------------------------------------


def _fill_polygon(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside the polygon (even-odd rule).

    Edges are half-open (a centre exactly on a left or top edge is inside, on
    a right or bottom edge outside), so a box with integer corners covers
    exactly w*h pixels and shapes that touch share no pixel. cv2.fillPoly
    is not used: it always fills the pixels the outline passes through, so
    a 4x4 square would cover 5x5 pixels.
    """
    height, width = size
    x0, y0 = points[:, 0:1], points[:, 1:2]  # [E, 1]: edge starts
    x1, y1 = np.concatenate([x0[1:], x0[:1]]), np.concatenate([y0[1:], y0[:1]])  # edge ends
    edges = np.zeros((height, width + 1), np.int32)
    # The work arrays are [E, rows] and [rows * (width + 1)]: a few rows at a time keeps
    # them near 2**22 entries however many points the polygon has.
    block = max(1, min(2**22 // len(points), 2**22 // (width + 1)))
    for top in range(0, height, block):
        yc = np.arange(top, min(top + block, height)) + 0.5  # row centres
        crosses = (y0 <= yc) != (y1 <= yc)  # [E, rows]; never true for a horizontal edge
        with np.errstate(divide="ignore", invalid="ignore"):
            xs = np.where(crosses, x0 + (yc - y0) * (x1 - x0) / (y1 - y0), np.inf)
        xs = np.sort(xs, axis=0)  # each row: an even number of crossings, then inf
        if len(xs) % 2:
            xs = np.vstack([xs, np.full((1, len(yc)), np.inf)])
        # Inside between crossing pairs; column j is in [a, b) when a <= j + 0.5 < b.
        starts = np.clip(np.ceil(xs[0::2] - 0.5), 0, width).astype(np.intp)
        ends = np.clip(np.ceil(xs[1::2] - 0.5), 0, width).astype(np.intp)
        # +1 where a run starts, -1 where it ends, summed per cell (bincount: np.add.at is slow)
        rows = len(yc)
        cell = np.arange(rows)[None] * (width + 1)
        cells = rows * (width + 1)
        counts = np.bincount((starts + cell).ravel(), minlength=cells) - np.bincount(
            (ends + cell).ravel(), minlength=cells
        )
        edges[top : top + rows] = counts.reshape(rows, width + 1)
    return np.cumsum(edges[:, :width], axis=1) > 0


def _fill_box(left: float, top: float, right: float, bottom: float, size: tuple[int, int]) -> np.ndarray:
    """`_fill_polygon` of the box with these edges, in O(height + width): the rows its two
    vertical edges cross and the columns between their crossings, by the same comparisons."""
    height, width = size
    yc = np.arange(height) + 0.5
    rows = (top <= yc) != (bottom <= yc)
    start, end = (min(max(math.ceil(x - 0.5), 0), width) for x in (min(left, right), max(left, right)))
    columns = np.zeros(width, bool)
    columns[start:end] = True
    return rows[:, None] & columns


def _resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize that samples the source at each target pixel's centre."""
    h, w = mask.shape
    if (h, w) == tuple(size):
        return mask
    rows = ((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.intp)
    cols = ((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.intp)
    return mask[rows[:, None], cols]


def image_mask(image) -> np.ndarray | None:
    """Which pixels of a mask image are inside, bool [h, w], or None when the
    image is one flat value (it marks no shape).

    The rule, so that common exports work: when the image has an alpha channel
    (RGBA, LA, palette or tRNS transparency) whose values vary, inside is
    alpha > 127 (a shape cut out of a transparent background, any colour);
    otherwise inside is luminance > 127 (PIL ``convert("L")``: white on black,
    greyscale, 1-bit, palette, RGB on an opaque background).
    """
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA").getchannel("A"))
        if alpha.min() != alpha.max():
            return alpha > 127
    luminance = np.asarray(image.convert("L"))
    if luminance.min() != luminance.max():
        return luminance > 127
    return None


def _read_mask(name: str, base_dir, trusted: bool = False) -> np.ndarray:
    """A mask image file as bool [h, w] (`image_mask`'s rule).

    Unless ``trusted``, only a regular file inside ``base_dir`` (the layout
    file's folder; default the working directory) after resolving symlinks is
    read: a layout from elsewhere must not read /etc/passwd or hang on a FIFO.
    The image's size is checked from its header before it is decoded.
    """
    base = Path(base_dir if base_dir is not None else ".")
    file = base / name
    shown = quote(name)
    try:
        if not trusted:
            root, real = os.path.realpath(base), os.path.realpath(file)
            if os.path.isabs(name) or os.path.commonpath([root, real]) != root:
                raise LayoutError(
                    f"mask file {shown} is outside the layout's folder {root}; only files inside "
                    "it are read (for a layout you trust: Layout.load(..., trusted=True), "
                    "scenecomp-render --trusted-masks)"
                )
        # Checked before opening: opening a FIFO waits forever, opening a device may act.
        # Opened non-blocking and checked again, in case the file was swapped in between.
        if not stat.S_ISREG(os.stat(file).st_mode):
            raise LayoutError(f"mask file {shown} is not a regular file")
        with open(os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f, warnings.catch_warnings():
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise LayoutError(f"mask file {shown} is not a regular file")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as image:
                width, height = image.size  # from the header; nothing is decoded yet
                _check_pixels(height, width, f"mask file {shown}:")
                inside = image_mask(image)
    except LayoutError:
        raise
    except FileNotFoundError:
        raise LayoutError(f"mask file {shown} not found (looked for {quote(str(file), 4 * MAX_ECHO)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise LayoutError(f"mask file {shown} is too large an image ({e})") from None
    except (OSError, ValueError) as e:  # not an image, truncated, a NUL in the name, a name too long
        # an OSError's text repeats the file name, which may be huge: keep only its reason
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)[: 4 * MAX_ECHO]
        raise LayoutError(f"mask file {shown} is not a readable image ({reason})") from None
    if inside is None:
        raise LayoutError(
            f"mask file {shown} is empty: one flat value (constant alpha and luminance), so it marks no shape"
        )
    return inside


def _decode_rle(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, list):
        coco = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        coco = {"size": [h, w], "counts": counts.encode("ascii")}
    return mask_utils.decode(coco).astype(bool)


# --- COCO instances files -------------------------------------------------------
# The one reader of COCO files: layouts (`CocoFile.layouts`), training data
# (scenecomp.data) and the layout prior all use it. The file's structure is checked
# at once; a segmentation is checked and converted when a caller asks for it
# (`CocoFile.rle`), so a data set keeping a few categories of real COCO converts only those.


def read_coco(path) -> CocoFile:
    """Read and check a COCO instances JSON (see `CocoFile`)."""
    path = Path(path)
    return CocoFile.from_dict(_read_json(path, "annotations file"), path)


@dataclass(frozen=True)
class CocoAnnotation:
    """One checked entry of a COCO file's ``annotations``; ``area`` and ``bbox`` are None when the file has none."""

    index: int  # its position in the file's list: how messages name it
    id: object  # the file's "id", or None
    category: str  # its category's name
    category_id: int
    segmentation: object  # as the file has it: `CocoFile.rle` checks and converts it
    area: float | None
    bbox: tuple[float, float, float, float] | None
    iscrowd: int

    @property
    def label(self) -> str:
        """How messages name it: ``annotations[2] (id 3)``."""
        return _annotation_label(self.index, self.id)


@dataclass(frozen=True)
class CocoImage:
    """One checked entry of a COCO file's ``images``, with its annotations in file order."""

    id: int | str
    file_name: str
    height: int
    width: int
    annotations: tuple[CocoAnnotation, ...]

    @property
    def label(self) -> str:
        """How messages name it: ``image 7 ('dir/b.png')``."""
        return _image_name(self.id, self.file_name)


@dataclass(frozen=True)
class CocoFile:
    """A checked COCO instances file: its images in file order, each with its
    annotations, its categories (id -> name, in file order) and its ``info``
    (an empty dict when it has none).

    Checked here: the three lists, unique ids and names, every reference, image
    sizes (within `MAX_SIDE` and `MAX_PIXELS`), and each annotation's ``area``,
    ``bbox`` and ``iscrowd`` where present. Errors are `LayoutError`s naming the
    file, the entry (``images[1]``, ``annotations[2] (id 3)``) and the problem.
    """

    path: Path | None
    images: tuple[CocoImage, ...]
    categories: dict
    info: dict

    @property
    def annotation_order(self) -> bool:
        """Whether each image's annotations are listed back to front (``info.paint_order == "annotation_order"``)."""
        return self.info.get("paint_order") == "annotation_order"

    @classmethod
    def from_dict(cls, data, path=None) -> CocoFile:
        """Check a parsed COCO file; ``path`` only names it in errors."""
        path = None if path is None else Path(path)
        if not isinstance(data, dict):
            raise LayoutError("not a COCO instances file (top level is not an object)", path)
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise LayoutError(f"not a COCO instances file (no {key!r} list)", path)
        categories, category_of_name = {}, {}
        for j, cat in enumerate(data["categories"]):
            if not (isinstance(cat, dict) and _is_int(cat.get("id")) and isinstance(cat.get("name"), str)):
                raise LayoutError(f"categories[{j}] needs an integer 'id' and a string 'name', got {_show(cat)}", path)
            cid, name = int(cat["id"]), cat["name"]
            if cid in categories or name in category_of_name or not name:
                raise LayoutError(
                    f"categories[{j}] needs a unique 'id' and a unique non-empty 'name', got {_show(cat)}", path
                )
            categories[cid], category_of_name[name] = name, cid

        sizes = {}
        for j, image in enumerate(data["images"]):
            ok = isinstance(image, dict) and _is_key(image.get("id")) and isinstance(image.get("file_name"), str)
            if not ok or image["id"] in sizes:
                raise LayoutError(f"images[{j}] needs a unique 'id' and a 'file_name', got {_show(image)}", path)
            try:
                sizes[image["id"]] = _check_size([image.get("height"), image.get("width")], "height and width")
            except LayoutError as e:
                raise LayoutError(f"images[{j}] (id {_show(image['id'])}): {e.problem}", path) from None

        per_image = {image_id: [] for image_id in sizes}
        for j, ann in enumerate(data["annotations"]):
            try:
                annotation = _coco_annotation(j, ann, categories)
            except LayoutError as e:
                raise LayoutError(e.problem, path) from None
            if not (_is_key(ann["image_id"]) and ann["image_id"] in per_image):
                raise LayoutError(
                    f"{annotation.label} refers to image {_show(ann['image_id'])}, which is not in 'images'", path
                )
            per_image[ann["image_id"]].append(annotation)

        images = tuple(
            CocoImage(image["id"], image["file_name"], *sizes[image["id"]], tuple(per_image[image["id"]]))
            for image in data["images"]
        )
        info = data.get("info") if isinstance(data.get("info"), dict) else {}
        return cls(path, images, categories, info)

    def paint_order(self, items: list, area) -> list:
        """One image's ``items`` (its annotations, or what a caller made of them, in file order)
        back to front: as listed when the file says so (``info.paint_order ==
        "annotation_order"``: Shapes, prepared subsets, synthetic sets), else largest
        ``area(item)`` first, ties in file order: real COCO records no paint order, and
        big regions are usually behind small ones."""
        return list(items) if self.annotation_order else sorted(items, key=lambda item: -area(item))

    def rle(self, image: CocoImage, annotation: CocoAnnotation, *, allow_empty: bool = False) -> dict | None:
        """The annotation's segmentation (polygons, RLE or crowd RLE) as one compressed RLE
        at the image's size, counts as str. Polygon parts of fewer than 3 points enclose
        nothing and are left out (real COCO has a few). A segmentation that covers no pixel
        is an error, or None with ``allow_empty`` (training data drops such objects).
        Errors name the file, the image, the annotation and the problem."""
        try:
            return _coco_rle(annotation.segmentation, (image.height, image.width), allow_empty)
        except LayoutError as e:
            raise LayoutError(f"{annotation.label}: {e.problem}", self.path, image=image.label) from None

    def layouts(self, categories=None) -> list[Layout]:
        """One layout per image, in image id order (ints before strings): objects in
        `paint_order` (by the file's ``area``), each as ``{"rle": ...}``, seeds unset.
        ``categories``: the names a layout may use (`Layout.check_categories`)."""
        layouts = []
        for image in sorted(self.images, key=lambda im: (isinstance(im.id, str), im.id)):
            if len(image.annotations) > MAX_OBJECTS:
                raise LayoutError(
                    f"{len(image.annotations)} objects; at most {MAX_OBJECTS} are accepted",
                    self.path,
                    image=image.label,
                )
            objects = [
                LayoutObject(ann.category, {"rle": self.rle(image, ann)})
                for ann in self.paint_order(image.annotations, lambda a: a.area or 0.0)
            ]
            layout = Layout((image.height, image.width), objects, path=self.path, _image=(image.id, image.file_name))
            if categories is not None:
                layout.check_categories(categories)
            layouts.append(layout)
        return layouts


def _coco_annotation(j: int, ann, categories: dict) -> CocoAnnotation:
    """Entry ``j`` of a COCO file's annotations, checked but for its image and segmentation."""
    if not isinstance(ann, dict):
        raise LayoutError(
            f"annotations[{j}] must be an object with 'image_id', 'category_id' and 'segmentation', got {_show(ann)}"
        )

    def bad(problem: str) -> LayoutError:  # the label only when needed: real COCO has 860k annotations
        return LayoutError(f"{_annotation_label(j, ann.get('id'))}: {problem}")

    for key in ("image_id", "category_id"):
        if key not in ann:
            raise bad(f"missing {key!r}")
    if not (_is_int(ann["category_id"]) and ann["category_id"] in categories):
        raise bad(
            f"unknown category_id {_show(ann['category_id'])}; the file's categories have ids "
            f"{_show(sorted(categories))}"
        )
    area, bbox, iscrowd = ann.get("area"), ann.get("bbox"), ann.get("iscrowd", 0)
    if area is not None and not (_is_number(area) and area >= 0):
        raise bad(f"area must be a non-negative number of pixels, got {_show(area)}")
    if bbox is not None and not (
        isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox)) and bbox[2] >= 0 and bbox[3] >= 0
    ):
        raise bad(f"bbox must be [x, y, width, height], four numbers, got {_show(bbox)}")
    if isinstance(iscrowd, bool) or iscrowd not in (0, 1):
        raise bad(f"iscrowd must be 0 or 1, got {_show(iscrowd)}")
    return CocoAnnotation(
        j,
        ann.get("id"),
        categories[ann["category_id"]],
        int(ann["category_id"]),
        ann.get("segmentation"),
        None if area is None else float(area),
        None if bbox is None else tuple(float(v) for v in bbox),
        int(iscrowd),
    )


def _annotation_label(index: int, annotation_id) -> str:
    return f"annotations[{index}]" + ("" if annotation_id is None else f" (id {_show(annotation_id)})")


def _image_name(image_id, file_name: str) -> str:
    """How a COCO image is named in messages: ``image 7 ('dir/b.png')``."""
    return f"image {_show(image_id)} ({quote(file_name)})"


def _coco_rle(segmentation, size: tuple[int, int], allow_empty: bool) -> dict | None:
    """A COCO segmentation as a compressed RLE of ``size`` with str counts (see `CocoFile.rle`)."""
    h, w = size
    if isinstance(segmentation, dict):
        rle = _check_rle(segmentation)
        if rle["size"] != [h, w]:
            raise LayoutError(f"segmentation RLE size {rle['size']} is not the image's {[h, w]}")
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, h, w)
    elif isinstance(segmentation, list):
        polygons = []
        for part in segmentation:
            if not (isinstance(part, list) and len(part) % 2 == 0 and all(map(_is_number, part))):
                raise LayoutError(f"segmentation polygon must be a flat list [x1, y1, x2, y2, ...], got {_show(part)}")
            # pycocotools would read a 4-number part as a box
            if len(part) >= 6:
                polygons.append([float(v) for v in part])
        if not polygons:
            if allow_empty:
                return None
            raise LayoutError("segmentation has no polygon with at least 3 points")
        _check_outline(polygons)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    else:
        raise LayoutError(f"segmentation must be a list of polygons or an RLE, got {_show(segmentation)}")
    counts = rle["counts"]
    rle = {"size": [h, w], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
    if mask_utils.area(rle) == 0:
        if allow_empty:
            return None
        raise LayoutError(f"segmentation is empty at the image's size {[h, w]}")
    return rle


def _check_outline(polygons: list[list[float]]) -> None:
    """pycocotools traces a polygon's outline at 5 points a pixel into memory it allocates
    first (and in 32-bit integers), so a far-off point would cost gigabytes or crash it:
    coordinates and the outline's length are bounded by `MAX_OUTLINE` before it is called."""
    length, reach = 0.0, 0.0
    for polygon in polygons:
        points = np.asarray(polygon).reshape(-1, 2)
        length += float(np.abs(points - np.roll(points, -1, axis=0)).max(axis=1).sum())
        reach = max(reach, float(np.abs(points).max()))
    if length > MAX_OUTLINE or reach > MAX_OUTLINE:
        raise LayoutError(
            f"segmentation polygons are too large (outline {length:.0f} pixels long, coordinates up to "
            f"{reach:.0f}); at most {MAX_OUTLINE} each"
        )


def _layout_json(d: dict) -> str:
    """A layout file's text with one object per line: easy to read and diff."""
    head = [f"  {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in d.items() if k != "objects"]
    objects = ",\n".join(f"    {json.dumps(o, allow_nan=False)}" for o in d["objects"])
    head.append(f'  "objects": [\n{objects}\n  ]' if objects else '  "objects": []')
    return "{\n" + ",\n".join(head) + "\n}\n"
