"""scenecomp-render: outputs, resuming, failures, manifest reproduction, batch and process independence.

Tiny untrained networks (FiLM layers randomised so every seed matters) saved
as a real bundle; the CLI runs in-process through `main(argv)`, except where a
real process is the point (2 DDP processes, what gets imported, tracebacks).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

import scenecomp.layout
import scenecomp.render as render
import scenecomp.render.batching
import scenecomp.render.cli
import scenecomp.render.options
from conftest import make_tiny_nets
from scenecomp import Composer
from scenecomp.compose import bundle_dict, load_bundle, save_bundle
from scenecomp.layout import LayoutError
from scenecomp.precision import auto_dtype
from scenecomp.render import layout_from_manifest, main, parse_seeds
from scenecomp.render.cli import LOCK

R = 16
CATEGORIES = ["tree", "house", "sun"]
AUTO = str(auto_dtype("cpu")).removeprefix("torch.")  # what --dtype auto (the default) resolves to here


@pytest.fixture(scope="module")
def composer(bundle):
    return Composer.from_checkpoint(bundle)


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def rle(mask):
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": encoded["counts"].decode("ascii")}


def valid_layouts(folder):
    """Four layouts at 32x32 (scaled to the model's 16x16), one per shape kind; returns their stems."""
    sun = np.zeros((32, 32), np.uint8)
    sun[2:10, 20:30] = 255
    Image.fromarray(sun).save(folder / "sun.png")
    rock = np.zeros((32, 32), bool)
    rock[22:30, 4:14] = True
    write_json(
        folder / "poly.json",
        {
            "size": [32, 32],
            "objects": [
                {"category": "tree", "polygon": [[4, 30], [8, 6], [14, 30]]},
                {"category": "house", "bbox": [16, 14, 12, 14], "seed": 7},
            ],
        },
    )
    write_json(
        folder / "box.json",
        {"size": [32, 32], "background": {"seed": 5}, "objects": [{"category": "house", "bbox": [2, 2, 20, 20]}]},
    )
    write_json(
        folder / "maskpng.json",
        {
            "size": [32, 32],
            "objects": [
                {"category": "sun", "mask": "sun.png"},
                {"category": "tree", "bbox": [0, 16, 10, 16]},
                {"category": "house", "bbox": [12, 12, 8, 8]},
            ],
        },
    )
    write_json(folder / "rle.json", {"size": [32, 32], "objects": [{"category": "sun", "rle": rle(rock)}]})
    return ["box", "maskpng", "poly", "rle"]


def invalid_layouts(folder):
    write_json(folder / "broken.json", '{"size": [32, 32], "objects": [\n  {"category": "tree",, }]}')
    write_json(
        folder / "unicorn.json",
        {
            "size": [32, 32],
            "objects": [{"category": "tree", "bbox": [0, 0, 8, 8]}, {"category": "unicorn", "bbox": [8, 8, 8, 8]}],
        },
    )
    write_json(folder / "nomask.json", {"size": [32, 32], "objects": [{"category": "sun", "mask": "gone.png"}]})
    return {
        "broken.json": "malformed JSON at line 2, column",
        "unicorn.json": "unicorn.json: object 1: unknown category 'unicorn'; known categories: tree, house, sun",
        "nomask.json": "nomask.json: object 0: ",
    }


def cli(argv, capsys):
    """Run scenecomp-render in-process: (exit status, stderr)."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        status = e.code
    return status, capsys.readouterr().err


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def quantise(image):
    return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def snapshot(folder):
    """name -> (inode, mtime_ns, bytes) of every file: os.replace gives a re-written file a new inode."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in folder.iterdir()
        if p.is_file() and p.name != LOCK
    }


def manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- a folder of layouts


