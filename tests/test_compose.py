"""Composition API: scenes, edits and their locality, the cache, batched rendering, seeds, bundles, errors.

The networks are tiny and untrained but real (conftest.make_tiny_nets), with
widened FiLM layers so that the output visibly depends on every seed.
"""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from safetensors.torch import save_file

import scenecomp.compose as compose
from conftest import make_tiny_nets
from scenecomp import Composer, CompositionError, Layout, LayoutError, Scene
from scenecomp.compose import BundleError, bundle_dict, load_bundle, object_seed, paint_layers, save_bundle
from scenecomp.layout import LayoutObject
from scenecomp.precision import cpu_has_fast_bf16

R = 16
CATEGORIES = ["tree", "house", "sun"]


@pytest.fixture(scope="module")
def composer():
    # float32: several tests compare images across batch sizes and paths to 1e-5 or exactly
    return Composer(*make_tiny_nets(), CATEGORIES, dtype=torch.float32)


def box(x, y, w, h):
    m = np.zeros((R, R), bool)
    m[y : y + h, x : x + w] = True
    return m


BOXES = [box(1, 1, 8, 8), box(5, 4, 6, 7), box(9, 2, 5, 5), box(3, 9, 9, 5)]


@pytest.fixture(scope="module")
def scene(composer):
    s = composer.background(3)
    for i, (cat, m) in enumerate(zip(["tree", "house", "sun", "tree"], BOXES, strict=False)):
        s = s.add(cat, m, seed=10 + i)
    return s


def union(*masks):
    return np.logical_or.reduce([np.asarray(m, bool) for m in masks])


def assert_same_outside(a, b, inside):
    outside = torch.from_numpy(~inside)
    assert torch.equal(a[:, outside], b[:, outside])


def count_calls(net):
    calls = []
    return calls, net.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))


def rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [R, R], "counts": r["counts"].decode("ascii")}


# ----------------------------------------------------------------------------- locality


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize(
    "edit",
    [
        dict(seed=99),
        dict(category="next"),
        dict(mask=box(0, 10, 5, 5)),
        dict(category="house", mask=box(10, 10, 6, 6), seed=5),
    ],
)
def test_replace_changes_nothing_outside_the_masks_of_objects_k_onward(scene, k, edit):
    if edit.get("category") == "next":
        edit = dict(category=CATEGORIES[(CATEGORIES.index(scene.objects[k].category) + 1) % 3])
    new = scene.replace(k, **edit)
    inside = union(*(o.mask for o in scene.objects[k:]), *(o.mask for o in new.objects[k:]))
    assert_same_outside(new.image, scene.image, inside)
    assert not torch.equal(new.image, scene.image)
    for t in range(k + 1):  # the background and the canvases before object k: the same tensors
        assert new._canvases[t] is scene._canvases[t]
    others = [i for i in range(len(scene)) if i != k]
    assert [new.objects[i].seed for i in others] == [scene.objects[i].seed for i in others]


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("dx, dy, scale", [(2, 1, 1.0), (-3, 0, 1.0), (0, 0, 0.5), (1, -2, 1.5), (0.4, 0.6, 1.0)])
def test_move_changes_nothing_outside_old_and_new_masks(scene, k, dx, dy, scale):
    new = scene.move(k, dx, dy, scale)
    inside = union(*(o.mask for o in scene.objects[k:]), *(o.mask for o in new.objects[k:]))
    assert_same_outside(new.image, scene.image, inside)
    assert torch.equal(new.steps[0], scene.steps[0])
    assert new.objects[k].seed == scene.objects[k].seed and new.objects[k].category == scene.objects[k].category


def test_move_shifts_and_scales_the_mask(scene):
    moved = scene.move(2, dx=2, dy=3).objects[2].mask  # box(9, 2, 5, 5) -> box(11, 5, 5, 5)
    assert np.array_equal(moved, box(11, 5, 5, 5))
    assert np.array_equal(scene.move(2, dx=5).objects[2].mask, box(14, 2, 2, 5))  # clipped at the edge
    assert np.array_equal(scene.move(0, scale=0.5).objects[0].mask, box(3, 3, 4, 4))  # about the box centre
    assert np.array_equal(scene.move(0, scale=2.0).objects[0].mask, box(0, 0, 13, 13))
    assert scene.move(0, 0, 0) is scene


