"""scenecomp-render: many layouts in, one PNG per (layout, seed) out.

    scenecomp-render layouts/ scene.json coco/instances_val.json --out renders/ --seeds 0-3

Inputs
------
Layout JSON files, folders of them (every ``*.json`` directly inside, sorted
by name; sub-folders are not searched), and COCO instances JSON files (one
layout per image, in image id order). Categories are matched by name to the
model's. A path given twice is rendered once.

Outputs (in ``--out DIR``)
--------------------------
- ``{name}_s{seed:04d}.png`` for each layout and sample seed, where ``name``
  is the layout file's stem, or ``{json stem}_{image stem}`` for a COCO image;
- with ``--steps``, ``{name}_s{seed:04d}_steps.png``: the canvas after the
  background and after each object, left to right, in one strip;
- with ``--layers``, a folder ``{name}_s{seed:04d}_layers/`` holding
  ``step_00.png`` (background) .. ``step_T.png`` (the image), ``mask_01.png``
  .. ``mask_T.png`` (white inside) and ``layout.json``, the layout with every
  seed filled in (rendering it gives the same image);
- ``manifest.jsonl``, one JSON object per image, written when the image is
  complete::

    {"image": "scene_s0001.png",          # file in DIR
     "layout": "/abs/path/scene.json",    # the input file (absolute)
     "image_id": 42,                      # only for a layout taken from a COCO file
     "seed": 1,                           # the sample seed (--seeds)
     "background_seed": 1,                # the seeds actually used: the layout with
     "object_seeds": [1000004, 7],        #   these filled in renders to this image
     "empty_objects": [],                 # objects that cover no pixel at the model's resolution
     "steps": "scene_s0001_steps.png",    # only with --steps
     "layers": "scene_s0001_layers",      # only with --layers
     "checkpoint": "/abs/path/composer.pt", "checkpoint_sha256": "9f2c...",
     "resolution": 64, "dtype": "bfloat16", "batch_size": 16,   # dtype: the one used (--dtype auto resolved)
     "device": "cpu", "threads": 2,        # threads: CPU only
     "scenecomp": "0.1.0", "time": "2025-01-31T12:00:00+00:00"}

  `layout_from_manifest` rebuilds the seeded layout of a line and
  `reproduce` renders it again exactly as it was rendered.

Same image, however it is rendered
----------------------------------
Each object's noise comes from its own seed, so what a layout gets does not
depend on its neighbours. Float rounding inside the networks does depend on
the shape of the network call (CPU and GPU libraries pick kernels by batch
size and thread count), though not on the other images in it. So the size of
every network call follows one rule (`call_size`):

- on CPU, with a ``--batch-size`` that is a multiple of 8 (the default 16), a
  call of n images is padded with copies to the next multiple of 8 (never
  beyond ``--batch-size``): one image costs 8, not ``--batch-size``. oneDNN's
  CPU kernels give a sample the same bits at every batch that is a multiple of
  8: measured on this project's AVX512-BF16 CPU with the channels_last
  networks `Composer` runs (bf16 and float32, 1 and 2 threads, batches 8 to
  72; smaller float32 batches differ by about 1e-6, and so did float32 NCHW
  batches of 8 and 16 on one thread). ``tests/test_render.py`` checks it;
- otherwise (another ``--batch-size``, or a GPU, whose kernels were not
  measured) every call is padded to exactly ``--batch-size``.

So a layout's PNG is bit-identical whether it is rendered alone, in a batch
with others, or on several processes, for the same checkpoint, device, dtype,
``--batch-size`` and CPU threads per process (all recorded in the manifest).
Changing one of those can move values by about 1e-6 (float32) and so a rare
pixel by one level.

``--batch-size`` is at most 4096 (`MAX_BATCH`), and a batch whose estimated
memory (about 3 MiB per image at 64x64, growing with the resolution squared)
exceeds the memory available when the run starts is refused with exit 2,
rather than risk an out-of-memory kill.

Resuming, --overwrite and the manifest
--------------------------------------
Whether a (layout, seed) is already done is decided before anything is
rendered: its PNG (and the ``--steps``/``--layers`` outputs asked for) exist
and the manifest has a line for it. Done ones are skipped unless
``--overwrite``, so an interrupted run resumes where it stopped. Every file is
written to a temporary name in DIR and renamed into place: an interrupted run
never leaves a half-written image under an output name. Skipping images that
another checkpoint rendered (the manifest says so) is refused, exit 2: use
another ``--out`` or ``--overwrite``. The manifest is appended to, one line
per finished image, never rewritten, except that a run which re-rendered
images that already had lines (``--overwrite``, or ``--steps``/``--layers``
added later) or found a half-written line left by a killed run compacts it
at the end: the newest line per image, broken lines dropped. Until then (or
if a run is killed), the last line for an image is the valid one.

Failures
--------
A layout that cannot be rendered (malformed JSON, unknown category, missing
mask file, empty shape, an output name used by another input ...) is
reported on stderr with its file, object index and reason, before rendering
starts; every other layout still renders. The run ends with a summary and
exits 1 if anything failed, 0 otherwise. Bad options (no such checkpoint, a
file that is not a bundle, bad ``--seeds``, no inputs) exit 2 with
``scenecomp-render: error: ...`` before anything is rendered.

Several devices and nodes
-------------------------
``--devices N`` (N > 1) or ``--num-nodes M`` (M > 1) renders through
Lightning: ``Trainer.predict`` with the ``ddp`` strategy, one process per
device (CPU processes over gloo, or GPUs), each rendering its share (rank r of
W takes jobs r, r+W, ...) and writing its own ``.manifest.rank{r}.jsonl``;
after a barrier rank 0 appends them to ``manifest.jsonl`` in input order.
Rank files left by a killed run are merged at the start of the next one.
Alone, the command starts its N processes itself; started by ``torchrun`` or
SLURM's ``srun`` (one process per device, on every node), it takes their
layout: ``--devices`` defaults to the processes per node and ``--num-nodes``
to the node count, and options that do not match the launch are an error
(exit 2), so no process renders twice or sits idle. ``--out`` must then be a
folder every node sees (a shared filesystem). Lightning is imported only on
this path; one device imports neither Lightning nor Hydra. Images do not
depend on the batch size or the number of processes.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from scenecomp.compose import DEFAULT_MODEL, BundleError, Composer, Rendering, bundle_file
from scenecomp.layout import SEED_LIMIT, Layout, LayoutError, load_layouts
from scenecomp.precision import auto_dtype

PROG = "scenecomp-render"
MANIFEST = "manifest.jsonl"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CALL_GRANULE = 8       # CPU network calls are padded to a multiple of this (module docstring)
MAX_BATCH = 4096       # --batch-size limit
# Peak resident memory per image of one network call at 64x64, measured with the shipped
# model (6 objects, batch 32 vs 256): float32 2.9 MiB, bfloat16 2.1 MiB. Scales with resolution^2.
MIB_PER_IMAGE_64 = 3.0
MAX_SEEDS = 1_000_000

EPILOG = """\
examples:
  # every *.json in layouts/ (not sub-folders), sample seed 0, with the default model
  scenecomp-render layouts/ --out renders/

  # four samples per layout, and the canvas after each object as a strip
  scenecomp-render scene.json more/ --checkpoint run/composer.pt --out renders/ --seeds 0-3 --steps

  # one layout per image of a COCO instances file, 8 seeds, big batches on a GPU (bfloat16: --dtype auto)
  scenecomp-render instances_val.json --checkpoint run/composer.pt --out coco/ \\
      --seeds 0-7 --batch-size 128 --device cuda

  # float32 networks (slower on CPUs with native bf16; images differ by a level here and there)
  scenecomp-render layouts/ --out renders-fp32/ --dtype float32

  # two GPUs (or --device cpu --devices 2: two CPU processes), through Lightning DDP
  scenecomp-render layouts/ --checkpoint run/composer.pt --out renders/ --device cuda --devices 2

  # two nodes of 4 GPUs: run on each node (or start it with srun); --out on a shared filesystem
  torchrun --nnodes 2 --nproc-per-node 4 --node-rank $NODE --master-addr $HOST0 --master-port 29500 \\
      $(which scenecomp-render) layouts/ --checkpoint run/composer.pt --out /shared/renders/ --device cuda

  # interrupted? run the same command again: finished images are skipped.
  # --overwrite renders everything again.