def test_folder_of_valid_and_invalid_layouts_then_resume_then_overwrite(bundle, composer, tmp_path, capsys):
    folder = tmp_path / "layouts"
    folder.mkdir()
    stems = valid_layouts(folder)
    reasons = invalid_layouts(folder)
    out = tmp_path / "out"
    args = [folder, "--checkpoint", bundle, "--out", out, "--seeds", "0-1", "--batch-size", "3"]

    status, err = cli(args, capsys)
    assert status == 1
    expected = {f"{s}_s{seed:04d}.png" for s in stems for seed in (0, 1)}
    assert {p.name for p in out.iterdir()} == expected | {"manifest.jsonl", LOCK}
    failed = [line for line in err.splitlines() if line.startswith("scenecomp-render: failed: ")]
    assert len(failed) == 3
    for name, reason in reasons.items():
        assert any(name in line and reason in line for line in failed), (name, err)
    assert "not found" in next(line for line in failed if "nomask.json" in line)
    assert "8 images rendered, 3 layouts failed (listed above)" in err
    assert "Traceback" not in err

    for stem in stems:  # the composition API's images, up to float rounding (another batch shape)
        images = composer.render(folder / f"{stem}.json", seeds=[0, 1])
        for seed, image in zip((0, 1), images, strict=False):
            diff = pixels(out / f"{stem}_s{seed:04d}.png").astype(int) - quantise(image)
            assert np.abs(diff).max() <= 1 and (diff != 0).mean() < 0.01
    lines = manifest(out)
    assert sorted(line["image"] for line in lines) == sorted(expected)

    before = snapshot(out)
    status, err = cli(args, capsys)  # resume: nothing new, nothing touched
    assert status == 1 and "0 images rendered, 8 skipped" in err
    assert snapshot(out) == before

    (out / "poly_s0001.png").unlink()  # as if the run had been killed before this image
    status, err = cli(args, capsys)
    assert "1 image rendered, 7 skipped" in err
    after = snapshot(out)
    assert after["poly_s0001.png"][2] == before["poly_s0001.png"][2]
    assert all(after[n] == before[n] for n in expected - {"poly_s0001.png"})
    assert len(manifest(out)) == 8  # the re-rendered image's line replaced its old one

    status, err = cli([*args, "--overwrite"], capsys)
    assert status == 1 and "8 images rendered, 3 layouts failed" in err
    again = snapshot(out)
    for name in expected:  # written again (a new file renamed into place), same bytes
        assert again[name][0] != after[name][0] and again[name][2] == after[name][2]
    assert sorted(line["image"] for line in manifest(out)) == sorted(expected)  # one line per image


def test_hostile_layouts_are_reported_and_the_good_ones_still_render(bundle, tmp_path, capsys):
    """Issue 13, defects 2, 3 and 7: each is one failed layout with its file named, never a traceback."""
    folder = tmp_path / "layouts"
    folder.mkdir()
    write_json(folder / "good.json", {"size": [16, 16], "objects": [{"category": "tree", "bbox": [2, 2, 8, 8]}]})
    write_json(folder / "deep.json", "[" * 100_000 + "]" * 100_000)
    one = [{"category": "tree", "bbox": [2, 2, 8, 8]}]
    write_json(folder / "huge.json", {"size": [100_000, 100_000], "objects": one})
    write_json(folder / "large.json", {"size": [30_000, 30_000], "objects": one})
    write_json(
        folder / "longname.json", {"size": [16, 16], "objects": [{"category": "x" * 5_000_000, "bbox": [2, 2, 8, 8]}]}
    )
    write_json(
        folder / "escape.json", {"size": [16, 16], "objects": [{"category": "sun", "mask": "../../../../etc/passwd"}]}
    )
    points = [[8 + 6 * np.cos(t), 8 + 6 * np.sin(t)] for t in np.linspace(0, 6.28, 20_000)]
    write_json(folder / "points.json", {"size": [16, 16], "objects": [{"category": "sun", "polygon": points}]})
    status, err = cli([folder, "--checkpoint", bundle, "--out", tmp_path / "out"], capsys)
    assert status == 1 and "Traceback" not in err
    assert "1 image rendered, 6 layouts failed" in err and (tmp_path / "out" / "good_s0000.png").is_file()
    failed = {
        line.split(": failed: ", 1)[1].split(":", 1)[0]: line for line in err.splitlines() if ": failed: " in line
    }
    assert sorted(os.path.basename(f) for f in failed) == [
        "deep.json",
        "escape.json",
        "huge.json",
        "large.json",
        "longname.json",
        "points.json",
    ]
    reasons = {os.path.basename(f): line for f, line in failed.items()}
    assert "nested too deeply" in reasons["deep.json"]
    assert "100000x100000 (height x width) is too large" in reasons["huge.json"]
    assert "30000x30000 (height x width) is too large" in reasons["large.json"]
    assert "(5000000 characters)" in reasons["longname.json"] and len(reasons["longname.json"]) < 400
    assert "outside the layout's folder" in reasons["escape.json"]
    assert "polygon has 20000 points" in reasons["points.json"]


