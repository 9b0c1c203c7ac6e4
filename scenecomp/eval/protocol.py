"""The evaluation protocol: which images are compared, how they are rendered, and `evaluate`.

Protocol (printed with every table and written into the JSON)
------------------------------------------------------------
- The split (``--data``) is cut in two disjoint parts of ``N = --samples``
  images: the *layouts* (its first N) and the *reference* (the next N). Every
  model renders the layouts; the real images of the layouts are "real"; the
  reference is what distances are measured against.
- Rendering goes through `Composer.render_iter` (the single-shot baseline
  through `SingleShot.render_iter`, which fills seeds with `Composer.seeded`):
  layout ``i`` becomes a `Layout` of its objects (paint order, at most
  ``--max-objects``, RLE masks at the models' resolution) whose background
  seed for sample ``j`` is ``SEED_STRIDE * j + i``; the Composer's seed rule
  fills in every object's seed, so ``Composer.render_iter`` reproduces any
  sample. Backgrounds are the empty layout with the same seed (= ``Composer.background(seed)``).
- Distances (FID, KID) compare sample 0 of each layout (N images) with the
  reference (N images); their "real" column is the floor: the layouts' real
  images against the same reference, so both sides have the same size and
  the same layouts.
- Two-sample tests (`scenecomp.eval.two_sample`): generated vs the layouts'
  real images (sample 0), object crops with identical masks (each counted
  object's visible mask cut from the real and the generated image, its box
  scaled to the crop size; and again at their own resolution, where scaling a
  small object up would blur its finest detail: `crop_objects` ``native``), and
  backgrounds (the split's ``backgrounds/`` images vs the models'); "real" is
  the calibration: the layouts' real images, crops and backgrounds against
  the reference's. Layered models, where the split has ``backgrounds/``, also
  paint the layouts' objects onto their real backgrounds (``render_iter``'s
  ``backgrounds``) against the layouts' real images: G_fg's share of the
  scene test (the calibration is the scenes').
- An object *counts* when its visible part covers at least ``MIN_VISIBLE`` of
  the image. Images are quantised to uint8, as if saved, before any feature is taken.
- Edits: one object per layout (object ``i mod n`` of layout ``i``) gets a new
  look (layered: its seed + ``EDIT_OFFSET``; single-shot: its only seed, the
  background's, + ``EDIT_OFFSET``) or the next category (cyclically shifted by ``i``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import nn

from scenecomp.compose import BundleError, Composer, CompositionError, build_network, load_bundle, noise
from scenecomp.eval import EvaluationError
from scenecomp.eval.features import FeatureNet
from scenecomp.eval.metrics import (
    ClassifierScores,
    Diversity,
    Illumination,
    Locality,
    Purity,
    frechet_distance,
    kernel_distance,
)
from scenecomp.eval.two_sample import REPEATS, two_sample_figures
from scenecomp.images import to_float, to_uint8
from scenecomp.layout import SEED_LIMIT, Layout, LayoutObject
from scenecomp.nets import crop_objects, fill_outside, layout_map, object_crops, swap_silhouettes, visible_masks

MIN_VISIBLE = 0.003  # smallest visible share of the image for an object to count (as in training)
SEED_STRIDE = 1_000_000  # background seed of sample j of layout i = SEED_STRIDE * j + i
EDIT_OFFSET = 2**31  # an edited seed = the old one + EDIT_OFFSET (mod 2**32: torch keeps a seed's low 32 bits)
KID_SUBSET = 1000


# ----------------------------------------------------------------------------- models under test


class SingleShot:
    """The single-shot baseline behind the Composer's rendering interface: one generator from
    the layout map and one noise vector, the background noise of the Composer's seed rule."""

    def __init__(self, generator: nn.Module, categories):
        self.net = generator.eval().requires_grad_(False)
        self.categories = tuple(categories)
        self.resolution, self.noise_dim = generator.resolution, generator.noise_dim

    def to(self, device):
        self.net.to(device)
        return self

    def seeded(self, layout: Layout, seed: int = 0) -> Layout:
        return Composer.seeded(self, layout, seed)  # the Composer's rule itself (it reads nothing of the composer)

    def render_iter(self, layouts, batch_size: int = 16):
        """One `Rendering`-like item (``.image`` ``[3,R,R]`` float CPU in [-1,1]) per layout, in order."""
        layouts, R = list(layouts), self.resolution
        index = {c: i for i, c in enumerate(self.categories)}
        device = next(self.net.parameters()).device
        for a in range(0, len(layouts), batch_size):
            chunk = [self.seeded(lay) for lay in layouts[a : a + batch_size]]
            K = max(1, max(len(lay.objects) for lay in chunk))
            masks = torch.zeros(len(chunk), K, 1, R, R)
            cats = torch.zeros(len(chunk), K, dtype=torch.long)
            for b, lay in enumerate(chunk):
                masks[b, : len(lay.objects), 0] = torch.from_numpy(lay.masks((R, R)) > 0.5)
                cats[b, : len(lay.objects)] = torch.tensor([index[o.category] for o in lay.objects], dtype=torch.long)
            z = torch.stack([noise(lay.background_seed, self.noise_dim) for lay in chunk])
            with torch.inference_mode():
                images = self.net(
                    self.net.latent(z), layout_map(masks.to(device), cats.to(device), len(self.categories))
                )
            for image in images.float().cpu():
                yield _Image(image)


