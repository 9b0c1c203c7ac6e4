"""Every tool under tools/ answers --help with examples, and every benchmark runs with tiny settings,
printing its rate as fractions of both matmul rates (so none can rot unnoticed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

SMOKE = {  # tiny settings: each runs in seconds on an idle 2-core machine
    "bench_train.py": ["--experiment", "tiny", "--batches", "1", "--warmup", "1", "--variants", "bf16-mixed:cl"]
    + ["--keep-freed-memory"],
    "bench_render.py": [
        "--images",
        "8",
        "--single-images",
        "1",
        "--batch-size",
        "8",
        "--rounds",
        "1",
        "--objects",
        "1",
        "--cli-layouts",
        "1",
        "--cli-rounds",
        "1",
        "--dtypes",
        "auto",
    ],
    "bench_edit.py": ["--objects", "2", "--runs", "1"],
    "bench_shapes.py": ["-n", "10"],
    "bench_studio.py": ["--objects", "2", "--runs", "1"],
}


def test_every_benchmark_has_a_smoke_setting():
    assert sorted(p.name for p in TOOLS.glob("bench_*.py")) == sorted(SMOKE)


def test_every_tool_answers_help_with_examples():
    tools = sorted(TOOLS.glob("*.py"))
    runs = {
        p.name: subprocess.Popen(
            [sys.executable, str(p), "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=TOOLS.parent,
        )
        for p in tools
    }
    for name, proc in runs.items():  # started together: most of the time is importing torch
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, (name, err[-2000:])
        assert f"python tools/{name}" in out, (name, out)


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_benchmark_runs_and_reports_both_matmul_fractions(name, tmp_path):
    res = subprocess.run(
        [sys.executable, str(TOOLS / name), *SMOKE[name]],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tmp_path,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "of bf16 matmul" in res.stdout and "of fp32 matmul" in res.stdout, res.stdout
    if name == "bench_train.py":  # the same variant again after keep_freed_memory(), as a ratio to itself
        assert "bf16-mixed:cl+kept" in res.stdout and res.stdout.count("x bf16-mixed:cl\n") == 2, res.stdout


def test_background_stats_compares_a_model_with_real_backgrounds(bundle, tmp_path):
    from scenecomp.shapes import write_dataset

    write_dataset(tmp_path, count=12, size=16, seed=0)
    res = subprocess.run(
        [sys.executable, str(TOOLS / "background_stats.py"), "--checkpoint", str(bundle)]
        + ["--real", str(tmp_path / "backgrounds"), "-n", "12"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert [line.split(" n=")[0].strip() for line in lines[:4]] == [
        "real, first half",
        "real, second half",
        "real",
        "composer.safetensors",
    ]
    assert all(" n=   12" in line for line in lines[2:4]), lines
    shares = [[float(line.split(k)[1].split()[0]) for k in (" day ", " dusk ", " night ")] for line in lines[:4]]
    assert all(abs(sum(s) - 1) <= 0.015 for s in shares)  # every sky counted once (shares printed to 2 places)
    # Shapes' ground blotches are wider than tall: its grounds vary less along their rows than down their columns
    ground = [[float(line.split(k)[1].split()[0]) for k in (" along rows ", " down columns ")] for line in lines[:4]]
    assert all(rows < 0.5 * columns for rows, columns in ground[:3]), ground
    # the mix the data set draws from, with the standard error of a sample of -n
    assert (
        lines[4].split() == "Shapes draws day 0.50 dusk 0.25 night 0.25 (a sample of 12 varies by se <= 0.144)".split()
    )
    assert lines[5:] == ["detections: not measured (features.safetensors sees 64x64 images)"]  # the shipped detector
    # a detector of the model's size (untrained: its detections are arbitrary, their bookkeeping is not)
    import torch

    from scenecomp.eval.features import FeatureNet, save_features

    categories = ["tree", "house", "sun"]
    torch.manual_seed(0)
    net = FeatureNet(num_categories=3, resolution=16, crop_size=8, channels=4)
    save_features(tmp_path / "f16.safetensors", net, categories)
    res = subprocess.run(
        [sys.executable, str(TOOLS / "background_stats.py"), "--checkpoint", str(bundle)]
        + ["--real", str(tmp_path / "backgrounds"), "-n", "12", "--features", str(tmp_path / "f16.safetensors")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    found = [line for line in res.stdout.splitlines() if "detected as:" in line]
    assert [line.split()[0] for line in found] == ["real", "composer.safetensors"]
    for line in found:
        purity = float(line.split("purity ")[1].split()[0])
        detected = [float(line.split(f" {c} ")[1].split()[0]) for c in categories]
        # an image with any detection is impure: 1 - sum <= purity <= 1 - max
        assert 1 - sum(detected) - 1e-3 <= purity <= 1 - max(detected) + 1e-3, line
    (tmp_path / "empty").mkdir()
    for real, message in ((tmp_path / "empty", "no PNG backgrounds"), (tmp_path, "138x104, the model paints 16x16")):
        res = subprocess.run(
            [sys.executable, str(TOOLS / "background_stats.py"), "--checkpoint", str(bundle), "--real", str(real)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=300,
        )
        assert res.returncode != 0 and message in res.stderr, res.stderr  # preview.png is not a background