def test_trusted_masks_reads_masks_outside_the_layout_folder(bundle, tmp_path, capsys):
    square = np.zeros((16, 16), np.uint8)
    square[4:12, 4:12] = 255
    Image.fromarray(square).save(tmp_path / "shared.png")
    folder = tmp_path / "layouts"
    write_json(folder / "s.json", {"size": [16, 16], "objects": [{"category": "sun", "mask": "../shared.png"}]})
    status, err = cli([folder, "--checkpoint", bundle, "--out", tmp_path / "out"], capsys)
    assert status == 1 and "s.json: object 0: mask file '../shared.png' is outside the layout's folder" in err
    status, err = cli([folder, "--checkpoint", bundle, "--out", tmp_path / "out", "--trusted-masks"], capsys)
    assert status == 0 and "1 image rendered" in err and (tmp_path / "out" / "s_s0000.png").is_file()
    (line,) = manifest(tmp_path / "out")  # reproduce() reads the mask as the render did
    assert line["trusted_masks"] is True
    assert np.array_equal(quantise(render.reproduce(line)), pixels(tmp_path / "out" / "s_s0000.png"))
    with pytest.raises(LayoutError, match="outside the layout's folder"):
        render.reproduce(line, trusted=False)


def test_resume_repairs_a_half_written_manifest_line(bundle, tmp_path, capsys):
    folder = tmp_path / "layouts"
    folder.mkdir()
    valid_layouts(folder)
    out = tmp_path / "out"
    args = [folder, "--checkpoint", bundle, "--out", out]
    assert cli(args, capsys)[0] == 0
    text = (out / "manifest.jsonl").read_text()
    lines = text.splitlines(keepends=True)
    (out / "manifest.jsonl").write_text("".join(lines[:-1]) + lines[-1][:20])  # killed mid-line
    status, err = cli(args, capsys)
    assert status == 0 and "1 image rendered, 3 skipped" in err  # its image has no valid line: rendered again
    assert sorted(line["image"] for line in manifest(out)) == sorted(json.loads(text)["image"] for text in lines)


def test_steps_and_layers(bundle, composer, tmp_path, capsys):
    folder = tmp_path / "layouts"
    folder.mkdir()
    valid_layouts(folder)
    out = tmp_path / "out"
    status, _ = cli(
        [
            folder / "maskpng.json",
            "--checkpoint",
            bundle,
            "--out",
            out,
            "--seeds",
            "3",
            "--steps",
            "--layers",
            "--batch-size",
            "1",
        ],
        capsys,
    )  # batch 1, like Composer.scene: exact
    assert status == 0
    scene = composer.scene(folder / "maskpng.json", seed=3)
    strip = pixels(out / "maskpng_s0003_steps.png")
    assert strip.shape == (R, 4 * R, 3)
    for t in range(4):
        assert np.array_equal(strip[:, t * R : (t + 1) * R], np.asarray(scene.to_pil(t)))
    assert np.array_equal(strip[:, 3 * R :], pixels(out / "maskpng_s0003.png"))
    layers = out / "maskpng_s0003_layers"
    assert sorted(p.name for p in layers.iterdir()) == [
        "layout.json",
        "mask_01.png",
        "mask_02.png",
        "mask_03.png",
        "step_00.png",
        "step_01.png",
        "step_02.png",
        "step_03.png",
    ]
    for t, obj in enumerate(scene.objects, 1):
        assert np.array_equal(np.asarray(Image.open(layers / f"mask_{t:02d}.png")) > 0, obj.mask)
    again = composer.render(layers / "layout.json", seeds=12345)  # fully seeded: any sample seed
    assert np.array_equal(quantise(again), pixels(out / "maskpng_s0003.png"))
    (line,) = manifest(out)
    assert line["steps"] == "maskpng_s0003_steps.png" and line["layers"] == "maskpng_s0003_layers"


# ----------------------------------------------------------------------------- reproducibility


