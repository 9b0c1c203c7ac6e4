"""The command's options: parsing and checking them (inputs, seeds, device, batch size)."""

from __future__ import annotations

import argparse
import errno
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch

from scenecomp.layout import SEED_LIMIT

PROG = "scenecomp-render"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

MAX_BATCH = 4096  # --batch-size limit
# Peak resident memory per image of one network call at 64x64, measured with the shipped
# model (6 objects, batch 32 vs 256): float32 2.9 MiB, bfloat16 2.1 MiB. Scales with resolution^2.
MIB_PER_IMAGE_64 = 3.0
MAX_SEEDS = 1_000_000

EPILOG = """\
examples:
  # every *.json in layouts/ (not sub-folders), sample seed 0, with the default model
  scenecomp-render layouts/ --out renders/

  # four samples per layout, and the canvas after each object as a strip
  scenecomp-render scene.json more/ --checkpoint run/composer.safetensors --out renders/ --seeds 0-3 --steps

  # one layout per image of a COCO instances file, 8 seeds, big batches on a GPU (bfloat16: --dtype auto)
  scenecomp-render instances_val.json --checkpoint run/composer.safetensors --out coco/ \\
      --seeds 0-7 --batch-size 128 --device cuda

  # float32 networks (slower on CPUs with native bf16; images differ by a level here and there)
  scenecomp-render layouts/ --out renders-fp32/ --dtype float32

  # two GPUs (or --device cpu --devices 2: two CPU processes), through Lightning DDP
  scenecomp-render layouts/ --checkpoint run/composer.safetensors --out renders/ --device cuda --devices 2

  # two nodes of 4 GPUs: run on each node (or start it with srun); --out on a shared filesystem
  torchrun --nnodes 2 --nproc-per-node 4 --node-rank $NODE --master-addr $HOST0 --master-port 29500 \\
      $(which scenecomp-render) layouts/ --checkpoint run/composer.safetensors --out /shared/renders/ --device cuda

  # interrupted? run the same command again: finished images are skipped.
  # --overwrite renders everything again.

outputs: DIR/{name}_s{seed:04d}.png and DIR/manifest.jsonl (one JSON line per
image: layout file, seeds used, checkpoint SHA-256, time); see
`python -m pydoc scenecomp.render` for the full format.
exit status: 0 all rendered or skipped, 1 some layouts failed (listed on
stderr), 2 bad options, 3 the output folder cannot be written (read-only, a
file in its path, disk full; images finished before are kept), 130 interrupted."""


class UsageError(Exception):
    """A bad option or input list: reported as ``scenecomp-render: error: ...``, exit 2."""


class OutputError(Exception):
    """The output folder cannot be written (read-only, a file in its path, a full disk ...):
    reported as ``scenecomp-render: error: ...``, exit 3; what was written before stays whole."""


FAULTS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system or process limit",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a part of the path is a file, not a folder",
}


@contextmanager
def output_faults(out):
    """Turn an ``OSError`` met while writing into ``out`` into an `OutputError` naming the file and the cause."""
    try:
        yield
    except OSError as e:
        # a failed rename (the last step of every file written) names its target second
        where = next((name for name in (e.filename2, e.filename) if name is not None), out)
        reason = FAULTS.get(e.errno, e.strerror or type(e).__name__)
        raise OutputError(f"--out {out}: cannot write {where}: {reason}") from None


def parse_seeds(text: str) -> list[int]:
    """Sample seeds from ``"0-3"``, ``"1,5,9"`` or ``"0-2,7"`` (inclusive ranges;
    repeats dropped, order kept). Raises ValueError with a readable message."""
    seeds: dict[int, None] = {}
    for part in str(text).split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise ValueError(f"{part!r} is neither a seed nor a range; use e.g. 0-3, 1,5,9 or 0-2,7")
        first = int(match[1])
        last = first if match[2] is None else int(match[2])
        if last < first:
            raise ValueError(f"range {part!r} runs backwards; write {last}-{first}")
        if last >= SEED_LIMIT:
            raise ValueError(f"seed {last} is too large (seeds are integers in [0, 2**32))")
        if last - first + 1 + len(seeds) > MAX_SEEDS:
            raise ValueError(f"more than {MAX_SEEDS} seeds")
        seeds.update(dict.fromkeys(range(first, last + 1)))
    return list(seeds)


def _seeds_arg(text: str) -> list[int]:
    try:
        return parse_seeds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Render layouts to images: a background, then each object in paint order.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="LAYOUTS",
        help="layout JSON files, folders of them (*.json directly inside, sorted), "
        "or COCO instances JSON files (one layout per image)",
    )
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="composer.safetensors bundle or a run folder holding one (default: the model shipped with scenecomp)",
    )
    parser.add_argument(
        "--seeds",
        type=_seeds_arg,
        default=[0],
        metavar="SEEDS",
        help="sample seeds, one image each: 0-3, 1,5,9 or 0-2,7 (default 0); they fill in only "
        "the seeds a layout leaves unset",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=16,
        metavar="N",
        help=f"images per network call, per device (default 16, at most {MAX_BATCH}). On CPU a "
        "multiple of 8 pads each call only to the next multiple of 8, else every call is "
        "padded to N; either way an image's pixels do not depend on what else is rendered. "
        "Keep N the same to reproduce them bit for bit",
    )
    parser.add_argument("--device", metavar="DEV", help="cpu, cuda or cuda:1 (default: cuda if available, else cpu)")
    parser.add_argument(
        "--devices",
        type=_positive_int,
        metavar="N",
        help="render on N devices of --device's kind per node through Lightning DDP (default 1, "
        "or the processes per node of a torchrun/srun launch)",
    )
    parser.add_argument(
        "--num-nodes",
        type=_positive_int,
        metavar="M",
        help="nodes of a multi-node launch (default 1, or the node count of a torchrun/srun launch)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="CPU threads per process (default: torch's choice; with --devices N on CPU, the cores divided by N)",
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", *DTYPES],
        default="auto",
        help="network precision (default auto: bfloat16 on GPUs and on CPUs with native bf16, "
        "AVX512-BF16 or AMX; float32 elsewhere). The manifest records the one used",
    )
    parser.add_argument(
        "--steps",
        action="store_true",
        help="also save {name}_s{seed}_steps.png: the canvas after each object, as a strip",
    )
    parser.add_argument(
        "--layers",
        action="store_true",
        help="also save each step, each mask and the seeded layout into {name}_s{seed}_layers/",
    )
    parser.add_argument(
        "--ora",
        action="store_true",
        help="also save {name}_s{seed}.ora: OpenRaster layers for GIMP and Krita (the background and one "
        "layer per object, alpha = its mask; stacked they give the PNG)",
    )
    parser.add_argument(
        "--trusted-masks",
        action="store_true",
        help="read mask files anywhere (default: only regular files inside each layout's folder)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="render again outputs that already exist (default: skip them, so a run resumes)",
    )
    parser.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress bar and no warnings (failures and the summary are still printed)",
    )
    return parser


