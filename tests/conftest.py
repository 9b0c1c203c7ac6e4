"""Shared fixtures: a tiny Shapes set and the real Hydra config, shrunk (experiment=tiny)."""
from __future__ import annotations

from pathlib import Path

import pytest

from scenecomp.shapes import write_dataset


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """64 Shapes scenes at 32x32; returns the annotations.json path."""
    folder = tmp_path_factory.mktemp("shapes-tiny")
    write_dataset(folder, count=64, size=32, seed=0)
    return folder / "annotations.json"


def compose_config(overrides: list[str]):
    """The real conf/train.yaml through Hydra's compose API (no @hydra.main inside pytest)."""
    from hydra import compose, initialize_config_dir

    from scenecomp.train import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.fixture
def tiny_config(tmp_path, tiny_shapes):
    def make(*extra: str):
        return compose_config(["experiment=tiny", f"out={tmp_path / 'run'}", f"data.train={tiny_shapes}", *extra])

    return make
