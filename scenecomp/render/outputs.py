"""Writing one rendered job's files: the image, optional step strip and layers folder, then its manifest line."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from scenecomp.atomic import write_atomically
from scenecomp.compose import Rendering
from scenecomp.images import to_pil
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


def _save_layers(directory: Path, rendering: Rendering, resolution: int) -> None:
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "layout.json").unlink(missing_ok=True)  # written last: its presence marks a complete folder
    steps = rendering.steps
    width = max(2, len(str(len(steps) - 1)))
    written = set()
    for t, canvas in enumerate(steps):
        written.add(f"step_{t:0{width}d}.png")
        _save_png(to_pil(canvas), directory / f"step_{t:0{width}d}.png")
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

    def __init__(self, out: Path, manifest: Path, meta: dict, *, resolution: int, steps=False, layers=False, ora=False):
        self.out, self.manifest, self.meta = out, manifest, meta
        self.resolution, self.steps, self.layers, self.ora = resolution, steps, layers, ora
        with output_faults(out):
            end_with_newline(manifest)
            self._fd = os.open(manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self.written: list[str] = []

    def write(self, job: Job, rendering: Rendering, device: str) -> dict:
        """Write the job's files, then its manifest line. An ``OSError`` (full disk,
        read-only folder ...) becomes an `OutputError`; what was written before stays
        whole (every file is renamed into place, the line comes last)."""
        with output_faults(self.out):
            return self._write(job, rendering, device)

    def _write(self, job: Job, rendering: Rendering, device: str) -> dict:
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
            from PIL import Image

            R = self.resolution
            strip = Image.new("RGB", (R * len(rendering.steps), R))
            for t, canvas in enumerate(rendering.steps):
                strip.paste(to_pil(canvas), (t * R, 0))
            line["steps"] = f"{stem}_steps.png"
            line["steps_sha256"] = _save_png(strip, self.out / line["steps"])
        if self.layers:
            _save_layers(self.out / f"{stem}_layers", rendering, self.resolution)
            line["layers"] = f"{stem}_layers"
        if self.ora:
            masks = filled.masks((self.resolution, self.resolution)) > 0.5
            write_ora(
                self.out / f"{stem}.ora",
                [to_pil(canvas) for canvas in rendering.steps],
                list(masks),
                layer_names(filled.background_seed, filled.objects),
            )
            line["ora"] = f"{stem}.ora"
        line["image_sha256"] = _save_png(to_pil(rendering.image), self.out / line["image"])
        line.update(self.meta, device=device)
        if device == "cpu":
            line["threads"] = torch.get_num_threads()
        line["time"] = datetime.now(UTC).isoformat(timespec="seconds")
        self._append(json.dumps(line) + "\n")
        self.written.append(line["image"])
        return line

    def close(self) -> None:
        os.close(self._fd)

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
