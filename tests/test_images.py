"""Image conversion: the one quantisation between [-1,1] tensors and uint8 files."""

from __future__ import annotations

import numpy as np
import torch

from scenecomp.images import from_array, to_array, to_float, to_pil, to_uint8


def test_every_uint8_value_survives_the_round_trip():
    values = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(to_float(values)), values)
    assert to_float(values)[0] == -1 and to_float(values)[-1] == 1 and to_float(values).dtype == torch.float32


def test_quantisation_rounds_to_nearest_and_clamps():
    x = torch.tensor([-5.0, -1.0, -1 + 0.4 / 127.5, -1 + 0.6 / 127.5, 0.0, 1.0, 7.0, float("-inf")])
    assert to_uint8(x).tolist() == [0, 0, 0, 1, 128, 255, 255, 0]  # 0.0 -> 127.5 rounds half to even
    # a bf16 canvas is quantised from its float32 value, as a float32 one would be
    y = torch.linspace(-1, 1, 1000).bfloat16()
    assert torch.equal(to_uint8(y), to_uint8(y.float()))


def test_array_and_pil_are_channels_last_and_inverse_of_from_array():
    g = torch.Generator().manual_seed(0)
    array = torch.randint(0, 256, (5, 7, 3), generator=g, dtype=torch.uint8).numpy()
    image = from_array(array)
    assert image.shape == (3, 5, 7) and image.dtype == torch.float32
    assert np.array_equal(to_array(image), array)
    pil = to_pil(image)
    assert pil.mode == "RGB" and pil.size == (7, 5) and np.array_equal(np.asarray(pil), array)
