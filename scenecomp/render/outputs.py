"""Writing one rendered job's files: the image, optional step strip and layers folder, then its manifest line."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from scenecomp.atomic import write_atomically
from scenecomp.compose import Rendering
from scenecomp.images import to_array
from scenecomp.ora import layer_names, write_ora
from scenecomp.render.manifest import end_with_newline
from scenecomp.render.options import output_faults
from scenecomp.render.planning import Job


def _save_png(image, path: Path) -> str:
    """Write ``image`` as a PNG atomically; returns the SHA-256 of the bytes written (for the manifest)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    write_atomically(path, lambda tmp: tmp.write_bytes(data))
    return hashlib.sha256(data).hexdigest()


def _save_layers(directory: Path, rendering: Rendering, steps: list[np.ndarray], masks: np.ndarray) -> None:
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "layout.json").unlink(missing_ok=True)  # written last: its presence marks a complete folder
    width = max(2, len(str(len(steps) - 1)))
    written = set()
    for t, canvas in enumerate(steps):
        written.add(f"step_{t:0{width}d}.png")
        _save_png(Image.fromarray(canvas), directory / f"step_{t:0{width}d}.png")
    for t, mask in enumerate(masks, 1):
        written.add(f"mask_{t:0{width}d}.png")
        _save_png(Image.fromarray(mask.astype(np.uint8) * 255, "L"), directory / f"mask_{t:0{width}d}.png")
    for stale in [*directory.glob("step_*.png"), *directory.glob("mask_*.png")]:
        if stale.name not in written and stale.stem.split("_", 1)[1].isdigit():
            stale.unlink()
    rendering.layout.save(directory / "layout.json")


QUEUED = 64  # rendered images waiting for the writer thread at most (their float images are in memory)


class Outputs:
    """Writes one job's files (the image last) and then its manifest line: at once (`write`), or
    on a writer thread while the networks paint the next batch (`submit`, then `finish`).

    One writer thread keeps the manifest in the order the images were submitted; it
    holds no lock of its own (the run's lock on the folder covers it). PNG encoding,
    checksums and file writes release the GIL, so it runs beside the networks."""

    def __init__(self, out: Path, manifest: Path, meta: dict, *, resolution: int, steps=False, layers=False, ora=False):
        self.out, self.manifest, self.meta = out, manifest, meta
        self.resolution, self.steps, self.layers, self.ora = resolution, steps, layers, ora
        self.threads = torch.get_num_threads()  # the rendering thread's, for the manifest
        with output_faults(out):
            end_with_newline(manifest)
            self._fd = os.open(manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self._writer: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()
        self._stop = threading.Event()  # set by a write that failed, or by close: later writes do nothing

    def write(self, job: Job, rendering: Rendering, device: str) -> dict:
        """Write the job's files, then its manifest line. An ``OSError`` (full disk,
        read-only folder ...) becomes an `OutputError`; what was written before stays
        whole (every file is renamed into place, the line comes last)."""
        return self._commit(job, rendering, *self._pixels(rendering), device)

    def submit(self, job: Job, rendering: Rendering, device: str) -> None:
        """`write` on the writer thread, after the images submitted before. Raises the
        error (`OutputError`) of a write that failed; then nothing more is written."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="scenecomp-render-writer")
        while self._pending and (len(self._pending) >= QUEUED or self._pending[0].done()):
            self._pending.popleft().result()
        # quantised here: torch work on the writer thread would start a second pool of compute threads
        self._pending.append(self._writer.submit(self._commit, job, rendering, *self._pixels(rendering), device))

    def finish(self) -> None:
        """Wait until every submitted image is written; raises the error of a write that failed."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Stop the writer thread (writes not started are dropped: a resumed run renders those
        images again; one under way ends whole) and close the manifest."""
        self._stop.set()
        if self._writer is not None:
            self._writer.shutdown(wait=True, cancel_futures=True)
        os.close(self._fd)

    def _pixels(self, rendering: Rendering) -> tuple[np.ndarray, list[np.ndarray]]:
        """The image and, when they are written, the steps as uint8 ``[H,W,3]`` arrays."""
        wanted = (self.steps or self.layers or self.ora) and rendering.steps is not None
        return to_array(rendering.image), [to_array(canvas) for canvas in rendering.steps] if wanted else []

    def _commit(self, job: Job, rendering: Rendering, image: np.ndarray, steps: list, device: str) -> dict | None:
        if self._stop.is_set():
            return None
        try:
            with output_faults(self.out):
                return self._write(job, rendering, image, steps, device)
        except BaseException:
            self._stop.set()
            raise

    def _write(self, job: Job, rendering: Rendering, image: np.ndarray, steps: list, device: str) -> dict:
        from PIL import Image

        stem = job.stem
        line = {"image": f"{stem}.png", "layout": os.path.abspath(job.path)}
        if job.image_id is not None:
            line["image_id"] = job.image_id
        filled = rendering.layout
        line.update(
            seed=job.seed,
            background_seed=filled.background_seed,
            object_seeds=[o.seed for o in filled.objects],
            empty_objects=list(rendering.empty),
            layout_sha256=job.key,
        )
        if job.trusted:
            line["trusted_masks"] = True
        if self.steps:
            R = self.resolution
            strip = Image.new("RGB", (R * len(steps), R))
            for t, canvas in enumerate(steps):
                strip.paste(Image.fromarray(canvas), (t * R, 0))
            line["steps"] = f"{stem}_steps.png"
            line["steps_sha256"] = _save_png(strip, self.out / line["steps"])
        if self.layers or self.ora:  # the masks planning rasterised, else the layout's
            R = self.resolution
            masks = job.masks if job.masks is not None else filled.masks((R, R)) > 0.5
        if self.layers:
            _save_layers(self.out / f"{stem}_layers", rendering, steps, masks)
            line["layers"] = f"{stem}_layers"
        if self.ora:
            write_ora(
                self.out / f"{stem}.ora",
                [Image.fromarray(canvas) for canvas in steps],
                list(masks),
                layer_names(filled.background_seed, filled.objects),
            )
            line["ora"] = f"{stem}.ora"
        line["image_sha256"] = _save_png(Image.fromarray(image), self.out / line["image"])
        line.update(self.meta, device=device)
        if device == "cpu":
            line["threads"] = self.threads
        line["time"] = datetime.now(UTC).isoformat(timespec="seconds")
        self._append(json.dumps(line) + "\n")
        return line

    def _append(self, text: str) -> None:
        """One ``write`` per line; a line that does not fit (full disk) is cut off again, so the
        manifest never ends in half a line this run wrote."""
        data, size = text.encode(), os.fstat(self._fd).st_size
        try:
            if os.write(self._fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            os.ftruncate(self._fd, size)
            raise OSError(e.errno, e.strerror, str(self.manifest)) from None
