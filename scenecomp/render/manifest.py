"""``manifest.jsonl``: reading, checking what a line records, compacting, merging rank files."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path

from scenecomp.atomic import write_atomically
from scenecomp.layout import Layout, LayoutError, load_layouts

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
    by ``order[image]`` when given) and delete them; returns the number of lines. An
    ``OSError`` leaves ``manifest.jsonl`` as it was and the rank files in place."""
    files = _rank_files(out)
    if not files:
        return 0
    lines = [line for f in files for line in read_manifest(f)]
    if order is not None:
        lines.sort(key=lambda line: order.get(line["image"], len(order)))
    manifest = out / MANIFEST
    end_with_newline(manifest)
    size = manifest.stat().st_size if manifest.exists() else 0
    try:
        with open(manifest, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
            f.flush()
            os.fsync(f.fileno())
    except OSError:  # a full disk: no half line is left, and the rank files stay for the next run
        with contextlib.suppress(OSError):
            os.truncate(manifest, size)
        raise
    for f in files:
        f.unlink()
    return len(lines)


def needs_compacting(lines: list[dict], broken: list) -> bool:
    """Whether a manifest holds broken lines or more than one line for an image."""
    return bool(broken) or len({line["image"] for line in lines}) < len(lines)


def holds(out: Path, line: dict, steps: bool = False, layers: bool = False, ora: bool = False) -> bool:
    """Whether ``out`` still holds what manifest ``line`` records: the image (and the step strip,
    when asked) with the SHA-256 the line gives, a complete layers folder and the ``.ora`` when asked. A
    truncated or edited PNG, or a line without checksums (written before they were kept), is not."""
    wanted = [("image", "image_sha256")] + ([("steps", "steps_sha256")] if steps else [])
    for name, sha in wanted:
        file, digest = line.get(name), line.get(sha)
        if not isinstance(file, str) or not isinstance(digest, str) or "/" in file:
            return False
        try:
            if file_sha256(out / file) != digest:
                return False
        except OSError:  # missing, a folder, unreadable
            return False
    stem = Path(line["image"]).stem
    return (not layers or (out / f"{stem}_layers" / "layout.json").is_file()) and (
        not ora or (out / f"{stem}.ora").is_file()
    )


def layout_from_manifest(line: dict, trusted: bool | None = None) -> Layout:
    """The layout of a manifest line with the seeds it was rendered with filled in:
    rendering it with the line's checkpoint (same device and dtype) gives the image.
    Mask files outside the layout's folder are read if the line was rendered with
    ``--trusted-masks`` (or ``trusted=True``)."""
    trusted = bool(line.get("trusted_masks")) if trusted is None else trusted
    layouts = load_layouts(line["layout"], trusted=trusted)
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


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