def coco_file(folder):
    """Two images: one with tree + house, one with an unknown category."""
    a = np.zeros((24, 32), bool)
    a[4:20, 2:12] = True
    b = np.zeros((24, 32), bool)
    b[10:22, 14:30] = True
    data = {
        "info": {"paint_order": "annotation_order"},
        "images": [
            {"id": 7, "file_name": "img/a.jpg", "height": 24, "width": 32},
            {"id": 9, "file_name": "img/b.jpg", "height": 24, "width": 32},
        ],
        "categories": [{"id": 1, "name": "tree"}, {"id": 2, "name": "house"}, {"id": 3, "name": "dragon"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": rle(a), "area": 160},
            {"id": 2, "image_id": 7, "category_id": 2, "segmentation": [[14, 10, 30, 10, 30, 22, 14, 22]], "area": 192},
            {"id": 3, "image_id": 9, "category_id": 3, "segmentation": rle(b), "area": 192},
        ],
    }
    return write_json(folder / "instances.json", data)


def test_manifest_lines_reproduce_each_image(bundle, tmp_path, capsys):
    folder = tmp_path / "layouts"
    folder.mkdir()
    valid_layouts(folder)
    coco = coco_file(tmp_path / "coco")
    out = tmp_path / "out"
    status, err = cli(
        [folder, coco, "--checkpoint", bundle, "--out", out, "--seeds", "2,9", "--batch-size", "4"], capsys
    )
    assert status == 1  # image 9 of the COCO file has an unknown category
    assert "instances.json: image 9 ('img/b.jpg'): object 0: unknown category 'dragon'" in err
    lines = manifest(out)
    assert len(lines) == 10
    sha = render.file_sha256(bundle)
    by_name = {line["image"]: line for line in lines}
    assert by_name["instances_a_s0002.png"]["image_id"] == 7
    assert by_name["box_s0009.png"]["background_seed"] == 5  # the layout's own seed wins over the sample seed
    assert by_name["poly_s0009.png"]["object_seeds"][1] == 7
    for line in lines:
        assert line["checkpoint_sha256"] == sha and line["checkpoint"] == str(bundle.resolve())
        assert line["scenecomp"] and line["time"] and line["dtype"] == AUTO and line["device"] == "cpu"
        assert os.path.isabs(line["layout"])
        # a fresh composer from the line's checkpoint, the layout rebuilt from the line, any sample seed
        layout = layout_from_manifest(line)
        assert layout.background_seed == line["background_seed"]
        assert [o.seed for o in layout.objects] == line["object_seeds"]
        assert line["batch_size"] == 4 and line["threads"] == torch.get_num_threads()
        assert np.array_equal(quantise(render.reproduce(line)), pixels(out / line["image"])), line["image"]
        # the plain API, another batch shape: the same up to float rounding
        image = Composer.from_checkpoint(line["checkpoint"]).render(layout, seeds=31337)
        assert np.abs(quantise(image).astype(int) - pixels(out / line["image"])).max() <= 1


def test_same_image_alone_in_a_batch_and_on_two_processes(bundle, tmp_path, capsys):
    folder = tmp_path / "layouts"
    folder.mkdir()
    stems = valid_layouts(folder)
    coco_file(folder)  # in the folder: one more layout (and one failure)
    names = [f"{s}_s{seed:04d}.png" for s in [*stems, "instances_a"] for seed in (0, 3, 4)]

    batched = tmp_path / "batched"
    assert (
        cli([folder, "--checkpoint", bundle, "--out", batched, "--seeds", "0,3-4", "--batch-size", "4"], capsys)[0] == 1
    )
    for stem in stems:  # each file alone, and each (file, seed) alone
        alone = tmp_path / f"alone_{stem}"
        assert (
            cli(
                [
                    folder / f"{stem}.json",
                    "--checkpoint",
                    bundle,
                    "--out",
                    alone,
                    "--seeds",
                    "0,3-4",
                    "--batch-size",
                    "4",
                ],
                capsys,
            )[0]
            == 0
        )
        assert (
            cli(
                [
                    folder / f"{stem}.json",
                    "--checkpoint",
                    bundle,
                    "--out",
                    alone / "one",
                    "--seeds",
                    "3",
                    "--batch-size",
                    "4",
                ],
                capsys,
            )[0]
            == 0
        )
        assert (alone / "one" / f"{stem}_s0003.png").read_bytes() == (batched / f"{stem}_s0003.png").read_bytes()
        for seed in (0, 3, 4):
            name = f"{stem}_s{seed:04d}.png"
            assert (alone / name).read_bytes() == (batched / name).read_bytes()

    ddp = tmp_path / "ddp"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "scenecomp.render",
            str(folder),
            "--checkpoint",
            str(bundle),
            "--out",
            str(ddp),
            "--seeds",
            "0,3-4",
            "--batch-size",
            "4",
            "--devices",
            "2",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert res.returncode == 1, res.stderr[-3000:]
    assert "15 images rendered, 1 layout failed" in res.stderr and "dragon" in res.stderr
    assert "Traceback" not in res.stderr
    assert sorted(p.name for p in ddp.iterdir()) == sorted([*names, "manifest.jsonl", LOCK])  # rank files merged away
    for name in names:
        assert (ddp / name).read_bytes() == (batched / name).read_bytes(), name
    merged = manifest(ddp)
    assert [line["image"] for line in merged] == [line["image"] for line in manifest(batched)]  # input order
    assert {line["device"] for line in merged} == {"cpu"} and {line["threads"] for line in merged} == {1}


def twenty_layouts(folder):
    """20 single-file layouts of 1-3 boxes (seeded from their index); returns their stems."""
    rng = np.random.default_rng(0)
    stems = []
    for i in range(20):
        objects = [
            {
                "category": CATEGORIES[int(rng.integers(3))],
                "bbox": [int(v) for v in (*rng.integers(0, 8, 2), *rng.integers(3, 9, 2))],
            }
            for _ in range(1 + i % 3)
        ]
        write_json(folder / f"l{i:02d}.json", {"size": [R, R], "objects": objects})
        stems.append(f"l{i:02d}")
    return stems


@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_batch_size_8_and_64_give_the_same_pngs_and_a_lone_image_costs_8(bundle, tmp_path, capsys, monkeypatch, dtype):
    folder = tmp_path / "layouts"
    folder.mkdir()
    stems = twenty_layouts(folder)
    calls = []
    paint = Composer._paint_batch
    monkeypatch.setattr(Composer, "_paint_batch", lambda self, zb, *a: calls.append(len(zb)) or paint(self, zb, *a))
    for batch_size in (8, 64):
        assert (
            cli(
                [
                    folder,
                    "--checkpoint",
                    bundle,
                    "--out",
                    tmp_path / f"b{batch_size}",
                    "--seeds",
                    "0-1",
                    "--batch-size",
                    batch_size,
                    "--dtype",
                    dtype,
                ],
                capsys,
            )[0]
            == 0
        )
    assert calls == [8] * 5 + [40]  # 40 images: 5 calls of 8, then one of 40 (not padded to 64)
    calls.clear()
    assert (
        cli(
            [
                folder / "l07.json",
                "--checkpoint",
                bundle,
                "--out",
                tmp_path / "alone",
                "--seeds",
                "1",
                "--batch-size",
                "64",
                "--dtype",
                dtype,
            ],
            capsys,
        )[0]
        == 0
    )
    assert calls == [8]
    for name in [f"{stem}_s{seed:04d}.png" for stem in stems for seed in (0, 1)]:
        assert (tmp_path / "b8" / name).read_bytes() == (tmp_path / "b64" / name).read_bytes(), name
    assert (tmp_path / "alone" / "l07_s0001.png").read_bytes() == (tmp_path / "b64" / "l07_s0001.png").read_bytes()
    expected = AUTO if dtype == "auto" else dtype
    assert {line["dtype"] for line in manifest(tmp_path / "b64")} == {expected}


def test_call_size_pads_to_a_multiple_of_8_on_cpu_only_for_such_batch_sizes():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [render.call_size(n, 64, cpu) for n in (1, 8, 9, 63, 64)] == [8, 8, 16, 64, 64]
    assert [render.call_size(n, 12, cpu) for n in (1, 12)] == [12, 12]  # not a multiple of 8: always the batch size
    assert render.call_size(1, 4, cpu) == 4 and render.call_size(1, 64, cuda) == 64


def test_absurd_batch_sizes_are_refused_before_rendering(bundle, tmp_path, capsys, monkeypatch):
    valid_layouts(tmp_path)
    out = tmp_path / "out"
    status, err = cli([tmp_path / "box.json", "--checkpoint", bundle, "--out", out, "--batch-size", "100000"], capsys)
    assert status == 2 and f"--batch-size 100000 is above the limit of {render.MAX_BATCH}" in err
    monkeypatch.setattr(scenecomp.render.options, "available_memory", lambda device: 2**20)  # 1 MiB free
    status, err = cli([tmp_path / "box.json", "--checkpoint", bundle, "--out", out, "--batch-size", "64"], capsys)
    assert status == 2 and "--batch-size 64 needs about 12 MiB at 16x16 but only 1 MiB is available" in err, err
    assert "use --batch-size 5 or less" in err and not out.exists()
    assert scenecomp.render.options.available_memory(torch.device("cpu")) > 0


def test_a_layout_that_breaks_after_planning_costs_no_other_image(composer, tmp_path):
    """A full plan's jobs (what the multi-device path renders) name their files, which are read
    again when rendered: a file that breaks in between fails its own layout only."""
    folder = tmp_path / "layouts"
    folder.mkdir()
    stems = valid_layouts(folder)
    work = render.plan(sorted(folder.glob("*.json")), composer, [0], tmp_path / "out")
    assert [job.name for job in work.jobs] == stems and all(job.layout is None for job in work.jobs)
    (folder / "sun.png").unlink()  # maskpng.json loses its mask file while the run is going
    results = render.render_jobs(composer, render.LayoutSource(), work.jobs, 4)
    failed = {job.name: str(result) for job, result in results if isinstance(result, LayoutError)}
    assert list(failed) == ["maskpng"] and "maskpng.json: object 0: mask file 'sun.png' not found" in failed["maskpng"]


def test_each_layout_file_is_read_once_and_each_mask_rasterised_once(bundle, tmp_path, capsys, monkeypatch):
    """Planning carries the layout and its masks to rendering, a batch at a time: a file is read
    once, a shape rasterised once (at the model's size, the check of the file is that
    rasterisation), and planning is never more than one batch ahead of the networks."""
    folder = tmp_path / "layouts"
    folder.mkdir()
    square = np.zeros((R, R), np.uint8)
    square[2:9, 3:12] = 255
    Image.fromarray(square).save(folder / "square.png")
    shapes = [{"bbox": [1, 2, 6, 5]}, {"polygon": [[2, 15], [8, 3], [14, 15]]}, {"mask": "square.png"}]
    for i in range(10):
        objects = [{"category": CATEGORIES[k % 3], **shapes[(i + k) % 3]} for k in range(1 + i % 3)]
        write_json(folder / f"l{i:02d}.json", {"size": [R, R], "objects": objects})
    events = []
    read, rasterize, padded = scenecomp.layout._read_json, scenecomp.layout._rasterize, render.batching.render_padded

    def counted_read(path):
        events.append(("read", path.name))
        return read(path)

    def counted_rasterize(kind, value, *args):
        events.append(("rasterize", kind))
        return rasterize(kind, value, *args)

    def counted_render(composer, layouts, *args, **kwargs):
        events.append(("render", len(layouts)))
        return padded(composer, layouts, *args, **kwargs)

    monkeypatch.setattr(scenecomp.layout, "_read_json", counted_read)
    monkeypatch.setattr(scenecomp.layout, "_rasterize", counted_rasterize)
    monkeypatch.setattr(render.batching, "render_padded", counted_render)
    out = tmp_path / "out"
    status, err = cli([folder, "--checkpoint", bundle, "--out", out, "--seeds", "0-1", "--batch-size", "8"], capsys)
    assert status == 0 and "20 images rendered" in err, err
    reads = [name for kind, name in events if kind == "read"]
    assert sorted(reads) == [f"l{i:02d}.json" for i in range(10)]  # each once
    assert sum(kind == "rasterize" for kind, _ in events) == sum(1 + i % 3 for i in range(10))
    for k, at in enumerate(i for i, (kind, _) in enumerate(events) if kind == "render"):
        assert sum(kind == "read" for kind, _ in events[:at]) <= 4 * (k + 1)  # 8 jobs = 4 layouts x 2 seeds
    for line in manifest(out):  # the images of the lines, as the file-reading path renders them
        assert np.array_equal(quantise(render.reproduce(line)), pixels(out / line["image"]))


def test_a_batch_that_raises_is_rendered_one_by_one(composer, tmp_path, monkeypatch):
    folder = tmp_path / "layouts"
    folder.mkdir()
    valid_layouts(folder)
    padded = render.render_padded

    def fussy(composer, layouts, batch_size, steps=False, masks=None):
        if any(layout.name == "poly" for layout in layouts):
            raise LayoutError("cannot be painted today", layouts[0].path)
        return padded(composer, layouts, batch_size, steps, masks)

    monkeypatch.setattr(scenecomp.render.batching, "render_padded", fussy)
    jobs = [render.Job(str(folder / f"{s}.json"), 0, s, 0) for s in ("box", "poly", "rle")]
    results = render.render_jobs(composer, render.LayoutSource(), jobs, 4)
    assert [type(r).__name__ for _, r in results] == ["Rendering", "LayoutError", "Rendering"]
    assert "poly.json: cannot be painted today" in str(results[1][1])


# ----------------------------------------------------------------------------- input handling


def test_empty_objects_are_warned_and_recorded_and_name_clashes_fail(bundle, tmp_path, capsys):
    write_json(
        tmp_path / "a" / "scene.json",
        {
            "size": [256, 256],
            "objects": [{"category": "tree", "bbox": [0, 0, 128, 128]}, {"category": "sun", "bbox": [201, 201, 3, 3]}],
        },
    )
    write_json(tmp_path / "b" / "scene.json", {"size": [32, 32], "objects": []})
    out = tmp_path / "out"
    status, err = cli([tmp_path / "a", tmp_path / "b", "--checkpoint", bundle, "--out", out], capsys)
    assert status == 1
    assert "warning: " in err and "object 1 covers no pixel at the model's resolution 16x16" in err
    assert "output name 'scene' is already taken by" in err and "b/scene.json" in err
    (line,) = manifest(out)
    assert line["empty_objects"] == [1] and line["image"] == "scene_s0000.png"


def test_a_folder_is_not_searched_recursively(bundle, tmp_path, capsys):
    valid_layouts(tmp_path)
    write_json(tmp_path / "sub" / "deeper.json", {"size": [16, 16], "objects": []})
    out = tmp_path / "out"
    assert cli([tmp_path, tmp_path / "box.json", "--checkpoint", bundle, "--out", out, "-q"], capsys)[0] == 0
    assert sorted(p.name for p in out.glob("*.png")) == [
        "box_s0000.png",
        "maskpng_s0000.png",
        "poly_s0000.png",
        "rle_s0000.png",
    ]


def test_another_checkpoint_does_not_silently_skip(bundle, tmp_path, capsys):
    valid_layouts(tmp_path)
    out = tmp_path / "out"
    assert cli([tmp_path / "box.json", "--checkpoint", bundle, "--out", out], capsys)[0] == 0
    other = tmp_path / "other.pt"
    bg, fg = make_tiny_nets(seed=1)
    save_bundle(other, bundle_dict(CATEGORIES, background=bg, foreground=fg))
    status, err = cli([tmp_path / "box.json", "--checkpoint", other, "--out", out], capsys)
    assert status == 2 and "rendered with another checkpoint" in err
    status, err = cli([tmp_path / "box.json", "--checkpoint", other, "--out", out, "--overwrite"], capsys)
    assert status == 0
    assert manifest(out)[0]["checkpoint_sha256"] == render.file_sha256(other) and len(manifest(out)) == 1


def test_a_run_folder_renders_with_its_bundle_and_last_ckpt_or_nan_is_refused(bundle, composer, tmp_path, capsys):
    """Issue 13, defects 6 and 10: a Lightning checkpoint or a diverged bundle is a bad option, exit 2."""
    valid_layouts(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_bundle(run / "composer.safetensors", load_bundle(bundle))
    torch.save(
        {"global_step": 4, "pytorch-lightning_version": "2.5.0", "state_dict": {}}, run / "checkpoints" / "last.ckpt"
    )
    out = tmp_path / "out"
    status, err = cli([tmp_path / "box.json", "--checkpoint", run / "checkpoints" / "last.ckpt", "--out", out], capsys)
    assert status == 2 and "a Lightning training checkpoint" in err and str(run / "composer.safetensors") in err
    data = load_bundle(bundle)
    next(iter(data["networks"]["background"]["state_dict"].values())).fill_(float("nan"))
    save_bundle(tmp_path / "nan.pt", data)
    status, err = cli([tmp_path / "box.json", "--checkpoint", tmp_path / "nan.pt", "--out", out], capsys)
    assert status == 2 and "network 'background', tensor" in err and "NaN or infinite" in err
    assert not out.exists()
    status, err = cli([tmp_path / "box.json", "--checkpoint", run, "--out", out], capsys)
    assert status == 0 and manifest(out)[0]["checkpoint"] == str(run / "composer.safetensors")


@pytest.mark.parametrize(
    "text, seeds",
    [
        ("0-3", [0, 1, 2, 3]),
        ("1,5,9", [1, 5, 9]),
        ("0-2,7", [0, 1, 2, 7]),
        (" 4 ", [4]),
        ("2,0-3", [2, 0, 1, 3]),
        ("4294967295", [2**32 - 1]),
    ],
)
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    "text, message",
    [
        ("3-1", "runs backwards"),
        ("a", "neither a seed nor a range"),
        ("", "neither"),
        ("1,,2", "neither"),
        ("-1", "neither"),
        ("18446744073709551616", "too large"),
        ("0-9999999", "more than"),
    ],
)
def test_parse_seeds_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_seeds(text)


def test_bad_options_exit_2_with_a_message(bundle, tmp_path, capsys, monkeypatch):
    valid_layouts(tmp_path)
    layout = tmp_path / "box.json"
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    cases = [
        ([layout, "--checkpoint", tmp_path / "missing.pt", "--out", out], "missing.pt: no such file"),
        ([layout, "--checkpoint", notes, "--out", out], "notes.txt: not a readable scenecomp bundle"),
        ([layout, "--checkpoint", layout, "--out", out], "not a readable scenecomp bundle"),
        ([layout, "--checkpoint", bundle, "--out", out, "--seeds", "5-2"], "argument --seeds: range '5-2' runs"),
        ([layout, "--checkpoint", bundle, "--out", out, "--seeds", "x"], "argument --seeds: 'x' is neither"),
        ([empty, "--checkpoint", bundle, "--out", out], "no layout files found"),
        ([tmp_path / "nope.json", "--checkpoint", bundle, "--out", out], "nope.json: no such file or folder"),
        ([layout, "--checkpoint", bundle, "--out", out, "--batch-size", "0"], "expected a positive integer"),
        ([layout, "--checkpoint", bundle, "--out", out, "--device", "tpu"], "--device"),
        ([layout, "--checkpoint", bundle], "the following arguments are required: --out"),
    ]
    if not torch.cuda.is_available():
        cases.append(([layout, "--checkpoint", bundle, "--out", out, "--device", "cuda"], "CUDA is not available"))
    monkeypatch.setattr(scenecomp.render.cli, "DEFAULT_MODEL", tmp_path / "assets" / "composer.safetensors")
    cases.append(([layout, "--out", out], "no default model is shipped with this scenecomp yet"))
    for argv, message in cases:
        status, err = cli(argv, capsys)
        assert status == 2, (argv, err)
        assert "scenecomp-render: error: " in err and message in err, (message, err)
        assert "Traceback" not in err
    assert not out.exists()  # nothing was started


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "scenecomp-render layouts/ --out renders/" in text and "--devices 2" in text


def test_real_process_imports_neither_lightning_nor_hydra_and_shows_no_traceback(bundle, tmp_path):
    valid_layouts(tmp_path)
    script = textwrap.dedent(f"""
        import sys, torch
        torch.set_num_threads(1)
        from scenecomp.render import main
        status = main([{str(tmp_path / "box.json")!r}, "--checkpoint", {str(bundle)!r},
                       "--out", {str(tmp_path / "out")!r}])
        loaded = [m for m in sys.modules if m.split(".")[0] in ("hydra", "lightning", "pytorch_lightning", "omegaconf")]
        assert not loaded, loaded
        sys.exit(status)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "scenecomp.render",
            str(tmp_path / "box.json"),
            "--checkpoint",
            str(tmp_path / "box.json"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and res.stderr.startswith("scenecomp-render: error: ")
    assert "Traceback" not in res.stderr
