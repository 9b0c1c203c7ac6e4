"""``manifest.jsonl``: reading, compacting, merging rank files, and reproducing a line's image."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch

from scenecomp.atomic import write_atomically
from scenecomp.compose import BundleError, Composer
from scenecomp.layout import Layout, LayoutError, load_layouts
from scenecomp.render.batching import render_padded
from scenecomp.render.options import DTYPES

MANIFEST = "manifest.jsonl"


def end_with_newline(path: Path) -> None:
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
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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
    end_with_newline(manifest)
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
        raise LayoutError(
            f"has {len(layout.objects)} objects but the manifest line gives "
            f"{len(line['object_seeds'])} seeds: the file changed since",
            line["layout"],
        )
    objects = [dataclasses.replace(o, seed=s) for o, s in zip(layout.objects, line["object_seeds"], strict=True)]
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
        composer = Composer.from_checkpoint(
            line["checkpoint"], device=device or line.get("device", "cpu"), dtype=DTYPES[line.get("dtype", "float32")]
        )  # the dtype used
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
