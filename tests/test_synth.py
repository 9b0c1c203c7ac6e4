"""scenecomp-synth and the layout prior: exact COCO labels, balance, shares, jitter, byte-identical
re-runs, resuming, bad input, and the same images on two processes.

A tiny real bundle (3 categories, 16x16) with a prior fitted on a tiny Shapes set beside it.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import make_tiny_nets
from scenecomp.compose import bundle_dict, save_bundle
from scenecomp.prior import LayoutPrior, PriorError, Quota, keep_visible, place
from scenecomp.shapes import min_object_pixels
from scenecomp.synth import main, synthesize

R = 16
CATEGORIES = ["tree", "house", "sun"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_shapes):
    folder = tmp_path_factory.mktemp("bundle")
    bg, fg = make_tiny_nets(resolution=R)
    save_bundle(folder / "composer.safetensors", bundle_dict(CATEGORIES, background=bg, foreground=fg))
    LayoutPrior.fit(tiny_shapes, categories=CATEGORIES).save(folder / "prior.json")
    return folder / "composer.safetensors"


def run(argv, capsys):
    status = main([str(a) for a in argv])
    return status, capsys.readouterr().err


def files(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.jsonl"
    }  # the manifest records times


def decode(rle):
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def test_balanced_set_has_exact_labels_and_is_identical_on_a_second_run(bundle, tmp_path, capsys):
    out = tmp_path / "d"
    args = ["--out", out, "--count", 24, "--balance", "--seed", 3, "--checkpoint", bundle, "--batch-size", 8]
    status, err = run(args, capsys)
    assert status == 0, err
    coco = COCO(str(out / "annotations.json"))
    assert len(coco.imgs) == 24 and all((out / "images" / im["file_name"]).is_file() for im in coco.imgs.values())

    # every bbox and area is its visible mask's; visible = amodal less the later objects' amodal masks
    data = json.loads((out / "annotations.json").read_text())
    assert data["info"]["seed"] == 3 and len(data["info"]["checkpoint_sha256"]) == 64
    for image in data["images"]:
        anns = sorted((a for a in data["annotations"] if a["image_id"] == image["id"]), key=lambda a: a["order"])
        covered = np.zeros((R, R), bool)
        for a in reversed(anns):
            amodal, visible = decode(a["amodal_segmentation"]), decode(a["segmentation"])
            assert np.array_equal(visible, amodal & ~covered)
            covered |= amodal
            ys, xs = np.nonzero(visible)
            assert a["area"] == visible.sum() > 0 and a["iscrowd"] == 0
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        layout = json.loads((out / image["layout"]).read_text())  # the layout that was rendered
        assert [o["rle"] for o in layout["objects"]] == [a["amodal_segmentation"] for a in anns]
        assert [o["seed"] for o in layout["objects"]] == [a["seed"] for a in anns]

    # the labels as their own detections: AP 1.0 for masks and boxes
    dets = coco.loadRes([{**a, "score": 1.0} for a in data["annotations"]])
    for kind in ("segm", "bbox"):
        ev = COCOeval(coco, dets, kind)
        ev.evaluate(), ev.accumulate(), ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0)

    counts = np.bincount([a["category_id"] for a in data["annotations"]], minlength=4)[1:]
    assert counts.min() > 0 and counts.max() <= 1.5 * counts.min(), counts

    again = tmp_path / "again"
    assert run([*(str(a) for a in args[:1]), again, *args[2:]], capsys)[0] == 0
    assert files(out) == files(again)
    status, err = run(args, capsys)  # resumed: nothing left to render
    assert status == 0 and "0 images rendered, 24 skipped" in err


def test_shares_and_a_python_call(bundle, tmp_path):
    out = tmp_path / "s"
    assert synthesize(out, 30, bundle, categories={"tree": 0.75, "sun": 0.25}, seed=1, quiet=True) == 0
    data = json.loads((out / "annotations.json").read_text())
    counts = np.bincount([a["category_id"] for a in data["annotations"]], minlength=4)[1:]
    assert counts[1] == 0 and counts[0] > 2 * counts[2] > 0, counts  # no house; about 3 trees per sun


def write_layout(path, objects, size=(32, 32)):
    path.write_text(json.dumps({"size": list(size), "objects": objects}))
    return path


def test_given_layouts_are_jittered_not_copied(bundle, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    write_layout(
        src / "a.json", [{"category": "tree", "bbox": [2, 6, 10, 20]}, {"category": "sun", "bbox": [20, 2, 8, 8]}]
    )
    write_layout(src / "b.json", [{"category": "house", "polygon": [[4, 30], [16, 10], [28, 30]]}])
    out = tmp_path / "j"
    status, err = run(["--out", out, "--count", 6, "--layouts", src, "--checkpoint", bundle, "-q"], capsys)
    assert status == 0, err
    data = json.loads((out / "annotations.json").read_text())
    per_image = [[a for a in data["annotations"] if a["image_id"] == im["id"]] for im in data["images"]]
    assert [[a["category_id"] for a in anns] for anns in per_image] == [[1, 3], [2]] * 3  # taken in turn
    trees = [decode(anns[0]["amodal_segmentation"]) for anns in per_image[::2]]
    assert len({t.tobytes() for t in trees}) == 3  # every copy jittered differently

    balanced = tmp_path / "jb"
    assert (
        run(["--out", balanced, "--count", 30, "--layouts", src, "--balance", "--checkpoint", bundle, "-q"], capsys)[0]
        == 0
    )
    counts = np.bincount(
        [a["category_id"] for a in json.loads((balanced / "annotations.json").read_text())["annotations"]], minlength=4
    )[1:]
    assert counts.min() > 0 and counts.max() <= 1.5 * counts.min(), counts


def test_bad_input_is_refused_and_nothing_is_written(bundle, tiny_shapes, tmp_path, capsys):
    base = ["--count", 4, "--checkpoint", bundle]
    empty_coco = tmp_path / "empty.json"
    empty_coco.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "tree"}]}))
    (tmp_path / "nothing").mkdir()
    cases = {
        "unknown": (
            ["--categories", "tree=0.5,dragon=0.5"],
            "unknown category 'dragon'; known categories: tree, house, sun",
        ),
        "sum": (["--categories", "tree=0.5,sun=0.4"], "shares add up to 0.9, not 1"),
        "malformed": (["--categories", "tree"], "is not NAME=SHARE"),
        "empty coco": (["--layouts", empty_coco], "holds no layout"),
        "empty folder": (["--layouts", tmp_path / "nothing"], "no layout files found"),
        "mismatch": (
            ["--layouts", tiny_shapes],
            "known categories: tree, house, sun",
        ),  # Shapes has 5 categories, the model 3
        "prior": (["--prior", tmp_path / "missing.json"], "no such layout prior file"),
        "batch": (["--batch-size", 0], "--batch-size must be a positive integer, got 0"),
    }
    if not torch.cuda.is_available():  # refused by scenecomp-render itself, after the layouts were made
        cases["device"] = (["--device", "cuda"], "CUDA is not available on this machine")
    for name, (extra, message) in cases.items():
        out = tmp_path / name.replace(" ", "_")
        status, err = run(["--out", out, *base, *extra], capsys)
        assert status == 2 and message in err and "Traceback" not in err, (name, err)
        assert not out.exists(), name

    taken = tmp_path / "taken"
    assert run(["--out", taken, *base, "--seed", 1, "-q"], capsys)[0] == 0
    before = files(taken)
    status, err = run(["--out", taken, *base, "--seed", 2], capsys)
    assert status == 2 and "holds another data set (seed differ" in err
    assert files(taken) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    status, err = run(["--out", other, *base], capsys)
    assert status == 2 and "holds no scenecomp-synth data set" in err and os.listdir(other) == ["keep.txt"]


def test_prior_round_trip_and_hostile_files(bundle, tmp_path):
    prior = LayoutPrior.load(bundle.parent / "prior.json")
    assert prior.categories == CATEGORIES and all(prior.bank[c] for c in CATEGORIES)
    assert sum(prior.shares().values()) == pytest.approx(1)
    quota = Quota({"tree": 0.5, "house": 0.5})
    for i in range(40):
        objects = prior.sample(np.random.default_rng([0, i]), (R, R), quota)
        masks = [m for _, m in objects]
        assert {c for c, _ in objects} <= {"tree", "house"}
        assert keep_visible(masks, min_object_pixels(R)) == list(range(len(masks)))  # hidden ones were dropped
    assert abs(int(quota.counts[0]) - int(quota.counts[1])) <= quota.window

    data = json.loads((bundle.parent / "prior.json").read_text())
    broken = json.loads(json.dumps(data))
    broken["shapes"]["tree"][3]["rle"]["counts"] = "!!"
    for bad, message in [
        ({**data, "format": "x"}, "not a scenecomp layout prior"),
        (broken, "shapes of 'tree', object 3: rle counts string has an invalid character"),
        ({**data, "objects_per_image": [[2, -1]]}, "'objects_per_image' must be"),
    ]:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(PriorError, match=message) as e:
            LayoutPrior.load(path)
        assert str(path) in str(e.value)


def test_place_scales_shifts_and_mirrors():
    crop = np.array([[1, 0], [1, 1]], bool)
    placed = place(crop, (1, 0, 4, 4), (4, 6))
    assert placed[:, 1:5].tolist() == [[1, 1, 0, 0]] * 2 + [[1, 1, 1, 1]] * 2 and not placed[:, [0, 5]].any()
    assert np.array_equal(place(crop, (1, 0, 4, 4), (4, 6), flip=True)[:, 1:5], placed[:, 1:5][:, ::-1])
    assert not place(crop, (10, 10, 4, 4), (4, 6)).any()  # off the canvas


def test_two_processes_write_the_same_set(bundle, tmp_path, capsys):
    one = tmp_path / "one"
    args = ["--count", 10, "--balance", "--checkpoint", bundle, "--batch-size", 8, "--device", "cpu", "--threads", 1]
    assert run(["--out", one, *args, "-q"], capsys)[0] == 0
    two = tmp_path / "two"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "scenecomp.synth", "--out", str(two), *map(str, args), "--devices", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert files(one) == files(two)


def test_fit_prior_command_writes_a_prior_and_prints_its_fit(tiny_shapes, tmp_path, capsys):
    path = tmp_path / "prior.json"
    status = main(["fit-prior", str(tiny_shapes), "--out", str(path), "--categories", "tree,sun", "--check", "20"])
    out, err = capsys.readouterr()
    assert status == 0 and "64 images" in err, err
    assert LayoutPrior.load(path).categories == ["tree", "sun"]
    assert out.splitlines()[0].startswith("| category |") and [row.split(" | ")[0] for row in out.splitlines()[2:]] == [
        "| tree",
        "| sun",
    ]
    assert main(["fit-prior", str(tiny_shapes), "--out", str(tmp_path / "x.json"), "--categories", "dragon"]) == 2
    assert "no category 'dragon' in the file" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