def test_remove_reorder_and_background_are_local_where_they_should_be(scene):
    removed = scene.remove(1)
    inside = union(*(o.mask for o in scene.objects[1:]))
    assert_same_outside(removed.image, scene.image, inside)
    assert len(removed) == 3 and [o.seed for o in removed.objects] == [10, 12, 13]
    assert torch.equal(scene.remove(3).image, scene.steps[3])

    swapped = scene.reorder(0, 2)
    assert [o.seed for o in swapped.objects] == [11, 12, 10, 13]
    assert [o.seed for o in scene.reorder(3, 0).objects] == [13, 10, 11, 12]
    assert [o.seed for o in scene.reorder(0, -1).objects] == [11, 12, 13, 10]
    assert_same_outside(swapped.image, scene.image, union(*BOXES))
    assert scene.reorder(1, 1) is scene

    other = scene.with_background(4)
    assert not torch.equal(other.steps[0], scene.steps[0])
    assert [o.seed for o in other.objects] == [o.seed for o in scene.objects]
    assert torch.equal(other.with_background(3).image, scene.image)
    assert scene.with_background(3) is scene


def test_scenes_are_immutable(scene):
    before = scene.image.clone()
    scene.replace(0, seed=1).remove(2).move(1, 1, 1)
    assert torch.equal(scene.image, before)
    with pytest.raises(AttributeError, match="immutable"):
        scene.foo = 1
    scene.image.add_(1)  # a copy: the cache is untouched
    scene.steps[0].add_(1)
    assert torch.equal(scene.image, before)
    with pytest.raises(ValueError, match="read-only"):
        scene.objects[0].mask[0, 0] = True
    with pytest.raises(TypeError, match="composer.background"):
        Scene()


# ----------------------------------------------------------------------------- the cache


def test_edits_rerun_only_the_objects_from_the_first_change(composer, scene):
    fg_calls, h1 = count_calls(composer.foreground_net)
    bg_calls, h2 = count_calls(composer.background_net)
    try:
        T = len(scene)
        for k in range(T):
            fg_calls.clear()
            scene.replace(k, seed=1000)
            assert len(fg_calls) == T - k
            fg_calls.clear()
            scene.move(k, 1, 0)
            assert len(fg_calls) == T - k
            fg_calls.clear()
            scene.remove(k)
            assert len(fg_calls) == T - 1 - k
        fg_calls.clear()
        scene.reorder(3, 1)
        assert len(fg_calls) == 3
        fg_calls.clear()
        scene.add("sun", box(0, 0, 3, 3))
        assert fg_calls == [1]
        assert bg_calls == []
        fg_calls.clear()
        scene.with_background(8)
        assert len(fg_calls) == T and bg_calls == [1]
    finally:
        h1.remove()
        h2.remove()


# ----------------------------------------------------------------------------- seeds


def test_same_seeds_same_image_different_seeds_differ(composer, scene):
    again = composer.background(3)
    for i, (cat, m) in enumerate(zip(["tree", "house", "sun", "tree"], BOXES, strict=False)):
        again = again.add(cat, m, seed=10 + i)
    assert torch.equal(again.image, scene.image)
    assert not torch.equal(composer.background(4).image, composer.background(3).image)
    a = composer.background(3).add("tree", BOXES[0], seed=1)
    b = composer.background(3).add("tree", BOXES[0], seed=2)
    assert not torch.equal(a.image, b.image)
    assert_same_outside(a.image, b.image, BOXES[0])


def test_derived_seeds_follow_the_documented_rule(composer):
    s = composer.background(7).add("tree", BOXES[0]).add("sun", BOXES[1], seed=5).add("house", BOXES[2])
    assert [o.seed for o in s.objects] == [7 * 1_000_003 + 1, 5, 7 * 1_000_003 + 3]
    assert object_seed(7, 2) == 7 * 1_000_003 + 3 and object_seed(2**32 - 1, 0) == (1_000_003 * (2**32 - 1) + 1) % 2**32
    # a layout without seeds renders like the scene built without seeds, its sample seed as background seed
    bare = Layout((R, R), [LayoutObject(o.category, {"rle": rle(o.mask)}) for o in s.objects])
    bare.objects[1] = LayoutObject("sun", {"rle": rle(BOXES[1])}, 5)
    assert torch.equal(composer.render(bare, seeds=7), s.image.float())
    assert torch.equal(composer.scene(bare, seed=7).image, s.image)
    # seeds fill in only what a layout leaves unset
    fixed = s.layout()
    one, two = composer.render(fixed, seeds=[0, 1])
    assert torch.equal(one, two)
    r = next(composer.render_iter([bare], seeds=[7]))
    assert r.layout.background_seed == 7 and [o.seed for o in r.layout.objects] == [o.seed for o in s.objects]


