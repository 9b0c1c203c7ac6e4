"""Scaling out: two "nodes" simulated with torchrun (and with SLURM's variables) on this machine, over
gloo on 127.0.0.1: data prepared once, ranks in sync with their own noise, every image rendered once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import scenecomp.render as render
from conftest import make_tiny_nets
from scenecomp.atomic import build_folder_once
from scenecomp.compose import bundle_dict, save_bundle
from scenecomp.render.cli import LOCK
from scenecomp.render.options import fill_processes
from scenecomp.training import noise_seed
from test_render import valid_layouts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHER = (
    "SLURM_",
    "TORCHELASTIC_",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PL_",
)


def clean_env(**extra) -> dict:
    """This environment without launcher variables, one thread per process, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER)}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def run_together(commands: list[list[str]], cwd: Path, envs: list[dict], timeout: int = 900) -> list[tuple[int, str]]:
    """Start the processes at once (a race, as on a cluster); (exit code, output) of each.
    On a timeout every process group started here is killed, so no rank is left hanging."""
    procs = [
        subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        for cmd, env in zip(commands, envs, strict=False)
    ]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [(p.returncode, out) for p, out in zip(procs, outputs, strict=False)]


def torchrun_nodes(module: str, args_of_node, cwd: Path, nodes: int = 2) -> list[tuple[int, str]]:
    """``torchrun --nnodes N --nproc-per-node 1 --node-rank r ... -m module args`` for every node r."""
    port = free_port()
    commands = [
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            str(nodes),
            "--nproc-per-node",
            "1",
            "--node-rank",
            str(r),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            "-m",
            module,
            *args_of_node(r),
        ]
        for r in range(nodes)
    ]
    return run_together(commands, cwd, [clean_env()] * nodes)


def rank_files(runs: list[Path]) -> list[dict]:
    return [json.loads((run / "rank_checksums" / f"rank{r}.json").read_text()) for r, run in enumerate(runs)]


TINY_DDP = [
    "experiment=tiny",
    "trainer=ddp",
    "trainer.devices=1",
    "trainer.num_nodes=2",
    "trainer.accelerator=cpu",
    "rank_checksums=true",
]


def test_two_torchrun_nodes_train_from_an_empty_folder(tiny_shapes, tmp_path):
    job = tmp_path / "job"  # empty: both nodes find no data and race to generate it
    job.mkdir()
    results = torchrun_nodes("scenecomp.train", lambda r: [*TINY_DDP, f"hydra.run.dir=run{r}"], job)
    for code, out in results:
        assert code == 0, out[-4000:]
    assert sum(out.count("generating 64 Shapes scenes") for _, out in results) == 1  # prepared once
    data = job / "data" / "shapes-tiny"
    assert [p.name for p in data.iterdir() if p.name != ".train.lock"] == ["train"]  # no temporary folder left
    assert (data / "train" / "annotations.json").read_bytes() == tiny_shapes.read_bytes()  # whole and as generated
    ranks = rank_files([job / "run0", job / "run1"])
    assert ranks[0]["weights"] == ranks[1]["weights"] and "g_fg_ema" in ranks[0]["weights"]
    assert ranks[0]["first_z"] != ranks[1]["first_z"]  # each rank draws its own noise
    assert (job / "run0" / "composer.safetensors").is_file() and not (job / "run1" / "composer.safetensors").exists()
    assert (job / "run0" / "checkpoints" / "last.ckpt").is_file()


