"""scenecomp.data: COCO-format datasets, the DataModule and ``scenecomp-data``.

Every test writes its own small COCO fixture under tmp_path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from conftest import compressed_rle, uncompressed_rle
from scenecomp.data import DataError, SceneDataset, main
from scenecomp.layout import LayoutError, load_coco_layouts


# --------------------------------------------------------------------------- fixtures
def rect(x0, y0, x1, y1):
    """A polygon (COCO flat list) for the rectangle [x0,x1) x [y0,y1)."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def box_mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def write_coco(root: Path, images, annotations, categories, info=None, write_images=True, name="annotations.json"):
    """images: (id, file_name, h, w); pixels are a per-image colour plus red inside every object box.

    annotations: dicts with image_id, category_id, segmentation (area/bbox filled in when missing).
    categories: names, ids 1..C, or (id, name) pairs.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    cats = [
        {"id": c[0], "name": c[1]} if isinstance(c, tuple) else {"id": i + 1, "name": c}
        for i, c in enumerate(categories)
    ]
    sizes = {iid: (h, w) for iid, _, h, w in images}
    anns = []
    for n, a in enumerate(annotations, 1):
        a = {"id": n, "iscrowd": 0, **a}
        h, w = sizes[a["image_id"]]
        seg = a["segmentation"]
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = {
                "size": seg["size"],
                "counts": seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"],
            }
        a.setdefault("area", float(mask_utils.area(rle)))
        a.setdefault("bbox", [float(v) for v in mask_utils.toBbox(rle)])
        anns.append(a)
    if write_images:
        for iid, file_name, h, w in images:
            pixels = np.zeros((h, w, 3), dtype=np.uint8)
            pixels[..., 2] = 40 + 10 * iid
            for a in anns:
                if a["image_id"] == iid:
                    x, y, bw, bh = (int(round(v)) for v in a["bbox"])
                    pixels[y : y + bh, x : x + bw] = (255, 0, 0)
            (root / "images" / file_name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / "images" / file_name)
    data = {
        "images": [{"id": iid, "file_name": f, "height": h, "width": w} for iid, f, h, w in images],
        "annotations": anns,
        "categories": cats,
    }
    if info is not None:
        data["info"] = info
    (root / name).write_text(json.dumps(data))
    return root / name


@pytest.fixture
def mixed(tmp_path):
    """Three images of different sizes (wide, tall, square) with polygons, RLE, uncompressed RLE and iscrowd."""
    tall = box_mask(80, 50, 10, 20, 40, 60)
    crowd = box_mask(64, 64, 0, 0, 64, 16)
    images = [(1, "wide.png", 40, 60), (2, "sub/tall.jpg", 80, 50), (3, "square.png", 64, 64)]
    anns = [
        {"image_id": 1, "category_id": 1, "segmentation": [rect(12, 4, 40, 36)]},  # polygon
        {"image_id": 1, "category_id": 2, "segmentation": [rect(30, 10, 45, 20), rect(20, 25, 26, 30)]},
        {"image_id": 2, "category_id": 3, "segmentation": compressed_rle(tall)},  # RLE
        {"image_id": 3, "category_id": 1, "segmentation": uncompressed_rle(crowd), "iscrowd": 1},
        {"image_id": 3, "category_id": 2, "segmentation": compressed_rle(box_mask(64, 64, 20, 30, 40, 50))},
    ]
    return write_coco(tmp_path / "mixed", images, anns, ["tree", "house", "sun"])


def _get_dataset_mask(path, **kw):
    ds = SceneDataset(path, resolution=kw.pop("resolution", 20), **kw)
    return ds, ds[0]


# --------------------------------------------------------------------------- samples
def test_sample_shapes_dtypes_and_ranges(mixed):
    ds = SceneDataset(mixed, resolution=32, max_objects=4)
    assert len(ds) == 3 and ds.categories == ["tree", "house", "sun"]
    assert ds.resolution == 32 and ds.max_objects == 4
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
        assert s["image"].min() >= -1 and s["image"].max() <= 1
        assert s["masks"].shape == (4, 1, 32, 32) and s["masks"].dtype == torch.float32
        assert set(s["masks"].unique().tolist()) <= {0.0, 1.0}
        assert s["categories"].shape == (4,) and s["categories"].dtype == torch.int64
        assert s["valid"].shape == (4,) and s["valid"].dtype == torch.bool
        assert s["index"] == i
        n = int(s["valid"].sum())
        assert n >= 1
        assert s["valid"][:n].all() and not s["valid"][n:].any()  # valid objects first
        assert (s["masks"][:n].flatten(1).amax(1) == 1).all()
        assert (s["masks"][n:] == 0).all() and (s["categories"][n:] == 0).all()  # padding
    assert ds[-1]["index"] == 2
    with pytest.raises(IndexError):
        ds[3]


def test_mask_and_image_land_where_the_polygon_was(tmp_path):
    # 100 wide x 50 tall: the centre crop is x in [25, 75); the box covers its top-left quadrant.
    path = write_coco(
        tmp_path / "d",
        [(1, "a.png", 50, 100)],
        [
            {"image_id": 1, "category_id": 1, "segmentation": [rect(25, 0, 50, 25)]},
            {"image_id": 1, "category_id": 2, "segmentation": [rect(0, 0, 20, 50)]},
        ],  # outside crop
        ["tree", "rock"],
    )
    ds, s = _get_dataset_mask(path, resolution=20)
    assert s["valid"].tolist() == [True] + [False] * 7  # the object outside the crop is dropped
    expected = torch.zeros(20, 20)
    expected[:10, :10] = 1
    assert torch.equal(s["masks"][0, 0], expected)
    red = s["image"][0] > 0.9
    assert torch.equal(red, expected.bool())  # the image's red box is where the mask is
    assert torch.allclose(s["image"][:, 15, 15], torch.tensor([-1.0, -1.0, 50 / 127.5 - 1]), atol=0.01)


def test_tall_image_crops_vertically_and_upscales(tmp_path):
    # 10 wide x 30 tall: the crop is y in [10, 20); the box is its bottom half; upscaled to 20.
    path = write_coco(
        tmp_path / "d",
        [(1, "a.png", 30, 10)],
        [{"image_id": 1, "category_id": 1, "segmentation": [rect(0, 15, 10, 30)]}],
        ["tree"],
    )
    _, s = _get_dataset_mask(path, resolution=20)
    expected = torch.zeros(20, 20)
    expected[10:, :] = 1
    assert torch.equal(s["masks"][0, 0], expected)


def test_polygon_rle_and_uncompressed_rle_give_the_same_mask(tmp_path):
    m = box_mask(48, 64, 10, 6, 37, 30)
    segs = [[rect(10, 6, 37, 30)], compressed_rle(m), uncompressed_rle(m)]
    images = [(i + 1, f"{i}.png", 48, 64) for i in range(len(segs))]
    anns = [
        {"image_id": i + 1, "category_id": 1, "segmentation": s, "iscrowd": int(i == 2)} for i, s in enumerate(segs)
    ]
    ds = SceneDataset(write_coco(tmp_path / "d", images, anns, ["tree"]), resolution=24)
    masks = [ds[i]["masks"][0] for i in range(len(ds))]
    assert len(masks) == 3 and masks[0].sum() > 0
    for m_ in masks[1:]:
        assert torch.equal(m_, masks[0])


def test_category_subset_and_index_mapping(tmp_path):
    # ids out of order in the file: the default order is by id
    cats = [(7, "cloud"), (2, "house"), (5, "sun")]
    images = [(1, "a.png", 32, 32), (2, "b.png", 32, 32)]
    anns = [
        {"image_id": 1, "category_id": 7, "segmentation": [rect(0, 0, 20, 20)]},
        {"image_id": 1, "category_id": 5, "segmentation": [rect(10, 10, 20, 20)]},
        {"image_id": 1, "category_id": 2, "segmentation": [rect(20, 20, 25, 25)]},
        {"image_id": 2, "category_id": 2, "segmentation": [rect(0, 0, 8, 8)]},
    ]
    path = write_coco(tmp_path / "d", images, anns, cats, info={"paint_order": "annotation_order"})
    ds = SceneDataset(path, resolution=32)
    assert ds.categories == ["house", "sun", "cloud"]
    assert ds[0]["categories"][:3].tolist() == [2, 1, 0]  # cloud, sun, house in paint order
    sub = SceneDataset(path, categories=["sun", "cloud"], resolution=32)
    assert sub.categories == ["sun", "cloud"] and len(sub) == 1  # image 2 has no sun or cloud
    s = sub[0]
    assert s["categories"].tolist()[:2] == [1, 0] and s["valid"].tolist()[:3] == [True, True, False]
    assert SceneDataset(path, categories="cloud, sun", resolution=32).categories == ["cloud", "sun"]


def test_min_area_is_a_fraction_of_the_cropped_image(tmp_path):
    # 40 tall x 80 wide: crop x in [20, 60), 40x40 = 1600 px
    images = [(1, "a.png", 40, 80), (2, "b.png", 40, 80)]
    anns = [
        {"image_id": 1, "category_id": 1, "segmentation": [rect(20, 0, 40, 20)]},  # 400 px = 0.25
        {"image_id": 1, "category_id": 2, "segmentation": [rect(40, 20, 50, 30)]},  # 100 px = 0.0625
        # 600 px in the file but only 200 inside the crop (0.125)
        {"image_id": 1, "category_id": 3, "segmentation": [rect(0, 0, 30, 20)]},
        {"image_id": 2, "category_id": 2, "segmentation": [rect(30, 0, 40, 10)]},
    ]  # 100 px
    path = write_coco(tmp_path / "d", images, anns, ["tree", "house", "rock"], info={"paint_order": "annotation_order"})
    assert len(SceneDataset(path, resolution=40)) == 2
    ds = SceneDataset(path, resolution=40, min_area=0.1)
    assert len(ds) == 1  # image 2 is left with no object and is dropped
    assert ds[0]["categories"][ds[0]["valid"]].tolist() == [0, 2]
    assert ds[0]["masks"][1].sum() == 200  # the part inside the crop
    ds = SceneDataset(path, resolution=40, min_area=0.2)
    assert ds[0]["categories"][ds[0]["valid"]].tolist() == [0]


def test_max_objects_keeps_the_largest_in_paint_order(tmp_path):
    sizes = [4, 12, 8, 2]  # squares, in paint order
    anns = [
        {"image_id": 1, "category_id": k + 1, "segmentation": [rect(2 + 6 * k, 2, 2 + 6 * k + s, 2 + s)]}
        for k, s in enumerate(sizes)
    ]
    path = write_coco(
        tmp_path / "d", [(1, "a.png", 32, 32)], anns, ["a", "b", "c", "d"], info={"paint_order": "annotation_order"}
    )
    s = SceneDataset(path, resolution=32, max_objects=2)[0]
    assert s["masks"].shape[0] == 2
    assert s["categories"].tolist() == [1, 2]  # b (12) and c (8), b first as in the file
    ds = SceneDataset(path, resolution=32, max_objects=None)
    assert ds.max_objects == 4 and ds[0]["categories"].tolist() == [0, 1, 2, 3]


def test_order_annotation_order_vs_largest_first(tmp_path):
    anns = [
        {"image_id": 1, "category_id": 1, "segmentation": [rect(0, 0, 4, 4)]},
        {"image_id": 1, "category_id": 2, "segmentation": [rect(8, 8, 30, 30)]},
        {"image_id": 1, "category_id": 3, "segmentation": [rect(0, 20, 10, 30)]},
    ]
    kept = write_coco(
        tmp_path / "kept", [(1, "a.png", 32, 32)], anns, ["a", "b", "c"], info={"paint_order": "annotation_order"}
    )
    coco_like = write_coco(
        tmp_path / "coco", [(1, "a.png", 32, 32)], anns, ["a", "b", "c"], info={"description": "no paint order"}
    )
    assert SceneDataset(kept, resolution=32)[0]["categories"][:3].tolist() == [0, 1, 2]
    assert SceneDataset(coco_like, resolution=32)[0]["categories"][:3].tolist() == [1, 2, 0]


def test_images_are_read_lazily(tmp_path, monkeypatch):
    path = write_coco(
        tmp_path / "d",
        [(1, "a.png", 32, 32), (2, "b.png", 32, 32)],
        [
            {"image_id": 1, "category_id": 1, "segmentation": [rect(0, 0, 9, 9)]},
            {"image_id": 2, "category_id": 1, "segmentation": [rect(0, 0, 9, 9)]},
        ],
        ["tree"],
        write_images=False,
    )
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or pytest.fail("image read at init"))
    ds = SceneDataset(path, resolution=16)  # no image exists yet: construction still works
    assert len(ds) == 2 and opened == []
    monkeypatch.undo()
    with pytest.raises(DataError, match=r"b\.png: image file not found"):
        ds[1]


# --------------------------------------------------------------------------- bad input
def _one(tmp_path, **kw):
    return write_coco(
        tmp_path / "d",
        [(1, "a.png", 32, 32)],
        [{"image_id": 1, "category_id": 1, "segmentation": [rect(0, 0, 9, 9)]}],
        ["tree", "rock"],
        **kw,
    )


def test_missing_annotations_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json: annotations file not found"):
        SceneDataset(tmp_path / "nope.json")


def test_missing_image_folder(tmp_path):
    path = _one(tmp_path)
    with pytest.raises(DataError, match=r"elsewhere: image folder not found"):
        SceneDataset(path, images=tmp_path / "elsewhere")


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [],\n  "annotations": [,]}')
    with pytest.raises(DataError, match=r"bad\.json: malformed JSON at line 2, column 19"):
        SceneDataset(path)


@pytest.mark.parametrize(
    "content, problem",
    [
        ("[1, 2]", "top level is not an object"),
        ('{"images": [], "categories": []}', "no 'annotations' list"),
    ],
)
def test_not_a_coco_file(tmp_path, content, problem):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(DataError, match=rf"x\.json: not a COCO instances file \({problem}\)"):
        SceneDataset(path)


def test_unknown_categories_list_the_known_ones(tmp_path):
    path = _one(tmp_path)
    with pytest.raises(DataError, match=r"annotations\.json: unknown categories 'zebra', 'cow'; known: tree, rock"):
        SceneDataset(path, categories=["tree", "zebra", "cow"])


def test_no_usable_object(tmp_path):
    path = _one(tmp_path)
    with pytest.raises(DataError, match=r"annotations\.json: no usable object after filters \(categories: rock"):
        SceneDataset(path, categories=["rock"])
    with pytest.raises(DataError, match="no usable object after filters"):
        SceneDataset(path, min_area=0.5)


def test_bad_segmentation_names_the_annotation(tmp_path):
    path = write_coco(
        tmp_path / "d",
        [(1, "a.png", 32, 32)],
        [
            {
                "image_id": 1,
                "category_id": 1,
                "segmentation": {"size": [16, 16], "counts": [256]},
                "area": 1.0,
                "bbox": [20, 0, 20, 10],
            }
        ],
        ["tree"],
        write_images=False,
    )
    with pytest.raises(
        DataError,
        match=r"annotations\.json: image 1 \('a\.png'\): annotations\[0\] \(id 1\): "
        r"segmentation RLE size \[16, 16\] is not the image's \[32, 32\]",
    ):
        SceneDataset(path)


def test_annotation_of_unknown_image(tmp_path):
    path = _one(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"][0]["image_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(
        DataError, match=r"annotations\.json: annotations\[0\] \(id 1\) refers to image 99, which is not in 'images'"
    ):
        SceneDataset(path)


@pytest.mark.parametrize(
    "segmentation, problem",
    [
        ([rect(40, 40, 50, 50)], "segmentation is empty at the image's size"),
        ([[0, 0, 5, 5]], "segmentation has no polygon with at least 3 points"),
    ],
)
def test_an_empty_shape_is_dropped_from_training_data_but_is_an_error_in_a_layout(tmp_path, segmentation, problem):
    """One COCO parser, one difference made explicit (`CocoFile.rle`'s ``allow_empty``)."""
    path = write_coco(
        tmp_path / "d",
        [(1, "a.png", 32, 32)],
        [{"image_id": 1, "category_id": c, "segmentation": [rect(0, 0, 9, 9)]} for c in (1, 2)],
        ["tree", "rock"],
    )
    data = json.loads(path.read_text())
    data["annotations"][1]["segmentation"] = segmentation  # off the image, or no part of 3 points
    path.write_text(json.dumps(data))
    ds = SceneDataset(path, resolution=16, max_objects=2)
    assert len(ds) == 1 and ds[0]["valid"].tolist() == [True, False]
    with pytest.raises(LayoutError, match=rf"annotations\[1\] \(id 2\): {problem}"):
        load_coco_layouts(path)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["annotations"][0].update(image_id=99),
        lambda d: d["annotations"][0].update(category_id=7),
        lambda d: d["annotations"][0].update(segmentation=[[0, 0, 2, "a", 2, 2]]),
        lambda d: d["images"][0].update(height=-3),
        lambda d: d["categories"][1].update(name="tree"),
        lambda d: d.update(images={}),
    ],
)
def test_training_data_and_layouts_report_a_bad_coco_file_alike(tmp_path, change):
    path = _one(tmp_path)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(LayoutError) as layout_error:
        load_coco_layouts(path)
    with pytest.raises(DataError) as data_error:
        SceneDataset(path)
    assert str(data_error.value) == str(layout_error.value) and str(data_error.value).startswith(f"{path}: ")


