"""The bundle file format (scenecomp/bundle.py): safetensors plus JSON, never pickle."""

import pytest
import torch

from scenecomp.bundle import BundleError, PickledFileError, load_tensors, save_tensors


def test_round_trip_for_every_header_length(tmp_path):
    """The pickle check must not misread a safetensors header length whose first byte is 0x80 or 'P'."""
    path = tmp_path / "b.safetensors"
    firsts = set()
    for pad in range(0, 1100, 8):  # safetensors pads its header to 8 bytes: step through every length
        save_tensors(path, {"w": torch.arange(3.0)}, {"format": "x", "pad": "p" * pad})
        firsts.add(path.read_bytes()[0])
        tensors, meta = load_tensors(path)
        assert torch.equal(tensors["w"], torch.arange(3.0)) and meta["pad"] == "p" * pad
    assert 0x80 in firsts and ord("P") in firsts


def test_what_is_not_a_bundle_is_named(tmp_path):
    pickled = tmp_path / "old.pt"
    torch.save({"format": "scenecomp-bundle"}, pickled)
    with pytest.raises(PickledFileError, match=f"{pickled}: a pickled torch file"):
        load_tensors(pickled)
    for name, data in (("empty", b""), ("text", b"hello world, not a bundle"), ("cut", b"\x10" + b"\0" * 7 + b"{")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BundleError, match=f"{tmp_path / name}: not a readable scenecomp bundle"):
            load_tensors(tmp_path / name)
    with pytest.raises(BundleError, match="no such file"):
        load_tensors(tmp_path / "missing.safetensors")
