"""The shipped default model: it loads offline, renders the examples, and its objects stay recognisable.

A broken or badly trained bundle must not land: the object accuracy of the
shipped composer on a few dozen fresh Shapes layouts (a seed the training set
never used) is checked against a floor set from its measured value (docs/RESULTS.md).
"""

from __future__ import annotations

from pathlib import Path

from scenecomp import Composer
from scenecomp.compose import DEFAULT_MODEL
from scenecomp.eval.features import DEFAULT_FEATURES, load_features
from scenecomp.eval.protocol import Model, evaluate
from scenecomp.render import main as render_main
from scenecomp.shapes import CATEGORIES, write_dataset

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "layouts"
ACCURACY_FLOOR = 0.9  # measured 0.99 on 500 held-out layouts (docs/RESULTS.md); margin for 32 layouts


def test_shipped_files_are_small():
    assert DEFAULT_MODEL.stat().st_size + DEFAULT_FEATURES.stat().st_size < 15e6


def test_pretrained_renders_the_examples(tmp_path):
    composer = Composer.pretrained()
    assert composer.categories == CATEGORIES and composer.resolution == 64
    assert render_main([str(EXAMPLES), "--out", str(tmp_path), "--seeds", "0-1", "--quiet"]) == 0
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    stems = sorted(p.stem for p in EXAMPLES.glob("*.json"))
    assert names == sorted(f"{s}_s{i:04d}.png" for s in stems for i in (0, 1))
    for stem in stems:  # no example pins every seed: each sample seed gives another image
        assert (tmp_path / f"{stem}_s0000.png").read_bytes() != (tmp_path / f"{stem}_s0001.png").read_bytes(), stem


def test_pretrained_objects_are_recognisable(tmp_path):
    write_dataset(tmp_path, count=64, size=64, seed=777)  # 32 layouts and a reference of 32
    composer = Composer.pretrained()
    model = Model("scenecomp", composer, (composer.background_net, composer.foreground_net))
    result = evaluate(
        tmp_path / "annotations.json",
        {"scenecomp": model},
        load_features(DEFAULT_FEATURES),
        samples=32,
        seeds=1,
        batch_size=16,
        two_sample=False,
    )
    accuracy = result["metrics"]["object_accuracy"]
    assert accuracy["real"] > 0.9  # the classifier itself works on this split
    assert accuracy["scenecomp"] >= ACCURACY_FLOOR, accuracy