def test_string_image_ids_are_prepared_into_names_of_their_own(tmp_path):
    path = write_coco(
        tmp_path / "d",
        [("a", "a.png", 32, 32), (2, "b.png", 32, 32)],
        [{"image_id": i, "category_id": 1, "segmentation": [rect(0, 0, 9, 9)]} for i in ("a", 2)],
        ["tree"],
        write_images=False,
    )
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32)).save(tmp_path / "d" / "images" / name)
    main(["coco", "--annotations", str(path), "--out", str(tmp_path / "out"), "--size", "16"])
    data = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert [(im["id"], im["file_name"]) for im in data["images"]] == [
        ("a", "image_000000000000.png"),
        (2, "000000000002.png"),
    ]
    assert all((tmp_path / "out" / "images" / im["file_name"]).is_file() for im in data["images"])


def test_unreadable_or_mismatched_image_names_the_file(tmp_path):
    path = _one(tmp_path)
    (tmp_path / "d" / "images" / "a.png").write_bytes(b"not a png")
    ds = SceneDataset(path)
    with pytest.raises(DataError, match=r"a\.png: cannot read image"):
        ds[0]
    Image.new("RGB", (20, 32)).save(tmp_path / "d" / "images" / "a.png")
    with pytest.raises(DataError, match=r"a\.png: image is 32x20 \(HxW\) but .*annotations\.json says 32x32"):
        ds[0]