# ----------------------------------------------------------------------------- batched rendering


def layouts():
    return [
        Layout((R, R), [], background_seed=None),
        Layout((R, R), [LayoutObject("tree", {"bbox": [2, 2, 6, 6]}, 3)]),
        Layout(
            (R, R),
            [
                LayoutObject("sun", {"polygon": [[1, 1], [14, 2], [8, 14]]}),
                LayoutObject("house", {"bbox": [6, 6, 9, 9]}, 4),
                LayoutObject("tree", {"rle": rle(box(0, 8, 7, 8))}),
            ],
            background_seed=2,
        ),
        Layout((2 * R, 2 * R), [LayoutObject("house", {"bbox": [4, 4, 20, 12]})]),  # scaled to R
    ]


def test_render_of_a_batch_equals_each_layout_alone(composer):
    seeds = [0, 5]
    alone = [[composer.scene(layout, seed=s).image for s in seeds] for layout in layouts()]
    for batch_size in (1, 2, 3, 16):
        images = composer.render(layouts(), seeds=seeds, batch_size=batch_size)
        assert len(images) == 4 and all(len(per) == 2 for per in images)
        for per_layout, ref in zip(images, alone, strict=False):
            for image, expected in zip(per_layout, ref, strict=False):
                assert image.shape == (3, R, R) and image.dtype == torch.float32
                torch.testing.assert_close(image, expected, atol=1e-5, rtol=0)
    # one image per layout without seeds; exact at batch size 1
    flat = composer.render(layouts(), batch_size=1)
    assert all(torch.equal(a, b[0]) for a, b in zip(flat, alone, strict=False))


def test_render_iter_returns_steps_and_seeds(composer):
    results = list(composer.render_iter(iter(layouts()), seeds=[1, 2], batch_size=3, steps=True))
    assert [(r.index, r.seed) for r in results] == [(i, s) for i in range(4) for s in (1, 2)]
    for r, layout in zip(results, [layout for layout in layouts() for _ in (1, 2)], strict=False):
        assert len(r.steps) == len(layout.objects) + 1 and torch.equal(r.steps[-1], r.image)
        assert r.layout.background_seed is not None and all(o.seed is not None for o in r.layout.objects)
        # the recorded seeds give the same bits in a call of the same batch shape, whatever else
        # is in it (float rounding follows the shape, not the neighbours; render/batching.py relies
        # on this); across batch shapes only to rounding (test_render_of_a_batch_equals_each_layout_alone)
        assert torch.equal(composer.render([r.layout] * 3, batch_size=3)[0], r.image)
    assert results[4].layout.background_seed == 2 and results[0].layout.background_seed == 1


def test_render_iter_paints_the_objects_onto_given_backgrounds(composer):
    plain = list(composer.render_iter(layouts(), batch_size=3, steps=True))
    # the composer's own backgrounds given back: the same images, to the bit
    own = [r.steps[0] for r in plain]
    again = list(composer.render_iter(layouts(), batch_size=3, steps=True, backgrounds=own))
    assert all(torch.equal(a.image, b.image) for a, b in zip(plain, again, strict=True))
    # any other canvas: kept outside the objects, the objects painted to fit it (G_fg sees the canvas)
    grey = [torch.full((3, R, R), 0.3 - 0.2 * i) for i in range(len(own))]
    onto = list(composer.render_iter(layouts(), batch_size=3, steps=True, backgrounds=grey))
    for r, canvas, before in zip(onto, grey, plain, strict=True):
        inside = torch.from_numpy(r.layout.masks((R, R)).any(0)).expand(3, -1, -1)
        assert torch.equal(r.steps[0], canvas) and torch.equal(r.image[~inside], canvas[~inside])
        assert not inside.any() or not torch.equal(r.image[inside], before.image[inside])
    for bad, shown in (
        (torch.zeros(3, R, R, dtype=torch.uint8), "torch.uint8"),
        (torch.zeros(3, R + 1, R), f"[3, {R + 1}, {R}]"),
        (torch.full((3, R, R), 1.5), "in [1.5, 1.5]"),
        (np.zeros((3, R, R)), "ndarray"),
    ):
        with pytest.raises(CompositionError, match=re.escape(shown)):
            list(composer.render_iter(layouts()[:1], backgrounds=[bad]))
    with pytest.raises(CompositionError, match="fewer backgrounds than layouts"):
        list(composer.render_iter(layouts(), backgrounds=own[:1]))


