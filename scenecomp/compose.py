"""Composition: a background from noise, then objects one at a time.

    from scenecomp import Composer
    composer = Composer.from_checkpoint("run/composer.safetensors")     # or Composer(G_bg, G_fg, categories)
    scene = composer.background(seed=0)                        # immutable Scene
    scene = scene.add("tree", {"polygon": [[10, 60], [20, 20], [30, 60]]}).add("house", box_mask, seed=2)
    scene = scene.replace(0, seed=7)       # new look for object 0; the background is not repainted
    scene.image, scene.steps, scene.to_pil(), scene.save_layers("out/"), scene.save_ora("scene.ora")
    images = composer.render(layouts, seeds=[0, 1])            # many layouts, batched

Seeds
-----
Each piece of noise comes from its own CPU generator,
``torch.randn(n, generator=torch.Generator().manual_seed(seed))``, moved to
the composer's device afterwards (``n`` is G_fg's ``noise_dim`` for an object: its ``z``, then, where
G_fg carries a foreground prior, one entry that picks the prior's component among its category's,
`ForegroundGenerator.latent`; and G_bg's ``noise_dim`` for the background: its style vector, then its per-pixel
grain, then, where G_bg carries a style prior, one entry that picks the prior's
component: `LayoutGenerator.latent`), so a seed gives the same noise at any batch size and on any device.
Seeds are integers in [0, 2**32). Where none is given:

- the background seed is the layout's ``background_seed`` if set, else the
  *sample seed* (the ``seeds`` argument of `Composer.render`, default 0);
- object ``i`` (0-based paint order) gets its own ``seed`` if set, else
  ``object_seed(background_seed, i) = (1_000_003 * background_seed + i + 1) % 2**32``.

`Scene.add` applies the same rule with the scene's background seed and the
index the object is added at, and the seed it picks is kept from then on (so
``with_background`` or ``remove`` leave every other object's noise alone).
`Scene.layout()` and `Rendering.layout` record every seed actually used, so
rendering them again reproduces the image. A fully seeded layout gives the same
image for every sample seed.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scenecomp.atomic import write_atomically
from scenecomp.bundle import BundleError, PickledFileError, load_tensors, save_tensors
from scenecomp.images import to_pil
from scenecomp.layout import (
    SEED_LIMIT,
    Layout,
    LayoutError,
    LayoutObject,
    check_seed,
    did_you_mean,
    encode_rle,
    image_mask,
    quote,
    rasterize,
)
from scenecomp.nets import ForegroundGenerator, LayoutGenerator, composite
from scenecomp.precision import auto_dtype

DEFAULT_MODEL = Path(__file__).parent / "assets" / "composer.safetensors"


def paint_layers(
    background: LayoutGenerator,
    foreground: ForegroundGenerator,
    z_background: torch.Tensor,
    z_objects: torch.Tensor,
    masks: torch.Tensor,
    categories: torch.Tensor,
    start: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """The data flow of docs/ARCHITECTURE.md, batched: every canvas from x0 to x_T.

    z_background ``[B,z]``, z_objects ``[B,K,z]``, masks ``[B,K,1,H,W]``,
    categories ``[B,K]`` -> ``K+1`` canvases ``[B,3,H,W]``. An empty mask is a
    no-op, so layouts with fewer objects are padded with empty ones. ``start``
    replaces the background (e.g. a cached canvas when an edit re-runs only
    the later objects).
    """
    canvas = background(z_background) if start is None else start
    canvases = [canvas]
    for k in range(masks.shape[1]):
        m = masks[:, k]
        painted = foreground(z_objects[:, k], categories[:, k], m, canvas * (1 - m))
        canvas = composite(canvas, painted, m)
        canvases.append(canvas)
    return canvases


# ----------------------------------------------------------------------------- seeds


def object_seed(background_seed: int, index: int) -> int:
    """The seed of object ``index`` (0-based paint order) when none is given:
    ``(1_000_003 * background_seed + index + 1) % 2**32``."""
    return (1_000_003 * int(background_seed) + int(index) + 1) % SEED_LIMIT


def noise(seed: int, size: int) -> torch.Tensor:
    """The noise vector ``[size]`` (float32, CPU) of one seed."""
    return torch.randn(size, generator=torch.Generator().manual_seed(int(seed)))


class CompositionError(ValueError):
    """Bad input to a `Composer` or a `Scene`: an unknown category (the known
    ones are listed), an empty mask, a mask of the wrong size, an object index
    out of range, a bad seed."""


# ----------------------------------------------------------------------------- composer


class Composer:
    """A background generator, a foreground generator and their category names.

    ``Composer(background, foreground, categories)`` takes the networks as
    they are (it puts them in eval mode and turns their gradients off);
    `from_checkpoint` loads a ``composer.safetensors`` bundle. All inference runs under
    ``torch.inference_mode()``. ``dtype="auto"`` (the default) is
    `scenecomp.precision.auto_dtype` of the device: bfloat16 on GPUs and on
    CPUs with native bf16 (AVX512-BF16 or AMX), float32 elsewhere; a torch
    dtype picks one, ``None`` keeps the networks' own. The outside of every
    mask stays bit-exact whatever the precision (`composite`). On CPU and CUDA
    the networks run in ``channels_last`` memory format.
    """

    def __init__(
        self,
        background: LayoutGenerator,
        foreground: ForegroundGenerator,
        categories,
        *,
        device=None,
        dtype: torch.dtype | str | None = "auto",
    ):
        categories = tuple(categories)
        if not categories or not all(isinstance(c, str) and c for c in categories):
            raise CompositionError(f"categories must be non-empty strings, got {list(categories)!r}")
        if len(set(categories)) != len(categories):
            raise CompositionError(f"categories must be distinct, got {list(categories)!r}")
        if foreground.num_categories != len(categories):
            raise CompositionError(
                f"the foreground generator knows {foreground.num_categories} categories "
                f"but {len(categories)} names were given: {list(categories)}"
            )
        if background.resolution != foreground.resolution:
            raise CompositionError(
                f"the background generator paints {background.resolution}x{background.resolution}"
                f" but the foreground generator {foreground.resolution}x{foreground.resolution}"
            )
        self.background_net = background.eval().requires_grad_(False)
        self.foreground_net = foreground.eval().requires_grad_(False)
        self._categories = categories
        self._index = {c: i for i, c in enumerate(categories)}
        self.to(device, dtype)

    # --- loading

    @classmethod
    def from_checkpoint(cls, path, device=None, dtype: torch.dtype | str | None = "auto") -> Composer:
        """Load a ``composer.safetensors`` bundle, or the one in a run folder (safetensors and
        JSON: loading runs no code; neither Hydra nor Lightning is imported). Raises
        `BundleError` naming the file when it is not a usable bundle (a Lightning
        ``last.ckpt``, NaN weights, ...)."""
        path = bundle_file(path)
        data = load_bundle(path)
        background = build_network(data, "background", path)
        foreground = build_network(data, "foreground", path)
        try:
            return cls(background, foreground, data["categories"], device=device, dtype=dtype)
        except CompositionError as e:
            raise BundleError(f"{path}: {e}") from None

    @classmethod
    def pretrained(cls, device=None, dtype: torch.dtype | str | None = "auto") -> Composer:
        """The model shipped inside the package (``scenecomp/assets/composer.safetensors``); no download."""
        if not DEFAULT_MODEL.is_file():
            raise FileNotFoundError(
                f"no default model is shipped with this scenecomp yet (looked for {DEFAULT_MODEL}); "
                "train one with scenecomp-train and load it with Composer.from_checkpoint('run/composer.safetensors')"
            )
        return cls.from_checkpoint(DEFAULT_MODEL, device=device, dtype=dtype)

    def to(self, device=None, dtype: torch.dtype | str | None = None) -> Composer:
        """Move the networks to ``device`` and/or cast them to ``dtype`` (a floating torch
        dtype, or ``"auto"``: see the class docstring), in place; returns self. Scenes made
        before keep working: their cached canvases follow on their next edit."""
        if isinstance(dtype, str) and dtype == "auto":
            dtype = auto_dtype(self.device if device is None else device)
        elif dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise CompositionError(
                f'dtype must be "auto" or a floating torch dtype such as torch.bfloat16, got {dtype!r}'
            )
        for net in (self.background_net, self.foreground_net):
            net.to(device=device, dtype=dtype)
        if self.device.type in ("cpu", "cuda"):
            # Measured on this project's AMD EPYC (shipped model, 1 thread, batch 32, 4 objects): channels_last renders
            # 2.2x faster in bf16 and 1.6x in fp32 than NCHW (oneDNN's blocked kernels); the inputs follow
            # the conv weights' format. CUDA: tensor-core convs prefer it too (not measured here).
            for net in (self.background_net, self.foreground_net):
                net.to(memory_format=torch.channels_last)
        return self

    # --- description

    @property
    def categories(self) -> tuple[str, ...]:
        """Category names; a category's index is its position here."""
        return self._categories

    @property
    def resolution(self) -> int:
        """Side of the square canvas, in pixels."""
        return self.foreground_net.resolution

    @property
    def device(self) -> torch.device:
        return next(self.foreground_net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.foreground_net.parameters()).dtype

    def __repr__(self) -> str:
        return (
            f"Composer(categories={list(self.categories)}, resolution={self.resolution}, "
            f"device={self.device}, dtype={self.dtype})"
        )

    # --- scenes

    def background(self, seed: int = 0) -> Scene:
        """A scene holding only the background painted from ``seed``."""
        seed = check_seed(seed, "background seed", CompositionError)
        return Scene._new(self, seed, (), tuple(self._paint(seed, ())))

    def scene(self, layout, seed: int = 0) -> Scene:
        """A `Scene` from a layout (a `Layout` or a layout file's path), to edit
        further; seeds as in the module docstring (``seed`` is the sample seed).
        Masks are rasterised at this composer's resolution; an object that
        then covers no pixel is an error (`render` paints nothing for it instead)."""
        layout = self._layout(layout)
        seed = check_seed(seed, "seed", CompositionError)
        seeded = self.seeded(layout, seed)
        masks = layout.masks((self.resolution, self.resolution)) > 0.5
        objects = []
        for i, (obj, mask) in enumerate(zip(seeded.objects, masks, strict=False)):
            if not mask.any():
                raise LayoutError(
                    f"covers no pixel at the composer's resolution {self.resolution}x{self.resolution}", layout.path, i
                )
            mask.flags.writeable = False
            objects.append(SceneObject(obj.category, mask, obj.seed))
        objects = tuple(objects)
        return Scene._new(self, seeded.background_seed, objects, tuple(self._paint(seeded.background_seed, objects)))

    # --- batched rendering

    def render(self, layouts, seeds=None, batch_size: int = 16):
        """Images for many layouts, painted ``batch_size`` at a time.

        ``layouts``: a `Layout` or a layout file's path, or a list of them.
        ``seeds``: None (sample seed 0) or an int gives one image per layout; a
        list of ints gives, per layout, a list with one image per seed. Seeds
        fill in only what a layout leaves unset (module docstring). A single
        layout returns its result without the outer list. Images are
        ``[3,R,R]`` float32 CPU tensors in [-1,1]; masks are rasterised at the
        composer's resolution R (a layout of another size is scaled to it).
        The result does not depend on ``batch_size``. See `render_iter` for
        per-step canvases and the seeds used.
        """
        single = isinstance(layouts, (Layout, str, os.PathLike))
        per_seed = seeds is not None and not isinstance(seeds, numbers.Integral)
        seed_list = _seed_list(seeds)
        images = [r.image for r in self.render_iter([layouts] if single else layouts, seed_list, batch_size)]
        if per_seed:
            n = len(seed_list)
            images = [images[i : i + n] for i in range(0, len(images), n)]
        return images[0] if single else images

    def render_iter(
        self,
        layouts: Iterable,
        seeds=None,
        batch_size: int = 16,
        steps: bool = False,
        masks: Iterable | None = None,
        backgrounds: Iterable | None = None,
    ) -> Iterator[Rendering]:
        """Render layouts lazily, ``batch_size`` (layout, seed) pairs at a time,
        yielding one `Rendering` per pair in input order (for each layout, each
        seed). ``layouts`` may be any iterable (a generator keeps memory flat);
        ``seeds`` is None (sample seed 0), an int or a list of ints. Layouts
        with fewer objects are padded with empty masks, which paint nothing.
        ``steps=True`` also returns every canvas x0..xT. Bad layouts raise
        `LayoutError` naming the file and object. ``masks``: for a caller that
        rasterised them already, one entry per layout: its masks at this
        composer's resolution (bool ``[N,R,R]``, ``layout.masks((R, R)) > 0.5``), or
        None to rasterise them here. ``backgrounds``: one canvas per layout, ``[3,R,R]``
        float in [-1,1] (a photograph, another model's background, a scene's
        ``image``), that its objects are painted onto instead of G_bg's background
        (the layout's background seed is then unused).
        """
        seed_list = _seed_list(seeds)  # checked now, not at the first next()
        if not (isinstance(batch_size, numbers.Integral) and batch_size >= 1):
            raise CompositionError(f"batch_size must be a positive integer, got {batch_size!r}")
        return self._render_stream(layouts, seed_list, int(batch_size), steps, masks, backgrounds)

    def _render_stream(self, layouts, seed_list, batch_size, steps, masks, backgrounds) -> Iterator[Rendering]:
        pending = []
        given = iter(masks) if masks is not None else None
        canvases = iter(backgrounds) if backgrounds is not None else None
        for index, layout in enumerate(layouts):
            layout = self._layout(layout)
            m = self._given_masks(layout, next(given, None)) if given is not None else None
            bg = self._given_background(layout, next(canvases, None)) if canvases is not None else None
            for seed in seed_list:
                pending.append((index, layout, seed, m, bg))
                if len(pending) == batch_size:
                    yield from self._render_batch(pending, steps)
                    pending = []
        if pending:
            yield from self._render_batch(pending, steps)

    def _given_masks(self, layout: Layout, masks) -> np.ndarray | None:
        """Masks a caller passed to `render_iter`, checked against the layout and this composer."""
        expected = (len(layout.objects), self.resolution, self.resolution)
        if masks is not None and not (
            isinstance(masks, np.ndarray) and masks.dtype == bool and masks.shape == expected
        ):
            shown = f"{masks.dtype} {list(masks.shape)}" if isinstance(masks, np.ndarray) else type(masks).__name__
            raise CompositionError(f"{layout.label}: masks must be a bool array {list(expected)}, got {shown}")
        return masks

    def _given_background(self, layout: Layout, canvas) -> torch.Tensor:
        """A background a caller passed to `render_iter`, checked: float ``[3,R,R]`` in [-1,1]."""
        R = self.resolution
        if not (
            isinstance(canvas, torch.Tensor)
            and canvas.is_floating_point()
            and canvas.shape == (3, R, R)
            and bool(torch.isfinite(canvas).all())
            and float(canvas.abs().max()) <= 1
        ):
            if canvas is None:
                shown = "none (fewer backgrounds than layouts)"
            elif isinstance(canvas, torch.Tensor):
                shown = f"{canvas.dtype} {list(canvas.shape)}"
                if canvas.is_floating_point() and canvas.numel():
                    shown += f" in [{float(canvas.min()):.3g}, {float(canvas.max()):.3g}]"
            else:
                shown = type(canvas).__name__
            raise CompositionError(
                f"{layout.label}: background must be a float tensor [3, {R}, {R}] in [-1,1], got {shown}"
            )
        return canvas

    def _render_batch(self, items, steps: bool) -> list[Rendering]:
        R, B = self.resolution, len(items)
        seeded = [self.seeded(layout, seed) for _, layout, seed, _, _ in items]
        masks = [torch.from_numpy(layout.masks((R, R)) > 0.5 if m is None else m) for _, layout, _, m, _ in items]
        K = max(len(m) for m in masks)
        given = [bg for *_, bg in items]  # all tensors or all None (render_iter takes backgrounds for all or none)
        start = None if given[0] is None else torch.stack(given).to(self.device, self.dtype)
        zb = (
            None
            if start is not None
            else torch.stack([noise(s.background_seed, self.background_net.noise_dim) for s in seeded])
        )
        zo = torch.zeros(B, K, self.foreground_net.noise_dim)
        mk = torch.zeros(B, K, 1, R, R)
        cats = torch.zeros(B, K, dtype=torch.long)
        for b, (s, m) in enumerate(zip(seeded, masks, strict=False)):
            for k, obj in enumerate(s.objects):
                zo[b, k] = noise(obj.seed, self.foreground_net.noise_dim)
                cats[b, k] = self._index[obj.category]
            mk[b, : len(m), 0] = m
        canvases = self._paint_batch(zb, zo, mk, cats, start)
        out = []
        for b, ((index, _, seed, _, _), s, m) in enumerate(zip(items, seeded, masks, strict=False)):
            n = len(m)
            cpu = [
                c[b].to("cpu", torch.float32, copy=True) for c in (canvases[: n + 1] if steps else canvases[n : n + 1])
            ]
            empty = tuple(int(i) for i in torch.nonzero(~m.flatten(1).any(1)).flatten())
            out.append(Rendering(index, seed, s, cpu[-1], tuple(cpu) if steps else None, empty))
        return out

    # --- painting

    @torch.inference_mode()
    def _paint_batch(self, zb, zo, masks, cats, start=None) -> list[torch.Tensor]:
        dev, dt = self.device, self.dtype
        return paint_layers(
            self.background_net,
            self.foreground_net,
            None if zb is None else self.background_net.latent(zb).to(dev, dt),  # the noise as drawn, in float32
            self.foreground_net.latent(zo.flatten(0, 1), cats.flatten()).unflatten(0, zo.shape[:2]).to(dev, dt),
            masks.to(dev, dt),
            cats.to(dev),
            start,
        )

    def _paint(self, background_seed: int, objects, start: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Canvases ``[1,3,R,R]``: ``start`` (or the background of ``background_seed``) then one per object."""
        R, K = self.resolution, len(objects)
        zb = None if start is not None else noise(background_seed, self.background_net.noise_dim)[None]
        zo = torch.zeros(1, K, self.foreground_net.noise_dim)
        masks = torch.zeros(1, K, 1, R, R)
        cats = torch.zeros(1, K, dtype=torch.long)
        for k, obj in enumerate(objects):
            zo[0, k] = noise(obj.seed, self.foreground_net.noise_dim)
            masks[0, k, 0] = torch.from_numpy(obj.mask.astype(np.float32))
            cats[0, k] = self._index[obj.category]
        return self._paint_batch(zb, zo, masks, cats, start)

    # --- checking input

    def _category(self, category) -> str:
        if isinstance(category, str) and category in self._index:
            return category
        if isinstance(category, numbers.Integral) and not isinstance(category, bool):
            if 0 <= category < len(self._categories):
                return self._categories[category]
            raise CompositionError(
                f"category index {category} out of range: this composer has "
                f"{len(self._categories)} categories ({', '.join(self._categories)})"
            )
        if isinstance(category, str):
            shown = f"{quote(category)}{did_you_mean(category, self._categories)}"
        else:
            shown = repr(category) if isinstance(category, numbers.Number) else f"of type {type(category).__name__}"
        raise CompositionError(f"unknown category {shown}; known categories: {', '.join(self._categories)}")

    def _mask(self, mask, what: str = "mask") -> np.ndarray:
        """A read-only bool ``[R,R]`` array from any accepted mask form (see `Scene.add`)."""
        R = self.resolution
        if isinstance(mask, dict):
            try:
                array = rasterize(mask, (R, R), trusted=True)  # a file the caller names in code, not a layout's
            except LayoutError as e:
                raise CompositionError(f"{what}: {e.problem}") from None
        else:
            array = _mask_array(mask, what)
            if array.shape != (R, R):
                raise CompositionError(
                    f"{what} is {array.shape[0]}x{array.shape[1]} (height x width) but this composer paints "
                    f"{R}x{R}; resize it to {R}x{R} first, or give a shape such as {{'bbox': [x, y, w, h]}} "
                    f"in the composer's pixels"
                )
        if not array.any():
            raise CompositionError(f"{what} is empty: it covers no pixel of the {R}x{R} canvas")
        array = np.array(array, dtype=bool)
        array.flags.writeable = False
        return array

    def _layout(self, layout) -> Layout:
        if isinstance(layout, (str, os.PathLike)):
            return Layout.load(layout, self._categories)
        if not isinstance(layout, Layout):
            raise CompositionError(f"expected a Layout or a layout file's path, got {type(layout).__name__}")
        layout.check_categories(self._categories)
        return layout

    def seeded(self, layout: Layout, seed: int = 0) -> Layout:
        """The layout with every seed filled in (module docstring)."""
        background = seed if layout.background_seed is None else layout.background_seed
        objects = [
            obj if obj.seed is not None else dataclasses.replace(obj, seed=object_seed(background, i))
            for i, obj in enumerate(layout.objects)
        ]
        return dataclasses.replace(layout, objects=objects, background_seed=background)


@dataclass(frozen=True)
class Rendering:
    """One rendered (layout, sample seed) pair, from `Composer.render_iter`."""

    index: int  # the layout's position in the input
    seed: int  # the sample seed
    layout: Layout  # the input layout with every seed filled in (same path, size and shapes)
    image: torch.Tensor  # [3,R,R] float32 CPU, in [-1,1]
    steps: tuple | None  # x0..xT, each [3,R,R] float32 CPU, when asked for
    empty: tuple[int, ...]  # objects that cover no pixel at the composer's resolution (painted nothing)


# ----------------------------------------------------------------------------- scenes


@dataclass(frozen=True, eq=False)
class SceneObject:
    """One object of a scene: category name, mask (read-only bool ``[R,R]`` numpy array) and seed."""

    category: str
    mask: np.ndarray
    seed: int


class Scene:
    """An immutable composed scene: a background seed, objects in paint order, and every canvas.

    Made by `Composer.background` or `Composer.scene`; every edit returns a new
    Scene and re-runs only the objects from the first changed one onward
    (earlier canvases are shared with this scene). Object indices are 0-based
    paint order (back to front); negative indices count from the end.
    ``image`` and ``steps`` are copies on the composer's device, in its
    dtype: changing them cannot touch the scene's cache.
    """

    __slots__ = ("_composer", "_background_seed", "_objects", "_canvases")

    def __init__(self):
        raise TypeError("make a Scene with composer.background(seed) or composer.scene(layout)")

    @classmethod
    def _new(cls, composer: Composer, background_seed: int, objects: tuple, canvases: tuple) -> Scene:
        scene = object.__new__(cls)
        object.__setattr__(scene, "_composer", composer)
        object.__setattr__(scene, "_background_seed", background_seed)
        object.__setattr__(scene, "_objects", objects)
        object.__setattr__(scene, "_canvases", canvases)
        return scene

    def __setattr__(self, name, value):
        raise AttributeError("a Scene is immutable; its edits return a new Scene")

    # --- reading

    @property
    def composer(self) -> Composer:
        return self._composer

    @property
    def background_seed(self) -> int:
        return self._background_seed

    @property
    def objects(self) -> tuple[SceneObject, ...]:
        """(category, mask, seed) of each object, in paint order."""
        return self._objects

    def __len__(self) -> int:
        return len(self._objects)

    @property
    def image(self) -> torch.Tensor:
        """The finished image, ``[3,R,R]`` in [-1,1] (a copy)."""
        return self._canvases[-1][0].clone()

    @property
    def steps(self) -> list[torch.Tensor]:
        """Every canvas ``[3,R,R]`` (copies): ``steps[0]`` the background, ``steps[i + 1]`` after object ``i``."""
        return [c[0].clone() for c in self._canvases]

    def to_pil(self, step: int = -1):
        """``steps[step]`` (default: the image) as an RGB PIL image."""
        steps = self._canvases
        if not (isinstance(step, numbers.Integral) and -len(steps) <= step < len(steps)):
            raise CompositionError(
                f"step {step!r} out of range: the scene has {len(steps)} steps "
                f"(0 = background .. {len(steps) - 1} = image)"
            )
        return to_pil(steps[step][0])

    def layout(self) -> Layout:
        """This scene as a `Layout`: size ``[R,R]``, every seed filled in, each mask
        an exact COCO RLE. ``composer.render(scene.layout())`` reproduces ``scene.image``."""
        R = self._composer.resolution
        objects = [LayoutObject(obj.category, {"rle": encode_rle(obj.mask)}, obj.seed) for obj in self._objects]
        return Layout((R, R), objects, self._background_seed)

    def save_layers(self, directory) -> Path:
        """Write ``step_00.png`` (background) .. ``step_T.png`` (the image),
        ``mask_01.png`` .. ``mask_T.png`` (the mask of the object painted in
        the step of the same number; white inside), and ``layout.json``
        (`layout`, which `Layout.load` reads back and renders to the same
        image). Numbers have at least two digits. Each file is written
        atomically; ``step_*``/``mask_*`` PNGs left by an earlier, longer
        scene are removed. Returns the directory."""
        from PIL import Image

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        width = max(2, len(str(len(self._objects))))
        written = set()
        for t in range(len(self._canvases)):
            name = f"step_{t:0{width}d}.png"
            _save_png(self.to_pil(t), directory / name)
            written.add(name)
        for t, obj in enumerate(self._objects, 1):
            name = f"mask_{t:0{width}d}.png"
            _save_png(Image.fromarray(obj.mask.astype(np.uint8) * 255, "L"), directory / name)
            written.add(name)
        for stale in [*directory.glob("step_*.png"), *directory.glob("mask_*.png")]:
            if stale.name not in written and stale.stem.split("_", 1)[1].isdigit():
                stale.unlink()
        self.layout().save(directory / "layout.json")
        return directory

    def save_ora(self, path) -> Path:
        """Write the layers as an OpenRaster file (`scenecomp.ora`): the background and one
        RGBA layer per object (the object as painted, alpha = its mask), named by number,
        category and seed; stacking them gives ``to_pil()``. Written atomically; returns the path."""
        from scenecomp.ora import layer_names, write_ora

        return write_ora(
            path,
            [self.to_pil(t) for t in range(len(self._canvases))],
            [o.mask for o in self._objects],
            layer_names(self._background_seed, self._objects),
        )

    def __repr__(self) -> str:
        objects = ", ".join(f"{o.category}(seed={o.seed})" for o in self._objects)
        return f"Scene(background_seed={self._background_seed}, objects=[{objects}])"

    # --- edits

    def add(self, category, mask, seed: int | None = None) -> Scene:
        """This scene with one more object painted on top.

        ``category``: a name from ``composer.categories`` (or its index).
        ``mask``: a numpy array or torch tensor ``[R,R]`` or ``[1,R,R]``
        (bool, or numbers that are all 0 or 1), a PIL image ``R×R`` (inside as in
        a mask file: alpha > 127 where alpha varies, else luminance > 127; see
        `scenecomp.layout.image_mask`), or a layout shape in the composer's pixels:
        ``{"polygon": [[x, y], ...]}``, ``{"bbox": [x, y, w, h]}``,
        ``{"rle": {...}}`` or ``{"mask": "file.png"}`` (relative to the working
        directory, any regular file: the path is the caller's, not a layout file's;
        RLEs and files of another size are scaled, nearest neighbour). Arrays and images of
        another size are an error, never silently resized. An empty mask is an
        error. ``seed`` defaults to ``object_seed(background_seed, len(scene))``.
        """
        index = len(self._objects)
        seed = object_seed(self._background_seed, index) if seed is None else check_seed(seed, "seed", CompositionError)
        obj = SceneObject(self._composer._category(category), self._composer._mask(mask), seed)
        return self._edit(self._background_seed, (*self._objects, obj))

    def replace(self, i: int, category=None, mask=None, seed: int | None = None) -> Scene:
        """Object ``i`` with a new category, mask and/or seed (None keeps it); objects ``i`` onward are repainted."""
        i = self._check_index(i)
        old = self._objects[i]
        obj = SceneObject(
            old.category if category is None else self._composer._category(category),
            old.mask if mask is None else self._composer._mask(mask),
            old.seed if seed is None else check_seed(seed, "seed", CompositionError),
        )
        if obj.category == old.category and obj.seed == old.seed and np.array_equal(obj.mask, old.mask):
            return self
        return self._edit(self._background_seed, (*self._objects[:i], obj, *self._objects[i + 1 :]))

    def remove(self, i: int) -> Scene:
        """This scene without object ``i``; the objects after it are repainted."""
        i = self._check_index(i)
        return self._edit(self._background_seed, self._objects[:i] + self._objects[i + 1 :])

    def move(self, i: int, dx: float = 0, dy: float = 0, scale: float = 1.0) -> Scene:
        """Object ``i`` with its mask scaled by ``scale`` about the centre of its
        bounding box, then shifted ``dx`` pixels right and ``dy`` down (nearest
        neighbour; parts off the canvas are cut off). An error if nothing of
        the mask stays on the canvas."""
        i = self._check_index(i)
        for name, value in (("dx", dx), ("dy", dy), ("scale", scale)):
            if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)):
                raise CompositionError(f"move: {name} must be a finite number, got {value!r}")
        if scale <= 0:
            raise CompositionError(f"move: scale must be positive, got {scale}")
        old = self._objects[i]
        moved = _move_mask(old.mask, float(dx), float(dy), float(scale))
        if not moved.any():
            raise CompositionError(
                f"move: object {i} ({old.category}) would leave the "
                f"{old.mask.shape[0]}x{old.mask.shape[1]} canvas entirely "
                f"(dx={dx}, dy={dy}, scale={scale})"
            )
        if np.array_equal(moved, old.mask):
            return self
        moved.flags.writeable = False
        return self._edit(
            self._background_seed,
            (*self._objects[:i], SceneObject(old.category, moved, old.seed), *self._objects[i + 1 :]),
        )

    def reorder(self, i: int, j: int) -> Scene:
        """Move object ``i`` to position ``j`` of the paint order (as ``objects.insert(j, objects.pop(i))``;
        ``reorder(i, -1)`` brings it to the front); objects from ``min(i, j)`` on are repainted."""
        i, j = self._check_index(i), self._check_index(j, "target position")
        objects = list(self._objects)
        objects.insert(j, objects.pop(i))
        return self._edit(self._background_seed, tuple(objects))

    def with_background(self, seed: int) -> Scene:
        """This scene on a new background; every object keeps its seed and is repainted."""
        return self._edit(check_seed(seed, "background seed", CompositionError), self._objects)

    # --- internals

    def _check_index(self, i, what: str = "object index") -> int:
        n = len(self._objects)
        if not (isinstance(i, numbers.Integral) and not isinstance(i, bool)):
            raise CompositionError(f"{what} must be an integer, got {i!r}")
        if not -n <= i < n:
            has = "has no objects" if n == 0 else f"has {n} object{'s' if n > 1 else ''} (0..{n - 1}, or -{n}..-1)"
            raise CompositionError(f"{what} {i} out of range: the scene {has}")
        return int(i) % n

    def _edit(self, background_seed: int, objects: tuple) -> Scene:
        """A scene of ``objects`` re-running only from the first object that differs (by identity) from ours."""
        composer, old = self._composer, self._objects
        if background_seed != self._background_seed:
            return Scene._new(composer, background_seed, objects, tuple(composer._paint(background_seed, objects)))
        k = 0
        while k < min(len(old), len(objects)) and objects[k] is old[k]:
            k += 1
        if k == len(old) == len(objects):
            return self
        kept = self._canvases[: k + 1]
        if any(c.device != composer.device or c.dtype != composer.dtype for c in kept):
            with torch.inference_mode():  # the composer moved since this scene was made
                kept = tuple(c.to(composer.device, composer.dtype) for c in kept)
        fresh = composer._paint(background_seed, objects[k:], start=kept[-1])
        return Scene._new(composer, background_seed, objects, kept + tuple(fresh[1:]))


# ----------------------------------------------------------------------------- helpers


def _seed_list(seeds) -> list[int]:
    if seeds is None:
        return [0]
    if isinstance(seeds, numbers.Integral):
        return [check_seed(seeds, "seed", CompositionError)]
    seeds = [check_seed(s, "seed", CompositionError) for s in seeds]
    if not seeds:
        raise CompositionError("seeds is an empty list; give at least one seed, or None for seed 0")
    return seeds


def _mask_array(mask, what: str) -> np.ndarray:
    """A 2-D bool array from an array, tensor or PIL image; size unchecked."""
    from PIL import Image

    if isinstance(mask, Image.Image):  # the rule of mask files (`image_mask`); a flat image is empty
        inside = image_mask(mask)
        return np.zeros((mask.height, mask.width), bool) if inside is None else inside
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().to("cpu")
        mask = mask.float().numpy() if mask.dtype in (torch.bfloat16, torch.float16) else mask.numpy()
    try:
        array = np.asarray(mask)
    except Exception:
        array = np.asarray(None)
    if array.dtype == object or not (array.dtype == bool or np.issubdtype(array.dtype, np.number)):
        raise CompositionError(
            f"{what} must be a numpy array, a torch tensor, a PIL image or a shape dict "
            f"(polygon, bbox, rle, mask), got {type(mask).__name__}"
        )
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise CompositionError(f"{what} must be [H, W] or [1, H, W], got shape {list(array.shape)}")
    if array.dtype == bool:
        return array
    if not np.isin(array, (0, 1)).all():
        finite = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
        span = f"from {finite.min()} to {finite.max()}" if finite.size else "that are not finite"
        raise CompositionError(
            f"{what} values must be 0 and 1 (or bool), got values {span}; threshold it first, e.g. mask > 0"
        )
    return array == 1


def _move_mask(mask: np.ndarray, dx: float, dy: float, scale: float) -> np.ndarray:
    """Nearest-neighbour scale about the bounding-box centre, then shift; off-canvas parts are cut."""
    H, W = mask.shape
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    # each output pixel centre q maps back to p = c + (q - d - c) / scale; it samples the pixel holding p
    sy = np.floor(cy + (np.arange(H) + 0.5 - dy - cy) / scale).astype(np.int64)
    sx = np.floor(cx + (np.arange(W) + 0.5 - dx - cx) / scale).astype(np.int64)
    valid = ((sy >= 0) & (sy < H))[:, None] & ((sx >= 0) & (sx < W))[None]
    return valid & mask[np.clip(sy, 0, H - 1)[:, None], np.clip(sx, 0, W - 1)[None]]


def _save_png(image, path: Path) -> None:
    write_atomically(path, lambda tmp: image.save(tmp, format="PNG"))


# ----------------------------------------------------------------------------- bundles

BUNDLE_FORMAT = "scenecomp-bundle"
BUNDLE_VERSION = 2  # 2: safetensors (1 was a torch pickle)
BUNDLE_NAME = "composer.safetensors"  # what scenecomp-train writes into its run folder
NETWORKS = {"background": LayoutGenerator, "foreground": ForegroundGenerator, "baseline": LayoutGenerator}


def bundle_dict(categories: list[str], half: bool = False, **networks: torch.nn.Module) -> dict:
    """Plain data for a bundle: format tag, version, categories, resolution and, per
    network (``background``, ``foreground``, ``baseline``), its constructor
    arguments and weights. ``half`` stores weights as float16 (they load as float32)."""
    first = next(iter(networks.values()))
    data = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "categories": list(categories),
        "resolution": first.resolution,
        "z_dim": first.z_dim,
        "networks": {},
    }
    for name, net in networks.items():
        state = {
            k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
            for k, v in net.state_dict().items()
        }
        data["networks"][name] = {"kwargs": dict(net.init_kwargs), "state_dict": state}
    return data


def save_bundle(path, data: dict) -> None:
    """Write a `bundle_dict` as safetensors (`scenecomp.bundle`): each network's weights as
    tensors ``{network}/{key}``, the rest as JSON metadata; atomically."""
    tensors = {
        f"{name}/{key}": value for name, net in data["networks"].items() for key, value in net["state_dict"].items()
    }
    meta = {key: value for key, value in data.items() if key != "networks"}
    meta["networks"] = {name: {"kwargs": net["kwargs"]} for name, net in data["networks"].items()}
    save_tensors(path, tensors, meta)


def bundle_file(path) -> Path:
    """The bundle a path names: the path itself, or ``composer.safetensors`` in a run folder."""
    path = Path(path)
    return path / BUNDLE_NAME if path.is_dir() else path


def load_bundle(path) -> dict:
    """Read a bundle (or a run folder's) into a `bundle_dict`: safetensors and JSON only, so
    loading never runs code; checks the tag and version."""
    path = bundle_file(path)
    try:
        tensors, meta = load_tensors(path)
    except PickledFileError:
        if path.suffix != ".ckpt":
            raise
        raise BundleError(
            f"{path}: this is a Lightning training checkpoint (for resuming scenecomp-train), "
            f"not a composer bundle; {_lightning_hint(path)}"
        ) from None
    except BundleError as e:
        if path.suffix != ".ckpt" or not path.exists():
            raise
        raise BundleError(f"{e}; {_lightning_hint(path)}") from None
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a scenecomp bundle (format tag {quote(str(meta.get('format')))})")
    if meta.get("version") != BUNDLE_VERSION:
        raise BundleError(
            f"{path}: bundle version {quote(str(meta.get('version')))}, this scenecomp reads version {BUNDLE_VERSION}"
        )
    networks = meta.get("networks")
    if not isinstance(networks, dict) or not all(
        isinstance(n, dict) and isinstance(n.get("kwargs"), dict) for n in networks.values()
    ):
        raise BundleError(f"{path}: damaged bundle metadata (no constructor arguments per network)")
    for name, net in networks.items():
        net["state_dict"] = {
            key.split("/", 1)[1]: value for key, value in tensors.items() if key.split("/", 1)[0] == name
        }
    return meta


def _lightning_hint(path: Path) -> str:
    """Where the bundle of the run that wrote a Lightning checkpoint is."""
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return (
        f"load the bundle the run writes when it ends: {run / BUNDLE_NAME} "
        f"(or the run folder {run}; --checkpoint takes either)"
    )


def build_network(data: dict, name: str, path=None) -> torch.nn.Module:
    """Rebuild network ``name`` of a loaded bundle from its saved constructor arguments, in eval mode.
    Weights that are not finite (a diverged run) are refused: they would paint black images."""
    if name not in data["networks"]:
        raise BundleError(f"{path or 'bundle'}: holds no {name!r} network (it has {sorted(data['networks'])})")
    entry = data["networks"][name]
    for key, value in entry["state_dict"].items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise BundleError(
                f"{path or 'bundle'}: network {name!r}, tensor {key!r}: {bad} of {value.numel()} "
                "values are NaN or infinite (the training diverged); use a checkpoint from before"
            )
    net = NETWORKS[name](**entry["kwargs"])
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in entry["state_dict"].items()})
    return net.eval().requires_grad_(False)
