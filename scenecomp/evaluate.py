"""Evaluation: the in-domain feature network, the metrics, and ``scenecomp-eval``.

    scenecomp-eval --checkpoint runs/shapes64/composer.pt --baseline runs/shapes64-baseline/baseline.pt \\
        --data data/shapes64/test --samples 500 --seeds 2 --json results.json

Protocol (printed with every table and written into the JSON)
------------------------------------------------------------
- Layouts: the first ``--samples`` images of the split, in file order, at the
  models' resolution (``SceneDataset``: paint order, at most ``--max-objects``).
- Each layout is rendered ``--seeds`` times. Sample ``j`` of layout ``i`` uses
  the *sample seed* ``s = 1_000_000 * j + i``: the background (or the
  baseline's single) noise is ``noise(s)`` and object ``k``'s is
  ``noise(object_seed(s, k))`` with ``object_seed(s, k) = (1_000_003 * s + k + 1) % 2**32``
  and ``noise(seed) = torch.randn(z_dim, generator=torch.Generator().manual_seed(seed))``:
  the Composer's seed rule, so ``Composer.render([layout_i], seeds=[s])``
  reproduces a sample.
- An object *counts* (object accuracy, Inception score, illumination) when its
  visible part (what later objects leave of it) covers at least
  ``MIN_VISIBLE`` of the image. Crops are ``object_crops``: the image inside
  the visible mask (outside set to 0, mid grey) ⊕ that mask, cut by
  `scenecomp.nets.crop_objects` (as the object discriminator's) to
  ``crop_size``.
- Images are quantised to uint8, as if saved, before any feature is taken.

Metrics (each a small function below, tested on inputs whose answer is known)
-----------------------------------------------------------------------------
- ``fid``/``kid``: torchmetrics' FID and KID with the in-domain `FeatureNet`
  as ``feature=``; generated images (layouts x seeds) against the layouts' real images.
- ``inception_score``: exp(E KL(p(y|x) || p(y))) of the object classifier on the
  crops of counted objects (the in-domain form: the classifier is the Shapes
  classifier, the inputs are objects).
- ``object_accuracy``: the classifier on generated object crops against the
  requested category; "real": on the split's real crops.
- ``appearance_accuracy``: the last painted object of each layout (never
  covered) is painted as every category in turn (same mask, same noise), and
  the classifier must name the category painted; the silhouette is the same
  every time, so only the appearance inside it can tell. "real": real objects
  of each category filled into the same masks (`swap_silhouettes`).
- ``diversity``: mean pairwise distance of features between samples of the same
  layout with different seeds (needs ``--seeds`` >= 2).
- ``diversity_per_category``: the same for each counted object's crop
  (``FeatureNet.object_features``) across seeds (same layout, same object),
  averaged over each category's objects; ``diversity_min_category`` is the
  least diverse category's (above zero: no category collapsed to one look).
- ``locality_look`` / ``locality_category``: one object per layout (object
  ``i mod n`` of layout ``i``) gets a new look (layered model: that object's
  noise from seed ``object_seed + 2**31``; single-shot baseline: it has only one
  noise vector, which is the only way to re-sample anything, so the scene's
  noise from seed ``s + 2**31``) or a new category (the next one, cyclically
  shifted by ``i``; same noise for both models); the score is the mean absolute
  change, in [0, 1] pixel units, outside the object's mask.
- ``background_purity``: share of backgrounds (layered: G_bg from noise alone;
  baseline: an empty layout) in which the classifier detects no category.
  "real": the split's object-free ``backgrounds/`` images, where present.
- ``illumination``: Pearson correlation, over counted objects, of an object's
  mean luma and its scene's mean luma outside every object; compare with "real".

The feature network
-------------------
`FeatureNet` is a small CNN trained by ``tools/train_features.py`` (which calls
`train_features`) on the training split's real images and object crops: an
object head (the category of a crop; half of its training crops carry another
object's silhouette filled with this object's pixels, so the silhouette gives
nothing away and it must judge appearance) and a presence head (which
categories a whole image contains; the split's object-free backgrounds and
images with objects removed are its negatives — this is evaluation tooling,
the generators never see them). Its penultimate features of whole images feed
FID, KID and diversity. Its file is plain data (``FEATURES_FORMAT``) read with
``torch.load(weights_only=True)``.

Inception-v3 (``--inception WEIGHTS``) adds FID/KID rows with torchmetrics'
Inception, which needs the ``torch-fidelity`` package (and, offline, a local
``pt_inception-2015-12-05`` weights file); where it is not installed the command
says so and stops.

This module imports neither Hydra nor Lightning.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scenecomp.atomic import write_atomically
from scenecomp.compose import BundleError, build_network, load_bundle, noise, object_seed, paint_layers
from scenecomp.layout import SEED_LIMIT
from scenecomp.nets import crop_objects, layout_map, visible_masks

FEATURES_FORMAT = "scenecomp-features"
FEATURES_VERSION = 1
DEFAULT_FEATURES = Path(__file__).parent / "assets" / "features.pt"
MIN_VISIBLE = 0.003  # smallest visible share of the image for an object to count (as in training)
SEED_STRIDE = 1_000_000  # sample seed = SEED_STRIDE * j + layout index
EDIT_OFFSET = 2**31  # an edited noise vector's seed = the old seed + EDIT_OFFSET (torch's CPU generator
# uses only a seed's low 32 bits, so the offset must change those)


class EvaluationError(ValueError):
    """Bad input to the evaluation: a feature file, mismatched categories or resolutions, bad options."""


# ----------------------------------------------------------------------------- the feature network


class FeatureNet(nn.Module):
    """In-domain feature network and classifier: one small CNN trunk, two heads.

    - ``features(images [B,3,H,W]) -> [B,feature_dim]``: penultimate features of
      whole images (FID, KID, diversity). ``forward`` is the same but also takes
      uint8 images in [0, 255] (floats are read as [-1, 1]), so torchmetrics can
      use the network as ``feature=``; ``num_features`` tells it the size.
    - ``presence_logits(images) -> [B,C]``: which categories an image contains (multi-label).
    - ``object_logits(crops [B,4,S,S]) -> [B,C]``: the category of an object crop
      made by `object_crops` (image inside the mask ⊕ the mask);
      ``object_features(crops) -> [B,feature_dim]``: its penultimate features (per-category diversity).

    The trunk is fully convolutional with global mean and max pooling, so whole
    images (``resolution``) and crops (``crop_size``) share it; a whole image is
    fed with an all-ones mask channel.
    """

    def __init__(self, num_categories: int = 5, resolution: int = 64, crop_size: int = 32,
                 channels: int = 16, max_channels: int = 128, feature_dim: int = 128):
        super().__init__()
        self.init_kwargs = dict(num_categories=num_categories, resolution=resolution, crop_size=crop_size,
                                channels=channels, max_channels=max_channels, feature_dim=feature_dim)
        self.num_categories, self.resolution, self.crop_size = num_categories, resolution, crop_size
        self.num_features = feature_dim
        levels = max(1, int(math.log2(max(crop_size, 8))) - 2)  # crops end at 4x4
        widths = [min(channels * 2 ** i, max_channels) for i in range(levels + 1)]
        layers: list[nn.Module] = [nn.Conv2d(4, widths[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for i in range(levels):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(widths[i + 1], widths[i + 1], 3, padding=1), nn.LeakyReLU(0.2)]
        self.trunk = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(2 * widths[-1], feature_dim), nn.LeakyReLU(0.2))
        self.object_head = nn.Linear(feature_dim, num_categories)
        self.presence_head = nn.Linear(feature_dim, num_categories)
        # set after training so that real images' features have a mean square of 1 per dimension:
        # KID's polynomial kernel (x.y/d + 1)^3 expects features of about that size, as Inception's are
        self.register_buffer("feature_scale", torch.ones(()))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return self.embed(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))  # max: small objects count

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self._whole(images) * self.feature_scale

    def _whole(self, images: torch.Tensor) -> torch.Tensor:
        ones = images.new_ones(images.shape[0], 1, *images.shape[2:])
        return self._embed(torch.cat([images, ones], dim=1))

    def presence_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.presence_head(self._whole(images))

    def object_features(self, crops: torch.Tensor) -> torch.Tensor:
        return self._embed(crops)

    def object_logits(self, crops: torch.Tensor) -> torch.Tensor:
        return self.object_head(self.object_features(crops))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(as_float(images).to(self.object_head.weight.device))


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] -> float [-1,1]; floats are returned as they are (assumed [-1,1])."""
    return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1,1] -> uint8 [0,255], as when an image is saved."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_features(path, net: FeatureNet, categories, meta: dict | None = None, half: bool = True) -> None:
    """Write plain data (format tag, version, kwargs, state_dict, categories, resolution, meta)
    atomically; ``half`` stores the weights as float16 (they load as float32)."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in net.state_dict().items()}
    data = {"format": FEATURES_FORMAT, "version": FEATURES_VERSION, "kwargs": dict(net.init_kwargs),
            "state_dict": state, "categories": list(categories), "resolution": net.resolution,
            "meta": dict(meta or {})}
    write_atomically(path, lambda tmp: torch.save(data, tmp))


def load_features(path) -> FeatureNet:
    """Read a feature network file (``weights_only=True``); the network comes back in eval
    mode with ``.categories`` and ``.meta`` (accuracies it reached, how it was trained)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: no such feature network file (train one with "
                              f"python tools/train_features.py --data data/shapes64/train --out {path})")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refused unpickling, truncated file, not a torch file
        raise EvaluationError(f"{path}: not a readable feature network file ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or data.get("format") != FEATURES_FORMAT:
        tag = data.get("format") if isinstance(data, dict) else None
        raise EvaluationError(f"{path}: not a scenecomp feature network (format tag {tag!r})")
    if data.get("version") != FEATURES_VERSION:
        raise EvaluationError(f"{path}: feature network version {data.get('version')!r}, "
                              f"this scenecomp reads version {FEATURES_VERSION}")
    try:
        net = FeatureNet(**data["kwargs"])
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in data["state_dict"].items()})
        net.categories = list(data["categories"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise EvaluationError(f"{path}: damaged feature network file ({type(e).__name__}: {e})") from None
    net.meta = dict(data.get("meta") or {})
    net.path = str(path)
    return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- masks and crops


def object_crops(images: torch.Tensor, masks: torch.Tensor, size: int) -> torch.Tensor:
    """Classifier input: the image inside the mask (0 = mid grey outside) ⊕ the mask,
    cropped around the mask. images ``[B,3,H,W]`` in [-1,1], masks ``[B,1,H,W]`` -> ``[B,4,S,S]``."""
    return crop_objects(torch.cat([images * masks, masks], dim=1), masks, size)


def fill_outside(crops: torch.Tensor) -> torch.Tensor:
    """Extend each crop's pixels beyond its mask by repeated neighbour averaging, so that
    another silhouette can be cut from them: ``[B,4,S,S]`` -> RGB ``[B,3,S,S]``."""
    value, known = crops[:, :3] * (crops[:, 3:] > 0.5), (crops[:, 3:] > 0.5).float()
    for _ in range(2 * crops.shape[-1]):
        if bool(known.min() > 0):
            break
        num = F.avg_pool2d(value, 3, 1, 1, count_include_pad=False)
        den = F.avg_pool2d(known, 3, 1, 1, count_include_pad=False)
        new = (den > 0) & (known < 0.5)
        value = torch.where(new, num / den.clamp(min=1e-6), value)
        known = torch.maximum(known, new.float())
    return value


def swap_silhouettes(filled: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """One object's appearance in another's silhouette: filled RGB ``[B,3,S,S]`` (`fill_outside`)
    and crop masks ``[B,1,S,S]`` -> crops ``[B,4,S,S]`` as `object_crops` makes them."""
    return torch.cat([filled * masks, masks], dim=1)


# ----------------------------------------------------------------------------- metrics


def _feed(metric, images: torch.Tensor, real: bool, batch_size: int) -> None:
    for a in range(0, len(images), batch_size):
        metric.update(images[a:a + batch_size].to(metric.device), real=real)


def _device(net: nn.Module) -> torch.device:
    return next(iter(net.parameters()), torch.empty(0)).device


def frechet_distance(net: nn.Module, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 64) -> float:
    """FID between two image sets (uint8 or [-1,1] floats, ``[N,3,H,W]``) with torchmetrics'
    ``FrechetInceptionDistance(feature=net)``; at least 2 images each."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=net, reset_real_features=True).to(_device(net))
    with torch.no_grad():
        _feed(metric, real, True, batch_size)
        _feed(metric, fake, False, batch_size)
        return float(metric.compute().clamp(min=0))


def kernel_distance(net: nn.Module, real: torch.Tensor, fake: torch.Tensor, subset_size: int = 1000,
                    subsets: int = 100, seed: int = 0, batch_size: int = 64) -> tuple[float, float]:
    """KID (mean, std over ``subsets`` random subsets of ``min(subset_size, N_real, N_fake)``)
    with torchmetrics' ``KernelInceptionDistance(feature=net)``; the subsets come from ``seed``."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = max(2, min(subset_size, len(real), len(fake)))
    with warnings.catch_warnings():  # "will save all extracted features in buffer": intended
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=net, subsets=subsets, subset_size=size).to(_device(net))
    with torch.no_grad():
        _feed(metric, real, True, batch_size)
        _feed(metric, fake, False, batch_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(probs: torch.Tensor) -> float:
    """exp(mean over x of KL(p(y|x) || p(y))) for class probabilities ``[N,C]``:
    1 for constant predictions, C for confident predictions spread evenly over C classes."""
    probs = probs.double().clamp(min=1e-12)
    marginal = probs.mean(0, keepdim=True)
    return float((probs * (probs.log() - marginal.log())).sum(1).mean().exp())


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose largest score is the label (logits or probabilities ``[N,C]``)."""
    if len(labels) == 0:
        return float("nan")
    return float((logits.argmax(1) == labels).double().mean())


def diversity(features: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance between the features of samples of the same layout
    (``[L,S,F]``: L layouts, S >= 2 samples each), averaged over pairs and layouts."""
    L, S, _ = features.shape
    if S < 2:
        return float("nan")
    d = torch.cdist(features.double(), features.double(), compute_mode="donot_use_mm_for_euclid_dist")  # [L,S,S]
    return float(d.sum() / (L * S * (S - 1)))


def category_diversity(features: torch.Tensor, cats: torch.Tensor, num_categories: int) -> list[float]:
    """`diversity` per category: ``features [N,S,F]`` of N objects, each painted S times (same
    layout and object, other seeds), ``cats [N]`` -> one value per category (nan where it has no object)."""
    return [diversity(features[cats == c]) for c in range(num_categories)]


def edit_locality(before: torch.Tensor, after: torch.Tensor, edited: torch.Tensor) -> float:
    """Mean absolute change outside the edited region, in [0,1] pixel units.

    before/after ``[N,3,H,W]`` (uint8, or floats in [-1,1]); edited ``[N,1,H,W]``
    the old ∪ new mask of the edited object. Per image the mean over the pixels
    (and channels) outside, then the mean over images with any pixel outside.
    """
    scale = 255.0 if before.dtype == torch.uint8 else 2.0
    diff = (after.double() - before.double()).abs().mean(1) / scale  # [N,H,W]
    outside = (edited[:, 0] < 0.5).double()
    count = outside.flatten(1).sum(1)
    per_image = (diff * outside).flatten(1).sum(1) / count.clamp(min=1)
    keep = count > 0
    return float(per_image[keep].mean()) if bool(keep.any()) else float("nan")


def background_purity(presence_probs: torch.Tensor, threshold: float = 0.5) -> float:
    """Share of images in which no category is detected (every presence probability below ``threshold``)."""
    return float((presence_probs < threshold).all(1).double().mean())


def luma(images: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma in [0,1] of ``[N,3,H,W]`` images (uint8 or [-1,1] floats) -> ``[N,1,H,W]``."""
    x = images.double() / 255.0 if images.dtype == torch.uint8 else (images.double() + 1) / 2
    w = x.new_tensor([0.299, 0.587, 0.114])[None, :, None, None]
    return (x * w).sum(1, keepdim=True)


def illumination_pairs(images: torch.Tensor, masks: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """(object brightness, scene brightness) pairs ``[M,2]``: for each counted object, the mean
    luma over its visible mask and its image's mean luma outside every object.

    images ``[N,3,H,W]``; masks ``[N,K,1,H,W]`` (amodal, paint order); counted ``[N,K]`` bool.
    """
    y = luma(images)  # [N,1,H,W]
    vis = visible_masks(masks).double()
    obj = (vis * y[:, None]).flatten(2).sum(2) / vis.flatten(2).sum(2).clamp(min=1)  # [N,K]
    outside = 1 - masks.double().amax(1)  # [N,1,H,W]
    scene = (outside * y).flatten(1).sum(1) / outside.flatten(1).sum(1).clamp(min=1)  # [N]
    keep = counted & (outside.flatten(1).sum(1) > 0)[:, None]
    return torch.stack([obj[keep], scene[:, None].expand_as(obj)[keep]], dim=1)


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two 1-D samples (nan when either is constant or shorter than 2)."""
    x, y = x.double(), y.double()
    if len(x) < 2:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    den = (x.square().sum() * y.square().sum()).sqrt()
    return float((x * y).sum() / den) if den > 0 else float("nan")


def illumination_consistency(pairs: torch.Tensor) -> float:
    """Correlation over objects between an object's brightness and its scene's (`illumination_pairs`)."""
    return pearson(pairs[:, 0], pairs[:, 1])


# ----------------------------------------------------------------------------- models under test


def noise_batch(seeds, z_dim: int) -> torch.Tensor:
    """One noise vector per seed, each from its own CPU generator (the Composer's): ``[len(seeds), z_dim]``."""
    return torch.stack([noise(int(s) % SEED_LIMIT, z_dim) for s in seeds])


class LayeredModel:
    """scenecomp: G_bg paints the background from noise, G_fg adds the objects one at a time."""

    kind = "scenecomp"
    layered = True

    def __init__(self, background: nn.Module, foreground: nn.Module):
        self.background_net, self.foreground_net = background, foreground
        self.z_dim, self.resolution = background.z_dim, background.resolution
        self.num_parameters = sum(p.numel() for net in (background, foreground) for p in net.parameters())

    def to(self, device):
        self.background_net.to(device), self.foreground_net.to(device)
        return self

    def paint(self, z_bg, z_obj, masks, cats) -> torch.Tensor:
        return paint_layers(self.background_net, self.foreground_net, z_bg, z_obj, masks, cats)[-1]

    def background(self, z_bg) -> torch.Tensor:
        return self.background_net(z_bg)


class SingleShotModel:
    """The single-shot baseline: one generator from the layout map and one noise vector."""

    kind = "baseline"
    layered = False

    def __init__(self, generator: nn.Module):
        self.net = generator
        self.z_dim, self.resolution = generator.z_dim, generator.resolution
        self.num_parameters = sum(p.numel() for p in generator.parameters())

    def to(self, device):
        self.net.to(device)
        return self

    def paint(self, z_bg, z_obj, masks, cats) -> torch.Tensor:
        return self.net(z_bg, layout_map(masks, cats, self.net.num_categories))

    def background(self, z_bg) -> torch.Tensor:
        R = self.resolution
        return self.net(z_bg, z_bg.new_zeros(len(z_bg), self.net.num_categories, R, R))  # an empty layout


def load_models(path, require: str | None = None) -> tuple[list[str], list]:
    """The models of a bundle: (categories, [LayeredModel and/or SingleShotModel]).
    ``require="baseline"`` insists on a baseline network."""
    data = load_bundle(path)
    nets = data.get("networks")
    if not isinstance(nets, dict) or not isinstance(data.get("categories"), list):
        raise BundleError(f"{path}: damaged bundle (no 'networks' or 'categories')")
    models = []
    try:
        if "background" in nets or "foreground" in nets:
            models.append(LayeredModel(build_network(data, "background", path),
                                       build_network(data, "foreground", path)))
        if "baseline" in nets:
            models.append(SingleShotModel(build_network(data, "baseline", path)))
    except (KeyError, TypeError, RuntimeError) as e:  # missing entries, wrong kwargs, mismatched weights
        raise BundleError(f"{path}: damaged bundle ({type(e).__name__}: {e})") from None
    if not models:
        raise BundleError(f"{path}: holds no model to evaluate (networks: {sorted(nets)})")
    if require and not any(m.kind == require for m in models):
        raise BundleError(f"{path}: holds no {require} network (it has {sorted(nets)})")
    return list(data["categories"]), models


# ----------------------------------------------------------------------------- the evaluation


@dataclass
class _Batch:
    index: torch.Tensor  # [B] layout indices
    image: torch.Tensor  # [B,3,R,R]
    masks: torch.Tensor  # [B,K,1,R,R] (padding and vanished objects zeroed)
    cats: torch.Tensor  # [B,K]
    valid: torch.Tensor  # [B,K]
    counted: torch.Tensor  # [B,K]
    vis: torch.Tensor  # [B,K,1,R,R]


def _batches(dataset, count: int, batch_size: int, device):
    for a in range(0, count, batch_size):
        items = [dataset[i] for i in range(a, min(count, a + batch_size))]
        valid = torch.stack([s["valid"] for s in items])
        k = int((valid.int() * torch.arange(1, valid.shape[1] + 1)).amax()) or 1  # drop trailing padding
        valid = valid[:, :k]
        masks = torch.stack([s["masks"][:k] for s in items]) * valid[:, :, None, None, None]
        vis = visible_masks(masks)
        counted = valid & (vis.flatten(2).mean(2) >= MIN_VISIBLE)
        yield _Batch(torch.tensor([s["index"] for s in items]), torch.stack([s["image"] for s in items]).to(device),
                     masks.to(device), torch.stack([s["categories"][:k] for s in items]).to(device),
                     valid.to(device), counted.to(device), vis.to(device))


def _read_background(dataset, i: int, folder: Path):
    from PIL import Image

    from scenecomp.data import fit_image

    file = folder / dataset.image_info(i)["file_name"]
    with Image.open(file) as im:
        pixels = np.array(im.convert("RGB"))
    return torch.from_numpy(fit_image(pixels, dataset.resolution)).permute(2, 0, 1).contiguous()


def _sample_noise(index: torch.Tensor, j: int, K: int, z_dim: int, device):
    seeds = [SEED_STRIDE * j + int(i) for i in index]
    z_bg = noise_batch(seeds, z_dim)
    z_obj = noise_batch([object_seed(s, k) for s in seeds for k in range(K)], z_dim).view(len(seeds), K, z_dim)
    return seeds, z_bg.to(device), z_obj.to(device)


def _top_object(counted: torch.Tensor) -> torch.Tensor:
    """Index of each layout's last counted object (never covered), -1 where none."""
    K = counted.shape[1]
    pos = torch.where(counted, torch.arange(K, device=counted.device), -1)
    return pos.amax(1)


def _edited_object(batch: _Batch) -> torch.Tensor:
    """Object ``i mod n`` of layout ``i`` among its n valid objects (-1 where none)."""
    out = []
    for b, i in enumerate(batch.index.tolist()):
        positions = batch.valid[b].nonzero().flatten().tolist()
        out.append(positions[i % len(positions)] if positions else -1)
    return torch.tensor(out, device=batch.valid.device)


class _Classified:
    """Accumulates classifier outputs and labels."""

    def __init__(self):
        self.probs, self.labels = [], []

    def add(self, logits, labels):
        self.probs.append(logits.softmax(1).cpu())
        self.labels.append(labels.cpu())

    def result(self, C):
        if not self.probs:
            return torch.zeros(0, C), torch.zeros(0, dtype=torch.long)
        return torch.cat(self.probs), torch.cat(self.labels)


def evaluate(data, models: dict, feature_net: FeatureNet, samples: int = 500, seeds: int = 2,
             batch_size: int = 32, max_objects: int | None = 8, images=None, device="cpu",
             inception=None, progress: bool = False) -> dict:
    """Every metric for every model in ``models`` ({column name: LayeredModel or SingleShotModel})
    on the first ``samples`` layouts of the COCO split ``data`` (a JSON or a folder holding
    ``annotations.json``), ``seeds`` samples per layout. Returns a plain dict: ``protocol``,
    ``models``, ``metrics`` ({metric: {column: value}}, columns are the model names and
    ``real``), ``descriptions``. ``inception`` (optional): a second FID/KID feature module."""
    from scenecomp.data import SceneDataset

    start = time.perf_counter()
    if samples < 1 or seeds < 1 or batch_size < 1:
        raise EvaluationError("--samples, --seeds and --batch-size must be positive integers")
    C, R, S = feature_net.num_categories, feature_net.resolution, feature_net.crop_size
    for name, model in models.items():
        if model.resolution != R:
            raise EvaluationError(f"{name} paints {model.resolution}x{model.resolution} but the feature network "
                                  f"({getattr(feature_net, 'path', 'given')}) was trained at {R}x{R}")
    dataset = SceneDataset(data, images, feature_net.categories, R, max_objects)
    count = min(samples, len(dataset))
    bg_folder = dataset.annotations_path.parent / "backgrounds"
    has_backgrounds = bg_folder.is_dir()
    device = torch.device(device)
    net = feature_net.to(device)
    for model in models.values():
        model.to(device)

    real_images, real_bgs, real_pairs = [], [], []
    real_objects, real_swap = _Classified(), _Classified()
    real_crops, real_crop_cats, top_masks = [], [], []
    gen = {name: {"images": [[] for _ in range(seeds)], "objects": _Classified(), "appearance": _Classified(),
                  "pairs": [], "bg_probs": [], "look": [], "category": [],
                  "crop_features": [[] for _ in range(seeds)]} for name in models}
    n_objects = 0
    batches = _batches(dataset, count, batch_size, device)
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, total=math.ceil(count / batch_size), desc="evaluating", unit="batch",
                       file=sys.stderr, disable=None)
    with torch.no_grad():
        for batch in batches:
            B, K = batch.cats.shape
            rows, cols = batch.counted.nonzero(as_tuple=True)
            n_objects += len(rows)
            obj_masks, obj_cats = batch.vis[rows, cols], batch.cats[rows, cols]
            top = _top_object(batch.counted)
            has_top = top >= 0
            top_mask = batch.masks[has_top.nonzero().flatten(), top[has_top]]  # [T,1,R,R]
            top_masks.append(crop_objects(top_mask, top_mask, S).cpu())

            # real
            real_u8 = as_uint8(batch.image)
            real_images.append(real_u8.cpu())
            x = as_float(real_u8)
            crops = object_crops(x[rows], obj_masks, S)
            real_objects.add(net.object_logits(crops), obj_cats)
            real_crops.append(fill_outside(crops).cpu())
            real_crop_cats.append(obj_cats.cpu())
            real_pairs.append(illumination_pairs(x, batch.masks, batch.counted).cpu())
            if has_backgrounds:
                bgs = torch.stack([_read_background(dataset, int(i), bg_folder) for i in batch.index]).to(device)
                real_bgs.append(torch.sigmoid(net.presence_logits(as_float(bgs))).cpu())

            for name, model in models.items():
                g = gen[name]
                for j in range(seeds):
                    sample_seeds, z_bg, z_obj = _sample_noise(batch.index, j, K, model.z_dim, device)
                    fake = model.paint(z_bg, z_obj, batch.masks, batch.cats)
                    fake_u8 = as_uint8(fake)
                    g["images"][j].append(fake_u8.cpu())
                    xf = as_float(fake_u8)
                    crop_features = net.object_features(object_crops(xf[rows], obj_masks, S))
                    g["objects"].add(net.object_head(crop_features), obj_cats)
                    g["crop_features"][j].append(crop_features.cpu())
                    g["pairs"].append(illumination_pairs(xf, batch.masks, batch.counted).cpu())
                    g["bg_probs"].append(torch.sigmoid(net.presence_logits(as_float(as_uint8(model.background(z_bg))))).cpu())
                    if j:
                        continue
                    # appearance: the top object painted as every category in turn
                    idx = has_top.nonzero().flatten()
                    for c in range(C):
                        cats = batch.cats.clone()
                        cats[idx, top[idx]] = c
                        painted = as_float(as_uint8(model.paint(z_bg, z_obj, batch.masks, cats)))
                        crop = object_crops(painted[idx], batch.masks[idx, top[idx]], S)
                        g["appearance"].add(net.object_logits(crop), torch.full((len(idx),), c, device=device))
                    # locality: object i mod n of layout i gets a new look / a new category
                    k = _edited_object(batch)
                    e = (k >= 0).nonzero().flatten()
                    if len(e) == 0:
                        continue
                    region = batch.masks[e, k[e]]
                    if model.layered:
                        z2 = z_obj.clone()
                        new = noise_batch([object_seed(sample_seeds[b], int(k[b])) + EDIT_OFFSET for b in e.tolist()],
                                    model.z_dim).to(device)
                        z2[e, k[e]] = new
                        look = model.paint(z_bg, z2, batch.masks, batch.cats)
                    else:
                        zb2 = noise_batch([s + EDIT_OFFSET for s in sample_seeds], model.z_dim).to(device)
                        look = model.paint(zb2, z_obj, batch.masks, batch.cats)
                    g["look"].append(edit_locality(fake[e], look[e], region) * len(e))
                    if C > 1:
                        cats = batch.cats.clone()
                        shift = 1 + batch.index.to(device)[e] % (C - 1)
                        cats[e, k[e]] = (cats[e, k[e]] + shift) % C
                        recat = model.paint(z_bg, z_obj, batch.masks, cats)
                        g["category"].append(edit_locality(fake[e], recat[e], region) * len(e))
                    g.setdefault("edited", 0)
                    g["edited"] += len(e)

        # real appearance: real objects of each category filled into the same top masks
        pool_rgb, pool_cats = torch.cat(real_crops), torch.cat(real_crop_cats)
        targets = torch.cat(top_masks)
        for c in range(C):
            pool = pool_rgb[pool_cats == c]
            if len(pool) == 0 or len(targets) == 0:
                continue
            src = pool[torch.arange(len(targets)) % len(pool)]
            for a in range(0, len(targets), batch_size):
                crops = swap_silhouettes(src[a:a + batch_size], targets[a:a + batch_size]).to(device)
                real_swap.add(net.object_logits(crops), torch.full((len(crops),), c))

    # ---- aggregate
    real = torch.cat(real_images)
    metrics: dict[str, dict] = {}

    def put(key, column, value):
        metrics.setdefault(key, {})[column] = None if value is None or not math.isfinite(value) else float(value)

    probs, labels = real_objects.result(C)
    put("inception_score", "real", inception_score(probs) if len(probs) else None)
    put("object_accuracy", "real", accuracy(probs, labels))
    sp, sl = real_swap.result(C)
    put("appearance_accuracy", "real", accuracy(sp, sl))
    put("background_purity", "real", background_purity(torch.cat(real_bgs)) if real_bgs else None)
    put("illumination", "real", illumination_consistency(torch.cat(real_pairs)))
    object_cats, per_category = torch.cat(real_crop_cats), {}
    kid_size = 1000
    for name, g in gen.items():
        fakes = [torch.cat(chunks) for chunks in g["images"]]  # S x [N,3,R,R]
        fake = torch.cat(fakes)
        put("fid", name, frechet_distance(net, real, fake, batch_size=max(batch_size, 64)))
        kid_mean, kid_std = kernel_distance(net, real, fake, subset_size=kid_size, batch_size=max(batch_size, 64))
        put("kid", name, kid_mean * 1000)
        put("kid_std", name, kid_std * 1000)
        if inception is not None:
            put("fid_inception", name, frechet_distance(inception, real, fake, batch_size=batch_size))
            m, s = kernel_distance(inception, real, fake, subset_size=kid_size, batch_size=batch_size)
            put("kid_inception", name, m * 1000)
            put("kid_inception_std", name, s * 1000)
        probs, labels = g["objects"].result(C)
        put("inception_score", name, inception_score(probs) if len(probs) else None)
        put("object_accuracy", name, accuracy(probs, labels))
        ap, al = g["appearance"].result(C)
        put("appearance_accuracy", name, accuracy(ap, al))
        if seeds >= 2:
            with torch.no_grad():
                feats = torch.stack([_features(net, f, device, max(batch_size, 64)) for f in fakes], dim=1)
            put("diversity", name, diversity(feats))
            crop_feats = torch.stack([torch.cat(f) for f in g["crop_features"]], dim=1)  # [objects,S,F]
            values = category_diversity(crop_feats, object_cats, C)
            per_category[name] = {cat: v if math.isfinite(v) else None
                                  for cat, v in zip(feature_net.categories, values)}
            measured = [v for v in per_category[name].values() if v is not None]
            put("diversity_min_category", name, min(measured) if measured else None)
        else:  # one sample per layout: nothing to compare
            put("diversity", name, None)
            put("diversity_min_category", name, None)
            per_category[name] = None
        edited = g.get("edited", 0)
        put("locality_look", name, sum(g["look"]) / edited if edited else None)
        put("locality_category", name, sum(g["category"]) / edited if edited and g["category"] else None)
        put("background_purity", name, background_purity(torch.cat(g["bg_probs"])))
        put("illumination", name, illumination_consistency(torch.cat(g["pairs"])))

    for values in metrics.values():  # every column in every row; None = not meaningful there
        for column in [*models, "real"]:
            values.setdefault(column, None)
    meta = dict(getattr(feature_net, "meta", {}) or {})
    protocol = {
        "split": str(dataset.annotations_path),
        "layouts": count,
        "layouts_in_split": len(dataset),
        "samples_per_layout": seeds,
        "generated_images_per_model": count * seeds,
        "real_images": count,
        "counted_objects": n_objects,
        "resolution": R,
        "max_objects": dataset.max_objects,
        "categories": list(feature_net.categories),
        "sample_seed": f"{SEED_STRIDE} * j + layout index (j < {seeds}); objects: object_seed(s, k)",
        "min_visible": MIN_VISIBLE,
        "crop_size": S,
        "kid_subset_size": max(2, min(kid_size, count, count * seeds)),
        "feature_network": {
            "path": getattr(feature_net, "path", None),
            "kind": "in-domain CNN (scenecomp.evaluate.FeatureNet)",
            "feature_dim": feature_net.num_features,
            "heldout_object_accuracy": meta.get("heldout_object_accuracy"),
            "heldout_swapped_accuracy": meta.get("heldout_swapped_accuracy"),
            "heldout_presence_accuracy": meta.get("heldout_presence_accuracy"),
            "trained_on": meta.get("data"),
        },
        "inception": getattr(inception, "weights_path", None),
        "backgrounds": str(bg_folder) if has_backgrounds else None,
        "device": str(device),
        "seconds": round(time.perf_counter() - start, 1),
    }
    return {"protocol": protocol,
            "models": {name: {"kind": m.kind, "path": getattr(m, "path", None), "parameters": m.num_parameters}
                       for name, m in models.items()},
            "metrics": metrics, "descriptions": {k: v[0] for k, v in METRICS.items()},
            "diversity_per_category": per_category,  # {model: {category: value}}; None with one seed
            "diversity_every_category_above_zero": {name: None if (v := metrics["diversity_min_category"][name]) is None
                                                    else v > 0 for name in models},
            "better": {k: v[1] for k, v in METRICS.items()}}


def _features(net, images, device, batch_size):
    return torch.cat([net(images[a:a + batch_size].to(device)).cpu() for a in range(0, len(images), batch_size)])


# key: (description, better, format)
METRICS = {
    "fid": ("FID, in-domain features (generated vs the layouts' real images)", "lower", "{:.2f}"),
    "kid": ("KID x1000, in-domain features", "lower", "{:.2f}"),
    "fid_inception": ("FID, Inception-v3 features", "lower", "{:.2f}"),
    "kid_inception": ("KID x1000, Inception-v3 features", "lower", "{:.2f}"),
    "inception_score": ("Inception score, in-domain classifier on object crops", "higher", "{:.3f}"),
    "object_accuracy": ("object accuracy (crop classified as the requested category)", "higher", "{:.3f}"),
    "appearance_accuracy": ("appearance accuracy (same mask painted as each category)", "higher", "{:.3f}"),
    "diversity": ("diversity (mean feature distance, same layout, other seeds)", "higher", "{:.3f}"),
    "diversity_min_category": ("diversity, least diverse category (object crops)", "higher", "{:.3f}"),
    "locality_look": ("edit locality, new look (mean |change| outside the object)", "lower", "{:.3g}"),
    "locality_category": ("edit locality, new category (mean |change| outside)", "lower", "{:.3g}"),
    "background_purity": ("background purity (share with no object detected)", "higher", "{:.3f}"),
    "illumination": ("illumination consistency (object vs scene brightness corr.)", "near real", "{:.3f}"),
}


def format_table(result: dict) -> str:
    """The protocol, then one row per metric and one column per model, plus ``real``."""
    p, f = result["protocol"], result["protocol"]["feature_network"]
    columns = [*result["models"], "real"]
    lines = [
        f"protocol: split {p['split']} (first {p['layouts']} of {p['layouts_in_split']} layouts), "
        f"{p['samples_per_layout']} sample(s) per layout -> {p['generated_images_per_model']} generated images per "
        f"model vs {p['real_images']} real, {p['resolution']}x{p['resolution']}, "
        f"{p['counted_objects']} counted objects (visible >= {p['min_visible']:.1%} of the image)",
        f"seeds: sample seed s = {p['sample_seed']}",
        f"features: {f['path']} ({f['kind']}, {f['feature_dim']}-d; held-out real crops: accuracy "
        f"{_fmt(f['heldout_object_accuracy'], '{:.3f}')}, silhouette-swapped {_fmt(f['heldout_swapped_accuracy'], '{:.3f}')}; "
        f"trained on {f['trained_on']})",
    ]
    if p.get("inception"):
        lines.append(f"inception: {p['inception']}")
    for name, m in result["models"].items():
        lines.append(f"model {name}: {m['path']} ({m['kind']}, {m['parameters'] / 1e6:.2f}M generator parameters)")
    per = result.get("diversity_per_category") or {}
    rows = []
    for key, (desc, better, fmt) in METRICS.items():
        if key in result["metrics"]:
            rows.append((desc, better) + tuple(_fmt(result["metrics"][key].get(c), fmt) for c in columns))
        if key == "diversity_min_category" and per:  # then one row per category (real: no seeds, "-")
            rows += [(f"diversity, {cat} objects", better) + tuple(_fmt((per.get(c) or {}).get(cat), fmt)
                                                                   for c in columns) for cat in p["categories"]]
    head = ("metric", "better", *columns)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines.append("")
    for r in [head, *rows]:
        lines.append("  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    lines.append("(- : not meaningful for that column; real = the split's own images, crops and backgrounds)")
    if per:
        lines.append("no collapsed category (per-category diversity > 0): " + ", ".join(
            f"{name} " + _collapse(values) for name, values in per.items()))
    return "\n".join(lines)


def _fmt(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _collapse(per_category: dict | None) -> str:
    """'yes (min 0.123, rock)' / 'NO (min 0, rock)' from one model's per-category diversity."""
    if per_category is None:
        return "- (needs --seeds >= 2)"
    measured = {c: v for c, v in per_category.items() if v is not None}
    if not measured:
        return "- (no counted objects)"
    cat = min(measured, key=measured.get)
    return f"{'yes' if measured[cat] > 0 else 'NO'} (min {measured[cat]:.3g}, {cat})"


# ----------------------------------------------------------------------------- training the feature network


def _read_pool(dataset, indices, S: int, backgrounds: Path | None):
    """Images, backgrounds, per-object visible masks, categories and filled crops of some samples."""
    imgs, bgs, vis, cats, owner = [], [], [], [], []
    for n, i in enumerate(indices):
        s = dataset.read(i)
        imgs.append(torch.from_numpy(s["image"]).permute(2, 0, 1))
        if backgrounds is not None:
            bgs.append(_read_background(dataset, i, backgrounds))
        m = torch.from_numpy(s["masks"]).bool()[:, None]  # [n,1,R,R]
        v = visible_masks(m[None].float())[0]
        keep = v.flatten(1).sum(1) > 0  # every object with a visible pixel (presence labels need them all)
        vis.append(v[keep].bool())
        cats.append(torch.from_numpy(s["categories"])[keep])
        owner.append(torch.full((int(keep.sum()),), n))
    imgs = torch.stack(imgs)
    vis, cats, owner = torch.cat(vis), torch.cat(cats), torch.cat(owner)
    crops = []
    for a in range(0, len(vis), 256):
        m = vis[a:a + 256].float()
        c = object_crops(as_float(imgs[owner[a:a + 256]]), m, S)
        crops.append(torch.cat([c, fill_outside(c)], 1).half())
    crops = torch.cat(crops) if crops else torch.zeros(0, 7, S, S, dtype=torch.half)
    return {"images": imgs, "backgrounds": torch.stack(bgs) if bgs else None, "vis": vis, "cats": cats,
            "owner": owner, "crops": crops[:, :4], "filled": crops[:, 4:]}


def _presence_batch(pool, rows, C, gen, p_background: float = 0.25, p_drop: float = 0.5):
    """Whole images with labels; some are the object-free background, some lose a random subset of objects."""
    images, labels = [], []
    for n in rows.tolist():
        image = pool["images"][n]
        objs = (pool["owner"] == n).nonzero().flatten()
        keep = torch.ones(len(objs), dtype=torch.bool)
        if pool["backgrounds"] is not None:
            u = float(torch.rand((), generator=gen))
            if u < p_background:
                keep[:] = False
            elif u < p_background + p_drop:
                keep = torch.rand(len(objs), generator=gen) < 0.5
            if not bool(keep.all()):
                shown = pool["vis"][objs[keep]].any(0) if bool(keep.any()) else torch.zeros_like(pool["vis"][0])
                image = torch.where(shown, image, pool["backgrounds"][n])
        label = torch.zeros(C)
        label[pool["cats"][objs[keep]]] = 1.0
        images.append(image)
        labels.append(label)
    return as_float(torch.stack(images)), torch.stack(labels)


def _object_batch(pool, rows, gen, p_swap: float = 0.5):
    """Crops with labels; a share ``p_swap`` carry another object's silhouette."""
    swap = torch.rand(len(rows), generator=gen) < p_swap
    other = pool["crops"][torch.randint(0, len(pool["cats"]), (len(rows),), generator=gen), 3:].float()
    swapped = swap_silhouettes(pool["filled"][rows].float(), other)
    return torch.where(swap[:, None, None, None], swapped, pool["crops"][rows].float()), pool["cats"][rows]


def _flip(x: torch.Tensor, gen) -> torch.Tensor:
    f = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(f[:, None, None, None], x.flip(-1), x)


def _heldout_scores(net: FeatureNet, pool, C: int) -> dict:
    with torch.no_grad():
        n = len(pool["cats"])
        plain = pool["crops"].float()
        other = pool["crops"][:, 3:].float().roll(1, 0)  # each object's look in the next object's silhouette
        swapped = swap_silhouettes(pool["filled"].float(), other)
        logits = torch.cat([net.object_logits(plain[a:a + 256]) for a in range(0, n, 256)])
        logits_s = torch.cat([net.object_logits(swapped[a:a + 256]) for a in range(0, n, 256)])
        labels = pool["cats"]
        differs = labels != labels.roll(1, 0)
        images = as_float(pool["images"])
        truth = torch.zeros(len(images), C)
        truth[pool["owner"], pool["cats"]] = 1.0
        pres = torch.cat([torch.sigmoid(net.presence_logits(images[a:a + 256])) for a in range(0, len(images), 256)])
        out = {"heldout_object_accuracy": accuracy(logits, labels),
               "heldout_swapped_accuracy": accuracy(logits_s[differs], labels[differs]),
               "heldout_presence_accuracy": float(((pres > 0.5).float() == truth).all(1).float().mean()),
               "heldout_presence_label_accuracy": float(((pres > 0.5).float() == truth).float().mean()),
               "heldout_presence_object_recall": float((pres[pool["owner"], pool["cats"]] > 0.5).float().mean()),
               "heldout_objects": n, "heldout_images": len(images)}
        if pool["backgrounds"] is not None:
            bg = as_float(pool["backgrounds"])
            bp = torch.cat([torch.sigmoid(net.presence_logits(bg[a:a + 256])) for a in range(0, len(bg), 256)])
            out["heldout_background_purity"] = background_purity(bp)
    return out


def train_features(data, *, images: int = 6000, holdout: int = 500, steps: int = 2000, batch_size: int = 64,
                   lr: float = 2e-3, seed: int = 0, categories=None, resolution: int | None = None,
                   net_kwargs: dict | None = None, progress: bool = False, log=None) -> FeatureNet:
    """Train a `FeatureNet` on a COCO split (Shapes: with its ``backgrounds/``).

    The first ``images`` samples train it, the last ``holdout`` (disjoint) measure
    it. Each step: ``batch_size`` object crops (half of them silhouette-swapped)
    for the object head and ``batch_size // 2`` whole images (a quarter of them
    backgrounds, half with a random subset of objects removed) for the presence
    head; Adam with cosine decay. Returns the network (eval mode) with
    ``.categories`` and ``.meta`` (held-out accuracies and how it was trained).
    """
    from scenecomp.data import SceneDataset

    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if resolution is None:
        probe = SceneDataset(data, None, categories, 8, None, limit=1)
        resolution = min(probe.image_info(0)["height"], probe.image_info(0)["width"])
    dataset = SceneDataset(data, None, categories, resolution, None)
    n = len(dataset)
    holdout = min(holdout, n // 2)
    train_idx = list(range(min(images, n - holdout)))
    held_idx = list(range(n - holdout, n))
    folder = dataset.annotations_path.parent / "backgrounds"
    folder = folder if folder.is_dir() else None
    C = len(dataset.categories)
    net = FeatureNet(num_categories=C, resolution=resolution, crop_size=max(8, resolution // 2), **(net_kwargs or {}))
    S = net.crop_size
    pool = _read_pool(dataset, train_idx, S, folder)
    held = _read_pool(dataset, held_idx, S, folder)
    if log:
        log(f"read {len(train_idx)} training images ({len(pool['cats'])} objects) and {len(held_idx)} held-out "
            f"({len(held['cats'])} objects) in {time.perf_counter() - start:.1f} s")
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    net.train()
    steps_iter = range(steps)
    if progress:
        from tqdm import tqdm
        steps_iter = tqdm(steps_iter, desc="features", unit="step", file=sys.stderr, disable=None)
    for step in steps_iter:
        rows = torch.randint(0, len(pool["cats"]), (batch_size,), generator=gen)
        crops, labels = _object_batch(pool, rows, gen)
        rows = torch.randint(0, len(pool["images"]), (max(1, batch_size // 2),), generator=gen)
        whole, present = _presence_batch(pool, rows, C, gen)
        loss_obj = F.cross_entropy(net.object_logits(_flip(crops, gen)), labels)
        loss_pres = F.binary_cross_entropy_with_logits(net.presence_logits(_flip(whole, gen)), present)
        opt.zero_grad(set_to_none=True)
        (loss_obj + loss_pres).backward()
        opt.step()
        sched.step()
        if log and (step + 1) % max(1, steps // 10) == 0:
            log(f"step {step + 1}/{steps}: object loss {loss_obj.item():.3f}, presence loss {loss_pres.item():.3f} "
                f"({time.perf_counter() - start:.0f} s)")
    net.eval().requires_grad_(False)
    with torch.no_grad():
        f = torch.cat([net._whole(as_float(pool["images"][a:a + 256])) for a in range(0, min(2048, len(pool["images"])), 256)])
        net.feature_scale.fill_(float(f.square().mean().rsqrt()))
    meta = _heldout_scores(net, held, C)
    meta.update({"data": str(dataset.annotations_path), "train_images": len(train_idx),
                 "train_objects": len(pool["cats"]), "steps": steps, "batch_size": batch_size, "lr": lr,
                 "seed": seed, "seconds": round(time.perf_counter() - start, 1),
                 "backgrounds": folder is not None})
    net.categories = list(dataset.categories)
    net.meta = meta
    return net


# ----------------------------------------------------------------------------- inception (optional)


def inception_features(weights) -> nn.Module:
    """torchmetrics' Inception-v3 (pool3, 2048-d) from a local ``pt_inception-2015-12-05`` weights file.
    Needs ``torch-fidelity``; raises `EvaluationError` where it is missing."""
    weights = Path(weights)
    if not weights.is_file():
        raise EvaluationError(f"{weights}: no such Inception-v3 weights file")
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
    except ImportError as e:
        raise EvaluationError(f"Inception-v3 features are unavailable: {e}") from None
    if not _TORCH_FIDELITY_AVAILABLE:
        raise EvaluationError("Inception-v3 features need the torch-fidelity package (torchmetrics' Inception "
                              "implementation), which is not installed here; the in-domain feature network "
                              "(--features) needs nothing more")
    try:
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                 feature_extractor_weights_path=str(weights))
    except Exception as e:  # noqa: BLE001 - wrong or corrupt weights file
        raise EvaluationError(f"{weights}: cannot load Inception-v3 weights ({type(e).__name__}: {e})") from None
    net.weights_path = str(weights)
    return net


# ----------------------------------------------------------------------------- command line

_EPILOG = """examples:
  scenecomp-eval --checkpoint runs/shapes64/composer.pt --baseline runs/shapes64-baseline/baseline.pt \\
      --data data/shapes64/test --samples 500 --seeds 2 --json results.json
  scenecomp-eval --baseline runs/shapes64-baseline/baseline.pt --data data/shapes64/test --samples 100
  python tools/train_features.py --data data/shapes64/train --out scenecomp/assets/features.pt

--samples counts layouts (the first N of the split); each is rendered --seeds times,
so N x seeds generated images per model are compared with the N real ones.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scenecomp-eval", description="Metrics of a scenecomp bundle and/or a "
                                "single-shot baseline bundle on a COCO-format test split.",
                                epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a bundle to evaluate (composer.pt, or a run folder holding one; "
                   "a baseline.pt works too)")
    p.add_argument("--baseline", help="a single-shot baseline bundle (baseline.pt, or a run folder holding one)")
    p.add_argument("--data", required=True, help="test split: a COCO JSON or a folder holding annotations.json")
    p.add_argument("--images", help="its image folder (default: images/ beside the JSON)")
    p.add_argument("--features", default=str(DEFAULT_FEATURES),
                   help="in-domain feature network file (default: the shipped scenecomp/assets/features.pt)")
    p.add_argument("--inception", metavar="WEIGHTS",
                   help="also FID/KID with Inception-v3 from this local weights file (needs torch-fidelity)")
    p.add_argument("--samples", type=int, default=500, help="number of layouts, the first of the split (default 500)")
    p.add_argument("--seeds", type=int, default=2, help="samples per layout (default 2; diversity needs 2+)")
    p.add_argument("--batch-size", type=int, default=32, help="layouts per batch (default 32)")
    p.add_argument("--max-objects", type=int, default=8, help="objects per layout, largest kept (default 8)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", help="write the results here as JSON")
    return p


def _write_json(path, data) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2), encoding="utf-8"))


def run(args: argparse.Namespace) -> dict:
    if not args.checkpoint and not args.baseline:
        raise EvaluationError("nothing to evaluate: give --checkpoint and/or --baseline")
    for name in ("samples", "seeds", "batch_size", "max_objects"):
        if getattr(args, name) < 1:
            raise EvaluationError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.features.startswith("inception:"):
        raise EvaluationError("--features takes an in-domain feature network file; for Inception-v3 use "
                              "--inception WEIGHTS (the in-domain network is still needed for the classifier metrics)")
    net = load_features(args.features)
    inception = inception_features(args.inception) if args.inception else None
    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise EvaluationError(f"--device {args.device}: {e}") from None
    models: dict = {}
    for path, require in ((args.checkpoint, None), (args.baseline, "baseline")):
        if not path:
            continue
        if Path(path).is_dir():  # a run folder: its bundle
            path = Path(path) / ("baseline.pt" if require else "composer.pt")
        if str(path).endswith(".ckpt"):
            raise EvaluationError(f"{path}: a Lightning checkpoint; evaluate the bundle the run wrote "
                                  f"(composer.pt or baseline.pt in its folder)")
        categories, found = load_models(path, require)
        if categories != net.categories:
            raise EvaluationError(f"{path}: its categories {categories} differ from the feature network's "
                                  f"{net.categories} ({args.features})")
        for m in found:
            if require and m.kind != require:
                continue
            m.path = str(path)
            name = m.kind if m.kind not in models else f"{m.kind}:{Path(path).stem}"
            if name in models:
                raise EvaluationError(f"{path}: given twice")
            models[name] = m
    return evaluate(args.data, models, net, samples=args.samples, seeds=args.seeds, batch_size=args.batch_size,
                    max_objects=args.max_objects, images=args.images, device=device, inception=inception,
                    progress=True)


def main(argv: list[str] | None = None) -> int:
    """``scenecomp-eval``: prints the table (and writes JSON); errors print one line and exit 2."""
    args = _parser().parse_args(argv)
    try:
        result = run(args)
        print(format_table(result))
        if args.json:
            _write_json(args.json, result)
            print(f"results: {args.json}")
    except (ValueError, OSError) as e:  # BundleError, DataError, LayoutError, EvaluationError, missing files
        print(f"scenecomp-eval: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