@dataclass(frozen=True)
class _Image:
    image: torch.Tensor


class Model:
    """A model under test: its renderer (a `Composer` or a `SingleShot`) and what the report says of it."""

    def __init__(self, kind: str, renderer, nets, path=None):
        self.kind, self.renderer, self.path = kind, renderer, path
        self.layered = kind == "scenecomp"
        self.resolution = renderer.resolution
        self.num_parameters = sum(p.numel() for net in nets for p in net.parameters())

    def to(self, device):
        self.renderer.to(device)
        return self

    def render(self, layouts: list[Layout], batch_size: int, backgrounds: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images ``[len(layouts),3,R,R]`` (as if saved); ``backgrounds`` (uint8 ``[len(layouts),3,R,R]``,
        layered models only): the canvases to paint the objects onto instead of G_bg's."""
        given = {} if backgrounds is None else {"backgrounds": to_float(backgrounds)}  # SingleShot has no backgrounds
        rendered = self.renderer.render_iter(layouts, batch_size=batch_size, **given)
        return to_uint8(torch.stack([r.image for r in rendered]))

    def new_look(self, layout: Layout, k: int) -> Layout:
        """The layout with object ``k`` given a new look: its seed + EDIT_OFFSET (layered); the
        single-shot model has one seed only, the background's, so that one changes."""
        seeded = self.renderer.seeded(layout)
        if not self.layered:
            return dataclasses.replace(seeded, background_seed=(seeded.background_seed + EDIT_OFFSET) % SEED_LIMIT)
        objects = list(seeded.objects)
        objects[k] = dataclasses.replace(objects[k], seed=(objects[k].seed + EDIT_OFFSET) % SEED_LIMIT)
        return dataclasses.replace(seeded, objects=objects)


def load_models(path, require: str | None = None) -> tuple[list[str], list[Model]]:
    """The models of a bundle: (categories, [Model]); a composer bundle gives ``scenecomp``,
    a baseline bundle ``baseline``. ``require="baseline"`` insists on a baseline network."""
    data = load_bundle(path)
    nets = data.get("networks")
    if not isinstance(nets, dict) or not isinstance(data.get("categories"), list):
        raise BundleError(f"{path}: damaged bundle (no 'networks' or 'categories')")
    models = []
    try:
        if "background" in nets or "foreground" in nets:
            bg, fg = build_network(data, "background", path), build_network(data, "foreground", path)
            models.append(Model("scenecomp", Composer(bg, fg, data["categories"]), (bg, fg), path))
        if "baseline" in nets:
            net = build_network(data, "baseline", path)
            models.append(Model("baseline", SingleShot(net, data["categories"]), (net,), path))
    except (KeyError, TypeError, RuntimeError, CompositionError) as e:  # missing entries, wrong kwargs or weights
        raise BundleError(f"{path}: damaged bundle ({type(e).__name__}: {e})") from None
    if not models:
        raise BundleError(f"{path}: holds no model to evaluate (networks: {sorted(nets)})")
    if require and not any(m.kind == require for m in models):
        raise BundleError(f"{path}: holds no {require} network (it has {sorted(nets)})")
    return list(data["categories"]), models


# ----------------------------------------------------------------------------- the split


@dataclass
class Batch:
    """Some layouts of the split at the models' resolution; objects in paint order, padded to K."""

    index: list[int]  # B layout indices in the split
    image: torch.Tensor  # [B,3,R,R] uint8, the real images
    background: torch.Tensor | None  # [B,3,R,R] uint8, the split's object-free backgrounds/ images
    masks: torch.Tensor  # [B,K,1,R,R] amodal (padding zeroed)
    cats: torch.Tensor  # [B,K]
    counted: torch.Tensor  # [B,K] visible share >= MIN_VISIBLE
    vis: torch.Tensor  # [B,K,1,R,R] visible masks
    layouts: list[Layout]  # the same objects as layouts, no seeds


def _rle(mask: torch.Tensor) -> dict:
    counts = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))["counts"].decode("ascii")
    return {"size": list(mask.shape), "counts": counts}


