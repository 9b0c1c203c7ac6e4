"""Shapes generator: determinism, COCO output, content rules."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from scenecomp.shapes import CATEGORIES, SKY, Scene, make_scene, min_object_pixels, write_dataset

N = 200


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes_a")
    stats = write_dataset(out, N, size=64, seed=0)
    return out, stats


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(np.random.default_rng([0, i]), 64) for i in range(N)]


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_same_seed_gives_identical_files(dataset, tmp_path):
    out, _ = dataset
    write_dataset(tmp_path, N, size=64, seed=0)
    a, b = _files(out), _files(tmp_path)
    assert a.keys() == b.keys()
    assert len([k for k in a if k.startswith("images/")]) == N
    assert len([k for k in a if k.startswith("backgrounds/")]) == N
    assert {"annotations.json", "preview.png"} <= a.keys()
    for key in a:
        assert a[key] == b[key], key


def test_different_seed_differs(dataset, tmp_path):
    out, _ = dataset
    write_dataset(tmp_path, 8, size=64, seed=1)
    for i in range(8):
        name = f"images/{i:06d}.png"
        assert (out / name).read_bytes() != (tmp_path / name).read_bytes()


def test_scene_independent_of_count(dataset, tmp_path):
    out, _ = dataset
    write_dataset(tmp_path, 5, size=64, seed=0)
    for i in range(5):
        for d in ("images", "backgrounds"):
            assert (tmp_path / d / f"{i:06d}.png").read_bytes() == (out / d / f"{i:06d}.png").read_bytes()
    small = json.loads((tmp_path / "annotations.json").read_text())
    big = json.loads((out / "annotations.json").read_text())
    assert small["annotations"] == [a for a in big["annotations"] if a["image_id"] <= 5]
    assert small["info"]["count"] == 5


def test_coco_file(dataset):
    out, stats = dataset
    data = json.loads((out / "annotations.json").read_text())
    assert data["info"] == {
        **data["info"],
        "paint_order": "annotation_order",
        "generator": "scenecomp.shapes",
        "seed": 0,
        "size": 64,
        "count": N,
    }
    assert [c["name"] for c in data["categories"]] == list(CATEGORIES)
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4, 5]
    assert all(c["supercategory"] == ("sky" if c["name"] in SKY else "ground") for c in data["categories"])
    assert data["images"][0]["file_name"] == "000000.png"
    assert stats["count"] == N and stats["objects"] == len(data["annotations"])

    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == N
    present = {coco.cats[a["category_id"]]["name"] for a in coco.dataset["annotations"]}
    assert present == set(CATEGORIES)
    for img_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        assert 1 <= len(anns) <= 6
        assert [a["id"] for a in anns] == sorted(a["id"] for a in anns)
        for a in anns:
            assert isinstance(a["segmentation"]["counts"], str) and a["iscrowd"] == 0
            m = coco.annToMask(a).astype(bool)
            assert m.shape == (64, 64) and m.any()
            assert a["area"] == m.sum()
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [
                float(xs.min()),
                float(ys.min()),
                float(xs.max() - xs.min() + 1),
                float(ys.max() - ys.min() + 1),
            ]


def test_annotations_are_the_scenes(dataset, scenes):
    out, _ = dataset
    data = json.loads((out / "annotations.json").read_text())
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for i in (0, 7, 42, N - 1):
        scene = scenes[i]
        assert np.array_equal(_read_rgb(out / "images" / f"{i:06d}.png"), scene.image)
        assert np.array_equal(_read_rgb(out / "backgrounds" / f"{i:06d}.png"), scene.background)
        anns = by_image[i + 1]
        assert [CATEGORIES[a["category_id"] - 1] for a in anns] == [c for c, _ in scene.objects]
        for a, (_, m) in zip(anns, scene.objects, strict=False):
            assert np.array_equal(mask_utils.decode(a["segmentation"]).astype(bool), m)
        assert data["images"][i]["light"] == scene.light
        assert data["images"][i]["horizon"] == scene.horizon


def test_scene_structure(scenes):
    lights = set()
    for s in scenes:
        assert isinstance(s, Scene) and s.size == 64
        assert s.image.shape == s.background.shape == (64, 64, 3)
        assert s.image.dtype == s.background.dtype == np.uint8
        assert 1 <= len(s.objects) <= 6
        lights.add(s.light)
        union = np.zeros((64, 64), bool)
        covered = np.zeros((64, 64), bool)
        for cat, m in reversed(s.objects):  # front to back: each object stays visible
            assert cat in CATEGORIES and m.dtype == bool and m.shape == (64, 64)
            assert np.count_nonzero(m & ~covered) >= min_object_pixels(64)
            covered |= m
        for _, m in s.objects:
            union |= m
        # objects paint only inside their masks: elsewhere the image is the background
        assert np.array_equal(s.image[~union], s.background[~union])
        # paint order: sky objects first, then ground objects standing lower further in front
        kinds = [c in SKY for c, _ in s.objects]
        assert kinds == sorted(kinds, reverse=True)
        feet = [np.nonzero(m.any(1))[0].max() for c, m in s.objects if c not in SKY]
        assert feet == sorted(feet)
    assert lights == {"day", "dusk", "night"}


def test_sky_and_ground(scenes):
    for s in scenes:
        assert 0.3 * 64 <= s.horizon <= 0.7 * 64
        for cat, m in s.objects:
            rows = np.nonzero(m.any(1))[0]
            if cat in SKY:
                assert rows.max() < s.horizon, (cat, rows.max(), s.horizon)
            else:
                assert rows.max() >= s.horizon  # stands on the ground


def test_lighting_reaches_objects(scenes):
    means = {"day": [], "dusk": [], "night": []}
    for s in scenes:
        for cat, m in s.objects:
            if cat != "sun":
                means[s.light].append(s.image[m].mean())
    day, dusk, night = (np.mean(means[k]) for k in ("day", "dusk", "night"))
    assert day > dusk > night
    assert day > 1.6 * night
    # the background carries the same light
    bg = {k: np.mean([s.background.mean() for s in scenes if s.light == k]) for k in means}
    assert bg["day"] > bg["night"] * 1.6


def test_categories_look_different(scenes):
    """Mean object colour separates categories (not only the outline)."""
    cols = {c: [] for c in CATEGORIES}
    for s in scenes:
        if s.light == "day":
            for cat, m in s.objects:
                cols[cat].append(s.image[m].astype(float).mean(0))
    mean = {c: np.mean(v, 0) for c, v in cols.items()}
    assert mean["tree"][1] > mean["tree"][2] + 20  # green dominant
    assert mean["cloud"].min() > 170  # white/grey
    assert mean["sun"][0] > 200 and mean["sun"][0] > mean["sun"][2]  # bright, warm
    assert np.ptp(mean["rock"]) < 40  # greyish


def test_size_128_and_preview(dataset, tmp_path):
    out, _ = dataset
    preview = cv2.imread(str(out / "preview.png"))
    assert preview.shape == (4 * 128 + 5 * 2, 4 * 128 + 5 * 2, 3)
    for i in range(20):
        s = make_scene(np.random.default_rng([3, i]), 128)
        assert s.image.shape == (128, 128, 3)
        for _cat, m in s.objects:
            assert np.count_nonzero(m) >= min_object_pixels(128)
    stats = write_dataset(tmp_path, 3, size=128, seed=0)
    assert cv2.imread(str(tmp_path / "preview.png")).shape == (128 * 2 + 4, 3 * 256 + 8, 3)
    assert stats["count"] == 3


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_scene(np.random.default_rng(0), 8)
    with pytest.raises(ValueError):
        write_dataset(tmp_path, 0)
