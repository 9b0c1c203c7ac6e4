"""Shared fixtures: a tiny Shapes set and the real Hydra config, shrunk (experiment=tiny)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from scenecomp.nets import FiLM, ForegroundGenerator, LayoutGenerator
from scenecomp.shapes import write_dataset

# Tiny networks run fastest on one thread, the more so on a busy 2-core machine.
torch.set_num_threads(1)


def make_tiny_nets(seed: int = 0, num_categories: int = 3, resolution: int = 16):
    """A small real G_bg and G_fg with random weights; their FiLM layers are widened so every seed visibly matters."""
    torch.manual_seed(seed)
    bg = LayoutGenerator(z_dim=8, num_categories=num_categories, resolution=resolution, channels=4, max_channels=8)
    fg = ForegroundGenerator(
        z_dim=8, num_categories=num_categories, resolution=resolution, channels=4, max_channels=8, embed_dim=4
    )
    for m in fg.modules():
        if isinstance(m, FiLM):
            torch.nn.init.normal_(m.affine.weight, std=0.5)
    return bg, fg


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """A composer bundle of `make_tiny_nets` with the categories tree, house, sun (16x16)."""
    from scenecomp.compose import bundle_dict, save_bundle

    path = tmp_path_factory.mktemp("bundle") / "composer.safetensors"
    bg, fg = make_tiny_nets()
    save_bundle(path, bundle_dict(["tree", "house", "sun"], background=bg, foreground=fg))
    return path


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """64 Shapes scenes at 32x32; returns the annotations.json path."""
    folder = tmp_path_factory.mktemp("shapes-tiny")
    write_dataset(folder, count=64, size=32, seed=0)
    return folder / "annotations.json"


def compressed_rle(mask) -> dict:
    """COCO compressed RLE of a 2-D mask, counts as str (as JSON holds it)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask) -> dict:
    """COCO's uncompressed RLE (iscrowd format): column-major run lengths, starting with a run of zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    runs, current, length = [], 0, 0
    for v in flat:
        if v == current:
            length += 1
        else:
            runs.append(length)
            current, length = v, 1
    runs.append(length)
    return {"size": list(mask.shape), "counts": runs}


def compose_config(overrides: list[str]):
    """The real scenecomp/conf/train.yaml through Hydra's compose API (no @hydra.main inside pytest)."""
    from hydra import compose, initialize_config_dir

    from scenecomp.train import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.fixture
def tiny_config(tmp_path, tiny_shapes):
    def make(*extra: str):
        return compose_config(["experiment=tiny", f"out={tmp_path / 'run'}", f"data.train={tiny_shapes}", *extra])

    return make