@pytest.mark.parametrize(
    "kw, problem",
    [
        ({"resolution": 0}, "resolution must be a positive integer"),
        ({"max_objects": 0}, "max_objects must be a positive integer"),
        ({"min_area": 1.5}, r"min_area is a fraction of the image, in \[0, 1\)"),
        ({"limit": 0}, "limit must be a positive integer"),
    ],
)
def test_bad_arguments(tmp_path, kw, problem):
    with pytest.raises(DataError, match=problem):
        SceneDataset(_one(tmp_path), **kw)


def test_folder_and_limit(tmp_path, mixed):
    ds = SceneDataset(mixed.parent, resolution=16, limit=2)  # a folder holding annotations.json
    assert len(ds) == 2 and ds.image_info(1)["file_name"] == "sub/tall.jpg"


# --------------------------------------------------------------------------- datamodule
def _many(tmp_path, n=10, name="train"):
    images = [(i + 1, f"{i}.png", 24 + i, 32) for i in range(n)]
    anns = [{"image_id": i + 1, "category_id": 1 + i % 2, "segmentation": [rect(2, 2, 12 + i, 14)]} for i in range(n)]
    return write_coco(tmp_path / name, images, anns, ["tree", "house"])


def test_datamodule_batches_and_seeded_shuffle(tmp_path):
    from scenecomp.datamodule import SceneDataModule

    train, val = _many(tmp_path), _many(tmp_path, 3, "val")
    dm = SceneDataModule(train=str(train), val=str(val), resolution=16, max_objects=3, batch_size=4, seed=1)
    dm.setup("fit")
    assert dm.categories == ["tree", "house"]
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # 10 samples, batch 4, drop_last
    b = batches[0]
    assert b["image"].shape == (4, 3, 16, 16) and b["masks"].shape == (4, 3, 1, 16, 16)
    assert b["categories"].shape == (4, 3) and b["valid"].shape == (4, 3) and b["index"].shape == (4,)

    def order(seed):
        d = SceneDataModule(train=str(train), resolution=16, max_objects=3, batch_size=4, seed=seed)
        d.setup("fit")
        return [int(i) for batch in d.train_dataloader() for i in batch["index"]]

    assert order(1) == order(1) == [int(i) for batch in batches for i in batch["index"]]
    assert order(1) != order(2)
    val_batches = list(dm.val_dataloader())
    assert [len(v["index"]) for v in val_batches] == [3]  # no drop_last, no shuffle
    assert val_batches[0]["index"].tolist() == [0, 1, 2]
    # a dataset no larger than a batch keeps all of it
    small = SceneDataModule(train=str(val), resolution=16, batch_size=4)
    assert [len(b["index"]) for b in small.train_dataloader()] == [3]
    assert small.val_dataloader() == []