def read_background(dataset, i: int, folder: Path) -> torch.Tensor:
    """Image ``i``'s object-free background (Shapes' ``backgrounds/``) at the dataset's resolution: uint8 ``[3,R,R]``."""
    from PIL import Image

    from scenecomp.data import fit_image

    with Image.open(folder / dataset.image_info(i)["file_name"]) as im:
        pixels = np.array(im.convert("RGB"))
    return torch.from_numpy(fit_image(pixels, dataset.resolution)).permute(2, 0, 1).contiguous()


def read_batches(dataset, indices: list[int], batch_size: int, backgrounds: Path | None):
    """`Batch` es of the split's images ``indices``; objects that vanished at this resolution are dropped."""
    R = dataset.resolution
    for a in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[a : a + batch_size]]
        K = max(1, max(int(s["valid"].sum()) for s in items))
        masks, cats = torch.zeros(len(items), K, 1, R, R), torch.zeros(len(items), K, dtype=torch.long)
        layouts = []
        for b, s in enumerate(items):
            keep = s["valid"].nonzero().flatten()
            masks[b, : len(keep)], cats[b, : len(keep)] = s["masks"][keep], s["categories"][keep]
            layouts.append(
                Layout(
                    (R, R),
                    [
                        LayoutObject(dataset.categories[int(cats[b, k])], {"rle": _rle(masks[b, k, 0] > 0.5)})
                        for k in range(len(keep))
                    ],
                )
            )
        vis = visible_masks(masks)
        index = [int(s["index"]) for s in items]
        yield Batch(
            index,
            to_uint8(torch.stack([s["image"] for s in items])),
            torch.stack([read_background(dataset, i, backgrounds) for i in index]) if backgrounds else None,
            masks,
            cats,
            vis.flatten(2).mean(2) >= MIN_VISIBLE,
            vis,
            layouts,
        )


def sample_layouts(batch: Batch, j: int) -> list[Layout]:
    """Sample ``j`` of each layout: background seed ``SEED_STRIDE * j + i``, objects seeded by the Composer's rule."""
    return [
        dataclasses.replace(lay, background_seed=SEED_STRIDE * j + i)
        for lay, i in zip(batch.layouts, batch.index, strict=False)
    ]


def _top_object(counted: torch.Tensor) -> torch.Tensor:
    """Index of each layout's last counted object (never covered), -1 where none."""
    pos = torch.where(counted, torch.arange(counted.shape[1]), -1)
    return pos.amax(1)


# ----------------------------------------------------------------------------- the evaluation


