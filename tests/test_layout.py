"""Layout files: loading, saving, rasterising, COCO layouts, and every bad-input message."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import compressed_rle, uncompressed_rle
from scenecomp.layout import (Layout, LayoutError, LayoutObject, load_coco_layouts, load_layouts,
                              rasterize)

CATEGORIES = ["tree", "house", "sun", "cloud", "rock"]


def write_json(path, data):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def write_png(path, array):
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


@pytest.fixture
def scene(tmp_path):
    """A layout file using all four shape kinds, with a mask PNG beside it."""
    sun = np.zeros((16, 16), np.uint8)
    sun[2:6, 10:14] = 255
    (tmp_path / "masks").mkdir()
    write_png(tmp_path / "masks" / "sun.png", sun)
    rock = np.zeros((16, 16), bool)
    rock[12:15, 1:5] = True
    data = {
        "version": 1,
        "size": [16, 16],
        "background": {"seed": 5},
        "objects": [
            {"category": "tree", "polygon": [[2, 14], [4, 4], [6, 14]], "seed": 3},
            {"category": "house", "bbox": [8, 8, 6, 5]},
            {"category": "sun", "mask": "masks/sun.png", "seed": 0},
            {"category": "rock", "rle": compressed_rle(rock)},
        ],
    }
    return write_json(tmp_path / "scene.json", data), data


# --- round trip ----------------------------------------------------------------

def test_load_gives_objects_in_file_order_with_seeds(scene):
    path, data = scene
    layout = Layout.load(path, categories=CATEGORIES)
    assert layout.size == (16, 16)
    assert layout.background_seed == 5
    assert [o.category for o in layout.objects] == ["tree", "house", "sun", "rock"]
    assert [o.seed for o in layout.objects] == [3, None, 0, None]
    assert layout.objects[1] == LayoutObject("house", {"bbox": [8, 8, 6, 5]})
    assert layout.path == path and layout.name == "scene"
    assert layout.to_dict() == data


def test_save_and_load_round_trip(scene, tmp_path):
    path, data = scene
    layout = Layout.load(path)
    out = tmp_path / "copy.json"
    layout.save(out)
    again = Layout.load(out)
    assert again.to_dict() == data
    assert again.objects == layout.objects and again.background_seed == 5
    np.testing.assert_array_equal(again.masks(), layout.masks())
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_from_dict_to_dict_without_optional_fields():
    d = {"size": [8, 10], "objects": [{"category": "a", "bbox": [1, 2, 3, 4]}]}
    layout = Layout.from_dict(d)
    assert layout.to_dict() == {"version": 1, **d}
    assert layout.background_seed is None and layout.path is None and layout.name == "layout"
    assert Layout.from_dict({"size": [4, 4], "objects": []}).masks().shape == (0, 4, 4)


def test_save_to_another_folder_keeps_masks_resolvable(scene, tmp_path):
    path, _ = scene
    layout = Layout.load(path)
    out = tmp_path / "elsewhere" / "deeper" / "moved.json"
    layout.save(out)
    assert json.loads(out.read_text())["objects"][2]["mask"] == "../../masks/sun.png"
    moved = Layout.load(out)
    np.testing.assert_array_equal(moved.masks(), layout.masks())
    assert moved.name == "moved"


def test_save_replaces_atomically_and_keeps_old_file_on_failure(scene, tmp_path):
    path, _ = scene
    before = path.read_text()
    broken = Layout((4, 4), [LayoutObject("a", {"bbox": [0, 0, float("nan"), 1]})])
    with pytest.raises(ValueError):
        broken.save(path)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks", "scene.json"]


# --- rasterising ---------------------------------------------------------------

def test_bbox_covers_pixels_whose_centre_is_inside():
    m = rasterize({"bbox": [2, 3, 4, 5]}, (10, 10))
    assert m.dtype == bool and m.shape == (10, 10) and m.sum() == 20
    assert m[3, 2] and m[7, 5]  # top-left and bottom-right pixels
    assert not m[2, 2] and not m[3, 1] and not m[8, 5] and not m[7, 6]
    # a centre exactly on the right edge is outside, on the left edge inside
    assert rasterize({"bbox": [0.5, 0.5, 1, 1]}, (4, 4)).nonzero() == (np.array([0]), np.array([0]))


def test_bbox_and_polygon_agree_at_any_scale():
    x, y, w, h = 1.3, 2, 5.5, 4.25
    corners = [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]
    for out in [(10, 12), (20, 24), (7, 13), (33, 5)]:
        np.testing.assert_array_equal(rasterize({"bbox": [x, y, w, h]}, (10, 12), out),
                                      rasterize({"polygon": corners}, (10, 12), out))


def test_polygon_triangle_pixels_and_scaling():
    tri = {"polygon": [[0, 0], [8, 0], [0, 8]]}
    m = rasterize(tri, (8, 8))
    # inside when x + 0.5 + y + 0.5 < 8: rows have 7, 6, ..., 1, 0 pixels
    assert m.sum() == 28
    assert m[0, 6] and not m[0, 7] and m[6, 0] and not m[7, 0]
    big = rasterize(tri, (8, 8), (32, 32))
    assert big.shape == (32, 32) and big.sum() == sum(range(32))
    wide = rasterize(tri, (8, 8), (8, 16))  # x scales by 2, y by 1
    assert wide.sum() == sum(range(1, 16, 2))


def test_polygon_concave_and_clipped():
    ell = {"polygon": [[0, 0], [2, 0], [2, 3], [4, 3], [4, 4], [0, 4]]}
    m = rasterize(ell, (6, 6))
    assert m.sum() == 2 * 4 + 2 * 1 and m[3, 3] and not m[1, 3]
    clipped = rasterize({"polygon": [[-4, -4], [3, -4], [3, 3], [-4, 3]]}, (6, 6))
    assert clipped.sum() == 9 and clipped[:3, :3].all()
    assert rasterize({"bbox": [-2, -2, 4, 4]}, (10, 10)).sum() == 4
    assert rasterize({"bbox": [8, 9, 10, 10]}, (10, 10)).sum() == 2
    assert not rasterize({"bbox": [20, 20, 5, 5]}, (10, 10)).any()  # empty, no error here


def test_mask_png_is_scaled_nearest_neighbour(tmp_path):
    small = np.array([[0, 255], [7, 0]], np.uint8)
    write_png(tmp_path / "m.png", small)
    m = rasterize({"mask": "m.png"}, (4, 4), base_dir=tmp_path)
    expected = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], bool)
    np.testing.assert_array_equal(m, expected)
    # layout size -> another out_size, also nearest neighbour
    np.testing.assert_array_equal(rasterize({"mask": "m.png"}, (4, 4), (2, 2), tmp_path), small > 0)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 2, 2] = 1  # any nonzero channel counts
    write_png(tmp_path / "rgb.png", rgb)
    assert rasterize({"mask": "rgb.png"}, (4, 4), base_dir=tmp_path).nonzero() == (np.array([1]), np.array([2]))


def test_rle_compressed_and_uncompressed_decode_the_same_mask():
    rng = np.random.default_rng(0)
    mask = rng.random((6, 9)) > 0.6
    mask[0, 0] = True  # the uncompressed counts then start with a zero-length run
    for rle in [compressed_rle(mask), uncompressed_rle(mask)]:
        np.testing.assert_array_equal(rasterize({"rle": rle}, (6, 9)), mask)


def test_rle_of_another_size_is_resized_nearest_neighbour():
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    m = rasterize({"rle": compressed_rle(mask)}, (8, 8))
    assert m.sum() == 4 and m[2:4, 4:6].all()


def test_masks_stack_in_paint_order_at_any_size(scene):
    path, _ = scene
    layout = Layout.load(path)
    m = layout.masks()
    assert m.dtype == np.float32 and m.shape == (4, 16, 16)
    assert set(np.unique(m)) <= {0.0, 1.0}
    assert m[1].sum() == 30 and m[1, 8, 8] == 1 and m[1, 13, 8] == 0  # the house bbox
    assert m[2].sum() == 16 and m[2, 2, 10] == 1  # the sun mask
    assert m[3].sum() == 12 and m[3, 12, 1] == 1  # the rock RLE
    big = layout.masks((32, 48))
    assert big.shape == (4, 32, 48)
    assert big[1].sum() == 30 * 6 and big[2].sum() == 16 * 6 and big[3].sum() == 12 * 6


# --- bad input -----------------------------------------------------------------

GOOD_OBJECT = {"category": "tree", "bbox": [1, 1, 4, 4]}
OTHER_SIZE_RLE = compressed_rle(np.ones((2, 3), bool))


def layout_with(obj, **top):
    return {"size": [16, 16], "objects": [GOOD_OBJECT, obj], **top}


BAD_LAYOUTS = [
    # (document, object index or None, fragments the message must contain)
    ([1, 2], None, ["top level must be a JSON object"]),
    ({"objects": []}, None, ["missing 'size'"]),
    ({"size": [0, 16], "objects": []}, None, ["size must be [height, width]", "[0, 16]"]),
    ({"size": [16, -1], "objects": []}, None, ["size must be", "positive"]),
    ({"size": "64", "objects": []}, None, ["size must be", '"64"']),
    ({"size": [16.5, 16], "objects": []}, None, ["size must be", "integers"]),
    ({"size": [True, 16], "objects": []}, None, ["size must be"]),
    ({"size": [16, 16, 3], "objects": []}, None, ["size must be"]),
    ({"size": [16, 16]}, None, ["missing 'objects'"]),
    ({"size": [16, 16], "objects": {"category": "tree"}}, None, ["objects must be a list"]),
    ({"size": [16, 16], "objcts": []}, None, ["unknown top-level key", "'objcts'"]),
    ({"version": 2, "size": [16, 16], "objects": []}, None, ["version must be 1", "2"]),
    (layout_with("tree"), 1, ["must be an object", '"tree"']),
    (layout_with({"bbox": [1, 1, 2, 2]}), 1, ["missing 'category'"]),
    (layout_with({"category": 3, "bbox": [1, 1, 2, 2]}), 1, ["category must be a non-empty string"]),
    (layout_with({"category": "tree", "circle": [1, 1, 2]}), 1, ["unknown key", "'circle'", "'polygon'"]),
    (layout_with({"category": "tree", "bbox": [1, 1, 2, 2], "colour": "red"}), 1, ["unknown key", "'colour'"]),
    (layout_with({"category": "tree"}), 1, ["no shape", "'bbox'"]),
    (layout_with({"category": "tree", "bbox": [1, 1, 2, 2], "polygon": [[0, 0], [1, 0], [0, 1]]}), 1,
     ["more than one shape", "'bbox'", "'polygon'"]),
    (layout_with({"category": "tree", "polygon": [[1, 1], [5, 5]]}), 1, ["polygon needs at least 3 points, got 2"]),
    (layout_with({"category": "tree", "polygon": [[1, 1], [5, "a"], [1, 5]]}), 1,
     ["polygon point 1 must be [x, y]", '"a"']),
    (layout_with({"category": "tree", "polygon": [1, 1, 5, 5, 1, 5]}), 1, ["polygon point 0 must be [x, y]"]),
    (layout_with({"category": "tree", "polygon": "triangle"}), 1, ["polygon must be a list"]),
    (layout_with({"category": "tree", "bbox": [1, 1, 0, 4]}), 1, ["bbox width and height must be positive",
                                                                  "width 0"]),
    (layout_with({"category": "tree", "bbox": [1, 1, 4, -2]}), 1, ["must be positive", "height -2"]),
    (layout_with({"category": "tree", "bbox": [1, 1, 4]}), 1, ["bbox must be [x, y, width, height]"]),
    (layout_with({"category": "tree", "bbox": [1, 1, "4", 4]}), 1, ["bbox values must be finite numbers"]),
    (layout_with({"category": "tree", "mask": "nowhere.png"}), 1, ["mask file 'nowhere.png' not found"]),
    (layout_with({"category": "tree", "mask": "notes.png"}), 1, ["mask file 'notes.png' is not a readable image"]),
    (layout_with({"category": "tree", "mask": 7}), 1, ["mask must be a PNG file name"]),
    (layout_with({"category": "tree", "rle": {"size": [4, 5], "counts": "zzz!"}}), 1,
     ["rle counts string has an invalid character"]),
    (layout_with({"category": "tree", "rle": {"size": [4, 5], "counts": [3, 10]}}), 1,
     ["rle counts cover 13 pixels", "[4, 5] has 20"]),
    (layout_with({"category": "tree", "rle": {"size": [4, 5], "counts": "0>"}}), 1, ["rle counts cover 14 pixels"]),
    (layout_with({"category": "tree", "rle": {"size": [4, 5], "counts": [3, -1, 18]}}), 1,
     ["rle counts must be"]),
    (layout_with({"category": "tree", "rle": {"counts": [20]}}), 1, ["rle must be"]),
    (layout_with({"category": "tree", "rle": {"size": [0, 5], "counts": []}}), 1, ["rle size must be"]),
    (layout_with({"category": "tree", "rle": "abc"}), 1, ["rle must be"]),
    (layout_with({"category": "tree", "bbox": [20, 20, 5, 5]}), 1, ["bbox is empty after rasterisation",
                                                                    "off the canvas"]),
    (layout_with({"category": "tree", "polygon": [[1, 1], [5, 5], [9, 9]]}), 1, ["polygon is empty"]),
    (layout_with({"category": "tree", "mask": "blank.png"}), 1, ["mask is empty"]),
    (layout_with({"category": "tree", "rle": {"size": [16, 16], "counts": [256]}}), 1, ["rle is empty"]),
    (layout_with({"category": "tree", "rle": OTHER_SIZE_RLE}), None, []),  # valid: resized, not empty
    (layout_with({"category": "tree", "bbox": [1, 1, 2, 2], "seed": -1}), 1,
     ["seed must be an integer in [0, 2**32), got -1"]),
    (layout_with({"category": "tree", "bbox": [1, 1, 2, 2], "seed": 2**32}), 1, ["seed must be", "4294967296"]),
    (layout_with({"category": "tree", "bbox": [1, 1, 2, 2], "seed": 1.5}), 1, ["seed must be", "1.5"]),
    (layout_with({"category": "tree", "bbox": [1, 1, 2, 2], "seed": "3"}), 1, ["seed must be", '"3"']),
    (layout_with({"category": "tree", "bbox": [1, 1, 2, 2], "seed": True}), 1, ["seed must be", "true"]),
    (layout_with({"category": "tree", "bbox": [1, 1, 2, 2], "seed": None}), 1, ["seed must be", "null"]),
    ({"size": [16, 16], "background": {"seed": -3}, "objects": []}, None, ["background seed must be", "-3"]),
    ({"size": [16, 16], "background": {"seed": False}, "objects": []}, None, ["background seed must be"]),
    ({"size": [16, 16], "background": 0, "objects": []}, None, ["background must be an object"]),
    ({"size": [16, 16], "background": {"sed": 0}, "objects": []}, None, ["background: unknown key", "'sed'"]),
]


@pytest.mark.parametrize("doc, index, fragments", BAD_LAYOUTS)
def test_bad_layout_message_names_file_object_and_problem(tmp_path, doc, index, fragments):
    (tmp_path / "notes.png").write_text("not an image")
    write_png(tmp_path / "blank.png", np.zeros((4, 4)))
    path = write_json(tmp_path / "scene.json", doc)
    if not fragments:
        Layout.load(path)
        return
    with pytest.raises(LayoutError) as info:
        Layout.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert info.value.path == path and info.value.index == index
    if index is not None:
        assert f": object {index}: " in message
    else:
        assert not re.search(r"object \d+: ", message)
    for fragment in fragments:
        assert fragment in message


def test_malformed_json_names_line_and_column(tmp_path):
    path = write_json(tmp_path / "broken.json", '{"size": [8, 8],\n  "objects": [}\n')
    with pytest.raises(LayoutError, match=r"broken\.json: malformed JSON at line 2, column 15"):
        Layout.load(path)


def test_missing_file_and_non_utf8(tmp_path):
    with pytest.raises(LayoutError, match=r"absent\.json: file not found"):
        Layout.load(tmp_path / "absent.json")
    (tmp_path / "latin.json").write_bytes(b'{"size": "\xe9"}')
    with pytest.raises(LayoutError, match=r"latin\.json: not UTF-8"):
        Layout.load(tmp_path / "latin.json")


def test_unknown_category_lists_the_known_ones(tmp_path):
    path = write_json(tmp_path / "scene.json", layout_with({"category": "tre", "bbox": [1, 1, 2, 2]}))
    with pytest.raises(LayoutError) as info:
        Layout.load(path, categories=CATEGORIES)
    assert str(info.value) == (f"{path}: object 1: unknown category 'tre' (did you mean 'tree'?); "
                               "known categories: tree, house, sun, cloud, rock")
    Layout.load(path)  # no vocabulary, no check


def test_error_without_a_file_says_layout():
    with pytest.raises(LayoutError, match=r"^<layout>: object 0: polygon needs at least 3 points, got 2$"):
        Layout.from_dict({"size": [8, 8], "objects": [{"category": "a", "polygon": [[0, 0], [1, 1]]}]})
    error = LayoutError("bad", "scene.json", 2)
    assert str(error) == "scene.json: object 2: bad" and error.problem == "bad"
    assert isinstance(error, ValueError)


def test_rasterize_validates_public_input():
    with pytest.raises(LayoutError, match=r"^<layout>: unknown shape key\(s\) 'circle'"):
        rasterize({"circle": [1, 2, 3]}, (8, 8))
    with pytest.raises(LayoutError, match=r"^s\.json: object 4: bbox must be"):
        rasterize({"bbox": [1, 2]}, (8, 8), path="s.json", index=4)
    with pytest.raises(LayoutError, match="out_size must be"):
        rasterize({"bbox": [1, 1, 2, 2]}, (8, 8), (0, 8))


def test_load_refers_coco_files_to_load_layouts(tmp_path):
    path = write_json(tmp_path / "ann.json", coco_document()[0])
    with pytest.raises(LayoutError, match=r"ann\.json: this is a COCO instances file .*load_layouts"):
        Layout.load(path)


# --- COCO ----------------------------------------------------------------------

def coco_document(info=None):
    """Two images of different sizes, listed out of id order; polygons, RLE and a crowd RLE."""
    crowd = np.zeros((10, 20), bool)
    crowd[5:9, 12:18] = True
    rock = np.zeros((10, 20), bool)
    rock[0:2, 0:3] = True
    doc = {
        "images": [{"id": 7, "file_name": "dir/b.png", "height": 10, "width": 20},
                   {"id": 3, "file_name": "a.png", "height": 8, "width": 6}],
        "categories": [{"id": 1, "name": "tree"}, {"id": 2, "name": "house"}, {"id": 5, "name": "rock"}],
        "annotations": [
            {"id": 1, "image_id": 3, "category_id": 1, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]],
             "area": 4.0, "iscrowd": 0},
            {"id": 2, "image_id": 3, "category_id": 2, "iscrowd": 0, "area": 20.0,
             # two parts, one of them degenerate (two points)
             "segmentation": [[1, 3, 5, 3, 5, 8, 1, 8], [0, 0, 1, 1]]},
            {"id": 3, "image_id": 7, "category_id": 5, "segmentation": compressed_rle(rock),
             "area": 6.0, "iscrowd": 0},
            {"id": 4, "image_id": 7, "category_id": 2, "segmentation": uncompressed_rle(crowd),
             "area": 24.0, "iscrowd": 1},
        ],
    }
    if info is not None:
        doc["info"] = info
    return doc, rock, crowd


def test_coco_layouts_one_per_image_in_id_order_largest_first(tmp_path):
    doc, rock, crowd = coco_document()
    path = write_json(tmp_path / "ann.json", doc)
    layouts = load_coco_layouts(path, categories=CATEGORIES)
    assert [layout.size for layout in layouts] == [(8, 6), (10, 20)]
    assert [layout.name for layout in layouts] == ["ann_a", "ann_b"]
    assert all(layout.path == path and layout.background_seed is None for layout in layouts)
    first, second = layouts
    assert [o.category for o in first.objects] == ["house", "tree"]  # area 20 before area 4
    assert [o.category for o in second.objects] == ["house", "rock"]  # the crowd region is larger
    for obj in first.objects + second.objects:
        assert set(obj.shape) == {"rle"} and isinstance(obj.shape["rle"]["counts"], str)
        assert obj.seed is None
    masks = second.masks()
    np.testing.assert_array_equal(masks[0], crowd)
    np.testing.assert_array_equal(masks[1], rock)
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([[1, 3, 5, 3, 5, 8, 1, 8]], 8, 6)))
    np.testing.assert_array_equal(first.masks()[0], expected)
    assert first.masks()[1, :2, :2].all()


def test_coco_annotation_order_is_kept_when_the_file_says_so(tmp_path):
    doc, _, _ = coco_document(info={"paint_order": "annotation_order"})
    layouts = load_layouts(write_json(tmp_path / "ann.json", doc))
    assert [o.category for o in layouts[0].objects] == ["tree", "house"]
    assert [o.category for o in layouts[1].objects] == ["rock", "house"]


def test_load_layouts_accepts_both_kinds(scene, tmp_path):
    path, _ = scene
    [layout] = load_layouts(path)
    assert layout.to_dict() == Layout.load(path).to_dict()
    doc, _, _ = coco_document()
    assert len(load_layouts(write_json(tmp_path / "ann.json", doc))) == 2


def test_coco_layout_saves_as_a_layout_file(tmp_path):
    doc, _, _ = coco_document()
    layout = load_coco_layouts(write_json(tmp_path / "ann.json", doc))[1]
    layout.save(tmp_path / "out" / "b.json")
    again = Layout.load(tmp_path / "out" / "b.json")
    np.testing.assert_array_equal(again.masks(), layout.masks())
    assert again.name == "b"


def coco_with(change):
    doc, _, _ = coco_document()
    change(doc)
    return doc


BAD_COCO = [
    (lambda d: d["annotations"][0].update(category_id=9), None, ["annotations[0] (id 1)", "unknown category_id 9"]),
    (lambda d: d["annotations"][2].update(image_id=99), None, ["annotations[2] refers to no image"]),
    (lambda d: d["images"][1].update(height=0), None, ["images[1] (id 3)", "height and width must be"]),
    (lambda d: d["images"][1].pop("file_name"), None, ["images[1] needs a unique 'id' and a 'file_name'"]),
    (lambda d: d["categories"].append({"id": "x"}), None, ["categories[3] needs an integer 'id'"]),
    (lambda d: d["annotations"][0].update(segmentation=[[0, 0, 1, 1]]), 1,
     ["image 3 ('a.png')", "annotation 1", "no polygon with at least 3 points"]),
    (lambda d: d["annotations"][0].update(segmentation=[[0, 0, 2, "a", 2, 2]]), 1,
     ["annotation 1", "segmentation polygon must be a flat list"]),
    (lambda d: d["annotations"][0].update(segmentation=[[0, 0, 6, 0, 6]]), 1, ["segmentation polygon must be"]),
    (lambda d: d["annotations"][0].pop("segmentation"), 1, ["segmentation must be a list of polygons or an RLE"]),
    (lambda d: d["annotations"][0].update(segmentation=[[20, 20, 30, 20, 30, 30]]), 1,
     ["annotation 1", "segmentation is empty"]),
    (lambda d: d["annotations"][3].update(segmentation={"size": [10, 20], "counts": [5, 6]}), 0,
     ["image 7 ('dir/b.png')", "annotation 4", "rle counts cover 11 pixels"]),
]


@pytest.mark.parametrize("change, index, fragments", BAD_COCO)
def test_bad_coco_message_names_file_image_and_problem(tmp_path, change, index, fragments):
    path = write_json(tmp_path / "ann.json", coco_with(change))
    with pytest.raises(LayoutError) as info:
        load_coco_layouts(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and info.value.index == index
    if index is not None:
        assert f"object {index}: " in message
    for fragment in fragments:
        assert fragment in message


def test_coco_unknown_category_names_the_image(tmp_path):
    doc, _, _ = coco_document()
    path = write_json(tmp_path / "ann.json", doc)
    with pytest.raises(LayoutError) as info:
        load_coco_layouts(path, categories=["tree", "rock"])
    assert str(info.value) == (f"{path}: image 3 ('a.png'): object 0: unknown category 'house'; "
                               "known categories: tree, rock")


def test_not_a_coco_file(tmp_path):
    path = write_json(tmp_path / "scene.json", {"size": [4, 4], "objects": []})
    with pytest.raises(LayoutError, match=r"scene\.json: not a COCO instances file"):
        load_coco_layouts(path)
    assert os.path.exists(path)