def test_datamodule_check_fails_early(tmp_path):
    from scenecomp.datamodule import SceneDataModule

    train = _many(tmp_path)
    with pytest.raises(DataError, match="unknown category 'zebra'; known: tree, house"):
        SceneDataModule(train=str(train), categories=["zebra"]).check()
    with pytest.raises(DataError, match="missing.json: annotations file not found"):
        SceneDataModule(train=str(train), val=str(tmp_path / "missing.json")).check()


def test_importing_data_leaves_lightning_out():
    code = "import sys, scenecomp.data; print(sorted(m for m in sys.modules if m.split('.')[0] == 'lightning'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- command line
def test_coco_subcommand_end_to_end(tmp_path, mixed, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "coco",
                "--annotations",
                str(mixed),
                "--images",
                str(mixed.parent / "images"),
                "--out",
                str(out),
                "--categories",
                "house,tree",
                "--size",
                "24",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "wrote 2 images (24x24)" in printed and "house, tree" in printed

    coco = COCO(str(out / "annotations.json"))
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == [(1, "house"), (2, "tree")]
    info = coco.dataset["info"]
    assert info["paint_order"] == "annotation_order" and "largest first" in info["note"]
    assert len(coco.getImgIds()) == 2  # the tall image has only a sun
    for image in coco.loadImgs(coco.getImgIds()):
        assert image["height"] == image["width"] == 24
        assert Image.open(out / "images" / image["file_name"]).size == (24, 24)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        areas = [a["area"] for a in anns]
        assert areas == sorted(areas, reverse=True) and min(areas) > 0
        for a in anns:
            assert isinstance(a["segmentation"]["counts"], str)  # compressed RLE
            assert coco.annToMask(a).shape == (24, 24) and coco.annToMask(a).sum() == a["area"]

    # the prepared subset reads back as the same samples as the source
    src = SceneDataset(mixed, categories=["house", "tree"], resolution=24)
    prepared = SceneDataset(out, resolution=24)
    assert prepared.categories == ["house", "tree"] and len(prepared) == len(src)
    for i in range(len(src)):
        a, b = src[i], prepared[i]
        assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["categories"], b["categories"])
        assert torch.allclose(a["image"], b["image"])


