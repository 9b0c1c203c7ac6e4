"""What to render: every layout read and checked once, one `Job` per (layout, seed) not yet done."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scenecomp.compose import Composer
from scenecomp.layout import Layout, LayoutError, load_layouts
from scenecomp.render.manifest import holds


@dataclass(frozen=True)
class Job:
    """One image to render: the ``item``-th layout of ``path`` (0 for a layout
    file; the image's position in a COCO file) with sample seed ``seed``.
    `planned_jobs` hands it the layout as checked and its masks at the model's
    resolution, so rendering reads nothing again; a job without them (`plan`)
    names its file only."""

    path: str
    item: int
    name: str
    seed: int
    image_id: object = None
    trusted: bool = False  # --trusted-masks: mask files may lie outside the layout's folder
    key: str = ""  # `layout_key` of the layout when planned: a resumed run re-renders a changed layout
    layout: Layout | None = field(default=None, compare=False, repr=False)
    masks: np.ndarray | None = field(default=None, compare=False, repr=False)  # bool [N,R,R]

    @property
    def stem(self) -> str:
        return output_stem(self.name, self.seed)


def layout_key(layout: Layout, masks: np.ndarray) -> str:
    """SHA-256 of everything in a layout that decides its image besides the sample seed: the
    seeds it sets, each object's category, and the masks ``[N,R,R]`` at the model's resolution
    (so an edited mask file counts as a change, and a re-saved file with the same content does not)."""
    digest = hashlib.sha256(
        json.dumps([layout.background_seed, [[o.category, o.seed] for o in layout.objects], masks.shape]).encode()
    )
    digest.update(np.packbits(masks).tobytes())
    return digest.hexdigest()


def output_stem(name: str, seed: int) -> str:
    """``{name}_s{seed:04d}``: the output file name without ``.png``."""
    return f"{name}_s{seed:04d}"


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    skipped: int = 0
    failures: list[str] = field(default_factory=list)  # one message per layout (or file) that cannot be rendered
    foreign: list[str] = field(default_factory=list)  # done images that another checkpoint rendered
    stale: list[str] = field(
        default_factory=list
    )  # images whose manifest line no longer holds (file or layout changed)
    redone: int = 0  # jobs for images that have a manifest line already (the manifest is compacted after)


def plan(files, composer: Composer, seeds, out: Path, **options) -> Plan:
    """Everything `planned_jobs` decides, decided before anything is rendered. The jobs
    carry no layout (they name their file and position), so memory does not grow
    with the layouts' content."""
    work = Plan()
    work.jobs = [
        dataclasses.replace(job, layout=None, masks=None)
        for job in planned_jobs(files, composer, seeds, out, work, **options)
    ]
    return work


def planned_jobs(
    files,
    composer: Composer,
    seeds,
    out: Path,
    work: Plan,
    *,
    overwrite=False,
    steps=False,
    layers=False,
    ora=False,
    done: dict | None = None,
    sha256: str | None = None,
    report=lambda message: None,
    warn=lambda message: None,
    trusted: bool = False,
) -> Iterator[Job]:
    """The jobs to render, in input order, one file at a time: each layout is read,
    checked and rasterised once, and its jobs carry it. ``work`` counts, as it goes,
    what is skipped, failed (``report``), foreign or stale. ``done`` maps image
    names to their manifest lines: an image is done when its line is for the same
    layout content (`layout_key`) and the folder still holds what the line records
    (`holds`: checksums of the PNGs)."""
    R = composer.resolution
    done = {} if done is None else done
    names: dict[str, str] = {}

    def fail(message):
        work.failures.append(message)
        report(message)

    for path in files:
        try:
            layouts = load_layouts(path, trusted=trusted, keep_masks=True)
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
                fail(
                    f"{layout.label}: output name {name!r} is already taken by {names[name]}; "
                    "rename one of them or render them into different folders"
                )
                continue
            names[name] = layout.label
            empty = [i for i, m in enumerate(masks) if not m.any()]
            if empty:
                warn(
                    f"{layout.label}: object{'s' if len(empty) > 1 else ''} {', '.join(map(str, empty))} "
                    f"cover{'' if len(empty) > 1 else 's'} no pixel at the model's resolution {R}x{R} "
                    f"(layout size {layout.size[0]}x{layout.size[1]}) and will paint nothing"
                )
            key = layout_key(layout, masks)
            for seed in seeds:
                job = Job(str(path), item, name, seed, layout.image_id, trusted, key, layout, masks)
                line = done.get(f"{job.stem}.png")
                if overwrite or line is None:
                    pass
                elif line.get("layout_sha256") != key or not holds(out, line):
                    work.stale.append(f"{job.stem}.png")
                elif holds(out, line, steps, layers, ora):  # else --steps, --layers or --ora is asked for now
                    work.skipped += 1
                    if sha256 is not None and line.get("checkpoint_sha256") != sha256:
                        work.foreign.append(f"{job.stem}.png")
                    continue
                work.redone += line is not None
                yield job


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