def test_slurm_launch_through_its_variables_trains_in_sync(tiny_shapes, tmp_path):
    port = free_port()
    envs = [
        clean_env(
            SLURM_NTASKS="2",
            SLURM_PROCID=str(r),
            SLURM_LOCALID="0",
            SLURM_NODEID=str(r),
            SLURM_NNODES="2",
            SLURM_NTASKS_PER_NODE="1",
            SLURM_JOB_NAME="scenecomp-test",
            SLURM_JOB_ID="4242",
            SLURM_NODELIST="127.0.0.1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        for r in (0, 1)
    ]
    commands = [
        [sys.executable, "-m", "scenecomp.train", *TINY_DDP, f"data.train={tiny_shapes}", f"hydra.run.dir=run{r}"]
        for r in (0, 1)
    ]
    results = run_together(commands, tmp_path, envs)
    for code, out in results:
        assert code == 0, out[-4000:]
    ranks = rank_files([tmp_path / "run0", tmp_path / "run1"])
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["first_z"] != ranks[1]["first_z"]
    assert (tmp_path / "run0" / "composer.safetensors").is_file() and not (
        tmp_path / "run1" / "composer.safetensors"
    ).exists()


def test_two_torchrun_nodes_render_every_image_once_as_one_process_does(bundle, tmp_path):
    folder = tmp_path / "layouts"
    folder.mkdir()
    stems = valid_layouts(folder)
    (folder / "unicorn.json").write_text(
        json.dumps({"size": [32, 32], "objects": [{"category": "unicorn", "bbox": [8, 8, 8, 8]}]})
    )
    names = [f"{s}_s{seed:04d}.png" for s in stems for seed in (0, 3, 4)]
    common = [str(folder), "--checkpoint", str(bundle), "--seeds", "0,3-4", "--batch-size", "4"]

    single = tmp_path / "single"
    assert render.main([*common, "--out", str(single)]) == 1  # the unicorn fails, the rest renders

    nodes = tmp_path / "nodes"
    results = torchrun_nodes(
        "scenecomp.render", lambda r: [*common, "--out", str(nodes), "--devices", "1", "--device", "cpu"], tmp_path
    )
    assert results[0][0] == 1 and "12 images rendered, 1 layout failed" in results[0][1], results[0][1][-4000:]
    assert results[1][0] == 0, results[1][1][-4000:]
    # exit 1 (a layout failed) makes torchrun print its own traceback, but none comes from scenecomp
    assert "unicorn" in results[0][1] and "scenecomp/" not in results[0][1] + results[1][1]
    assert sorted(p.name for p in nodes.iterdir()) == sorted([*names, "manifest.jsonl", LOCK])  # rank files merged away
    for name in names:
        assert (nodes / name).read_bytes() == (single / name).read_bytes(), name
    lines = [json.loads(line) for line in (nodes / "manifest.jsonl").read_text().splitlines()]
    assert [line["image"] for line in lines] == [
        json.loads(line)["image"] for line in (single / "manifest.jsonl").read_text().splitlines()
    ]

    # rank 0 refuses to mix in another checkpoint's images: every rank hears of it and stops, none hangs
    other = tmp_path / "other.pt"
    save_bundle(
        other,
        bundle_dict(
            ["tree", "house", "sun"], background=make_tiny_nets(seed=1)[0], foreground=make_tiny_nets(seed=1)[1]
        ),
    )
    before = {p.name: p.stat().st_mtime_ns for p in nodes.iterdir()}
    results = torchrun_nodes(
        "scenecomp.render",
        lambda r: [common[0], "--checkpoint", str(other), *common[3:], "--out", str(nodes)],
        tmp_path,
    )
    for code, out in results:  # torchrun reports a child's exit 2 as its own failure (exit 1)
        assert code != 0 and "rendered with another checkpoint" in out, out[-4000:]
    assert {p.name: p.stat().st_mtime_ns for p in nodes.iterdir()} == before


@pytest.mark.parametrize(
    "env, given, expected",
    [
        ({}, (None, None), (1, 1)),
        ({}, (2, None), (2, 1)),
        ({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"}, (None, None), (1, 2)),
        ({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"}, (1, None), (1, 2)),
        ({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}, (None, 2), (4, 2)),
        ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2"}, (None, None), (2, 2)),
        ({"SLURM_NTASKS": "4", "SLURM_NNODES": "4", "SLURM_JOB_NAME": "interactive"}, (None, None), (1, 1)),
    ],
)
def test_render_takes_its_processes_from_the_launch(env, given, expected, monkeypatch):
    for key in [k for k in os.environ if k.startswith(LAUNCHER)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = render.build_parser().parse_args(["x.json", "--out", "o"])
    args.devices, args.num_nodes = given
    fill_processes(args)
    assert (args.devices, args.num_nodes) == expected


@pytest.mark.parametrize("given", [(1, 1), (2, 1), (2, 2)])
def test_render_options_that_do_not_match_the_launch_are_an_error(given, monkeypatch):
    # a non-zero rank of a torchrun job that rendered nothing and exited 0 was this case
    for key, value in {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    args = render.build_parser().parse_args(["x.json", "--out", "o"])
    args.devices, args.num_nodes = given
    with pytest.raises(render.UsageError, match="torchrun started 2 processes, 1 per node"):
        fill_processes(args)


def test_train_refuses_a_trainer_that_does_not_match_the_launch(tiny_config, monkeypatch):
    from scenecomp.train import ConfigError, build

    for key, value in {
        "TORCHELASTIC_RUN_ID": "x",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "1",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "1",
    }.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=r"\(1 \* 1\) does not match the world size \(2\)"):
        build(tiny_config("trainer=ddp", "trainer.devices=1", "trainer.accelerator=cpu"))


def test_noise_streams_differ_by_rank_and_by_the_batch_a_run_resumes_at():
    seeds = {noise_seed(0, rank, batch) for rank in range(8) for batch in (0, 3, 500)}
    assert len(seeds) == 24 and all(0 <= s < 2**32 for s in seeds)
    assert noise_seed(0, 1, 3) == noise_seed(0, 1, 3) != noise_seed(1, 1, 3)


def test_a_resumed_run_does_not_replay_the_noise_it_started_with(tiny_config, tmp_path):
    from scenecomp.train import run

    # both runs start from the same seed; Lightning's checkpoint holds no RNG state
    run(tiny_config("steps=3", f"out={tmp_path / 'first'}", "rank_checksums=true"))
    run(
        tiny_config(
            "steps=4",
            f"out={tmp_path / 'resumed'}",
            "rank_checksums=true",
            f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}",
        )
    )
    z = [
        json.loads((tmp_path / d / "rank_checksums" / "rank0.json").read_text())["first_z"]
        for d in ("first", "resumed")
    ]
    assert z[0] != z[1]


BUILD = """
import sys, time
from pathlib import Path
from scenecomp.atomic import build_folder_once

def build(tmp):
    (tmp / "part").write_text("half")
    time.sleep(0.5)  # the others arrive while this one is building
    (tmp / "done").write_text(sys.argv[2])

built = build_folder_once(Path(sys.argv[1]), build, complete=lambda f: (f / "done").is_file())
print("built" if built else "found")
"""


def test_a_folder_is_built_once_by_racing_processes(tmp_path):
    target = tmp_path / "data" / "train"
    results = run_together(
        [[sys.executable, "-c", BUILD, str(target), str(i)] for i in range(3)], tmp_path, [clean_env()] * 3, timeout=120
    )
    assert all(code == 0 for code, _ in results), results
    assert sorted(out.strip() for _, out in results) == ["built", "found", "found"]
    assert sorted(p.name for p in target.iterdir()) == ["done", "part"]
    assert [p.name for p in target.parent.iterdir() if p.name != ".train.lock"] == ["train"]


def test_an_incomplete_folder_is_not_built_over(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "stale.png").write_text("x")
    with pytest.raises(FileExistsError, match="incomplete"):
        build_folder_once(tmp_path / "train", lambda tmp: None, complete=lambda f: False)
