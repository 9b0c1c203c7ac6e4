"""scenecomp-synth: a labelled synthetic data set in COCO instances format.

    scenecomp-synth --out d --count 200 --balance --seed 3
    scenecomp-synth fit-prior train/annotations.json --out run/prior.json

A layered composer knows every object's exact visible mask, full (amodal) mask
and paint order by construction, so the labels are exact.

Layouts
-------
By default from the layout prior (`scenecomp.prior`) beside the checkpoint
(``prior.json`` in the bundle's folder; for the shipped model
``scenecomp/assets/prior.json``), or ``--prior PATH``. With ``--layouts``,
from layout files, folders of them and COCO instances files (as
``scenecomp-render`` reads them), taken in turn and jittered so none is copied
verbatim: the whole layout mirrored left-right half the time, and each object
scaled by a factor in [1/1.15, 1.15] about its bottom centre and shifted by up
to 8 % of the width and 4 % of the height.

Categories: ``--balance`` draws them so that the instance counts of all the
model's categories stay within 1.5x of each other (in practice within a few
instances); ``--categories tree=0.4,sun=0.6`` targets those shares of the
instances (other categories get none); by default the prior's own shares (or,
with ``--layouts``, whatever the layouts hold). With ``--layouts`` a target is
met by choosing among 8 random candidate layouts the one whose objects are
most wanted and dropping objects of categories already above their target.
Objects left with too few visible pixels are dropped (`scenecomp.prior.keep_visible`;
the prior's rule is Shapes': 12 pixels at 64x64; given layouts: 1 pixel).

Seeds
-----
Image ``i`` (0-based) draws everything from ``numpy.random.default_rng([seed, i])``:
first its background seed (an integer in [0, 2**32)), then its layout.
Object ``k`` gets the Composer's rule ``(1_000_003 * background_seed + k + 1) % 2**32``.
All seeds are written into the layout files and the annotations.

Outputs (in ``--out DIR``)
--------------------------
- ``synth.json``: the recipe (model and prior SHA-256, seed, count, targets);
  written first: a re-run with the same recipe resumes, another recipe is refused;
- ``layouts/{i:06d}.json``: each image's layout, every seed filled in
  (``scenecomp-render`` renders it to the same image);
- ``images/{i:06d}_s0000.png`` and ``images/manifest.jsonl``, written by
  ``scenecomp-render`` itself (`scenecomp.render.main`): the same batching,
  resuming, atomic files and single- or multi-device path (``--devices``);
- ``annotations.json``, written last (atomically, so its presence means the
  set is complete): COCO instances with, per object, ``segmentation`` = the
  *visible* mask (compressed RLE), ``bbox`` and ``area`` of that mask,
  ``iscrowd: 0``, ``amodal_segmentation`` (the full mask), ``order`` (paint
  order, 0 = back) and ``seed``; per image its ``background_seed`` and
  ``layout``; ``info`` holds the recipe and ``paint_order: annotation_order``.

The same command writes byte-identical ``annotations.json``, layouts and PNGs
(PNGs: on the same device, dtype, batch size and threads, as for
``scenecomp-render``); only the manifest records times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from scenecomp.atomic import write_atomically
from scenecomp.compose import DEFAULT_MODEL, BundleError, bundle_file, load_bundle, object_seed
from scenecomp.layout import (
    SEED_LIMIT,
    Layout,
    LayoutError,
    LayoutObject,
    check_seed,
    did_you_mean,
    encode_rle,
    load_layouts,
    quote,
    read_coco,
)
from scenecomp.prior import DEFAULT_PRIOR, LayoutPrior, PriorError, Quota, crop_to_box, keep_visible, place

PROG = "scenecomp-synth"
RECIPE = "synth.json"
MAX_COUNT = 1_000_000
JITTER_SHIFT = (0.08, 0.04)  # largest shift, as a fraction of the width and of the height
JITTER_SCALE = 1.15  # objects are scaled by a factor in [1/JITTER_SCALE, JITTER_SCALE]
CANDIDATES = 8  # layouts considered per image when --layouts must meet a target
BALANCE_RATIO = 1.5  # --balance: the largest category count over the smallest, at most

EPILOG = """\
examples:
  # 200 scenes from the shipped model, every category about equally often
  scenecomp-synth --out d --count 200 --balance --seed 3

  # a trained model (its prior.json beside composer.safetensors), more suns than anything else
  scenecomp-synth --out d2 --count 1000 --checkpoint run/composer.safetensors --categories sun=0.5,tree=0.25,house=0.25

  # jittered variations of given layouts (COCO instances files, layout files or folders)
  scenecomp-synth --out d3 --count 500 --layouts data/val/annotations.json examples/layouts/

  # four GPUs through the same Lightning DDP path as scenecomp-render
  scenecomp-synth --out d4 --count 100000 --balance --device cuda --devices 4 --batch-size 128

  # fit a layout prior on a model's training layouts (prints its fit: real vs sampled)
  scenecomp-synth fit-prior data/shapes64/train/annotations.json --out run/prior.json

  # interrupted? run the same command again: finished images are kept.

