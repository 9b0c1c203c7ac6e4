"""OpenRaster export: a valid .ora per the spec whose layers restack to the rendered PNG."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

from scenecomp import Composer
from scenecomp.ora import write_ora

# 12 overlapping objects on the shipped model's 64x64 canvas: later ones hide parts of earlier ones
LAYOUT = {
    "size": [64, 64],
    "background": {"seed": 5},
    "objects": [
        {"category": "cloud", "bbox": [2, 3, 24, 10]},
        {"category": "sun", "polygon": [[44, 4], [56, 8], [58, 20], [46, 22], [40, 12]]},
        {"category": "cloud", "bbox": [18, 8, 26, 10]},
        {"category": "tree", "polygon": [[6, 58], [14, 20], [22, 58]]},
        {"category": "house", "bbox": [16, 34, 20, 22]},
        {"category": "rock", "bbox": [28, 50, 14, 10]},
        {"category": "tree", "polygon": [[36, 60], [44, 24], [52, 60]]},
        {"category": "house", "bbox": [46, 38, 16, 20]},
        {"category": "rock", "bbox": [0, 52, 12, 12]},
        {"category": "sun", "bbox": [26, 2, 10, 10]},
        {"category": "tree", "polygon": [[24, 62], [30, 30], [36, 62]]},
        {"category": "rock", "bbox": [50, 54, 14, 10]},
    ],
}


@pytest.fixture(scope="module")
def layout_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ora") / "twelve.json"
    path.write_text(json.dumps(LAYOUT))
    return path


@pytest.fixture(scope="module")
def scene(layout_file):
    return Composer.pretrained().scene(layout_file)


def restack(ora_path) -> tuple[np.ndarray, ElementTree.Element, zipfile.ZipFile]:
    """Alpha-composite the layers of stack.xml (top first) bottom-up, as an editor would."""
    z = zipfile.ZipFile(ora_path)
    root = ElementTree.fromstring(z.read("stack.xml"))
    w, h = int(root.get("w")), int(root.get("h"))
    canvas = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    for layer in reversed(root.find("stack").findall("layer")):
        png = Image.open(io.BytesIO(z.read(layer.get("src"))))
        assert png.mode == "RGBA" and png.size == (w, h)
        canvas.alpha_composite(png, (int(layer.get("x")), int(layer.get("y"))))
    return np.asarray(canvas), root, z


def test_a_12_object_ora_restacks_to_the_rendered_png(scene, tmp_path):
    path = scene.save_ora(tmp_path / "scene.ora")
    scene.to_pil().save(tmp_path / "scene.png")
    png = np.asarray(Image.open(tmp_path / "scene.png"), dtype=np.int16)
    stacked, root, z = restack(path)
    assert (stacked[..., 3] == 255).all()
    assert np.abs(stacked[..., :3].astype(np.int16) - png).max() <= 1
    # the object layers are what each object painted over its whole mask, occluded parts included
    layers = root.find("stack").findall("layer")
    assert len(layers) == 13
    assert [layer.get("name") for layer in layers][::-1] == [
        "0 background (seed 5)",
        *(f"{t} {o.category} (seed {o.seed})" for t, o in enumerate(scene.objects, 1)),
    ]
    for t, (layer, obj) in enumerate(zip(layers[::-1][1:], scene.objects, strict=False), 1):
        rgba = np.asarray(Image.open(io.BytesIO(z.read(layer.get("src")))))
        assert np.array_equal(rgba[..., 3] == 255, obj.mask) and set(np.unique(rgba[..., 3])) <= {0, 255}
        assert np.array_equal(rgba[obj.mask, :3], np.asarray(scene.to_pil(t))[obj.mask])
    hidden = scene.objects[3].mask & np.logical_or.reduce([o.mask for o in scene.objects[4:]])
    assert hidden.any()  # the tree of layer 4 is partly behind later objects, and its layer still holds it


def test_the_ora_zip_follows_the_openraster_spec(scene, tmp_path):
    path = scene.save_ora(tmp_path / "scene.ora")
    raw = path.read_bytes()
    # mimetype first, stored, no extra field: "image/openraster" at byte 38 (the magic number tools read)
    assert raw[:4] == b"PK\x03\x04" and raw[30:38] == b"mimetype" and raw[38:54] == b"image/openraster"
    assert struct.unpack("<H", raw[8:10])[0] == 0 and struct.unpack("<H", raw[28:30])[0] == 0
    z = zipfile.ZipFile(path)
    assert z.testzip() is None
    first = z.infolist()[0]
    assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED
    names = z.namelist()
    assert {"stack.xml", "mergedimage.png", "Thumbnails/thumbnail.png"} <= set(names)
    root = ElementTree.fromstring(z.read("stack.xml"))
    assert root.tag == "image" and root.get("version") == "0.0.5" and (root.get("w"), root.get("h")) == ("64", "64")
    for layer in root.find("stack").findall("layer"):
        assert layer.get("src") in names and layer.get("composite-op") == "svg:src-over"
        assert layer.get("visibility") == "visible" and float(layer.get("opacity")) == 1.0
    merged = Image.open(io.BytesIO(z.read("mergedimage.png")))
    assert merged.size == (64, 64) and np.array_equal(np.asarray(merged.convert("RGB")), np.asarray(scene.to_pil()))
    thumb = Image.open(io.BytesIO(z.read("Thumbnails/thumbnail.png")))
    assert max(thumb.size) <= 256


def test_the_same_scene_gives_the_same_ora_bytes(scene, tmp_path):
    first = scene.save_ora(tmp_path / "a.ora")
    dates = {entry.date_time for entry in zipfile.ZipFile(first).infolist()}
    assert dates == {(1980, 1, 1, 0, 0, 0)}  # zip's epoch, not the clock's
    assert scene.save_ora(tmp_path / "b.ora").read_bytes() == first.read_bytes()


def test_layer_names_are_escaped_in_stack_xml_and_counts_must_match(tmp_path):
    step = Image.new("RGB", (4, 4), (10, 20, 30))
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    path = write_ora(tmp_path / "x.ora", [step, step], [mask], ['bg <&"', "1 a&b"])
    root = ElementTree.fromstring(zipfile.ZipFile(path).read("stack.xml"))
    assert [layer.get("name") for layer in root.iter("layer")] == ["1 a&b", 'bg <&"']
    with pytest.raises(ValueError, match="one step more than masks"):
        write_ora(tmp_path / "y.ora", [step], [mask], ["bg"])
    assert not (tmp_path / "y.ora").exists()


def test_render_ora_writes_layers_that_restack_to_its_png(layout_file, tmp_path):
    out = tmp_path / "out"
    cli = Path(sys.executable).parent / "scenecomp-render"
    subprocess.run(
        [str(cli), str(layout_file), "--out", str(out), "--ora", "--layers", "--quiet"], check=True, timeout=600
    )
    stacked, root, _ = restack(out / "twelve_s0000.ora")
    png = np.asarray(Image.open(out / "twelve_s0000.png"), dtype=np.int16)
    assert np.abs(stacked[..., :3].astype(np.int16) - png).max() <= 1
    assert len(list(root.iter("layer"))) == 13 and (out / "twelve_s0000_layers" / "layout.json").is_file()
    line = json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])
    assert line["ora"] == "twelve_s0000.ora" and line["layers"] == "twelve_s0000_layers"
    # a resumed run with --ora skips the done image; one that lost its .ora renders it again
    (out / "twelve_s0000.ora").unlink()
    again = subprocess.run(
        [str(cli), str(layout_file), "--out", str(out), "--ora", "--quiet"], capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0 and (out / "twelve_s0000.ora").is_file(), again.stderr