class _Crops:
    """Object crops of counted objects (`object_crops`) of a batch's images, for the classifier and the two-sample test."""

    def __init__(self, batch: Batch, size: int):
        self.rows, self.cols = batch.counted.nonzero(as_tuple=True)
        self.masks, self.cats, self.size = batch.vis[self.rows, self.cols], batch.cats[self.rows, self.cols], size

    def of(self, images: torch.Tensor, native: bool = False) -> torch.Tensor:
        return object_crops(to_float(images)[self.rows], self.masks, self.size, native)


class _Real:
    """What is measured on real images: the layouts' (or the reference's) images, crops and backgrounds."""

    def __init__(self, C: int, appearance: bool):
        self.images, self.crops, self.backgrounds, self.filled, self.crop_cats, self.top_masks = [], [], [], [], [], []
        self.native_crops = []
        self.objects, self.purity, self.illumination = ClassifierScores(C), Purity(), Illumination()
        self.appearance = appearance  # keep what `_real_appearance` needs (the layouts', not the reference's)

    def update(self, net: FeatureNet, batch: Batch, crops: _Crops) -> None:
        c = crops.of(batch.image)
        self.images.append(batch.image)
        self.crops.append(c)
        self.native_crops.append(crops.of(batch.image, native=True))
        self.crop_cats.append(crops.cats)
        self.objects.update(net.object_logits(c), crops.cats)
        self.illumination.update(batch.image, batch.masks, batch.counted)
        if self.appearance:
            self.filled.append(fill_outside(c))
            top = _top_object(batch.counted)
            idx = (top >= 0).nonzero().flatten()
            masks = batch.masks[idx, top[idx]]
            self.top_masks.append(crop_objects(masks, masks, net.crop_size))
        if batch.background is not None:
            self.backgrounds.append(batch.background)
            self.purity.update(torch.sigmoid(net.presence_logits(to_float(batch.background))))


class _Generated:
    """What is measured on one model's renderings."""

    def __init__(self, C: int):
        self.images, self.crops, self.backgrounds, self.on_real_backgrounds = [], [], [], []
        self.native_crops = []
        self.objects, self.appearance, self.purity = ClassifierScores(C), ClassifierScores(C), Purity()
        self.illumination, self.diversity, self.crop_diversity = Illumination(), Diversity(), Diversity()
        self.look, self.category = Locality(), Locality()

    def update(self, model: Model, net: FeatureNet, batch: Batch, crops: _Crops, seeds: int, batch_size: int) -> None:
        scene_features, crop_features = [], []
        for j in range(seeds):
            layouts = sample_layouts(batch, j)
            fake = model.render(layouts, batch_size)
            c = crops.of(fake)
            f = net.object_features(c)
            self.objects.update(net.object_head(f), crops.cats)
            self.illumination.update(fake, batch.masks, batch.counted)
            scene_features.append(net(fake))
            crop_features.append(f)
            if j == 0:
                self.images.append(fake)
                self.crops.append(c)
                self.native_crops.append(crops.of(fake, native=True))
                self._first_sample(model, net, batch, layouts, fake, batch_size)
        if seeds >= 2:
            self.diversity.update(torch.stack(scene_features, 1))
            self.crop_diversity.update(torch.stack(crop_features, 1), crops.cats)

    def _first_sample(self, model, net, batch, layouts, fake, batch_size) -> None:
        C, S = net.num_categories, net.crop_size
        background = model.render([dataclasses.replace(lay, objects=[]) for lay in layouts], batch_size)
        self.backgrounds.append(background)
        if model.layered and batch.background is not None:  # G_fg alone: the objects on the real scenes' backgrounds
            self.on_real_backgrounds.append(model.render(layouts, batch_size, batch.background))
        self.purity.update(torch.sigmoid(net.presence_logits(to_float(background))))
        # appearance: the top object painted as every category in turn (same mask, same seed)
        top = _top_object(batch.counted)
        idx = (top >= 0).nonzero().flatten().tolist()
        if idx:
            masks = batch.masks[idx, top[idx]]
            for c in range(C):
                recat = [_with_object(layouts[b], int(top[b]), category=net.categories[c]) for b in idx]
                painted = model.render(recat, batch_size)
                self.appearance.update(
                    net.object_logits(object_crops(to_float(painted), masks, S)), torch.full((len(idx),), c)
                )
        # locality: object i mod n of layout i gets a new look / a new category
        edited = [(b, i % len(layouts[b].objects)) for b, i in enumerate(batch.index) if layouts[b].objects]
        if not edited:
            return
        rows = [b for b, _ in edited]
        region = torch.stack([batch.masks[b, k] for b, k in edited])
        look = model.render([model.new_look(layouts[b], k) for b, k in edited], batch_size)
        self.look.update(fake[rows], look, region)
        if C > 1:
            recat = [
                _with_object(
                    layouts[b],
                    k,
                    category=net.categories[
                        (net.categories.index(layouts[b].objects[k].category) + 1 + batch.index[b] % (C - 1)) % C
                    ],
                )
                for b, k in edited
            ]
            self.category.update(fake[rows], model.render(recat, batch_size), region)