def find_inputs(paths, warn=lambda message: None) -> list[Path]:
    """The layout files named by ``paths``: files as given, folders expanded to
    the ``*.json`` directly inside them (sorted by name). A file named twice
    counts once. Raises `UsageError` for a path that does not exist or when no
    file is found at all."""
    files, seen = [], set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted((p for p in path.glob("*.json") if p.is_file()), key=lambda p: p.name)
            if not found:
                warn(f"{path}: no *.json files directly inside (sub-folders are not searched)")
        elif path.exists():
            found = [path]
        else:
            raise UsageError(f"{path}: no such file or folder")
        for p in found:
            key = os.path.realpath(p)
            if key not in seen:
                seen.add(key)
                files.append(p)
    if not files:
        raise UsageError(f"no layout files found in {' '.join(map(str, paths))}")
    return files


def parse_device(text: str | None, count: int) -> torch.device:
    if text is None:
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: {text!r} is not a device; use cpu, cuda or cuda:1") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: {text!r}: only cpu and cuda devices are supported")
    if device.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not available:
            raise UsageError(f"--device {text}: CUDA is not available on this machine; use --device cpu")
        if count > 1 and device.index is not None:
            raise UsageError(
                f"--device {text} names one GPU; with --devices {count} give --device cuda "
                f"(GPUs 0..{count - 1}), or choose them with CUDA_VISIBLE_DEVICES"
            )
        needed = count if count > 1 else (device.index or 0) + 1
        if needed > available:
            raise UsageError(f"--device {text} --devices {count}: this machine has {available} GPU(s)")
    return device


def available_memory(device: torch.device) -> int:
    """Bytes free for a new allocation: the GPU's free memory, or the host's MemAvailable
    (free plus reclaimable cache; ``SC_AVPHYS_PAGES`` where /proc/meminfo is missing)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_batch_size(batch_size: int, resolution: int, device: torch.device, processes: int = 1) -> None:
    """Raise `UsageError` for a ``--batch-size`` above `MAX_BATCH`, or one whose estimated memory
    (`MIB_PER_IMAGE_64` scaled by resolution^2, per process on this machine) is more than is available."""
    if batch_size > MAX_BATCH:
        raise UsageError(
            f"--batch-size {batch_size} is above the limit of {MAX_BATCH} images per network call "
            "(larger calls are no faster: throughput levels off by 8-64 on CPU)"
        )
    per_image = MIB_PER_IMAGE_64 * 2**20 * (resolution / 64) ** 2
    needed, available = per_image * batch_size * processes, available_memory(device)
    if needed > available:
        fits = max(0, int(available / (per_image * processes)))
        raise UsageError(
            f"--batch-size {batch_size} needs about {needed / 2**20:.0f} MiB at {resolution}x{resolution}"
            f"{f' in all ({processes} processes)' if processes > 1 else ''} but only "
            f"{available / 2**20:.0f} MiB is available on {device.type}; use --batch-size {fits} or less"
        )


def launch() -> tuple[str, int, int] | None:
    """(launcher, processes, processes per node) when torchrun or srun started this process, else None.

    Detected as Lightning's cluster environments detect them, so that what is
    checked here is what Lightning will use."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun", int(env["WORLD_SIZE"]), int(env["LOCAL_WORLD_SIZE"])
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        tasks = int(env["SLURM_NTASKS"])
        return "srun", tasks, int(env.get("SLURM_NTASKS_PER_NODE") or tasks // int(env.get("SLURM_NNODES", 1)))
    return None


def fill_processes(args) -> None:
    """Fill in ``args.devices`` and ``args.num_nodes``: as given, else from the launch that started
    this process, else 1. A launch they do not match is a `UsageError`: with too few processes
    asked for, the others would render nothing; with too many, the run would wait for ever."""
    started = launch()
    if started is None:
        args.devices, args.num_nodes = args.devices or 1, args.num_nodes or 1
        return
    name, world, per_node = started
    args.devices = args.devices or per_node
    args.num_nodes = args.num_nodes or max(1, world // args.devices)
    if (args.devices, args.num_nodes) != (per_node, world // per_node):
        raise UsageError(
            f"{name} started {world} processes, {per_node} per node, but --devices {args.devices} "
            f"--num-nodes {args.num_nodes} asks for {args.num_nodes} node(s) of {args.devices}; "
            f"leave both out to use the launch as it is"
        )