outputs: DIR/{name}_s{seed:04d}.png and DIR/manifest.jsonl (one JSON line per
image: layout file, seeds used, checkpoint SHA-256, time); see
`python -m pydoc scenecomp.render` for the full format.
exit status: 0 all rendered or skipped, 1 some layouts failed (listed on
stderr), 2 bad options, 130 interrupted."""


class UsageError(Exception):
    """A bad option or input list: reported as ``scenecomp-render: error: ...``, exit 2."""


# ----------------------------------------------------------------------------- options


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
        prog=PROG, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Render layouts to images: a background, then each object in paint order.")
    parser.add_argument("inputs", nargs="+", metavar="LAYOUTS",
                        help="layout JSON files, folders of them (*.json directly inside, sorted), "
                             "or COCO instances JSON files (one layout per image)")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="composer.pt bundle or a run folder holding one (default: the model shipped with scenecomp)")
    parser.add_argument("--seeds", type=_seeds_arg, default=[0], metavar="SEEDS",
                        help="sample seeds, one image each: 0-3, 1,5,9 or 0-2,7 (default 0); they fill in only "
                             "the seeds a layout leaves unset")
    parser.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                        help=f"images per network call, per device (default 16, at most {MAX_BATCH}). On CPU a "
                             "multiple of 8 pads each call only to the next multiple of 8, else every call is "
                             "padded to N; either way an image's pixels do not depend on what else is rendered. "
                             "Keep N the same to reproduce them bit for bit")
    parser.add_argument("--device", metavar="DEV", help="cpu, cuda or cuda:1 (default: cuda if available, else cpu)")
    parser.add_argument("--devices", type=_positive_int, metavar="N",
                        help="render on N devices of --device's kind per node through Lightning DDP (default 1, "
                             "or the processes per node of a torchrun/srun launch)")
    parser.add_argument("--num-nodes", type=_positive_int, metavar="M",
                        help="nodes of a multi-node launch (default 1, or the node count of a torchrun/srun launch)")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="CPU threads per process (default: torch's choice; with --devices N on CPU, "
                             "the cores divided by N)")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="network precision (default auto: bfloat16 on GPUs and on CPUs with native bf16, "
                             "AVX512-BF16 or AMX; float32 elsewhere). The manifest records the one used")
    parser.add_argument("--steps", action="store_true",
                        help="also save {name}_s{seed}_steps.png: the canvas after each object, as a strip")
    parser.add_argument("--layers", action="store_true",
                        help="also save each step, each mask and the seeded layout into {name}_s{seed}_layers/")
    parser.add_argument("--trusted-masks", action="store_true",
                        help="read mask files anywhere (default: only regular files inside each layout's folder)")
    parser.add_argument("--overwrite", action="store_true",
                        help="render again outputs that already exist (default: skip them, so a run resumes)")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no progress bar and no warnings (failures and the summary are still printed)")
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


def _device(text: str | None, count: int) -> torch.device:
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
            raise UsageError(f"--device {text} names one GPU; with --devices {count} give --device cuda "
                             f"(GPUs 0..{count - 1}), or choose them with CUDA_VISIBLE_DEVICES")
        needed = count if count > 1 else (device.index or 0) + 1
        if needed > available:
            raise UsageError(f"--device {text} --devices {count}: this machine has {available} GPU(s)")
    return device


# ----------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Job:
    """One image to render: the ``item``-th layout of ``path`` (0 for a layout
    file; the image's position in a COCO file) with sample seed ``seed``."""

    path: str
    item: int
    name: str
    seed: int
    image_id: object = None
    trusted: bool = False  # --trusted-masks: mask files may lie outside the layout's folder

    @property
    def stem(self) -> str:
        return output_stem(self.name, self.seed)


def output_stem(name: str, seed: int) -> str:
    """``{name}_s{seed:04d}``: the output file name without ``.png``."""
    return f"{name}_s{seed:04d}"


@dataclass
class Plan:
    jobs: list[Job]
    skipped: int
    failures: list[str]     # one message per layout (or file) that cannot be rendered
    foreign: list[str]      # done images that another checkpoint rendered


def plan(files, composer: Composer, seeds, out: Path, *, overwrite=False, steps=False, layers=False,
         done_images: dict | None = None, sha256: str | None = None, report=lambda message: None,
         warn=lambda message: None, trusted: bool = False) -> Plan:
    """Read and check every layout once, decide for each (layout, seed) whether it is
    already done, and return what to render. Layouts are not kept: a `Job` names
    its file and position, so memory does not grow with the layouts' content."""
    R = composer.resolution
    done_images = {} if done_images is None else done_images
    jobs, failures, foreign, skipped = [], [], [], 0
    names: dict[str, str] = {}

    def fail(message):
        failures.append(message)
        report(message)

    for path in files:
        try:
            layouts = load_layouts(path, trusted=trusted)
        except LayoutError as e:
            fail(str(e))
            continue
        for item, layout in enumerate(layouts):
            try:
                layout.check_categories(composer.categories)
                masks = layout.masks((R, R)) > 0.5
            except LayoutError as e:
                fail(str(e))
                continue
            name = layout.name
            if name in names:
                fail(f"{layout.label}: output name {name!r} is already taken by {names[name]}; "
                     "rename one of them or render them into different folders")
                continue
            names[name] = layout.label
            empty = [i for i, m in enumerate(masks) if not m.any()]
            if empty:
                warn(f"{layout.label}: object{'s' if len(empty) > 1 else ''} {', '.join(map(str, empty))} "
                     f"cover{'' if len(empty) > 1 else 's'} no pixel at the model's resolution {R}x{R} "
                     f"(layout size {layout.size[0]}x{layout.size[1]}) and will paint nothing")
            for seed in seeds:
                job = Job(str(path), item, name, seed, layout.image_id, trusted)
                if not overwrite and _is_done(out, job.stem, done_images, steps, layers):
                    skipped += 1
                    if sha256 is not None and done_images[f"{job.stem}.png"] != sha256:
                        foreign.append(f"{job.stem}.png")
                else:
                    jobs.append(job)
    return Plan(jobs, skipped, failures, foreign)


def _is_done(out: Path, stem: str, done_images: dict, steps: bool, layers: bool) -> bool:
    return (f"{stem}.png" in done_images and (out / f"{stem}.png").is_file()
            and (not steps or (out / f"{stem}_steps.png").is_file())
            and (not layers or (out / f"{stem}_layers" / "layout.json").is_file()))


class LayoutSource:
    """Loads the layout of a `Job`, keeping the last file read (a COCO file is read
    once for all of its consecutive jobs)."""

    def __init__(self):
        self._path, self._layouts, self._error = None, None, None

    def get(self, job: Job) -> Layout:
        if job.path != self._path:
            self._path, self._layouts, self._error = job.path, None, None
            try:
                self._layouts = load_layouts(job.path, trusted=job.trusted)
            except LayoutError as e:
                self._error = e
        if self._error is not None:
            raise self._error
        if job.item >= len(self._layouts) or self._layouts[job.item].name != job.name:
            raise LayoutError("the file changed while this run was rendering it", job.path)
        return self._layouts[job.item]


def call_size(count: int, batch_size: int, device: torch.device) -> int:
    """Images in the network call that renders ``count`` <= ``batch_size`` images: on CPU with
    ``batch_size`` a multiple of 8, ``count`` rounded up to a multiple of 8; else ``batch_size``."""
    if torch.device(device).type == "cpu" and batch_size % CALL_GRANULE == 0:
        return -(-count // CALL_GRANULE) * CALL_GRANULE
    return batch_size


def render_padded(composer: Composer, layouts: list[Layout], batch_size: int, steps: bool = False) -> list[Rendering]:
    """`Composer.render_iter` on at most ``batch_size`` seeded layouts in one network
    call of `call_size` images (padded with copies of the first layout).

    Float rounding in the networks depends on the batch shape (CPU and GPU
    kernels are chosen by it) but not on the other images in the batch, so
    shapes that give the same bits make a layout's pixels the same whether it
    is rendered alone, among others, or on another process."""
    if not layouts:
        return []
    size = call_size(len(layouts), batch_size, composer.device)
    padded = [*layouts, *[layouts[0]] * (size - len(layouts))]
    return list(composer.render_iter(padded, batch_size=size, steps=steps))[:len(layouts)]


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
        raise UsageError(f"--batch-size {batch_size} is above the limit of {MAX_BATCH} images per network call "
                         "(larger calls are no faster: throughput levels off by 8-64 on CPU)")
    per_image = MIB_PER_IMAGE_64 * 2**20 * (resolution / 64) ** 2
    needed, available = per_image * batch_size * processes, available_memory(device)
    if needed > available:
        fits = max(0, int(available / (per_image * processes)))
        raise UsageError(f"--batch-size {batch_size} needs about {needed / 2**20:.0f} MiB at {resolution}x{resolution}"
                         f"{f' in all ({processes} processes)' if processes > 1 else ''} but only "
                         f"{available / 2**20:.0f} MiB is available on {device.type}; use --batch-size {fits} or less")


def render_jobs(composer: Composer, source: LayoutSource, jobs, batch_size: int, steps: bool = False) -> list:
    """``(job, Rendering or LayoutError)`` for each of at most ``batch_size`` jobs, in
    order, in one network call (`render_padded`). A layout that fails costs no
    other layout its image: if the batch raises, its layouts are rendered one by one."""
    results: list = [None] * len(jobs)
    ready = []
    for i, job in enumerate(jobs):
        try:
            ready.append((i, composer.seeded(source.get(job), job.seed)))
        except LayoutError as e:
            results[i] = e
    try:
        for (i, _), rendering in zip(ready, render_padded(composer, [l for _, l in ready], batch_size, steps)):
            results[i] = rendering
    except LayoutError:
        for i, layout in ready:
            try:
                results[i] = render_padded(composer, [layout], batch_size, steps)[0]
            except LayoutError as e:
                results[i] = e
    return list(zip(jobs, results))


# ----------------------------------------------------------------------------- writing


def _to_pil(canvas: torch.Tensor):
    """The same quantisation as `Scene.to_pil`: [-1,1] -> round((x + 1) * 127.5)."""
    from PIL import Image
    pixels = ((canvas.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy(), "RGB")


def _replace_atomically(path: Path, write) -> None:
    """``write(tmp)`` then rename onto ``path``: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_png(image, path: Path) -> None:
    _replace_atomically(path, lambda tmp: image.save(tmp, format="PNG"))


def _save_layers(directory: Path, rendering: Rendering, resolution: int) -> None:
    from PIL import Image
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "layout.json").unlink(missing_ok=True)  # written last: its presence marks a complete folder
    steps = rendering.steps
    width = max(2, len(str(len(steps) - 1)))
    written = set()
    for t, canvas in enumerate(steps):
        written.add(f"step_{t:0{width}d}.png")
        _save_png(_to_pil(canvas), directory / f"step_{t:0{width}d}.png")
    masks = rendering.layout.masks((resolution, resolution)) > 0.5
    for t, mask in enumerate(masks, 1):
        written.add(f"mask_{t:0{width}d}.png")
        _save_png(Image.fromarray(mask.astype(np.uint8) * 255, "L"), directory / f"mask_{t:0{width}d}.png")
    for stale in [*directory.glob("step_*.png"), *directory.glob("mask_*.png")]:
        if stale.name not in written and stale.stem.split("_", 1)[1].isdigit():
            stale.unlink()
    rendering.layout.save(directory / "layout.json")


class Outputs:
    """Writes one job's files (the image last) and then its manifest line."""

    def __init__(self, out: Path, manifest: Path, meta: dict, *, resolution: int, steps=False, layers=False):
        self.out, self.manifest, self.meta = out, manifest, meta
        self.resolution, self.steps, self.layers = resolution, steps, layers
        _end_with_newline(manifest)
        self._file = open(manifest, "a", encoding="utf-8")
        self.written: list[str] = []

    def write(self, job: Job, rendering: Rendering, device: str) -> dict:
        stem = job.stem
        line = {"image": f"{stem}.png", "layout": os.path.abspath(job.path)}
        if job.image_id is not None:
            line["image_id"] = job.image_id
        filled = rendering.layout
        line.update(seed=job.seed, background_seed=filled.background_seed,
                    object_seeds=[o.seed for o in filled.objects], empty_objects=list(rendering.empty))
        if self.steps:
            from PIL import Image
            R = self.resolution
            strip = Image.new("RGB", (R * len(rendering.steps), R))
            for t, canvas in enumerate(rendering.steps):
                strip.paste(_to_pil(canvas), (t * R, 0))
            _save_png(strip, self.out / f"{stem}_steps.png")
            line["steps"] = f"{stem}_steps.png"
        if self.layers:
            _save_layers(self.out / f"{stem}_layers", rendering, self.resolution)
            line["layers"] = f"{stem}_layers"
        _save_png(_to_pil(rendering.image), self.out / f"{stem}.png")
        line.update(self.meta, device=device)
        if device == "cpu":
            line["threads"] = torch.get_num_threads()
        line["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        self.written.append(line["image"])
        return line

    def close(self) -> None:
        self._file.close()


def _end_with_newline(path: Path) -> None:
    """A killed run may leave a half line; make sure the next line starts on its own."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def read_manifest(path: Path, broken: list | None = None) -> list[dict]:
    """The manifest's lines as dicts. Lines that are not JSON objects naming an
    image (e.g. half a line from a killed run) are left out, and appended to
    ``broken`` when it is given."""
    lines = []
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as f:
            for text in f:
                try:
                    line = json.loads(text)
                except json.JSONDecodeError:
                    line = None
                if isinstance(line, dict) and isinstance(line.get("image"), str):
                    lines.append(line)
                elif text.strip() and broken is not None:
                    broken.append(text)
    return lines


def compact_manifest(path: Path) -> None:
    """Keep the newest line per image (in the order of those lines); atomic rewrite."""
    newest = {}
    for line in read_manifest(path):
        newest.pop(line["image"], None)
        newest[line["image"]] = line
    text = "".join(json.dumps(line) + "\n" for line in newest.values())
    _replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _rank_files(out: Path) -> list[Path]:
    return sorted(out.glob(".manifest.rank*.jsonl"))


def merge_rank_files(out: Path, order: dict | None = None) -> int:
    """Append the rank manifests ``.manifest.rank*.jsonl`` to ``manifest.jsonl`` (sorted
    by ``order[image]`` when given) and delete them; returns the number of lines."""
    files = _rank_files(out)
    if not files:
        return 0
    lines = [line for f in files for line in read_manifest(f)]
    if order is not None:
        lines.sort(key=lambda line: order.get(line["image"], len(order)))
    manifest = out / MANIFEST
    _end_with_newline(manifest)
    with open(manifest, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
        f.flush()
        os.fsync(f.fileno())
    for f in files:
        f.unlink()
    return len(lines)


def layout_from_manifest(line: dict) -> Layout:
    """The layout of a manifest line with the seeds it was rendered with filled in:
    rendering it with the line's checkpoint (same device and dtype) gives the image."""
    layouts = load_layouts(line["layout"])
    if "image_id" in line:
        matches = [layout for layout in layouts if layout.image_id == line["image_id"]]
        if not matches:
            raise LayoutError(f"no image with id {line['image_id']!r}", line["layout"])
        layout = matches[0]
    else:
        layout = layouts[0]
    if len(layout.objects) != len(line["object_seeds"]):
        raise LayoutError(f"has {len(layout.objects)} objects but the manifest line gives "
                          f"{len(line['object_seeds'])} seeds: the file changed since", line["layout"])
    objects = [dataclasses.replace(o, seed=s) for o, s in zip(layout.objects, line["object_seeds"])]
    return dataclasses.replace(layout, objects=objects, background_seed=line["background_seed"])


def reproduce(line: dict, composer: Composer | None = None, device=None) -> torch.Tensor:
    """The image of a manifest line, ``[3,R,R]`` float32 in [-1,1], computed as it was:
    the seeded layout (`layout_from_manifest`), the line's checkpoint (its SHA-256
    is checked) or ``composer``, dtype, network batch size and CPU threads, on
    ``device`` (default: the line's). On the same kind of machine its quantised
    pixels equal the PNG's bit for bit. A plain ``composer.render(layout)``
    gives the same image up to float rounding (a pixel may move by one level)."""
    if composer is None:
        if file_sha256(line["checkpoint"]) != line["checkpoint_sha256"]:
            raise BundleError(f"{line['checkpoint']}: its SHA-256 is not the manifest's: the file changed")
        composer = Composer.from_checkpoint(line["checkpoint"], device=device or line.get("device", "cpu"),
                                            dtype=DTYPES[line.get("dtype", "float32")])  # the dtype used
    threads = torch.get_num_threads()
    if composer.device.type == "cpu" and line.get("threads"):
        torch.set_num_threads(line["threads"])
    try:
        return render_padded(composer, [layout_from_manifest(line)], line.get("batch_size", 1))[0].image
    finally:
        torch.set_num_threads(threads)


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- progress and messages


class Console:
    """Messages on stderr that do not tear the progress bar."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None

    def say(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def failed(self, message: str) -> None:
        self.say(f"{PROG}: failed: {message}")

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.say(f"{PROG}: warning: {message}")

    def progress(self, total: int, description: str = "rendering"):
        from tqdm import tqdm
        self.bar = tqdm(total=total, desc=description, unit="img", file=sys.stderr, dynamic_ncols=True,
                        disable=self.quiet or not sys.stderr.isatty())
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ----------------------------------------------------------------------------- one device


def render_single(composer: Composer, jobs: list[Job], outputs: Outputs, batch_size: int, console: Console,
                  steps: bool) -> tuple[int, set]:
    """Render ``jobs`` ``batch_size`` at a time on the composer's device; returns
    (images written, labels of layouts that failed while rendering)."""
    source, rendered, failed = LayoutSource(), 0, set()
    device = str(composer.device)
    bar = console.progress(len(jobs))
    for start in range(0, len(jobs), batch_size):
        for job, result in render_jobs(composer, source, jobs[start:start + batch_size], batch_size, steps):
            if isinstance(result, LayoutError):
                if str(result) not in failed:
                    console.failed(str(result))
                failed.add(str(result))
            else:
                outputs.write(job, result, device)
                rendered += 1
            bar.update(1)
    console.close()
    return rendered, failed


# ----------------------------------------------------------------------------- several devices


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


def _processes(args) -> None:
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
        raise UsageError(f"{name} started {world} processes, {per_node} per node, but --devices {args.devices} "
                         f"--num-nodes {args.num_nodes} asks for {args.num_nodes} node(s) of {args.devices}; "
                         f"leave both out to use the launch as it is")


def _trainer(args):
    """Lightning's DDP for predicting on ``args.devices`` x ``args.num_nodes`` processes; its
    ``global_rank`` is known at once (from the launcher's variables or Lightning's own)."""
    import logging
    import warnings

    import lightning as L

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"lightning(\.|$)")
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|predict_dataloader).*")
    try:
        return L.Trainer(accelerator="gpu" if args.device_obj.type == "cuda" else "cpu", devices=args.devices,
                         num_nodes=args.num_nodes, strategy="ddp", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, use_distributed_sampler=True)
    except ValueError as e:  # Lightning's check of the devices against the cluster's
        raise UsageError(str(e)) from None


def _as_list(batch):
    return [job for job in batch if job is not None]


def render_distributed(trainer, composer: Composer, jobs: list[Job], args, meta: dict, console: Console,
                       steps: bool, error: UsageError | None = None) -> tuple[int, int]:
    """Render through Lightning ``Trainer.predict`` (DDP, ``trainer.world_size`` processes).

    Rank 0 holds the plan and broadcasts it, or ``error``, which every rank then
    raises (the other ranks may have been started by torchrun and are waiting);
    every rank renders its share and writes its own rank manifest; rank 0 merges
    them after a barrier. Returns (images written, layouts failed while rendering),
    summed over ranks, on rank 0."""
    import lightning as L
    from lightning.pytorch.callbacks import BasePredictionWriter
    from torch.utils.data import DataLoader

    out, world = Path(args.out), trainer.world_size
    order = {f"{job.stem}.png": i for i, job in enumerate(jobs)}

    class Jobs(L.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.jobs = jobs

        def setup(self, stage):
            self.jobs, message = self.trainer.strategy.broadcast((self.jobs, error and str(error)), src=0)
            if message is not None:
                raise UsageError(message)
            # every rank gets at least one batch, or Lightning skips the hooks that hold the barrier
            self.jobs = self.jobs + [None] * max(0, world - len(self.jobs))

        def predict_dataloader(self):
            return DataLoader(self.jobs, batch_size=args.batch_size, shuffle=False, collate_fn=_as_list)

    class Painter(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.background = composer.background_net  # registered, so Lightning moves them to the rank's device
            self.foreground = composer.foreground_net
            self.source = LayoutSource()

        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            return batch  # Jobs are file names and seeds; the composer moves what it makes

        def predict_step(self, batch, batch_idx):
            return render_jobs(composer, self.source, batch, args.batch_size, steps)

    class Writer(BasePredictionWriter):
        def __init__(self):
            super().__init__("batch")
            self.rendered, self.failed, self.outputs = 0, set(), None

        def on_predict_start(self, trainer, pl_module):
            rank = trainer.global_rank
            self.outputs = Outputs(out, out / f".manifest.rank{rank}.jsonl", meta, resolution=composer.resolution,
                                   steps=args.steps, layers=args.layers)
            share = sum(job is not None for job in trainer.datamodule.jobs[rank::world])
            self.bar = console.progress(share, f"rank {rank}/{world}") if rank == 0 else None

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                               dataloader_idx=0):
            for job, result in prediction:
                if isinstance(result, LayoutError):
                    if str(result) not in self.failed:
                        console.failed(str(result))
                    self.failed.add(str(result))
                else:
                    self.outputs.write(job, result, str(composer.device))
                    self.rendered += 1
            if self.bar is not None:
                self.bar.update(len(batch))

        def on_predict_end(self, trainer, pl_module):
            self.outputs.close()
            console.close()
            counts = torch.tensor([self.rendered, len(self.failed)], dtype=torch.float64, device=pl_module.device)
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
            self.rendered, self.failed_count = int(counts[0]), int(counts[1])
            trainer.strategy.barrier("scenecomp-render: manifests")
            if trainer.is_global_zero:
                merge_rank_files(out, order)
            trainer.strategy.barrier("scenecomp-render: merged")

    writer = Writer()
    trainer.callbacks.append(writer)
    trainer.predict(Painter(), datamodule=Jobs(), return_predictions=False)
    return writer.rendered, writer.failed_count


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(args.quiet)
    try:
        return _run(args, console)
    except UsageError as e:
        console.close()
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        console.close()
        print(f"\n{PROG}: interrupted; finished images are kept: run the same command again to resume",
              file=sys.stderr)
        return 130


def _run(args, console: Console) -> int:
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # DDP ranks started by Lightning inherit it
    _processes(args)
    args.device_obj = _device(args.device, args.devices)
    distributed = args.devices * args.num_nodes > 1
    trainer = _trainer(args) if distributed else None
    child = distributed and not trainer.is_global_zero
    # torchrun or srun started every rank already: they wait for rank 0's plan, whatever it is
    external = distributed and trainer.strategy.cluster_environment.creates_processes_externally
    checkpoint = bundle_file(args.checkpoint) if args.checkpoint else DEFAULT_MODEL  # a run folder: its composer.pt
    if args.checkpoint is None and not checkpoint.is_file():
        raise UsageError(f"no default model is shipped with this scenecomp yet (looked for {checkpoint}); "
                         "give one with --checkpoint run/composer.pt")
    files = find_inputs(args.inputs, warn=console.warn if not child else lambda m: None)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    device = torch.device("cpu") if distributed else args.device_obj  # Lightning moves it per rank
    try:
        dtype = auto_dtype(args.device_obj) if args.dtype == "auto" else DTYPES[args.dtype]
        composer = Composer.from_checkpoint(checkpoint, device=device, dtype=dtype)
    except BundleError as e:
        raise UsageError(str(e)) from None
    if not child:  # rank 0 checks for all: CPU ranks share this machine's memory, GPUs each have their own
        check_batch_size(args.batch_size, composer.resolution, args.device_obj,
                         args.devices if args.device_obj.type == "cpu" else 1)
    sha256 = file_sha256(checkpoint)
    meta = {"checkpoint": os.path.abspath(checkpoint), "checkpoint_sha256": sha256,
            "resolution": composer.resolution, "dtype": str(composer.dtype).removeprefix("torch."),
            "batch_size": args.batch_size,
            "scenecomp": _version()}
    want_steps = args.steps or args.layers
    if child:  # rank 0 plans, reports and merges
        render_distributed(trainer, composer, [], args, meta, Console(quiet=True), want_steps)
        return 0

    out.mkdir(parents=True, exist_ok=True)
    merge_rank_files(out)  # left by a killed multi-device run
    manifest = out / MANIFEST
    broken: list[str] = []
    done = {line["image"]: line.get("checkpoint_sha256") for line in read_manifest(manifest, broken)}
    work = plan(files, composer, args.seeds, out, overwrite=args.overwrite, steps=args.steps, layers=args.layers,
                done_images=done, sha256=sha256, report=console.failed, warn=console.warn,
                trusted=args.trusted_masks)
    error = None
    if work.foreign:
        error = UsageError(f"{out} already holds {len(work.foreign)} of these images rendered with another "
                           f"checkpoint (e.g. {work.foreign[0]}; see {manifest}); use another --out, or "
                           "--overwrite to render them again with this one")
    if error and not external:
        raise error  # no other process is running yet

    failed_layouts = len(work.failures)
    if distributed and (work.jobs or external):
        rendered, failed_later = render_distributed(trainer, composer, work.jobs, args, meta, console, want_steps,
                                                    error)
        failed_layouts += failed_later
    elif not work.jobs:
        rendered = 0
    else:
        outputs = Outputs(out, manifest, meta, resolution=composer.resolution, steps=args.steps,
                          layers=args.layers)
        try:
            rendered, failed_later = render_single(composer, work.jobs, outputs, args.batch_size, console,
                                                   want_steps)
        finally:
            outputs.close()
        failed_layouts += len(failed_later)
    if broken or (rendered and any(f"{job.stem}.png" in done for job in work.jobs)):
        compact_manifest(manifest)  # one line per image again; half lines of a killed run dropped

    seconds = time.perf_counter() - started
    parts = [f"{rendered} image{'s' if rendered != 1 else ''} rendered"]
    if work.skipped:
        parts.append(f"{work.skipped} skipped (already in {out}; --overwrite renders them again)")
    parts.append(f"{failed_layouts} layout{'s' if failed_layouts != 1 else ''} failed"
                 + (" (listed above)" if failed_layouts else ""))
    print(f"{PROG}: {', '.join(parts)}; {seconds:.1f} s; manifest: {manifest}", file=sys.stderr)
    return 1 if failed_layouts else 0


def _version() -> str:
    from scenecomp import __version__
    return __version__


if __name__ == "__main__":
    sys.exit(main())
