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
- with ``--ora``, ``{name}_s{seed:04d}.ora``: OpenRaster layers for GIMP and
  Krita, the background and one RGBA layer per object (as painted, alpha = its
  mask), which stacked give the PNG (`scenecomp.ora`);
- ``manifest.jsonl``, one JSON object per image, written when the image is
  complete::

    {"image": "scene_s0001.png",          # file in DIR
     "layout": "/abs/path/scene.json",    # the input file (absolute)
     "image_id": 42,                      # only for a layout taken from a COCO file
     "seed": 1,                           # the sample seed (--seeds)
     "background_seed": 1,                # the seeds actually used: the layout with
     "object_seeds": [1000004, 7],        #   these filled in renders to this image
     "empty_objects": [],                 # objects that cover no pixel at the model's resolution
     "layout_sha256": "5e1a...",          # the layout's content (seeds, categories, masks at R x R)
     "trusted_masks": true,               # only with --trusted-masks
     "image_sha256": "0b7c...",           # the PNG's bytes ("steps_sha256": the strip's)
     "steps": "scene_s0001_steps.png",    # only with --steps
     "layers": "scene_s0001_layers",      # only with --layers
     "ora": "scene_s0001.ora",            # only with --ora
     "checkpoint": "/abs/path/composer.safetensors", "checkpoint_sha256": "9f2c...",
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

Reading, rendering and writing
------------------------------
Each layout file is read, checked and rasterised once: layouts are planned a
batch at a time, just before they render, and each goes to the networks with
its masks, so memory stays flat in the number of layouts. The files of a
batch (PNG encoding, checksums, renames, manifest lines) are written in order
by one writer thread while the networks paint the next batch. When the folder
holds images of another checkpoint (and no ``--overwrite``), and on several
devices, every layout is planned before anything renders, and read again when
it renders.

Resuming, --overwrite and the manifest
--------------------------------------
Whether a (layout, seed) is already done is decided before it is rendered,
from the manifest as the run found it: the manifest has a line for it whose ``layout_sha256`` is the
layout's content now (its seeds, categories and masks at the model's
resolution: an edited layout or mask file is rendered again), and the PNG
(and the ``--steps`` strip) still has the SHA-256 the line records (a
truncated or edited image is rendered again, with a warning), and the
``--layers`` folder and ``--ora`` file asked for are there. Done ones are skipped unless
``--overwrite``, so an interrupted run resumes where it stopped. Every file is
written to a temporary name in DIR and renamed into place: an interrupted run
never leaves a half-written image under an output name. Skipping images that
another checkpoint rendered (the manifest says so) is refused, exit 2: use
another ``--out`` or ``--overwrite``. The manifest is appended to, one line
per finished image, never rewritten, except that a run which re-rendered
images that already had lines (``--overwrite``, or ``--steps``/``--layers``
added later) or found a half-written line left by a killed run compacts it
at the end: the newest line per image, broken lines dropped; so does a run
that finds duplicate lines. Until then (or if a run is killed), the last line
for an image is the valid one.

One run at a time writes into a folder: a run holds the lock
``DIR/.scenecomp-render.lock`` (`filelock`) from planning to the end, and a
second run into the same folder says so and waits, then plans again (and so
skips what the first one rendered). The lock needs a filesystem with working
``flock`` (local disks and most shared filesystems).

Failures
--------
A layout that cannot be rendered (malformed JSON, unknown category, missing
mask file, empty shape, an output name used by another input ...) is
reported on stderr with its file, object index and reason when planning
reaches it; every other layout still renders. So is a layout whose image comes
out with NaN or infinite values (nothing is written for it). The run ends with
a summary and exits 1 if anything failed, 0 otherwise. Bad options (no such
checkpoint, a file that is not a bundle, bad ``--seeds``, no inputs) exit 2
with ``scenecomp-render: error: ...`` before anything is rendered. An output
folder that cannot be written (``--out`` on a read-only filesystem, below a
file, or a disk that fills up while rendering) exits 3 with
``scenecomp-render: error: --out DIR: cannot write FILE: REASON``: the run
stops at once, every file under an output name is whole, the manifest has a
line for every image it lists, and the same command resumes once the fault is
mended.

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

# Where each part lives: options (parsing and checking the command line), planning (what
# to render), batching (network calls of a fixed size; reproduce), outputs (files of one image),
# manifest (manifest.jsonl), distributed (Lightning DDP), cli (main).
from scenecomp.render.batching import call_size, render_jobs, render_padded, reproduce
from scenecomp.render.cli import main
from scenecomp.render.manifest import MANIFEST, file_sha256, layout_from_manifest, read_manifest
from scenecomp.render.options import DTYPES, MAX_BATCH, UsageError, build_parser, parse_seeds
from scenecomp.render.planning import Job, LayoutSource, plan

__all__ = [
    "DTYPES",
    "MANIFEST",
    "MAX_BATCH",
    "Job",
    "LayoutSource",
    "UsageError",
    "build_parser",
    "call_size",
    "file_sha256",
    "layout_from_manifest",
    "main",
    "parse_seeds",
    "plan",
    "read_manifest",
    "render_jobs",
    "render_padded",
    "reproduce",
]
