"""scenecomp-render under faults (issue 13, defects 4, 5, 6 and 9): an output folder that cannot be
written (on one device or on one rank of several), two runs into one folder, resuming over changed or
damaged files, a model that paints NaN."""

import errno
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from filelock import FileLock
from PIL import Image

import scenecomp.render.outputs
from conftest import make_tiny_nets
from scenecomp.compose import bundle_dict, save_bundle
from scenecomp.render.cli import LOCK
from scenecomp.render.manifest import file_sha256, merge_rank_files
from test_render import CATEGORIES, cli, manifest, valid_layouts, write_json
from test_scaleout import clean_env, run_together, torchrun_nodes

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def layouts(tmp_path):
    folder = tmp_path / "layouts"
    folder.mkdir()
    return folder, valid_layouts(folder)


def lines_per_image(out):
    images = [line["image"] for line in manifest(out)]
    return {image: images.count(image) for image in images}


def test_out_below_a_file_or_on_a_file_is_exit_3_and_writes_nothing(bundle, tmp_path, capsys):
    folder, _ = layouts(tmp_path)
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    for out, reason in (
        (blocker / "sub", "a part of the path is a file, not a folder"),
        (blocker, "a part of the path is a file, not a folder"),
    ):
        status, err = cli([folder, "--checkpoint", bundle, "--out", out], capsys)
        assert status == 3, err
        assert f"scenecomp-render: error: --out {out}: cannot write" in err and reason in err, err
        assert "Traceback" not in err and "run the same command again to resume" in err
    assert blocker.read_text() == "not a folder"


