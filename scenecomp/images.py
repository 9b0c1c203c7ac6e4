"""Image conversion at the edges: images are float tensors in [-1,1] inside the
project and uint8 only where they are read or written.

One quantisation everywhere, so a saved PNG, an evaluated image and a preview
agree bit for bit: ``uint8 = round((clamp(x, -1, 1) + 1) * 127.5)``, and back
``x = uint8 / 127.5 - 1``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["from_array", "to_array", "to_float", "to_pil", "to_uint8"]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1,1] (any shape, e.g. ``[B,3,H,W]``) -> uint8 in [0,255], same shape and device."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0,255] (any shape) -> float32 in [-1,1]; float images are
    taken to be in [-1,1] already and returned as float32."""
    return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()


def to_array(image: torch.Tensor) -> np.ndarray:
    """One image ``[3,H,W]`` in [-1,1] -> ``[H,W,3]`` uint8 numpy array on the CPU (for PIL and PNG files)."""
    return to_uint8(image).permute(1, 2, 0).cpu().numpy()


def from_array(array: np.ndarray) -> torch.Tensor:
    """A ``[H,W,3]`` uint8 array (as read from a file) -> ``[3,H,W]`` float32 in [-1,1]."""
    return to_float(torch.from_numpy(array).permute(2, 0, 1))


def to_pil(image: torch.Tensor):
    """One image ``[3,H,W]`` in [-1,1] -> an RGB PIL image."""
    from PIL import Image  # PIL only where an image is written

    return Image.fromarray(to_array(image), "RGB")