def test_coco_subcommand_max_objects_and_limit(tmp_path, mixed):
    out = tmp_path / "out"
    main(["coco", "--annotations", str(mixed), "--out", str(out), "--size", "16", "--max-objects", "1", "--limit", "2"])
    data = json.loads((out / "annotations.json").read_text())
    assert len(data["images"]) == 2 and len(data["annotations"]) == 2
    assert [c["name"] for c in data["categories"]] == ["tree", "house", "sun"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["coco", "--annotations", "{tmp}/missing.json", "--out", "{tmp}/o"],
            "missing.json: annotations file not found",
        ),
        (
            ["coco", "--annotations", "{mixed}", "--out", "{tmp}/o", "--categories", "zebra"],
            "unknown category 'zebra'; known: tree, house, sun",
        ),
        (["coco", "--annotations", "{mixed}", "--out", "{tmp}/o", "--size", "0"], "--size must be a positive integer"),
        (["shapes", "--out", "{tmp}/s", "--count", "0"], "--count must be a positive integer"),
        (["coco", "--annotations", "{mixed}", "--out", "{tmp}/mixed"], "holds the source images or annotations"),
        (["coco", "--annotations", "{mixed}", "--out", "{tmp}", "--overwrite"], "holds the source images"),
        (
            ["shapes", "--out", "{tmp}/s", "--count", "2", "--seed", "-1"],
            "--seed must be a non-negative integer, got -1",
        ),
    ],
)
def test_cli_errors_exit_2_without_traceback(tmp_path, mixed, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, mixed=mixed) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("scenecomp-data: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "o" / "annotations.json").exists()


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "scenecomp-data coco --annotations" in capsys.readouterr().out


def test_shapes_subcommand(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["shapes", "--out", str(out), "--count", "6", "--size", "32", "--seed", "0"]) == 0
    assert "wrote 6 scenes" in capsys.readouterr().out
    ds = SceneDataset(out, resolution=32)
    assert ds.categories == ["tree", "house", "sun", "cloud", "rock"] and ds.has_paint_order
    assert ds[0]["image"].shape == (3, 32, 32)


# --------------------------------------------------------------------------- a data set is written as a whole
def shapes_cli(out, *extra):
    return main(["shapes", "--out", str(out), "--count", "3", "--size", "32", "--seed", "0", *map(str, extra)])


def siblings(out):
    return sorted(p.name for p in out.parent.iterdir())


@pytest.mark.parametrize("command", ["shapes", "coco"])
def test_a_non_empty_out_is_refused_and_overwrite_replaces_it_whole(tmp_path, mixed, capsys, command):
    """Issue 13, defect 8: stale images were left beside a new annotations.json."""
    out = tmp_path / "data"
    (out / "images").mkdir(parents=True)
    (out / "images" / "999999.png").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    if command == "shapes":
        run = lambda *extra: shapes_cli(out, *extra)  # noqa: E731
    else:

        def run(*extra):
            return main(
                [
                    "coco",
                    "--annotations",
                    str(mixed),
                    "--out",
                    str(out),  # noqa: E731
                    "--size",
                    "16",
                    *extra,
                ]
            )

    with pytest.raises(SystemExit) as e:
        run()
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{out}: folder is not empty; choose another --out, or --overwrite" in err
    assert sorted(p.name for p in out.rglob("*")) == ["999999.png", "images", "notes.txt"]  # untouched

    assert run("--overwrite") == 0
    assert not (out / "notes.txt").exists() and not (out / "images" / "999999.png").exists()
    assert SceneDataset(out, resolution=16).categories  # a whole data set
    assert siblings(out) == ["data", "mixed"]  # no temporary folder left beside it


def test_an_empty_out_folder_is_fine(tmp_path):
    (tmp_path / "data").mkdir()
    assert shapes_cli(tmp_path / "data") == 0 and (tmp_path / "data" / "annotations.json").is_file()


def test_a_crash_while_writing_leaves_the_old_data_set_whole(tmp_path, monkeypatch, capsys):
    import scenecomp.shapes as shapes

    out = tmp_path / "data"
    assert shapes_cli(out) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def crash(job):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shapes, "_render_range", crash)
    with pytest.raises(SystemExit) as e:
        main(["shapes", "--out", str(out), "--count", "5", "--size", "32", "--overwrite"])
    assert e.value.code == 2 and "No space left on device" in capsys.readouterr().err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert siblings(out) == ["data"]

    with pytest.raises(OSError):  # a fresh folder is not created half-written either
        shapes.write_dataset(tmp_path / "new", 5, size=32)
    assert siblings(out) == ["data"]
