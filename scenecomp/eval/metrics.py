"""Metrics: each a function on tensors (tested on inputs whose answer is known),
then one small accumulator per metric that `scenecomp.eval.protocol` feeds a
batch at a time (``update``) and reads once (``result``).

Images are ``[N,3,H,W]``, uint8 in [0,255] or floats in [-1,1]; masks
``[N,1,H,W]`` in {0,1}; classifier outputs ``[N,C]``.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from scenecomp.nets import visible_masks


def _feed(metric, images: torch.Tensor, real: bool, batch_size: int) -> None:
    for a in range(0, len(images), batch_size):
        metric.update(images[a : a + batch_size].to(metric.device), real=real)


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


def kernel_distance(
    net: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    subset_size: int = 1000,
    subsets: int = 100,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[float, float]:
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


# ----------------------------------------------------------------------------- accumulators (one per metric)


class ClassifierScores:
    """Object accuracy and Inception score: the classifier's logits ``[B,C]`` and the requested labels ``[B]``."""

    def __init__(self, num_categories: int):
        self.num_categories, self.probs, self.labels = num_categories, [], []

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.probs.append(logits.softmax(1).cpu())
        self.labels.append(labels.cpu())

    def _all(self):
        if not self.probs:
            return torch.zeros(0, self.num_categories), torch.zeros(0, dtype=torch.long)
        return torch.cat(self.probs), torch.cat(self.labels)

    def accuracy(self) -> float:
        return accuracy(*self._all())

    def lowest_category_accuracy(self) -> float:
        """The accuracy of the worst-recognised requested category (nan with no rows)."""
        probs, labels = self._all()
        per = [accuracy(probs[labels == c], labels[labels == c]) for c in range(self.num_categories)]
        measured = [v for v in per if v == v]
        return min(measured) if measured else float("nan")

    def inception_score(self) -> float:
        probs, _ = self._all()
        return inception_score(probs) if len(probs) else float("nan")


class Locality:
    """`edit_locality` over batches, weighted by each batch's image count."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def update(self, before: torch.Tensor, after: torch.Tensor, edited: torch.Tensor) -> None:
        value = edit_locality(before, after, edited)
        if math.isfinite(value):
            self.total += value * len(before)
            self.count += len(before)

    def result(self) -> float:
        return self.total / self.count if self.count else float("nan")


class Purity:
    """`background_purity` of presence probabilities ``[B,C]`` collected over batches."""

    def __init__(self):
        self.probs = []

    def update(self, presence_probs: torch.Tensor) -> None:
        self.probs.append(presence_probs.cpu())

    def result(self) -> float:
        return background_purity(torch.cat(self.probs)) if self.probs else float("nan")


class Illumination:
    """`illumination_consistency` of the `illumination_pairs` of every batch."""

    def __init__(self):
        self.pairs = []

    def update(self, images: torch.Tensor, masks: torch.Tensor, counted: torch.Tensor) -> None:
        self.pairs.append(illumination_pairs(images, masks, counted).cpu())

    def result(self) -> float:
        return illumination_consistency(torch.cat(self.pairs)) if self.pairs else float("nan")


class Diversity:
    """`diversity` (or, given categories, `category_diversity`) of features ``[B,S,F]``: B layouts
    or objects, each sampled S times."""

    def __init__(self):
        self.features, self.cats = [], []

    def update(self, features: torch.Tensor, cats: torch.Tensor | None = None) -> None:
        self.features.append(features.cpu())
        if cats is not None:
            self.cats.append(cats.cpu())

    def result(self) -> float:
        return diversity(torch.cat(self.features)) if self.features else float("nan")

    def per_category(self, num_categories: int) -> list[float]:
        if not self.features:
            return [float("nan")] * num_categories
        return category_diversity(torch.cat(self.features), torch.cat(self.cats), num_categories)