def _with_object(layout: Layout, k: int, **change) -> Layout:
    objects = list(layout.objects)
    objects[k] = dataclasses.replace(objects[k], **change)
    return dataclasses.replace(layout, objects=objects)


def evaluate(
    data,
    models: dict,
    feature_net: FeatureNet,
    samples: int = 500,
    seeds: int = 2,
    batch_size: int = 32,
    max_objects: int | None = 8,
    images=None,
    device="cpu",
    inception=None,
    two_sample: bool = True,
    two_sample_repeats: int = REPEATS,
    progress: bool = False,
) -> dict:
    """Every metric for every model in ``models`` ({column name: `Model`}) on the COCO split
    ``data`` (a JSON or a folder holding ``annotations.json``): its first ``samples``
    layouts, ``seeds`` samples each, against the next ``samples`` images as the reference.
    Returns a plain dict: ``protocol``, ``models``, ``metrics`` ({metric: {column: value}};
    columns are the model names and ``real``), ``diversity_per_category``.
    ``inception`` (optional): a second FID/KID feature module; ``two_sample=False`` skips the
    two-sample tests (each trains ``two_sample_repeats`` classifiers, seeds 0.., and reports their mean;
    ``two_sample_figures`` in the result holds every figure)."""
    from scenecomp.data import SceneDataset

    start = time.perf_counter()
    if samples < 1 or seeds < 1 or batch_size < 1 or two_sample_repeats < 1:
        raise EvaluationError("--samples, --seeds, --batch-size and --two-sample-repeats must be positive integers")
    C, R, S = feature_net.num_categories, feature_net.resolution, feature_net.crop_size
    for name, model in models.items():
        if model.resolution != R:
            raise EvaluationError(
                f"{name} paints {model.resolution}x{model.resolution} but the feature network "
                f"({getattr(feature_net, 'path', 'given')}) was trained at {R}x{R}"
            )
    dataset = SceneDataset(data, images, feature_net.categories, R, max_objects)
    if 2 * samples > len(dataset):
        raise EvaluationError(
            f"--samples {samples} needs {2 * samples} images of {dataset.annotations_path} "
            f"({samples} layouts and a disjoint reference of {samples}); it has {len(dataset)}"
        )
    folder = dataset.annotations_path.parent / "backgrounds"
    folder = folder if folder.is_dir() else None
    device = torch.device(device)
    net = feature_net.to("cpu")  # small: it reads the renderings where they arrive (render_iter returns CPU images)
    for model in models.values():
        model.to(device)

    real, reference = _Real(C, appearance=True), _Real(C, appearance=False)
    gen = {name: _Generated(C) for name in models}
    steps = [(reference, list(range(samples, 2 * samples))), (real, list(range(samples)))]
    total = sum(math.ceil(len(ix) / batch_size) for _, ix in steps)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="evaluating", unit="batch", file=sys.stderr, disable=None)
    n_objects = 0
    with torch.no_grad():
        for target, indices in steps:
            for batch in read_batches(dataset, indices, batch_size, folder):
                crops = _Crops(batch, S)
                target.update(net, batch, crops)
                if target is real:
                    n_objects += len(crops.cats)
                    for name, model in models.items():
                        gen[name].update(model, net, batch, crops, seeds, batch_size)
                if bar is not None:
                    bar.update()
        appearance_real = _real_appearance(net, real, batch_size)
    if bar is not None:
        bar.close()

    metrics: dict[str, dict] = {}

    def put(key, column, value):
        metrics.setdefault(key, {})[column] = None if value is None or not math.isfinite(value) else float(value)

    # ---- distances and two-sample tests: "real" = the layouts' real images against the reference
    ref_images, real_images = torch.cat(reference.images), torch.cat(real.images)
    fb = max(batch_size, 64)
    kid_size = min(KID_SUBSET, samples)
    sets = {**{name: torch.cat(g.images) for name, g in gen.items()}, "real": real_images}
    for column, images_ in sets.items():
        put("fid", column, frechet_distance(net, ref_images, images_, batch_size=fb))
        mean, std = kernel_distance(net, ref_images, images_, subset_size=kid_size, batch_size=fb)
        put("kid", column, mean * 1000)
        put("kid_std", column, std * 1000)
        if inception is not None:
            put("fid_inception", column, frechet_distance(inception, ref_images, images_, batch_size=batch_size))
            m, s = kernel_distance(inception, ref_images, images_, subset_size=kid_size, batch_size=batch_size)
            put("kid_inception", column, m * 1000)
    for name in models:
        floor = metrics["fid"]["real"]
        put("fid_over_floor", name, metrics["fid"][name] / floor if floor else None)
    real_crops, ref_crops = torch.cat(real.crops), torch.cat(reference.crops)
    real_native, ref_native = torch.cat(real.native_crops), torch.cat(reference.native_crops)
    figures: dict[str, dict] = {}  # every classifier's figure; the metric is their mean

    def test(key, column, a, b):
        values = two_sample_figures(a, b, two_sample_repeats)
        figures.setdefault(key, {})[column] = values
        put(key, column, sum(values) / len(values))

    pairs = {
        name: (sets[name], torch.cat(g.crops), torch.cat(g.native_crops), g.backgrounds) for name, g in gen.items()
    }
    # the calibration: two disjoint real sets
    pairs["real"] = (ref_images, ref_crops, ref_native, reference.backgrounds)
    for column, (images_, crops_, native, backgrounds) in pairs.items() if two_sample else ():
        test("two_sample_scenes", column, images_, real_images)
        test("two_sample_objects", column, crops_, real_crops)
        test("two_sample_objects_native", column, native, real_native)
        if real.backgrounds:
            test("two_sample_backgrounds", column, torch.cat(backgrounds), torch.cat(real.backgrounds))
    for name, g in gen.items() if two_sample else ():
        if g.on_real_backgrounds:  # against the same real scenes as whole scenes: the same calibration
            test("two_sample_scenes_real_backgrounds", name, torch.cat(g.on_real_backgrounds), real_images)
            put("two_sample_scenes_real_backgrounds", "real", metrics["two_sample_scenes"]["real"])
            figures["two_sample_scenes_real_backgrounds"]["real"] = figures["two_sample_scenes"]["real"]

    # ---- the classifier's metrics
    put("inception_score", "real", real.objects.inception_score())
    put("object_accuracy", "real", real.objects.accuracy())
    put("appearance_accuracy", "real", appearance_real.accuracy())
    put("appearance_min_category", "real", appearance_real.lowest_category_accuracy())
    put("background_purity", "real", real.purity.result() if real.backgrounds else None)
    put("illumination", "real", real.illumination.result())
    per_category = {}
    for name, g in gen.items():
        put("inception_score", name, g.objects.inception_score())
        put("object_accuracy", name, g.objects.accuracy())
        put("appearance_accuracy", name, g.appearance.accuracy())
        put("appearance_min_category", name, g.appearance.lowest_category_accuracy())
        put("diversity", name, g.diversity.result() if seeds >= 2 else None)
        if seeds >= 2:
            values = g.crop_diversity.per_category(C)
            per_category[name] = {
                cat: v if math.isfinite(v) else None for cat, v in zip(feature_net.categories, values, strict=False)
            }
            measured = [v for v in per_category[name].values() if v is not None]
            put("diversity_min_category", name, min(measured) if measured else None)
        else:  # one sample per layout: nothing to compare
            per_category[name] = None
            put("diversity_min_category", name, None)
        put("locality_look", name, g.look.result())
        put("locality_category", name, g.category.result())
        put("background_purity", name, g.purity.result())
        put("illumination", name, g.illumination.result())

    for values in metrics.values():  # every column in every row; None = not meaningful there
        for column in [*models, "real"]:
            values.setdefault(column, None)
    meta = dict(getattr(feature_net, "meta", {}) or {})
    protocol = {
        "split": str(dataset.annotations_path),
        "layouts": samples,
        "layouts_in_split": len(dataset),
        "reference": f"images {samples}..{2 * samples - 1} of the split",
        "reference_images": samples,
        "samples_per_layout": seeds,
        "generated_images_per_model": samples * seeds,
        "distance_sample_size": samples,
        "real_images": samples,
        "counted_objects": n_objects,
        "reference_objects": len(ref_crops),
        "resolution": R,
        "max_objects": dataset.max_objects,
        "categories": list(feature_net.categories),
        "sample_seed": f"background seed {SEED_STRIDE} * j + layout index (j < {seeds}); objects: "
        f"Composer rule object_seed(background seed, k); rendered with Composer.render_iter",
        "min_visible": MIN_VISIBLE,
        "crop_size": S,
        "kid_subset_size": kid_size,
        "two_sample": "fresh CNN (scenecomp.eval.two_sample), trained on one half of each set, "
        f"accuracy on the other half (0.5 = indistinguishable); mean of {two_sample_repeats} classifier seed(s) "
        "(each its own halves and batch order), their range in brackets",
        "two_sample_repeats": two_sample_repeats,
        "feature_network": {
            "path": getattr(feature_net, "path", None),
            "kind": "in-domain CNN (scenecomp.eval.features.FeatureNet)",
            "feature_dim": feature_net.num_features,
            "heldout_object_accuracy": meta.get("heldout_object_accuracy"),
            "heldout_swapped_accuracy": meta.get("heldout_swapped_accuracy"),
            "heldout_presence_accuracy": meta.get("heldout_presence_accuracy"),
            "trained_on": meta.get("data"),
            "trained_on_seed": meta.get("data_seed"),
        },
        "inception": getattr(inception, "weights_path", None),
        "backgrounds": str(folder) if folder else None,
        "device": str(device),
        "seconds": round(time.perf_counter() - start, 1),
    }
    return {
        "protocol": protocol,
        "models": {
            name: {"kind": m.kind, "path": None if m.path is None else str(m.path), "parameters": m.num_parameters}
            for name, m in models.items()
        },
        "metrics": metrics,
        "two_sample_figures": figures,  # {metric: {column: [one figure per classifier seed]}}
        "diversity_per_category": per_category,  # {model: {category: value}}; None with one seed
        "diversity_every_category_above_zero": {
            name: None if (v := metrics["diversity_min_category"][name]) is None else v > 0 for name in models
        },
    }


def _real_appearance(net: FeatureNet, real: _Real, batch_size: int) -> ClassifierScores:
    """Real objects of each category filled into the top masks the models repaint (`swap_silhouettes`)."""
    scores = ClassifierScores(net.num_categories)
    pool_rgb, pool_cats, targets = torch.cat(real.filled), torch.cat(real.crop_cats), torch.cat(real.top_masks)
    for c in range(net.num_categories):
        pool = pool_rgb[pool_cats == c]
        if len(pool) == 0 or len(targets) == 0:
            continue
        src = pool[torch.arange(len(targets)) % len(pool)]
        for a in range(0, len(targets), batch_size):
            crops = swap_silhouettes(src[a : a + batch_size], targets[a : a + batch_size])
            scores.update(net.object_logits(crops), torch.full((len(crops),), c))
    return scores
