"""scenecomp-render's entry point: options in, plan, render on one device or several, summary out."""

from __future__ import annotations

import errno
import itertools
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from scenecomp.compose import DEFAULT_MODEL, BundleError, Composer, bundle_file
from scenecomp.layout import LayoutError
from scenecomp.precision import auto_dtype, keep_freed_memory
from scenecomp.render.batching import render_jobs
from scenecomp.render.manifest import (
    MANIFEST,
    compact_manifest,
    file_sha256,
    merge_rank_files,
    needs_compacting,
    read_manifest,
)
from scenecomp.render.options import (
    DTYPES,
    PROG,
    OutputError,
    UsageError,
    build_parser,
    check_batch_size,
    fill_processes,
    find_inputs,
    output_faults,
    parse_device,
)
from scenecomp.render.outputs import Outputs
from scenecomp.render.planning import Job, LayoutSource, Plan, plan, planned_jobs

LOCK = ".scenecomp-render.lock"  # in --out: one run writes into a folder at a time


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

        self.bar = tqdm(
            total=total,
            desc=description,
            unit="img",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=self.quiet or not sys.stderr.isatty(),
        )
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def render_single(
    composer: Composer, jobs: Iterable[Job], outputs: Outputs, batch_size: int, console: Console, steps: bool
) -> tuple[int, set]:
    """Render ``jobs`` ``batch_size`` at a time on the composer's device, the files of each
    batch written on the writer thread while the next one renders (`Outputs.submit`); returns
    (images written, labels of layouts that failed while rendering). ``jobs`` may be planned
    lazily (`planned_jobs`): each batch is then planned just before it renders."""
    source, rendered, failed = LayoutSource(), 0, set()
    device = str(composer.device)
    bar = console.progress(len(jobs) if isinstance(jobs, list) else None)
    jobs = iter(jobs)
    while batch := list(itertools.islice(jobs, batch_size)):
        for job, result in render_jobs(composer, source, batch, batch_size, steps):
            if isinstance(result, LayoutError):
                if str(result) not in failed:
                    console.failed(str(result))
                failed.add(str(result))
            else:
                outputs.submit(job, result, device)
                rendered += 1
            bar.update(1)
    outputs.finish()
    console.close()
    return rendered, failed


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    console = Console(args.quiet)
    try:
        return _run(args, console)
    except UsageError as e:
        console.close()
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OutputError as e:
        console.close()
        print(
            f"{PROG}: error: {e}; nothing half-written is left, and images finished before are kept: "
            "fix the folder (or free space) and run the same command again to resume",
            file=sys.stderr,
        )
        return 3
    except KeyboardInterrupt:
        console.close()
        print(f"\n{PROG}: interrupted; finished images are kept: run the same command again to resume", file=sys.stderr)
        return 130


def _run(args, console: Console) -> int:
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # DDP ranks started by Lightning inherit it
    fill_processes(args)
    args.device_obj = parse_device(args.device, args.devices)
    distributed = args.devices * args.num_nodes > 1
    if distributed:  # Lightning is imported only here
        from scenecomp.render.distributed import make_trainer, render_distributed
    trainer = make_trainer(args) if distributed else None
    child = distributed and not trainer.is_global_zero
    # torchrun or srun started every rank already: they wait for rank 0's plan, whatever it is
    external = distributed and trainer.strategy.cluster_environment.creates_processes_externally
    checkpoint = bundle_file(args.checkpoint) if args.checkpoint else DEFAULT_MODEL  # a run folder: its bundle
    if args.checkpoint is None and not checkpoint.is_file():
        raise UsageError(
            f"no default model is shipped with this scenecomp yet (looked for {checkpoint}); "
            "give one with --checkpoint run/composer.safetensors"
        )
    files = find_inputs(args.inputs, warn=console.warn if not child else lambda m: None)
    out = Path(args.out)
    device = torch.device("cpu") if distributed else args.device_obj  # Lightning moves it per rank
    try:
        dtype = auto_dtype(args.device_obj) if args.dtype == "auto" else DTYPES[args.dtype]
        composer = Composer.from_checkpoint(checkpoint, device=device, dtype=dtype)
    except BundleError as e:
        raise UsageError(str(e)) from None
    if not child:  # rank 0 checks for all: CPU ranks share this machine's memory, GPUs each have their own
        check_batch_size(
            args.batch_size, composer.resolution, args.device_obj, args.devices if args.device_obj.type == "cpu" else 1
        )
    sha256 = file_sha256(checkpoint)
    meta = {
        "checkpoint": os.path.abspath(checkpoint),
        "checkpoint_sha256": sha256,
        "resolution": composer.resolution,
        "dtype": str(composer.dtype).removeprefix("torch."),
        "batch_size": args.batch_size,
        "scenecomp": _version(),
    }
    want_steps = args.steps or args.layers or args.ora
    if child:  # rank 0 plans, reports and merges
        render_distributed(trainer, composer, [], args, meta, Console(quiet=True), want_steps)
        return 0

    try:
        with output_faults(out):
            if out.exists() and not out.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(out))
            out.mkdir(parents=True, exist_ok=True)
            lock = FileLock(out / LOCK)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                console.say(f"{PROG}: another scenecomp-render is writing into {out}; waiting for it to finish")
                lock.acquire()
    except OutputError as e:
        if not external:
            raise
        # the other ranks are waiting for the plan: they get the error instead
        render_distributed(trainer, composer, [], args, meta, console, want_steps, e)
        raise  # not reached: render_distributed raises the error on every rank
    try:
        return _render(args, console, files, composer, out, sha256, meta, want_steps, trainer, external, started)
    finally:
        lock.release()


