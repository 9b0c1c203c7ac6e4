"""The file format of everything a user loads: weights as safetensors, everything else as JSON.

A bundle (`scenecomp.compose`: the composer; `scenecomp.eval.features`: the
feature network) is one ``.safetensors`` file: its tensors, plus one JSON
document in the header's metadata (key ``scenecomp``) holding the format tag,
version, categories, resolution and each network's constructor arguments.
Loading parses JSON and raw tensors only: no pickle, so a file can never run
code. Files of the old pickled format (``torch.save``) and Lightning
checkpoints are recognised by their first bytes and refused with what to do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from scenecomp.atomic import write_atomically

META_KEY = "scenecomp"
MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


class BundleError(ValueError):
    """A bundle file that cannot be used; the message names the file and the problem."""


class PickledFileError(BundleError):
    """A file ``torch.save`` wrote (an old bundle, a Lightning checkpoint): refused without reading it."""


def save_tensors(path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``tensors`` and the JSON-able ``meta`` as one safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    header = {META_KEY: json.dumps(meta)}
    return write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def load_tensors(path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a file `save_tensors` wrote. Raises `BundleError` naming the file for
    anything else: a missing file, an old pickled bundle, a Lightning checkpoint, a damaged file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    try:
        with open(path, "rb") as f:
            start, size = f.read(9), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise BundleError(f"{path}: no such file") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot be read ({e.strerror or e})") from None
    # safetensors: an 8-byte little-endian header length, then the JSON header
    header = int.from_bytes(start[:8], "little") if len(start) == 9 else -1
    if not (0 < header <= min(MAX_HEADER, size - 8) and start[8:9] == b"{"):
        if start[:2] == b"PK" or start[:1] == b"\x80":  # torch.save: a zip archive, or a bare pickle (old torch)
            raise PickledFileError(
                f"{path}: a pickled torch file (an old .pt bundle or a Lightning .ckpt checkpoint), not a "
                "safetensors bundle; this scenecomp loads only safetensors, which never run code. Convert it once "
                f"(only if you trust where it came from): python tools/export_bundle.py {path} --out NEW.safetensors"
            )
        raise BundleError(f"{path}: not a readable scenecomp bundle (no safetensors header)")
    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(META_KEY)
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise BundleError(f"{path}: not a readable scenecomp bundle (damaged: {type(e).__name__}: {e})") from None
    try:
        meta = json.loads(text) if text is not None else None
    except (json.JSONDecodeError, RecursionError):
        meta = None
    if not isinstance(meta, dict):
        raise BundleError(f"{path}: a safetensors file without scenecomp's metadata (key {META_KEY!r})")
    return tensors, meta