outputs: DIR/images/*.png, DIR/annotations.json (COCO instances: visible-mask RLE
segmentation, bbox, area, iscrowd 0, amodal_segmentation, order, seed), DIR/layouts/,
DIR/synth.json; see `python -m pydoc scenecomp.synth`.
exit status: 0 done, 1 some images failed, 2 bad options or input (nothing written), 130 interrupted."""


class SynthError(ValueError):
    """Bad input to `synthesize`: the message names the option or file and the problem."""


# ----------------------------------------------------------------------------- targets


def parse_shares(text: str, categories) -> dict[str, float]:
    """``"tree=0.4,sun=0.6"`` -> ``{"tree": 0.4, "sun": 0.6}``: known categories, finite
    non-negative shares adding up to 1 (within 1e-6). Raises `SynthError`."""
    shares: dict[str, float] = {}
    for part in str(text).split(","):
        name, eq, value = part.strip().partition("=")
        name = name.strip()
        if not eq or not name:
            raise SynthError(f"--categories: {quote(part.strip())} is not NAME=SHARE; write e.g. tree=0.4,sun=0.6")
        if name not in categories:
            raise SynthError(
                f"--categories: unknown category {quote(name)}{did_you_mean(name, categories)}; "
                f"known categories: {', '.join(categories)}"
            )
        if name in shares:
            raise SynthError(f"--categories: {quote(name)} is given twice")
        try:
            share = float(value)
        except ValueError:
            share = math.nan
        if not (math.isfinite(share) and share >= 0):
            raise SynthError(f"--categories: the share of {quote(name)} must be a number >= 0, got {quote(value)}")
        shares[name] = share
    total = sum(shares.values())
    if abs(total - 1) > 1e-6:
        raise SynthError(f"--categories: the shares add up to {total:g}, not 1 ({text})")
    return shares


# ----------------------------------------------------------------------------- layouts


def prior_layouts(prior: LayoutPrior, count: int, seed: int, size, shares: dict[str, float] | None):
    """``count`` images from the prior: for each, ``(background_seed, [(category, mask)...])``."""
    quota = Quota(shares or prior.shares())
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        yield int(rng.integers(SEED_LIMIT)), prior.sample(rng, size, quota)


class Sources:
    """The given layouts, each rasterised once at the model's size into (category, crop, box) objects."""

    def __init__(self, layouts: list[Layout], size):
        self.layouts, self.size, self._objects = layouts, size, {}

    def __len__(self) -> int:
        return len(self.layouts)

    def categories(self, j: int) -> list[str]:
        return [c for c, _, _ in self.objects(j)]

    def objects(self, j: int) -> list:
        if j not in self._objects:
            masks = self.layouts[j].masks(self.size) > 0.5
            self._objects[j] = [
                (o.category, *crop_to_box(m)) for o, m in zip(self.layouts[j].objects, masks, strict=False) if m.any()
            ]
        return self._objects[j]


def jittered_layouts(sources: Sources, count: int, seed: int, shares: dict[str, float] | None):
    """``count`` images from the given layouts (module docstring): ``(background_seed, [(category, mask)...])``."""
    H, W = sources.size
    quota = Quota(shares) if shares else None
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        background = int(rng.integers(SEED_LIMIT))
        if quota is None:
            j = i % len(sources)
        else:
            lack = quota.lacking()
            candidates = rng.integers(len(sources), size=CANDIDATES)
            j = int(max(candidates, key=lambda j: sum(lack.get(c, -1.0) for c in sources.categories(int(j)))))
        flip = bool(rng.random() < 0.5)
        placed = []
        for category, crop, (x, y, w, h) in sources.objects(j):
            scale = math.exp(rng.uniform(-math.log(JITTER_SCALE), math.log(JITTER_SCALE)))
            dx, dy = rng.uniform(-1, 1, 2) * np.array(JITTER_SHIFT) * (W, H)
            cx, bottom = x + w / 2 + dx, y + h + dy
            if flip:
                cx = W - cx
            nw, nh = w * scale, h * scale
            mask = place(crop, (cx - nw / 2, bottom - nh, nw, nh), (H, W), flip)
            if mask.any():
                placed.append((category, mask))
        if quota is not None:
            lack, wanted = quota.lacking(), []
            for category, mask in placed:
                if lack.get(category, 0) > 0:
                    lack[category] -= 1
                    wanted.append((category, mask))
            placed = wanted
        placed = [placed[k] for k in keep_visible([m for _, m in placed], 1)]
        if quota is not None:
            quota.take(c for c, _ in placed)
        yield background, placed


def read_sources(paths, categories, size) -> Sources:
    """Every layout in ``paths`` (files, folders, COCO files), checked against the model's categories."""
    from scenecomp.render.options import UsageError, find_inputs

    try:
        files = find_inputs(paths)
    except UsageError as e:
        raise SynthError(f"--layouts: {e}") from None
    layouts = []
    for path in files:
        try:
            for layout in load_layouts(path):
                layout.check_categories(categories)
                layouts.append(layout)
        except LayoutError as e:
            raise SynthError(f"--layouts: {e}") from None
    if not layouts:
        raise SynthError(f"--layouts: {' '.join(map(str, paths))} holds no layout (a COCO file without images?)")
    if not any(layout.objects for layout in layouts):
        raise SynthError(f"--layouts: the {len(layouts)} layout(s) in {' '.join(map(str, paths))} hold no object")
    return Sources(layouts, size)


# ----------------------------------------------------------------------------- labels


def image_labels(objects, background_seed: int) -> tuple[list[LayoutObject], list[dict]]:
    """One image's seeded layout objects and its COCO annotations (without ids), from
    ``(category, bool mask)`` pairs in paint order: visible masks, boxes and areas exact."""
    layout_objects, annotations = [], []
    covered = None
    visible = []
    for _, mask in reversed(objects):
        covered = np.zeros_like(mask) if covered is None else covered
        visible.append(mask & ~covered)
        covered = covered | mask
    visible.reverse()
    for k, ((category, mask), seen) in enumerate(zip(objects, visible, strict=False)):
        seed = object_seed(background_seed, k)
        amodal = encode_rle(mask)
        layout_objects.append(LayoutObject(category, {"rle": amodal}, seed))
        rle = mask_utils.encode(np.asfortranarray(seen.astype(np.uint8)))
        annotations.append(
            {
                "category": category,
                "segmentation": {"size": amodal["size"], "counts": rle["counts"].decode("ascii")},
                "area": int(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
                "amodal_segmentation": amodal,
                "order": k,
                "seed": seed,
            }
        )
    return layout_objects, annotations


def image_name(i: int, count: int) -> str:
    """Stem of image ``i``'s layout file (at least six digits)."""
    return f"{i:0{max(6, len(str(count - 1)))}d}"


# ----------------------------------------------------------------------------- the whole run


def synthesize(
    out,
    count: int,
    checkpoint=None,
    *,
    prior=None,
    layouts=None,
    balance: bool = False,
    categories: str | dict | None = None,
    seed: int = 0,
    batch_size: int = 16,
    device=None,
    devices: int | None = None,
    num_nodes: int | None = None,
    dtype: str = "auto",
    threads: int | None = None,
    quiet: bool = False,
) -> int:
    """Write a labelled data set into ``out`` (module docstring); returns the exit status of the
    rendering (0: every image written). Bad input raises `SynthError` before anything is written.

    ``checkpoint``: a bundle or run folder (default: the shipped model). ``prior``: a prior file
    (default: ``prior.json`` beside the bundle). ``layouts``: paths of layout sources (instead
    of the prior). ``balance`` or ``categories`` (``"tree=0.4,sun=0.6"`` or a dict) set the
    category targets. The rest is passed to ``scenecomp-render``.
    """
    from scenecomp.render import file_sha256
    from scenecomp.render import main as render_main

    if not (isinstance(count, int) and 1 <= count <= MAX_COUNT):
        raise SynthError(f"--count must be an integer in [1, {MAX_COUNT}], got {count!r}")
    seed = check_seed(seed, "--seed", SynthError)
    for name, value in (
        ("--batch-size", batch_size),
        ("--devices", devices),
        ("--num-nodes", num_nodes),
        ("--threads", threads),
    ):
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise SynthError(f"{name} must be a positive integer, got {value!r}")
    if balance and categories is not None:
        raise SynthError("--balance and --categories are exclusive: --balance means equal shares")
    checkpoint = bundle_file(checkpoint) if checkpoint is not None else DEFAULT_MODEL
    try:
        bundle = load_bundle(checkpoint)
    except BundleError as e:
        raise SynthError(str(e)) from None
    names, R = list(bundle["categories"]), int(bundle["resolution"])
    del bundle
    shares = (
        {c: 1 / len(names) for c in names}
        if balance
        else parse_shares(categories, names)
        if isinstance(categories, str)
        else parse_shares(",".join(f"{c}={s}" for c, s in categories.items()), names)
        if categories
        else None
    )

    recipe = {
        "checkpoint": os.path.abspath(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "categories": names,
        "resolution": R,
        "count": count,
        "seed": seed,
        "targets": "balance" if balance else shares if shares else "as the source",
    }
    if layouts:
        if prior is not None:
            raise SynthError("--prior and --layouts are exclusive: layouts come from one or the other")
        sources = read_sources(layouts, names, (R, R))
        if shares:
            present = {c for j in range(len(sources)) for c in sources.categories(j)}
            missing = [c for c, s in shares.items() if s > 0 and c not in present]
            if missing:
                raise SynthError(
                    f"--layouts: no {', '.join(map(quote, missing))} in the given layouts "
                    f"(at {R}x{R}): no share of {'it' if len(missing) == 1 else 'them'} can be met"
                )
        files = dict.fromkeys(os.path.abspath(layout.path) for layout in sources.layouts)
        recipe["layouts"] = [{"file": f, "sha256": file_sha256(f)} for f in files]
        recipe["jitter"] = {"shift": list(JITTER_SHIFT), "scale": JITTER_SCALE, "flip": 0.5}
        images = jittered_layouts(sources, count, seed, shares)
    else:
        prior_file = (
            Path(prior)
            if prior is not None
            else (DEFAULT_PRIOR if checkpoint == DEFAULT_MODEL else checkpoint.parent / "prior.json")
        )
        if prior is None and not prior_file.is_file():
            raise SynthError(
                f"no layout prior beside {checkpoint} (looked for {prior_file}); fit one with "
                f"scenecomp-synth fit-prior TRAIN/annotations.json --out {prior_file}, "
                "or give --prior PATH or --layouts"
            )
        try:
            the_prior = LayoutPrior.load(prior_file)
        except PriorError as e:
            raise SynthError(str(e)) from None
        if set(the_prior.categories) != set(names):
            raise SynthError(
                f"{prior_file}: the prior's categories ({', '.join(the_prior.categories)}) are not the "
                f"model's ({checkpoint}: {', '.join(names)}); fit a prior on the model's training data"
            )
        missing = [c for c, s in (shares or the_prior.shares()).items() if s > 0 and not the_prior.bank[c]]
        if missing:
            raise SynthError(
                f"{prior_file}: holds no shape of {', '.join(map(quote, missing))}: no share of it can be met"
            )
        recipe["prior"] = os.path.abspath(prior_file)
        recipe["prior_sha256"] = file_sha256(prior_file)
        images = prior_layouts(the_prior, count, seed, (R, R), shares)
    recipe["scenecomp"] = _version()

    out = Path(out)
    created = not out.exists()
    fresh = _claim(out, recipe)
    try:
        coco = _write_layouts(out, images, names, recipe, count, quiet)
        argv = [
            str(out / "layouts"),
            "--out",
            str(out / "images"),
            "--checkpoint",
            str(checkpoint),
            "--batch-size",
            str(batch_size),
            "--dtype",
            dtype,
        ]
        for flag, value in (
            ("--device", device),
            ("--devices", devices),
            ("--num-nodes", num_nodes),
            ("--threads", threads),
        ):
            if value is not None:
                argv += [flag, str(value)]
        status = render_main(argv + (["--quiet"] if quiet else []))
    except BaseException:
        if fresh and not any((out / "images").glob("*.png")):
            _remove(out, created)  # nothing rendered yet: leave nothing behind
        raise
    if status == 2 and fresh:
        _remove(out, created)  # scenecomp-render refused its options: nothing was rendered
    if status == 0 and _first_process():
        text = json.dumps(coco, separators=(",", ":")) + "\n"
        write_atomically(out / "annotations.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        if not quiet:
            counts = {c: 0 for c in names}
            for a in coco["annotations"]:
                counts[names[a["category_id"] - 1]] += 1
            print(
                f"{PROG}: {count} images, {len(coco['annotations'])} objects "
                f"({', '.join(f'{c} {n}' for c, n in counts.items())}); labels: {out / 'annotations.json'}",
                file=sys.stderr,
            )
    return status


def _claim(out: Path, recipe: dict) -> bool:
    """Make ``out`` ours: a new or empty folder gets the recipe; one holding the same recipe is
    resumed; anything else is refused. Returns True when the folder was new or empty."""
    if out.exists() and not out.is_dir():
        raise SynthError(f"--out {out}: exists and is not a folder")
    text = json.dumps(recipe, indent=1) + "\n"
    if out.is_dir() and any(out.iterdir()):
        try:
            old = json.loads((out / RECIPE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise SynthError(
                f"--out {out}: the folder is not empty and holds no scenecomp-synth data set "
                f"({RECIPE}); choose another --out"
            ) from None
        if old != recipe:
            differ = sorted(k for k in set(old) | set(recipe) if old.get(k) != recipe.get(k))
            raise SynthError(
                f"--out {out}: holds another data set ({', '.join(differ)} differ: see "
                f"{out / RECIPE}); choose another --out, or run its own command again to resume it"
            )
        return False
    write_atomically(out / RECIPE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return True


def _remove(out: Path, folder_too: bool) -> None:
    """Undo a run that rendered nothing: what it wrote into ``out``, and ``out`` itself if it made it."""
    for name in ("layouts", "images"):
        shutil.rmtree(out / name, ignore_errors=True)
    (out / RECIPE).unlink(missing_ok=True)
    if folder_too:
        shutil.rmtree(out, ignore_errors=True)


def _write_layouts(out: Path, images, names: list[str], recipe: dict, count: int, quiet: bool) -> dict:
    """Write every image's seeded layout file; returns the COCO data set of their labels."""
    from tqdm import tqdm

    R = recipe["resolution"]
    coco = {
        "info": {
            "description": "scenecomp-synth: composed scenes with exact labels",
            "paint_order": "annotation_order",
            **recipe,
        },
        "images": [],
        "annotations": [],
        "categories": [{"id": j + 1, "name": c} for j, c in enumerate(names)],
    }
    bar = tqdm(
        images,
        total=count,
        desc="layouts",
        unit="img",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=quiet or not sys.stderr.isatty(),
    )
    for i, (background, objects) in enumerate(bar):
        stem = image_name(i, count)
        layout_objects, labels = image_labels(objects, background)
        layout = Layout((R, R), layout_objects, background)
        text = json.dumps(layout.to_dict())
        path = out / "layouts" / f"{stem}.json"
        if not (path.is_file() and path.read_text(encoding="utf-8") == text):  # resuming: leave it be
            write_atomically(path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
        coco["images"].append(
            {
                "id": i + 1,
                "file_name": f"{stem}_s0000.png",
                "height": R,
                "width": R,
                "background_seed": background,
                "layout": f"layouts/{stem}.json",
            }
        )
        for label in labels:
            label = {
                "id": len(coco["annotations"]) + 1,
                "image_id": i + 1,
                "category_id": names.index(label.pop("category")) + 1,
                **label,
            }
            coco["annotations"].append(label)
    return coco


def _first_process() -> bool:
    """False in the other processes of a multi-device launch (torchrun, srun, Lightning's own)."""
    from scenecomp.render.options import launch

    names = ["RANK", "LOCAL_RANK", "NODE_RANK"] + (["SLURM_PROCID"] if (launch() or ("",))[0] == "srun" else [])
    return all(os.environ.get(n, "0") in ("", "0") for n in names)


def _version() -> str:
    from scenecomp import __version__

    return __version__


# ----------------------------------------------------------------------------- fitting a prior


def fit_table(prior: LayoutPrior, annotations, samples: int = 2000, size: int = 64, seed: int = 0) -> str:
    """A markdown table, per category, of the real data (the file's ``area`` and ``bbox``; paint
    rank from annotation order) against ``samples`` layouts drawn from the prior at ``size``:
    instances per image, mean area and box centre height (% of the image), mean paint rank."""
    coco = read_coco(annotations)
    real = {c: [] for c in prior.categories}
    for image in coco.images:
        anns = [a for a in image.annotations if a.category in prior.categories]
        for k, a in enumerate(anns):
            if a.area is not None and a.bbox is not None:
                area, (_, y, _, h) = a.area, a.bbox
            else:  # the file has none: measure the segmentation
                rle = coco.rle(image, a)
                area, (_, y, _, h) = float(mask_utils.area(rle)), mask_utils.toBbox(rle)
            real[a.category].append(
                (
                    area / (image.width * image.height),
                    (y + h / 2) / image.height,
                    k / (len(anns) - 1) if len(anns) > 1 else 0.5,
                )
            )
    sampled = {c: [] for c in prior.categories}
    quota = Quota(prior.shares())
    for i in range(samples):
        objects = prior.sample(np.random.default_rng([seed, i]), (size, size), quota)
        for k, (c, m) in enumerate(objects):
            ys = np.nonzero(m.any(1))[0]
            sampled[c].append(
                (
                    m.sum() / m.size,
                    (ys.min() + ys.max() + 1) / 2 / size,
                    k / (len(objects) - 1) if len(objects) > 1 else 0.5,
                )
            )
    rows = [
        "| category | instances per image (real / sampled) | area, % of image | box centre height, % | "
        "paint rank (0 back, 1 front) |",
        "|---|---|---|---|---|",
    ]
    for c in prior.categories:
        r, s = np.array(real[c]).reshape(-1, 3), np.array(sampled[c]).reshape(-1, 3)
        mean = lambda a, j, f=100: f"{a[:, j].mean() * f:.1f}" if len(a) else "-"  # noqa: E731
        rows.append(
            f"| {c} | {len(r) / len(coco.images):.2f} / {len(s) / samples:.2f} | {mean(r, 0)} / {mean(s, 0)} | "
            f"{mean(r, 1)} / {mean(s, 1)} | {mean(r, 2, 1)} / {mean(s, 2, 1)} |"
        )
    return "\n".join(rows)


def fit_prior_main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} fit-prior",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fit a layout prior on a COCO instances file (a model's training layouts) and print its fit.",
        epilog="example:\n  scenecomp-synth fit-prior data/shapes64/train/annotations.json --out run/prior.json",
    )
    parser.add_argument(
        "annotations", help="COCO instances JSON (paint order: the file's if it says so, else largest first)"
    )
    parser.add_argument(
        "--out", "-o", required=True, help="prior file to write (put it beside the model's composer.safetensors)"
    )
    parser.add_argument(
        "--shapes-per-category", type=int, default=256, help="real objects kept per category (default 256)"
    )
    parser.add_argument("--categories", help="comma-separated names to keep (default: all of the file's)")
    parser.add_argument("--seed", type=int, default=0, help="which objects are kept (default 0)")
    parser.add_argument(
        "--check",
        type=int,
        default=2000,
        metavar="N",
        help="layouts sampled for the printed table of real vs sampled statistics (default 2000; 0: none)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.shapes_per_category <= 10_000:
        parser.error("--shapes-per-category must be in [1, 10000]")
    try:
        prior = LayoutPrior.fit(
            args.annotations,
            args.shapes_per_category,
            args.seed,
            args.categories.split(",") if args.categories else None,
        )
    except PriorError as e:
        print(f"{PROG} fit-prior: error: {e}", file=sys.stderr)
        return 2
    prior.save(args.out)
    print(
        f"{PROG} fit-prior: {args.out}: {prior.data['source']['images']} images, "
        f"{prior.data['source']['objects']} objects",
        file=sys.stderr,
    )
    if args.check:
        print(fit_table(prior, args.annotations, args.check))
    return 0


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compose a labelled synthetic data set (COCO instances with exact visible and amodal masks). "
        f"`{PROG} fit-prior --help` fits a layout prior.",
    )
    parser.add_argument(
        "--out", "-o", required=True, metavar="DIR", help="output folder (new, empty, or this command's own to resume)"
    )
    parser.add_argument("--count", "-n", required=True, type=int, metavar="N", help=f"images to make (1..{MAX_COUNT})")
    parser.add_argument(
        "--checkpoint", metavar="PATH", help="composer.safetensors bundle or a run folder (default: the shipped model)"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prior", metavar="PATH", help="layout prior file (default: prior.json beside the bundle)")
    source.add_argument(
        "--layouts",
        nargs="+",
        metavar="SRC",
        help="layout files, folders of them, or COCO instances files, jittered, instead of the prior",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--balance",
        action="store_true",
        help=f"equal shares: every category's instance count within {BALANCE_RATIO}x of the others'",
    )
    target.add_argument(
        "--categories", metavar="SHARES", help="instance shares, e.g. tree=0.4,sun=0.6 (adding up to 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole set (default 0)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per network call (default 16)")
    parser.add_argument("--device", metavar="DEV", help="cpu, cuda or cuda:1 (default: cuda if available)")
    parser.add_argument(
        "--devices", type=int, metavar="N", help="render on N devices (Lightning DDP, as scenecomp-render)"
    )
    parser.add_argument("--num-nodes", type=int, metavar="M", help="nodes of a multi-node launch (as scenecomp-render)")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads per process")
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="network precision (default auto, as scenecomp-render)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars and no summary")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["fit-prior"]:
        return fit_prior_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return synthesize(
            args.out,
            args.count,
            args.checkpoint,
            prior=args.prior,
            layouts=args.layouts,
            balance=args.balance,
            categories=args.categories,
            seed=args.seed,
            batch_size=args.batch_size,
            device=args.device,
            devices=args.devices,
            num_nodes=args.num_nodes,
            dtype=args.dtype,
            threads=args.threads,
            quiet=args.quiet,
        )
    except SynthError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; finished images are kept: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