def test_an_empty_mask_changes_nothing(composer):
    z_bg, z = torch.randn(2, 8), torch.randn(2, 3, 8)
    masks = torch.from_numpy(np.stack([BOXES[:3], BOXES[1:4]])).float()[:, :, None]
    cats = torch.tensor([[0, 1, 2], [2, 1, 0]])
    with torch.inference_mode():
        plain = paint_layers(composer.background_net, composer.foreground_net, z_bg, z, masks, cats)
        padded = paint_layers(
            composer.background_net,
            composer.foreground_net,
            z_bg,
            torch.cat([z[:, :1], torch.randn(2, 1, 8), z[:, 1:]], 1),
            torch.cat([masks[:, :1], torch.zeros(2, 1, 1, R, R), masks[:, 1:]], 1),
            torch.cat([cats[:, :1], torch.tensor([[1], [2]]), cats[:, 1:]], 1),
        )
    assert torch.equal(plain[-1], padded[-1]) and torch.equal(plain[1], padded[2])
    # a layout object that covers no pixel at the composer's resolution is reported, and paints nothing
    tiny = Layout(
        (4 * R, 4 * R),
        [
            LayoutObject("tree", {"bbox": [0, 0, 20, 20]}, 1),
            LayoutObject("sun", {"bbox": [41, 41, 1, 1]}, 2),
            LayoutObject("house", {"bbox": [24, 24, 36, 36]}, 3),
        ],
        background_seed=0,
    )
    without = Layout(tiny.size, [tiny.objects[0], tiny.objects[2]], background_seed=0)
    r = next(composer.render_iter([tiny]))
    assert r.empty == (1,)
    assert torch.equal(r.image, composer.render(without))
    with pytest.raises(LayoutError, match="object 1: covers no pixel at the composer's resolution 16x16"):
        composer.scene(tiny)


# ----------------------------------------------------------------------------- layout and files


def test_render_of_scene_layout_reproduces_the_image(composer, scene):
    layout = scene.layout()
    assert layout.size == (R, R) and layout.background_seed == 3
    assert [o.seed for o in layout.objects] == [10, 11, 12, 13]
    assert np.array_equal(layout.masks() > 0.5, np.stack([o.mask for o in scene.objects]))
    assert torch.equal(composer.render(layout), scene.image)
    reparsed = Layout.from_dict(json.loads(json.dumps(layout.to_dict())))
    assert torch.equal(composer.render(reparsed), scene.image)
    assert torch.equal(composer.scene(reparsed).image, scene.image)


def test_save_layers_writes_steps_masks_and_a_layout_that_renders_the_same(composer, scene, tmp_path):
    out = scene.save_layers(tmp_path / "layers")
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "layout.json",
        "mask_01.png",
        "mask_02.png",
        "mask_03.png",
        "mask_04.png",
        "step_00.png",
        "step_01.png",
        "step_02.png",
        "step_03.png",
        "step_04.png",
    ]
    for t in range(5):
        assert np.array_equal(np.asarray(Image.open(out / f"step_{t:02d}.png")), np.asarray(scene.to_pil(t)))
    for t, obj in enumerate(scene.objects, 1):
        assert np.array_equal(np.asarray(Image.open(out / f"mask_{t:02d}.png")) > 0, obj.mask)
    layout = Layout.load(out / "layout.json", CATEGORIES)
    assert torch.equal(composer.render(layout), scene.image)
    assert torch.equal(composer.render(out / "layout.json"), scene.image)
    scene.remove(0).remove(0).save_layers(out)  # a shorter scene leaves no stale layers behind
    assert sorted(p.name for p in out.iterdir()) == [
        "layout.json",
        "mask_01.png",
        "mask_02.png",
        "step_00.png",
        "step_01.png",
        "step_02.png",
    ]


