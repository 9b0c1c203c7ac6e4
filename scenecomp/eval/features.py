"""The in-domain feature network, its file, and the object crops its classifier reads.

`FeatureNet` is a small CNN trained by ``tools/train_features.py``
(`scenecomp.eval.feature_training`) on real Shapes images and object crops of a
split disjoint from the generators' training data. Its penultimate features of
whole images feed FID, KID and diversity; its object head names the category
of a crop; its presence head says which categories a whole image contains.
Its file is a safetensors bundle (``FEATURES_FORMAT``, `scenecomp.bundle`): loading runs no code.

Inception-v3 (`inception_features`) is optional and needs ``torch-fidelity``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from scenecomp.bundle import BundleError, PickledFileError, load_tensors, save_tensors
from scenecomp.eval import EvaluationError
from scenecomp.images import to_float

FEATURES_FORMAT = "scenecomp-features"
FEATURES_VERSION = 2  # 2: safetensors (1 was a torch pickle)
DEFAULT_FEATURES = Path(__file__).resolve().parent.parent / "assets" / "features.safetensors"


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

    def __init__(
        self,
        num_categories: int = 5,
        resolution: int = 64,
        crop_size: int = 32,
        channels: int = 16,
        max_channels: int = 128,
        feature_dim: int = 128,
    ):
        super().__init__()
        self.init_kwargs = dict(
            num_categories=num_categories,
            resolution=resolution,
            crop_size=crop_size,
            channels=channels,
            max_channels=max_channels,
            feature_dim=feature_dim,
        )
        self.num_categories, self.resolution, self.crop_size = num_categories, resolution, crop_size
        self.num_features = feature_dim
        levels = max(1, int(math.log2(max(crop_size, 8))) - 2)  # crops end at 4x4
        widths = [min(channels * 2**i, max_channels) for i in range(levels + 1)]
        layers: list[nn.Module] = [nn.Conv2d(4, widths[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for i in range(levels):
            layers += [
                nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(widths[i + 1], widths[i + 1], 3, padding=1),
                nn.LeakyReLU(0.2),
            ]
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
        return self.features(to_float(images).to(self.object_head.weight.device))


def save_features(path, net: FeatureNet, categories, meta: dict | None = None, half: bool = True) -> None:
    """Write a safetensors bundle (`scenecomp.bundle`: weights as tensors; format tag, version,
    kwargs, categories, resolution and meta as JSON) atomically; ``half`` stores the weights as
    float16 (they load as float32)."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in net.state_dict().items()}
    save_tensors(
        path,
        state,
        {
            "format": FEATURES_FORMAT,
            "version": FEATURES_VERSION,
            "kwargs": dict(net.init_kwargs),
            "categories": list(categories),
            "resolution": net.resolution,
            "meta": dict(meta or {}),
        },
    )


def load_features(path) -> FeatureNet:
    """Read a feature network file (safetensors and JSON: runs no code); the network comes back
    in eval mode with ``.categories`` and ``.meta`` (accuracies it reached, how it was trained)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(
            f"{path}: no such feature network file (train one with "
            f"python tools/train_features.py --generate-shapes 2 --data data/shapes64-features --out {path})"
        )
    try:
        state, data = load_tensors(path)
    except PickledFileError:
        raise EvaluationError(
            f"{path}: a pickled torch file (an old feature network?); this scenecomp loads only "
            f"safetensors: use the shipped {DEFAULT_FEATURES.name}, or train one with "
            "tools/train_features.py"
        ) from None
    except BundleError as e:
        raise EvaluationError(str(e)) from None
    if data.get("format") != FEATURES_FORMAT:
        raise EvaluationError(f"{path}: not a scenecomp feature network (format tag {str(data.get('format'))[:60]!r})")
    if data.get("version") != FEATURES_VERSION:
        raise EvaluationError(
            f"{path}: feature network version {str(data.get('version'))[:60]!r}, "
            f"this scenecomp reads version {FEATURES_VERSION}"
        )
    data["state_dict"] = state
    try:
        net = FeatureNet(**data["kwargs"])
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in data["state_dict"].items()})
        net.categories = list(data["categories"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise EvaluationError(f"{path}: damaged feature network file ({type(e).__name__}: {e})") from None
    net.meta = dict(data.get("meta") or {})
    net.path = str(path)
    return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- Inception-v3 (optional)


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
        raise EvaluationError(
            "Inception-v3 features need the torch-fidelity package (torchmetrics' Inception "
            "implementation), which is not installed here; the in-domain feature network "
            "(--features) needs nothing more"
        )
    try:
        net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights)
        )
    except Exception as e:  # noqa: BLE001 - wrong or corrupt weights file
        raise EvaluationError(f"{weights}: cannot load Inception-v3 weights ({type(e).__name__}: {e})") from None
    net.weights_path = str(weights)
    return net
