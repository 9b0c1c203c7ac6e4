"""Network calls of a size that does not change an image's pixels (see the package docstring)."""

from __future__ import annotations

import torch

from scenecomp.compose import Composer, Rendering
from scenecomp.layout import Layout, LayoutError
from scenecomp.render.planning import LayoutSource

CALL_GRANULE = 8  # CPU network calls are padded to a multiple of this (module docstring)


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
    return list(composer.render_iter(padded, batch_size=size, steps=steps))[: len(layouts)]


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
        for (i, _), rendering in zip(
            ready, render_padded(composer, [layout for _, layout in ready], batch_size, steps), strict=True
        ):
            results[i] = rendering
    except LayoutError:
        for i, layout in ready:
            try:
                results[i] = render_padded(composer, [layout], batch_size, steps)[0]
            except LayoutError as e:
                results[i] = e
    return list(zip(jobs, results, strict=True))