def test_to_pil(scene):
    image = scene.to_pil()
    assert image.size == (R, R) and image.mode == "RGB"
    expected = ((scene.image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(image), expected)
    assert np.array_equal(np.asarray(scene.to_pil(0)), np.asarray(scene.to_pil(-5)))
    with pytest.raises(CompositionError, match=r"step 5 out of range: the scene has 5 steps \(0 = background .. 4"):
        scene.to_pil(5)


# ----------------------------------------------------------------------------- mask forms


def test_every_mask_form_gives_the_same_object(composer, tmp_path):
    m = box(3, 4, 7, 5)
    png = tmp_path / "m.png"
    Image.fromarray(m.astype(np.uint8) * 200).save(png)
    rgb = np.zeros((R, R, 3), np.uint8)
    rgb[m] = [250, 200, 0]  # PIL images follow the mask-file rule: luminance > 127 here
    forms = [
        m,
        m.astype(np.float32),
        m.astype(np.uint8)[None],
        torch.from_numpy(m),
        torch.from_numpy(m).float()[None],
        Image.fromarray(m.astype(np.uint8) * 255),
        Image.fromarray(m),
        Image.fromarray(rgb),
        Image.fromarray(np.dstack([np.zeros((R, R, 3), np.uint8), m.astype(np.uint8) * 255]), "RGBA"),
        Image.fromarray(np.dstack([rgb, np.full((R, R), 255, np.uint8)]), "RGBA"),  # opaque: luminance
        {"bbox": [3, 4, 7, 5]},
        {"polygon": [[3, 4], [10, 4], [10, 9], [3, 9]]},
        {"rle": rle(m)},
        {"mask": str(png)},
    ]
    base = composer.background(0)
    reference = base.add("tree", m, seed=1)
    for form in forms:
        s = base.add("tree", form, seed=1)
        assert np.array_equal(s.objects[0].mask, m), type(form)
        assert torch.equal(s.image, reference.image)
    big = np.zeros((4 * R, 4 * R), np.uint8)
    big[16:36, 12:40] = 1  # an RLE or a mask file of another size is scaled, nearest neighbour
    Image.fromarray(big * 255).save(tmp_path / "big.png")
    assert np.array_equal(base.add("sun", {"mask": str(tmp_path / "big.png")}).objects[0].mask, box(3, 4, 7, 5))
    assert base.add(2, m).objects[0].category == "sun"


# ----------------------------------------------------------------------------- errors


def test_error_messages(composer, scene, tmp_path):
    base = composer.background(0)
    cases = [
        (
            lambda: base.add("tre", BOXES[0]),
            "unknown category 'tre' (did you mean 'tree'?); known categories: tree, house, sun",
        ),
        (lambda: scene.replace(0, category="car"), "unknown category 'car'; known categories: tree, house, sun"),
        (
            lambda: base.add(3, BOXES[0]),
            "category index 3 out of range: this composer has 3 categories (tree, house, sun)",
        ),
        (lambda: base.add("tree", np.zeros((R, R), bool)), "mask is empty: it covers no pixel of the 16x16 canvas"),
        (lambda: base.add("tree", {"bbox": [20, 20, 4, 4]}), "mask is empty"),
        (lambda: scene.replace(1, mask=torch.zeros(R, R)), "mask is empty"),
        (
            lambda: base.add("tree", np.ones((8, 8), bool)),
            "mask is 8x8 (height x width) but this composer paints 16x16; resize it to 16x16 first",
        ),
        (lambda: base.add("tree", Image.new("L", (R, 2 * R), 255)), "mask is 32x16 (height x width)"),
        (lambda: base.add("tree", Image.new("RGBA", (R, R), (255, 255, 255, 255))), "mask is empty"),  # flat
        (lambda: base.add("t" * 10**7, BOXES[0]), "unknown category 'tttttttt"),
        (lambda: base.add([1, 2], BOXES[0]), "unknown category of type list; known categories"),
        (lambda: base.add("tree", np.ones((2, R, R))), "mask must be [H, W] or [1, H, W], got shape [2, 16, 16]"),
        (lambda: base.add("tree", BOXES[0] * 255), "mask values must be 0 and 1 (or bool), got values from 0 to 255"),
        (lambda: base.add("tree", np.full((R, R), np.nan)), "mask values must be 0 and 1"),
        (
            lambda: base.add("tree", "tree.png"),
            "mask must be a numpy array, a torch tensor, a PIL image or a shape dict (polygon, bbox, rle, mask), got str",
        ),
        (lambda: base.add("tree", {"bbox": [1, 2, 3]}), "mask: bbox must be [x, y, width, height]"),
        (lambda: base.add("tree", {"mask": str(tmp_path / "nope.png")}), "nope.png' not found"),
        (lambda: scene.replace(4, seed=1), "object index 4 out of range: the scene has 4 objects (0..3, or -4..-1)"),
        (lambda: scene.remove(-5), "object index -5 out of range"),
        (lambda: base.remove(0), "object index 0 out of range: the scene has no objects"),
        (lambda: scene.move(7, 1, 1), "object index 7 out of range"),
        (lambda: scene.reorder(0, 4), "target position 4 out of range"),
        (lambda: scene.replace(1.0), "object index must be an integer, got 1.0"),
        (lambda: scene.move(2, dx=20), "move: object 2 (sun) would leave the 16x16 canvas entirely"),
        (lambda: scene.move(0, scale=0), "move: scale must be positive"),
        (lambda: scene.move(0, dx=float("nan")), "move: dx must be a finite number"),
        (lambda: base.add("tree", BOXES[0], seed=-1), "seed must be an integer in [0, 2**32), got -1"),
        (lambda: composer.background(2**32), "background seed must be an integer in [0, 2**32)"),
        (lambda: scene.with_background(True), "background seed must be an integer"),
        (lambda: composer.render(layouts(), seeds=[]), "seeds is an empty list"),
        (lambda: composer.render(layouts(), batch_size=0), "batch_size must be a positive integer"),
        (lambda: composer.render_iter(layouts(), seeds=[-2]), "seed must be an integer in [0, 2**32), got -2"),
        (lambda: composer.render([42]), "expected a Layout or a layout file's path, got int"),
        (lambda: composer.to(dtype=torch.int32), 'dtype must be "auto" or a floating torch dtype'),
        (lambda: composer.to(dtype="fast"), 'dtype must be "auto" or a floating torch dtype'),
    ]
    for call, message in cases:
        with pytest.raises(CompositionError) as info:
            call()
        assert message in str(info.value), (message, str(info.value)[:500])
        assert len(str(info.value)) < 400  # a huge input is cut short, not echoed
    bad = Layout(
        (R, R),
        [LayoutObject("tree", {"bbox": [0, 0, 4, 4]}), LayoutObject("hous", {"bbox": [0, 0, 4, 4]})],
        path=tmp_path / "bad.json",
    )
    with pytest.raises(
        LayoutError,
        match=r"bad.json: object 1: unknown category 'hous' \(did you mean 'house'\?\); "
        "known categories: tree, house, sun",
    ):
        composer.render([bad])
    bg, fg = make_tiny_nets()
    with pytest.raises(CompositionError, match="the foreground generator knows 3 categories but 2 names were given"):
        Composer(bg, fg, ["a", "b"])
    with pytest.raises(CompositionError, match="categories must be distinct"):
        Composer(bg, fg, ["a", "b", "a"])


# ----------------------------------------------------------------------------- precision and devices


def test_reduced_precision_keeps_locality(scene):
    half = Composer(*make_tiny_nets(), CATEGORIES, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    s = half.background(3)
    for i, (cat, m) in enumerate(zip(["tree", "house", "sun", "tree"], BOXES, strict=False)):
        s = s.add(cat, m, seed=10 + i)
    assert s.image.dtype == torch.bfloat16
    assert (s.image.float() - scene.image).abs().max() < 0.1
    new = s.replace(2, seed=50)
    assert_same_outside(new.image, s.image, union(*BOXES[2:]))
    assert composer_render_dtype(half, s) == torch.float32
    half.to(dtype=torch.float32)  # scenes made before follow on their next edit
    assert s.replace(3, seed=1).image.dtype == torch.float32


FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from scenecomp.precision import keep_freed_memory
    torch.set_num_threads(1)
    kept = keep_freed_memory() if sys.argv[1] == "keep" else None
    x = torch.randn(16, 256, 64, 64)  # 64 MiB, as one layer of a 64x64 batch of 32 with 128 channels
    for _ in range(10):  # warm: up to 3 of the first 10 results faulted in 64 MiB afresh with no munmap, madvise
        torch.relu(x)  # or brk between them (strace): placed on heap not touched before; after that, none
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.relu(x)  # allocated and freed again: the same 64 MiB
    print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def test_the_tools_keep_freed_memory_so_a_batch_does_not_fault_its_pages_in_again():
    """glibc maps a block above 32 MiB fresh every time and unmaps it when freed, so each of its 4 KiB pages
    faults in again (16,384 faults for 64 MiB), every batch; after `keep_freed_memory` the block is reused."""
    faults = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True).stdout
        kept, faults[mode] = out.split()
        assert kept == {"default": "None", "keep": "True"}[mode]
    assert int(faults["default"]) >= 10 * 16384 and int(faults["keep"]) < 1000, faults


def composer_render_dtype(composer, scene):
    return composer.render(scene.layout()).dtype


def test_default_dtype_is_bf16_exactly_where_the_cpu_multiplies_bf16_natively(tmp_path):
    expected = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    made = Composer(*make_tiny_nets(), CATEGORIES)
    path = tmp_path / "composer.safetensors"
    save_bundle(path, bundle_dict(CATEGORIES, background=made.background_net, foreground=made.foreground_net))
    loaded = Composer.from_checkpoint(path)
    assert made.dtype == loaded.dtype == expected
    assert loaded.to(dtype=torch.float32).dtype == torch.float32 and loaded.to(dtype="auto").dtype == expected
    convs = [p for p in loaded.foreground_net.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


def test_bf16_edits_are_bit_exact_outside_the_edited_masks():
    half = Composer(*make_tiny_nets(), CATEGORIES, dtype=torch.bfloat16)
    s = half.background(3)
    for i, (cat, m) in enumerate(zip(["tree", "house", "sun", "tree"], BOXES, strict=False)):
        s = s.add(cat, m, seed=10 + i)
    for k in range(4):
        assert_same_outside(s.replace(k, seed=99).image, s.image, union(*BOXES[k:]))
        assert_same_outside(s.replace(k, category="house" if k != 1 else "sun").image, s.image, union(*BOXES[k:]))
    moved = s.move(1, dx=3, dy=-2)
    assert_same_outside(moved.image, s.image, union(*BOXES[1:], moved.objects[1].mask))
    # rendered in a batch, each image equals its scene exactly, outside the masks and in
    images = half.render([s.layout(), s.replace(2, seed=5).layout()], batch_size=2)
    assert torch.equal(images[0], s.image.float())


# ----------------------------------------------------------------------------- bundles


def test_bundle_round_trip_in_a_fresh_process_imports_neither_hydra_nor_lightning(composer, scene, tmp_path):
    path = tmp_path / "composer.safetensors"
    save_bundle(path, bundle_dict(CATEGORIES, background=composer.background_net, foreground=composer.foreground_net))
    out = tmp_path / "image.pt"
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        from scenecomp import Composer
        c = Composer.from_checkpoint({str(path)!r}, dtype=torch.float32)
        assert c.categories == {tuple(CATEGORIES)!r} and c.resolution == {R}
        s = c.background(3)
        boxes = {[[1, 1, 8, 8], [5, 4, 6, 7], [9, 2, 5, 5], [3, 9, 9, 5]]}
        for i, (cat, box) in enumerate(zip(["tree", "house", "sun", "tree"], boxes)):
            s = s.add(cat, {{"bbox": box}}, seed=10 + i)
        assert torch.equal(c.render(s.layout()), s.image)
        torch.save(s.image.clone(), {str(out)!r})
        loaded = [m for m in sys.modules if m.split(".")[0] in ("hydra", "lightning", "pytorch_lightning", "omegaconf")]
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert torch.equal(torch.load(out), scene.image)


def test_bundle_errors_name_the_file(composer, tmp_path, monkeypatch):
    not_bundle = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, not_bundle)
    with pytest.raises(BundleError, match=f"{not_bundle}: a pickled torch file .* never run code"):
        load_bundle(not_bundle)  # an old bundle, or anything torch.save wrote: refused unread
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(BundleError, match=f"{foreign}: a safetensors file without scenecomp's metadata"):
        load_bundle(foreign)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(BundleError, match=f"{text}: not a readable scenecomp bundle"):
        Composer.from_checkpoint(text)
    data = bundle_dict(CATEGORIES, background=composer.background_net, foreground=composer.foreground_net)
    future = tmp_path / "future.pt"
    save_bundle(future, {**data, "version": 3})
    with pytest.raises(BundleError, match=f"{future}: bundle version .*3.*, this scenecomp reads version 2"):
        Composer.from_checkpoint(future)
    with pytest.raises(BundleError, match="no such file"):
        Composer.from_checkpoint(tmp_path / "missing.pt")
    no_fg = tmp_path / "no_fg.pt"
    save_bundle(no_fg, bundle_dict(CATEGORIES, background=composer.background_net))
    with pytest.raises(BundleError, match=f"{no_fg}: holds no 'foreground' network"):
        Composer.from_checkpoint(no_fg)
    wrong = tmp_path / "wrong.pt"
    save_bundle(wrong, {**data, "categories": ["a", "b"]})
    with pytest.raises(BundleError, match=f"{wrong}: the foreground generator knows 3 categories"):
        Composer.from_checkpoint(wrong)

    monkeypatch.setattr(compose, "DEFAULT_MODEL", tmp_path / "assets" / "composer.safetensors")
    with pytest.raises(FileNotFoundError, match="no default model is shipped with this scenecomp yet"):
        Composer.pretrained()
    (tmp_path / "assets").mkdir()
    save_bundle(tmp_path / "assets" / "composer.safetensors", data)
    assert Composer.pretrained().categories == tuple(CATEGORIES)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_diverged_bundle_is_refused_naming_the_tensor(composer, tmp_path, bad):
    """Issue 13, defect 6: NaN weights rendered all-black images with exit 0."""
    data = bundle_dict(CATEGORIES, half=True, background=composer.background_net, foreground=composer.foreground_net)
    key = next(k for k, v in data["networks"]["foreground"]["state_dict"].items() if v.is_floating_point())
    data["networks"]["foreground"]["state_dict"][key].view(-1)[0] = bad
    path = tmp_path / "diverged.pt"
    save_bundle(path, data)
    with pytest.raises(
        BundleError,
        match=rf"{path}: network 'foreground', tensor '{re.escape(key)}': 1 of \d+ "
        r"values are NaN or infinite \(the training diverged\)",
    ):
        Composer.from_checkpoint(path)


def test_a_lightning_checkpoint_points_to_the_run_bundle_and_a_run_folder_loads(composer, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    torch.save(
        {
            "epoch": 0,
            "global_step": 8,
            "pytorch-lightning_version": "2.5.0",
            "state_dict": {"g_bg.weight": torch.zeros(2)},
            "optimizer_states": [],
        },
        ckpt,
    )
    with pytest.raises(BundleError) as info:
        Composer.from_checkpoint(ckpt)
    assert str(info.value).startswith(f"{ckpt}: this is a Lightning training checkpoint")
    assert f"{run / 'composer.safetensors'}" in str(info.value)
    ckpt.write_bytes(b"not even a zip")  # unreadable, but its suffix still gets the hint
    with pytest.raises(BundleError, match="not a readable scenecomp bundle") as info:
        Composer.from_checkpoint(ckpt)
    assert str(info.value).endswith(
        f"load the bundle the run writes when it ends: {run / 'composer.safetensors'} "
        f"(or the run folder {run}; --checkpoint takes either)"
    )
    with pytest.raises(BundleError, match=rf"{re.escape(str(run / 'composer.safetensors'))}: no such file"):
        Composer.from_checkpoint(run)
    save_bundle(
        run / "composer.safetensors",
        bundle_dict(CATEGORIES, background=composer.background_net, foreground=composer.foreground_net),
    )
    assert Composer.from_checkpoint(run).categories == tuple(CATEGORIES)


def test_an_old_pickled_bundle_is_refused_and_export_bundle_converts_it(composer, tmp_path):
    """Bundles are safetensors (no pickle on load); tools/export_bundle.py converts an old ``.pt`` once."""
    old = tmp_path / "composer.pt"
    data = bundle_dict(CATEGORIES, background=composer.background_net, foreground=composer.foreground_net)
    torch.save({**data, "version": 1}, old)  # what scenecomp wrote before safetensors
    with pytest.raises(BundleError, match=f"{old}: a pickled torch file .* python tools/export_bundle.py {old}"):
        Composer.from_checkpoint(old)
    new = tmp_path / "composer.safetensors"
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "tools/export_bundle.py", str(old), "--out", str(new)],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=300,
    )
    converted = Composer.from_checkpoint(new, dtype=torch.float32)
    for mine, theirs in (
        (composer.background_net, converted.background_net),
        (composer.foreground_net, converted.foreground_net),
    ):
        assert all(
            torch.equal(a.float(), b)
            for a, b in zip(mine.state_dict().values(), theirs.state_dict().values(), strict=True)
        )
