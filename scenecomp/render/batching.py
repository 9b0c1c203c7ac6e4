"""Network calls of a size that does not change an image's pixels (see the package docstring),
and rendering a manifest line again in the same way (`reproduce`)."""

from __future__ import annotations

import torch

from scenecomp.compose import BundleError, Composer, Rendering
from scenecomp.layout import Layout, LayoutError
from scenecomp.render.manifest import file_sha256, layout_from_manifest
from scenecomp.render.options import DTYPES
from scenecomp.render.planning import LayoutSource

CALL_GRANULE = 8  # CPU network calls are padded to a multiple of this (module docstring)


def call_size(count: int, batch_size: int, device: torch.device) -> int:
    """Images in the network call that renders ``count`` <= ``batch_size`` images: on CPU with
    ``batch_size`` a multiple of 8, ``count`` rounded up to a multiple of 8; else ``batch_size``."""
    if torch.device(device).type == "cpu" and batch_size % CALL_GRANULE == 0:
        return -(-count // CALL_GRANULE) * CALL_GRANULE
    return batch_size


def render_padded(
    composer: Composer, layouts: list[Layout], batch_size: int, steps: bool = False, masks: list | None = None
) -> list[Rendering]:
    """`Composer.render_iter` on at most ``batch_size`` seeded layouts in one network
    call of `call_size` images (padded with copies of the first layout); ``masks`` as there.

    Float rounding in the networks depends on the batch shape (CPU and GPU
    kernels are chosen by it) but not on the other images in the batch, so
    shapes that give the same bits make a layout's pixels the same whether it
    is rendered alone, among others, or on another process."""
    if not layouts:
        return []
    size = call_size(len(layouts), batch_size, composer.device)
    padded = [*layouts, *[layouts[0]] * (size - len(layouts))]
    if masks is not None:
        masks = [*masks, *[masks[0]] * (size - len(masks))]
    return list(composer.render_iter(padded, batch_size=size, steps=steps, masks=masks))[: len(layouts)]


def render_jobs(composer: Composer, source: LayoutSource, jobs, batch_size: int, steps: bool = False) -> list:
    """``(job, Rendering or LayoutError)`` for each of at most ``batch_size`` jobs, in
    order, in one network call (`render_padded`). A job carrying its layout and masks
    from planning is rendered from them; any other is read from its file (``source``).
    A layout that fails costs no other layout its image: if the batch raises, its
    layouts are rendered one by one."""
    results: list = [None] * len(jobs)
    ready = []
    for i, job in enumerate(jobs):
        try:
            layout = source.get(job) if job.layout is None else job.layout
            ready.append((i, composer.seeded(layout, job.seed), job.masks))
        except LayoutError as e:
            results[i] = e
    try:
        layouts, masks = [layout for _, layout, _ in ready], [m for _, _, m in ready]
        for (i, _, _), rendering in zip(ready, render_padded(composer, layouts, batch_size, steps, masks), strict=True):
            results[i] = rendering
    except LayoutError:
        for i, layout, m in ready:
            try:
                results[i] = render_padded(composer, [layout], batch_size, steps, [m])[0]
            except LayoutError as e:
                results[i] = e
    for i, result in enumerate(results):
        if not isinstance(result, LayoutError) and not torch.isfinite(result.image).all():
            results[i] = LayoutError(
                "the model painted NaN or infinite values, so no image is written (a broken checkpoint, or "
                "an overflow in a low precision: try --dtype float32)",
                result.layout.label,
            )
    return list(zip(jobs, results, strict=True))


def reproduce(line: dict, composer: Composer | None = None, device=None, trusted: bool | None = None) -> torch.Tensor:
    """The image of a manifest line, ``[3,R,R]`` float32 in [-1,1], computed as it was:
    the seeded layout (`layout_from_manifest`), the line's checkpoint (its SHA-256
    is checked) or ``composer``, dtype, network batch size and CPU threads, on
    ``device`` (default: the line's). On the same kind of machine its quantised
    pixels equal the PNG's bit for bit. A plain ``composer.render(layout)``
    gives the same image up to float rounding (a pixel may move by one level).
    ``trusted``: as in `layout_from_manifest` (default: as the line was rendered)."""
    if composer is None:
        if file_sha256(line["checkpoint"]) != line["checkpoint_sha256"]:
            raise BundleError(f"{line['checkpoint']}: its SHA-256 is not the manifest's: the file changed")
        composer = Composer.from_checkpoint(
            line["checkpoint"], device=device or line.get("device", "cpu"), dtype=DTYPES[line.get("dtype", "float32")]
        )  # the dtype used
    threads = torch.get_num_threads()
    if composer.device.type == "cpu" and line.get("threads"):
        torch.set_num_threads(line["threads"])
    try:
        return render_padded(composer, [layout_from_manifest(line, trusted)], line.get("batch_size", 1))[0].image
    finally:
        torch.set_num_threads(threads)
