"""What to render: every layout read and checked once, one `Job` per (layout, seed) not yet done."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenecomp.compose import Composer
from scenecomp.layout import Layout, LayoutError, load_layouts
from scenecomp.render.manifest import holds


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
    key: str = ""  # `layout_key` of the layout when planned: a resumed run re-renders a changed layout

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
    jobs: list[Job]
    skipped: int
    failures: list[str]  # one message per layout (or file) that cannot be rendered
    foreign: list[str]  # done images that another checkpoint rendered
    stale: list[str]  # images with a manifest line that no longer holds (file changed, or its layout did)


def plan(
    files,
    composer: Composer,
    seeds,
    out: Path,
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
) -> Plan:
    """Read and check every layout once, decide for each (layout, seed) whether it is
    already done, and return what to render. ``done`` maps image names to their
    manifest lines: an image is done when its line is for the same layout content
    (`layout_key`) and the folder still holds what the line records (`holds`:
    checksums of the PNGs). Layouts are not kept: a `Job` names its file and
    position, so memory does not grow with the layouts' content."""
    R = composer.resolution
    done = {} if done is None else done
    jobs, failures, foreign, stale, skipped = [], [], [], [], 0
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
                job = Job(str(path), item, name, seed, layout.image_id, trusted, key)
                line = done.get(f"{job.stem}.png")
                if overwrite or line is None:
                    jobs.append(job)
                elif line.get("layout_sha256") != key or not holds(out, line):
                    stale.append(f"{job.stem}.png")
                    jobs.append(job)
                elif not holds(out, line, steps, layers, ora):
                    jobs.append(job)  # --steps, --layers or --ora asked for now
                else:
                    skipped += 1
                    if sha256 is not None and line.get("checkpoint_sha256") != sha256:
                        foreign.append(f"{job.stem}.png")
    return Plan(jobs, skipped, failures, foreign, stale)


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