def in_small_filesystem(tmp_path, script: str):
    """Run ``script`` (sh) in a private mount namespace where ``$FS`` is a fresh tmpfs; returns the result.
    The mount vanishes with the namespace, so the script copies out what the test inspects."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -rm (user and mount namespaces) to mount a small filesystem without root")
    fs = tmp_path / "fs"
    fs.mkdir()
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=900,
        env={**ENV, "FS": str(fs), "PY": sys.executable},
        cwd=tmp_path,
    )


def test_read_only_filesystem_is_exit_3_with_a_message(bundle, tmp_path):
    folder, _ = layouts(tmp_path)
    res = in_small_filesystem(
        tmp_path,
        f'mount -t tmpfs -o ro,size=64k tmpfs "$FS" && '
        f'"$PY" -m scenecomp.render {folder} --checkpoint {bundle} --out "$FS/out"',
    )
    assert res.returncode == 3, res.stderr
    assert f"--out {tmp_path / 'fs' / 'out'}: cannot write" in res.stderr and "read-only file system" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_disk_that_fills_up_stops_the_run_whole_and_the_run_resumes_after(bundle, tmp_path):
    """A 24 KiB filesystem holds a few images: the run stops with exit 3, every image there is whole
    and in the manifest, no temporary file is left; with room again the same command finishes."""
    folder, stems = layouts(tmp_path)
    render = f'"$PY" -m scenecomp.render {folder} --checkpoint {bundle} --out "$FS/out" --seeds 0-3 --batch-size 8'
    res = in_small_filesystem(
        tmp_path,
        f'mount -t tmpfs -o size=24k tmpfs "$FS" && {render}; echo "rc=$?"; '
        f'cp -a "$FS/out" full; mount -o remount,size=4m "$FS" && {render}; '
        f'echo "rc=$?"; cp -a "$FS/out" resumed',
    )
    codes = [line for line in res.stdout.splitlines() if line.startswith("rc=")]
    assert codes == ["rc=3", "rc=0"], res.stdout + res.stderr
    assert "no space left on the device" in res.stderr and "Traceback" not in res.stderr
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    pngs = sorted(p.name for p in full.glob("*.png"))
    assert 0 < len(pngs) < 16 and not [p for p in full.iterdir() if p.name.endswith(".tmp")]
    listed = {line["image"]: line for line in manifest(full)}  # a half line would make manifest() fail
    assert set(listed) <= set(pngs)  # an image may lack its line (rendered again on resume), never the reverse
    for name, line in listed.items():
        assert file_sha256(full / name) == line["image_sha256"]
    for name in pngs:
        Image.open(full / name).load()  # whole PNGs only
    expected = {f"{s}_s{seed:04d}.png" for s in stems for seed in range(4)}
    assert set(lines_per_image(resumed)) == expected and set(lines_per_image(resumed).values()) == {1}
    for name in listed:  # kept, not rendered again
        assert (resumed / name).read_bytes() == (full / name).read_bytes()


def test_a_fault_on_the_writer_thread_stops_the_run_whole_and_it_resumes(bundle, tmp_path, capsys, monkeypatch):
    """Files are written on a writer thread while the networks paint: a full disk met there
    still ends the run at once with exit 3, every image under its name whole and in the manifest,
    no temporary file left; the same command then finishes, keeping what was written."""
    folder, stems = layouts(tmp_path)
    out = tmp_path / "out"
    args = [folder, "--checkpoint", bundle, "--out", out, "--seeds", "0-3", "--batch-size", "8"]
    real, threads = scenecomp.render.outputs.write_atomically, []

    def filling_up(path, write):
        threads.append(threading.current_thread())
        if len(threads) < 6:
            return real(path, write)

        def half(tmp):
            tmp.write_bytes(b"\x89PNG\r\n half an image")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

        return real(path, half)

    monkeypatch.setattr(scenecomp.render.outputs, "write_atomically", filling_up)
    status, err = cli(args, capsys)
    assert status == 3 and "no space left on the device" in err and "Traceback" not in err, err
    assert threading.main_thread() not in threads and len(threads) == 6  # the writer stopped at the fault
    pngs = {p.name for p in out.glob("*.png")}
    assert len(pngs) == 5 and not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    lines = manifest(out)
    assert {line["image"] for line in lines} == pngs and len(lines) == 5
    for line in lines:
        assert file_sha256(out / line["image"]) == line["image_sha256"]
        Image.open(out / line["image"]).load()
    kept = {name: (out / name).read_bytes() for name in pngs}

    monkeypatch.setattr(scenecomp.render.outputs, "write_atomically", real)
    status, err = cli(args, capsys)
    assert status == 0 and "11 images rendered, 5 skipped" in err, err
    assert set(lines_per_image(out)) == {f"{s}_s{seed:04d}.png" for s in stems for seed in range(4)}
    assert all((out / name).read_bytes() == data for name, data in kept.items())


def test_a_second_run_into_a_locked_folder_waits_then_skips_what_is_done(bundle, tmp_path):
    folder, stems = layouts(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    lock = FileLock(out / LOCK)
    lock.acquire()  # as another run would hold it
    proc = subprocess.Popen(
        [sys.executable, "-m", "scenecomp.render", str(folder), "--checkpoint", str(bundle), "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    said = []

    def read_until_waiting():
        for line in proc.stderr:
            said.append(line)
            if "another scenecomp-render is writing into" in line:
                return

    reader = threading.Thread(target=read_until_waiting)
    reader.start()
    reader.join(timeout=600)
    try:
        assert said and "another scenecomp-render is writing into" in said[-1], said
        assert not list(out.glob("*.png")) and not (out / "manifest.jsonl").exists()  # waiting, not rendering
    finally:
        lock.release()
    rest = proc.communicate(timeout=600)[1]
    assert proc.returncode == 0 and "4 images rendered" in rest, rest
    assert lines_per_image(out) == {f"{s}_s0000.png": 1 for s in stems}


def test_resume_cleans_duplicate_manifest_lines(bundle, tmp_path, capsys):
    folder, stems = layouts(tmp_path)
    out = tmp_path / "out"
    args = [folder, "--checkpoint", bundle, "--out", out]
    assert cli(args, capsys)[0] == 0
    text = (out / "manifest.jsonl").read_text()
    (out / "manifest.jsonl").write_text(text + text)  # what two unlocked runs used to leave
    status, err = cli(args, capsys)
    assert status == 0 and "0 images rendered, 4 skipped" in err
    assert lines_per_image(out) == {f"{s}_s0000.png": 1 for s in stems}


def test_resume_renders_again_a_truncated_png_and_a_changed_layout(bundle, tmp_path, capsys):
    folder, stems = layouts(tmp_path)
    out = tmp_path / "out"
    args = [folder, "--checkpoint", bundle, "--out", out, "--seeds", "0-1"]
    assert cli(args, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}

    with open(out / "poly_s0001.png", "r+b") as f:  # truncate -s 100
        f.truncate(100)
    status, err = cli(args, capsys)
    assert status == 0 and "1 image rendered, 7 skipped" in err, err
    assert "1 image(s) in" in err and "no longer match their manifest lines" in err and "poly_s0001.png" in err
    assert (out / "poly_s0001.png").read_bytes() == before["poly_s0001.png"]

    box = json.loads((folder / "box.json").read_text())
    (folder / "box.json").write_text(json.dumps(box, indent=4))  # same content, another spelling: still done
    assert "0 images rendered, 8 skipped" in cli(args, capsys)[1]
    box["objects"][0]["bbox"] = [4, 4, 20, 20]
    write_json(folder / "box.json", box)
    sun = np.zeros((32, 32), np.uint8)
    sun[12:30, 2:20] = 255
    Image.fromarray(sun).save(folder / "sun.png")  # maskpng.json's mask file, edited
    status, err = cli(args, capsys)
    assert status == 0 and "4 images rendered, 4 skipped" in err, err
    changed = {"box_s0000.png", "box_s0001.png", "maskpng_s0000.png", "maskpng_s0001.png"}
    for name, data in before.items():
        assert ((out / name).read_bytes() != data) == (name in changed), name
    assert set(lines_per_image(out).values()) == {1}


def test_a_model_that_paints_nan_fails_each_layout_by_name_and_writes_nothing(tmp_path, capsys):
    """Finite weights that overflow float32 (x 1e30) paint NaN: not one black PNG, a failure per layout."""
    bg, fg = make_tiny_nets()
    with torch.no_grad():
        for name, p in fg.named_parameters():
            if name.endswith("weight"):
                p.mul_(1e30)
    overflowing = tmp_path / "overflow.pt"
    save_bundle(overflowing, bundle_dict(CATEGORIES, background=bg, foreground=fg))
    folder, stems = layouts(tmp_path)
    out = tmp_path / "out"
    status, err = cli([folder, "--checkpoint", overflowing, "--out", out, "--dtype", "float32"], capsys)
    assert status == 1 and "0 images rendered, 4 layouts failed" in err, err
    for stem in stems:
        assert f"{folder / stem}.json: the model painted NaN or infinite values" in err
    assert not list(out.glob("*.png")) and not manifest_lines(out)


def manifest_lines(out):
    path = out / "manifest.jsonl"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("launch, faulty_rank", [("devices", 0), ("devices", 1), ("torchrun", 1)])
def test_an_output_fault_on_one_rank_stops_every_rank_alike(bundle, tmp_path, capsys, launch, faulty_rank):
    """Two processes over gloo (``--devices 2``, or two torchrun "nodes"); after both have written
    images, one rank cannot write its next one (a folder holds its name). Every rank stops with the
    same message and exit 3, none waits for the other (before the fix: a traceback on one side, or a
    rank waiting forever); what was written is whole, and the same command resumes once fixed."""
    folder, stems = layouts(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    jobs = [f"{s}_s{seed:04d}.png" for s in sorted(stems) for seed in range(4)]  # the plan's order
    blocked = out / jobs[4 + faulty_rank]  # rank r renders jobs r, r + 2, ...: this is its second batch
    blocked.mkdir()
    options = [folder, "--checkpoint", bundle, "--out", out, "--seeds", "0-3", "--batch-size", 2]
    message = f"scenecomp-render: error: --out {out}: cannot write {blocked}: Is a directory; nothing half-written"
    if launch == "devices":
        command = [sys.executable, "-m", "scenecomp.render", *map(str, options), "--devices", "2", "--device", "cpu"]
        [(code, text)] = run_together([command], tmp_path, [clean_env()], timeout=600)
        assert code == 3 and text.count(message) == 2 and "Traceback" not in text, text[-4000:]  # from each rank
    else:
        args = [*map(str, options), "--devices", "1", "--device", "cpu"]
        for code, text in torchrun_nodes("scenecomp.render", lambda r: args, tmp_path):
            # torchrun reports its child's exit 3 as its own failure (exit 1, with torchrun's traceback)
            assert code == 1 and text.count(message) == 1 and "exitcode  : 3" in text, text[-4000:]
            assert "scenecomp/" not in text  # no traceback from scenecomp

    written = sorted(p.name for p in out.glob("*.png") if p.is_file())
    assert len(written) >= 4 and not list(out.glob(".*.tmp"))  # each rank's first batch, nothing half-written
    lines = [json.loads(line) for f in out.glob(".manifest.rank*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(line["image"] for line in lines) == written
    for line in lines:
        assert file_sha256(out / line["image"]) == line["image_sha256"]
    before = {name: (out / name).read_bytes() for name in written}

    blocked.rmdir()
    assert cli(options, capsys)[0] == 0  # one device resumes: merges the rank manifests, renders the rest
    assert lines_per_image(out) == dict.fromkeys(jobs, 1)
    assert all((out / name).read_bytes() == data for name, data in before.items())


def test_merging_rank_manifests_onto_a_full_disk_leaves_no_half_line(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_text(json.dumps({"image": "a_s0000.png"}) + "\n")
    for r in range(2):
        rows = [json.dumps({"image": f"r{r}_s{i:04d}.png", "pad": "x" * 100}) + "\n" for i in range(5)]
        (out / f".manifest.rank{r}.jsonl").write_text("".join(rows))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    limit = (out / "manifest.jsonl").stat().st_size + 300  # room for two and a half lines
    code = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from scenecomp.render.manifest import merge_rank_files\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))\n"
        "try:\n    merge_rank_files(Path(sys.argv[1]))\nexcept OSError as e:\n    print(e.errno)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300, env=ENV)
    assert res.stdout.strip() == str(errno.EFBIG), res.stdout + res.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no half line; rank files kept
    assert merge_rank_files(out) == 10 and lines_per_image(out) == dict.fromkeys(
        ["a_s0000.png", *(f"r{r}_s{i:04d}.png" for r in range(2) for i in range(5))], 1
    )