def _render(args, console, files, composer, out, sha256, meta, want_steps, trainer, external, started) -> int:
    """Plan and render into ``out``, which this process has locked; returns the exit status."""
    distributed = trainer is not None
    manifest = out / MANIFEST
    with output_faults(out):
        merge_rank_files(out)  # left by a killed multi-device run
        broken: list[str] = []
        lines = read_manifest(manifest, broken)
    done = {line["image"]: line for line in lines}  # the last line for an image is the valid one
    options = dict(
        overwrite=args.overwrite,
        steps=args.steps,
        layers=args.layers,
        ora=args.ora,
        done=done,
        sha256=sha256,
        report=console.failed,
        warn=console.warn,
        trusted=args.trusted_masks,
    )
    if distributed or (not args.overwrite and any(line.get("checkpoint_sha256") != sha256 for line in done.values())):
        # decided in full before anything renders: every process gets its share of the plan, or
        # images another checkpoint rendered may be skipped, which refuses the run
        work = plan(files, composer, args.seeds, out, **options)
        jobs = work.jobs
    else:  # planned a batch at a time, each layout read and rasterised once (memory flat in their number)
        work = Plan()
        jobs = planned_jobs(files, composer, args.seeds, out, work, **options)
        first = next(jobs, None)  # none at all: no manifest is opened
        jobs = [] if first is None else itertools.chain([first], jobs)
    error = None
    if work.foreign:
        error = UsageError(
            f"{out} already holds {len(work.foreign)} of these images rendered with another "
            f"checkpoint (e.g. {work.foreign[0]}; see {manifest}); use another --out, or "
            "--overwrite to render them again with this one"
        )
    if error and not external:
        raise error  # no other process is running yet

    failed_later = 0
    if distributed and (work.jobs or external):
        from scenecomp.render.distributed import render_distributed

        rendered, failed_later = render_distributed(
            trainer, composer, work.jobs, args, meta, console, want_steps, error
        )
    elif not jobs:
        rendered = 0
    else:
        outputs = Outputs(
            out, manifest, meta, resolution=composer.resolution, steps=args.steps, layers=args.layers, ora=args.ora
        )
        try:
            rendered, failed = render_single(composer, jobs, outputs, args.batch_size, console, want_steps)
            failed_later = len(failed)
        finally:
            outputs.close()
    if work.stale:
        console.warn(
            f"{len(work.stale)} image(s) in {out} no longer match their manifest lines (the PNG was changed or "
            f"truncated, or its layout changed since; e.g. {work.stale[0]}): they were rendered again"
        )
    if needs_compacting(lines, broken) or (rendered and work.redone):
        with output_faults(out):  # one line per image again; half lines and duplicates dropped
            compact_manifest(manifest)

    failed_layouts = len(work.failures) + failed_later
    seconds = time.perf_counter() - started
    parts = [f"{rendered} image{'s' if rendered != 1 else ''} rendered"]
    if work.skipped:
        parts.append(f"{work.skipped} skipped (already in {out}; --overwrite renders them again)")
    parts.append(
        f"{failed_layouts} layout{'s' if failed_layouts != 1 else ''} failed"
        + (" (listed above)" if failed_layouts else "")
    )
    print(f"{PROG}: {', '.join(parts)}; {seconds:.1f} s; manifest: {manifest}", file=sys.stderr)
    return 1 if failed_layouts else 0


def _version() -> str:
    from scenecomp import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
