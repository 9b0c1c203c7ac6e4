"""Shapes: procedural landscape scenes for training and testing the layered model.

Every scene is a sky over a ground, split at a random horizon, under one
global light (day, dusk or night), with 1 to 6 objects painted back to front:
sky objects (``sun``, ``cloud``) first, above the horizon, then ground objects
(``tree``, ``house``, ``rock``) standing on the ground, far to near and
smaller the further up they stand. Lighting is applied to the whole image,
objects included, so an object's colours follow its scene.

Each object is drawn with OpenCV into a binary mask (no anti-aliasing), and
only the masked pixels are then coloured, so a mask is exactly the region its
object painted. Masks are amodal: the object's full shape at its step, even
where later objects cover it.

Everything is deterministic: scene ``i`` of a dataset with seed ``s`` comes
from ``np.random.default_rng([s, i])``, whatever the dataset's size, and two
runs with the same seed write byte-identical files. Only numpy, OpenCV,
pycocotools and Pillow are needed (no torch)::

    from scenecomp.shapes import make_scene, write_dataset
    scene = make_scene(np.random.default_rng(0), size=64)
    stats = write_dataset("shapes", count=1000, size=64, seed=0)
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from scenecomp.atomic import new_folder, write_atomically

CATEGORIES = ("tree", "house", "sun", "cloud", "rock")
SKY = frozenset({"sun", "cloud"})
LIGHTS = ("day", "dusk", "night")
LIGHT_SHARES = (0.5, 0.25, 0.25)  # how often each light is drawn: the mix every split has in expectation

_CATEGORY_IDS = {name: i + 1 for i, name in enumerate(CATEGORIES)}
_CATEGORY_P = np.array([0.26, 0.20, 0.10, 0.18, 0.26])  # tree house sun cloud rock
_MIN_SIZE = 16
_SHIFT = 4  # cv2 sub-pixel bits
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class Scene:
    """One generated scene.

    image, background: uint8 ``[H, W, 3]`` RGB, the same sky, ground and light,
    the background without objects. objects: ``(category, mask)`` pairs in
    paint order (back to front), each mask bool ``[H, W]``, non-empty, the
    object's full (amodal) shape. light: "day", "dusk" or "night". horizon:
    the first ground row; sky objects lie wholly in rows ``< horizon``.
    """

    image: np.ndarray
    background: np.ndarray
    objects: list
    light: str
    horizon: int

    @property
    def size(self) -> int:
        return int(self.image.shape[0])


def min_object_pixels(size: int) -> int:
    """Smallest visible area an object may have (12 pixels at 64x64, scaled)."""
    return max(4, int(round(12 * (size / 64.0) ** 2)))


# ---------------------------------------------------------------- helpers


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


def _fix(points) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * _ONE).astype(np.int32)


def _poly(mask: np.ndarray, points) -> None:
    cv2.fillPoly(mask, [_fix(points)], 1, cv2.LINE_8, _SHIFT)


def _ellipse(mask: np.ndarray, cx, cy, ax, ay, angle=0.0) -> None:
    c = (int(round(cx * _ONE)), int(round(cy * _ONE)))
    a = (max(1, int(round(ax * _ONE))), max(1, int(round(ay * _ONE))))
    cv2.ellipse(mask, c, a, float(angle), 0, 360, 1, -1, cv2.LINE_8, _SHIFT)


def _blotch(rng: np.random.Generator, size: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Smooth noise, roughly unit variance, from a coarse grid upsampled."""
    small = rng.standard_normal((cells_y, cells_x), dtype=np.float32)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def _fine(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.standard_normal((size, size), dtype=np.float32)


def _jitter(rng: np.random.Generator, rgb, amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32), 0.0, 1.2)


def _pick(rng: np.random.Generator, palette) -> np.ndarray:
    return np.asarray(palette[int(rng.integers(len(palette)))], np.float32)


def _field(colour: np.ndarray, shade: np.ndarray) -> np.ndarray:
    return shade[..., None] * colour


# ---------------------------------------------------------------- light and background

_SKY = {  # (top, horizon) albedo of the sky
    "day": ((0.30, 0.52, 0.90), (0.70, 0.83, 0.96)),
    "dusk": ((0.32, 0.30, 0.62), (1.00, 0.62, 0.38)),
    "night": ((0.16, 0.20, 0.45), (0.34, 0.38, 0.62)),
}
_GROUND = (
    (0.36, 0.60, 0.25),
    (0.46, 0.62, 0.28),
    (0.62, 0.60, 0.32),
    (0.80, 0.71, 0.46),
    (0.52, 0.40, 0.27),
    (0.30, 0.48, 0.24),
)


def _lighting(rng: np.random.Generator, light: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-scene multiplicative tint*brightness and additive ambient."""
    if light == "day":
        gain = rng.uniform(0.95, 1.08)
        tint = np.float32([1.0, 1.0, 1.0]) + rng.uniform(-0.04, 0.04, 3)
        add = np.zeros(3)
    elif light == "dusk":
        gain = rng.uniform(0.70, 0.85)
        tint = np.float32([1.15, 0.82, 0.62]) * (1 + rng.uniform(-0.05, 0.05, 3))
        add = np.float32([0.03, 0.01, 0.02])
    else:
        gain = rng.uniform(0.42, 0.55)
        tint = np.float32([0.62, 0.75, 1.15]) * (1 + rng.uniform(-0.05, 0.05, 3))
        add = np.float32([0.015, 0.02, 0.05])
    return (gain * tint).astype(np.float32), np.asarray(add, np.float32)


def _to_uint8(albedo: np.ndarray, mult: np.ndarray, add: np.ndarray) -> np.ndarray:
    out = albedo * mult
    out += add
    np.clip(out, 0.0, 1.0, out=out)
    out *= 255.0
    out += 0.5
    return out.astype(np.uint8)


def _background(rng: np.random.Generator, size: int, horizon: int, light: str) -> np.ndarray:
    ys, _ = _grid(size)
    top, low = (_jitter(rng, c, 0.05) for c in _SKY[light])
    t = np.clip(ys[:, :1] / max(horizon - 1, 1), 0.0, 1.0) ** 0.8  # [S,1]
    sky = top * (1 - t[..., None]) + low * t[..., None]  # [S,1,3]
    ground_col = _jitter(rng, _pick(rng, _GROUND), 0.05)
    far = 0.65 * ground_col + 0.35 * low
    near = 0.8 * ground_col
    u = np.clip((ys[:, :1] - horizon) / max(size - horizon, 1), 0.0, 1.0)[..., None]
    ground = far * (1 - u) + near * u  # [S,1,3]
    col = np.where((ys[:, :1] < horizon)[..., None], sky, ground)  # [S,1,3]
    img = np.broadcast_to(col, (size, size, 3)).astype(np.float32)
    tex = 1.0 + 0.07 * _blotch(rng, size, 10, 4) + 0.035 * _fine(rng, size)
    tex[:horizon] = 1.0
    img *= tex[..., None]
    if light == "night":  # a few stars, emissive so they stay bright after the light
        n = int(rng.integers(4, 4 + size // 4))
        sy = rng.integers(0, max(horizon - 1, 1), n)
        sx = rng.integers(0, size, n)
        img[sy, sx] = rng.uniform(1.3, 2.2, (n, 1)).astype(np.float32)
    return img


# ---------------------------------------------------------------- objects
# Each maker returns (mask bool [S,S], paint) where paint(canvas) colours the
# masked pixels of the float albedo canvas in place, and nothing else.

_SUN = ((1.0, 0.92, 0.45), (1.0, 0.72, 0.30), (1.0, 0.97, 0.88), (1.0, 0.84, 0.25))
_CLOUD = ((0.97, 0.97, 1.0), (0.92, 0.93, 0.95), (0.78, 0.80, 0.84), (0.62, 0.64, 0.69))
_LEAF = ((0.22, 0.52, 0.16), (0.32, 0.62, 0.20), (0.16, 0.42, 0.22), (0.40, 0.58, 0.14))
_AUTUMN = ((0.85, 0.45, 0.10), (0.78, 0.22, 0.10), (0.88, 0.72, 0.16))
_CONIFER = ((0.10, 0.36, 0.20), (0.14, 0.42, 0.26), (0.08, 0.30, 0.16))
_BARK = ((0.40, 0.26, 0.14), (0.32, 0.22, 0.14), (0.48, 0.34, 0.20))
_WALL = (
    (0.92, 0.88, 0.78),
    (0.76, 0.32, 0.22),
    (0.95, 0.84, 0.50),
    (0.56, 0.66, 0.82),
    (0.86, 0.86, 0.86),
    (0.62, 0.46, 0.30),
)
_ROOF = ((0.58, 0.16, 0.10), (0.36, 0.20, 0.14), (0.30, 0.30, 0.34), (0.20, 0.26, 0.42))
_ROCK = ((0.50, 0.50, 0.50), (0.60, 0.58, 0.55), (0.50, 0.41, 0.31), (0.44, 0.42, 0.38), (0.36, 0.36, 0.38))


def _sun(rng, size, horizon, ctx):
    r = rng.uniform(0.045, 0.085) * size
    rg = r * rng.uniform(1.4, 1.9)
    cx = rng.uniform(rg * 0.5, size - rg * 0.5)
    cy = rng.uniform(min(rg * 0.6, horizon - r * 1.2), horizon - r * 1.2)
    mask = np.zeros((size, size), np.uint8)
    _ellipse(mask, cx, cy, rg, rg)
    mask[horizon:] = 0
    mask = mask.astype(bool)
    colour = _jitter(rng, _pick(rng, _SUN), 0.03) * rng.uniform(1.1, 1.3)
    glow = 0.6 * colour + 0.4
    ctx["sun_x"] = cx

    def paint(canvas):
        ys, xs = _grid(size)
        d = np.hypot(xs - cx, ys - cy) / r
        core = d <= 1.0
        alpha = np.clip(1.0 - (d - 1.0) / (rg / r - 1.0), 0.0, 1.0) ** 1.5 * 0.7 + 0.2
        body = canvas * (1 - alpha[..., None]) + glow * alpha[..., None]
        body[core] = colour * (1.0 + 0.08 * (1.0 - d[core]))[:, None]
        canvas[mask] = body[mask]

    return mask, paint


def _cloud(rng, size, horizon, ctx):
    w = rng.uniform(0.16, 0.38) * size
    h = w * rng.uniform(0.28, 0.5)
    cx = rng.uniform(0.05 * size, 0.95 * size)
    bottom = rng.uniform(min(h + 1, horizon - 1), horizon - 1)
    mask = np.zeros((size, size), np.uint8)
    k = int(rng.integers(3, 7))
    offs = np.sort(rng.uniform(-0.5, 0.5, k)) * (w * 0.7)
    for _j, dx in enumerate(offs):
        centre = 1.0 - abs(dx) / (w * 0.5)  # middle lobes are taller
        ay = h * 0.5 * (0.55 + 0.55 * centre) * rng.uniform(0.85, 1.1)
        ax = w * rng.uniform(0.17, 0.3)
        _ellipse(mask, cx + dx, bottom - ay * rng.uniform(0.7, 1.0), ax, ay)
    _ellipse(mask, cx, bottom - h * 0.22, w * 0.48, h * 0.22)  # flat base
    mask[horizon:] = 0
    mask = mask.astype(bool)
    colour = _jitter(rng, _pick(rng, _CLOUD), 0.02)
    top_y = bottom - h

    def paint(canvas):
        ys, _ = _grid(size)
        shade = 1.04 - 0.25 * np.clip((ys - top_y) / max(h, 1.0), 0.0, 1.0)
        shade = shade + 0.04 * _blotch(rng, size, 8, 8)
        canvas[mask] = _field(colour, shade)[mask]

    return mask, paint


def _tree(rng, size, bx, by, s, ctx):
    h = s * rng.uniform(0.30, 0.58) * size
    conifer = rng.random() < 0.4
    th = h * (rng.uniform(0.12, 0.2) if conifer else rng.uniform(0.25, 0.42))
    tw = max(1.3, h * rng.uniform(0.06, 0.11))
    trunk = np.zeros((size, size), np.uint8)
    crown = np.zeros((size, size), np.uint8)
    _poly(
        trunk,
        [
            (bx - tw / 2, by),
            (bx + tw / 2, by),
            (bx + tw * 0.35, by - th - h * 0.08),
            (bx - tw * 0.35, by - th - h * 0.08),
        ],
    )
    ch = h - th
    top = by - h
    if conifer:
        w = h * rng.uniform(0.38, 0.62)
        tiers = int(rng.integers(2, 4))
        for k in range(tiers):
            yb = by - th - ch * 0.32 * k / max(tiers - 1, 1)
            ya = yb - (yb - top) * (0.6 + 0.4 * k / max(tiers - 1, 1))
            wk = w * (1.0 - 0.28 * k) / 2
            _poly(crown, [(bx - wk, yb), (bx + wk, yb), (bx + rng.uniform(-0.05, 0.05) * w, ya)])
        colour = _jitter(rng, _pick(rng, _CONIFER), 0.04)
        ccx, ccy, cr = bx, by - th - ch * 0.5, max(ch * 0.5, 1.0)
    else:
        r = ch / 1.6
        ccx, ccy, cr = bx, by - th - r * 0.6, r
        _ellipse(crown, ccx, ccy, r * rng.uniform(0.85, 1.2), r)
        for _ in range(int(rng.integers(1, 4))):
            rr = r * rng.uniform(0.45, 0.75)
            _ellipse(
                crown,
                ccx + rng.choice((-1, 1)) * r * rng.uniform(0.35, 0.75),
                ccy + r * rng.uniform(-0.2, 0.45),
                rr,
                rr * rng.uniform(0.8, 1.0),
            )
        palette = _AUTUMN if rng.random() < 0.25 else _LEAF
        colour = _jitter(rng, _pick(rng, palette), 0.05)
    bark = _jitter(rng, _pick(rng, _BARK), 0.04)
    lx = ctx["lx"]
    crown_b = crown.astype(bool)
    trunk_b = trunk.astype(bool) & ~crown_b
    mask = crown_b | trunk_b

    def paint(canvas):
        ys, xs = _grid(size)
        shade = 1.0 + 0.22 * lx * np.clip((xs - ccx) / cr, -1, 1) + 0.15 * np.clip((ccy - ys) / cr, -1, 1)
        tex = 1.0 + 0.16 * _blotch(rng, size, max(3, size // 6), max(3, size // 6)) + 0.08 * _fine(rng, size)
        canvas[crown_b] = _field(colour, shade * tex)[crown_b]
        tshade = 1.0 + 0.25 * lx * np.clip((xs - bx) / max(tw / 2, 0.5), -1, 1)
        canvas[trunk_b] = _field(bark, tshade)[trunk_b]

    return mask, paint


def _house(rng, size, bx, by, s, ctx, light):
    ww = s * rng.uniform(0.2, 0.32) * size
    wh = ww * rng.uniform(0.55, 0.9)
    rh = ww * rng.uniform(0.3, 0.6)
    over = ww * rng.uniform(0.0, 0.12)
    x0, x1, yt = bx - ww / 2, bx + ww / 2, by - wh
    wall = np.zeros((size, size), np.uint8)
    roof = np.zeros((size, size), np.uint8)
    _poly(wall, [(x0, by), (x1, by), (x1, yt), (x0, yt)])
    if rng.random() < 0.75:  # gable
        _poly(roof, [(x0 - over, yt), (x1 + over, yt), (bx + rng.uniform(-0.1, 0.1) * ww, yt - rh)])
    else:  # hipped / flat-topped
        inset = ww * rng.uniform(0.15, 0.35)
        _poly(roof, [(x0 - over, yt), (x1 + over, yt), (x1 - inset, yt - rh * 0.7), (x0 + inset, yt - rh * 0.7)])
    wall_col = _jitter(rng, _pick(rng, _WALL), 0.04)
    roof_col = _jitter(rng, _pick(rng, _ROOF), 0.04)
    door_col = _jitter(rng, (0.30, 0.20, 0.12), 0.05)
    lit = light == "night" and rng.random() < 0.7
    glass = np.float32([2.4, 1.9, 0.8]) if lit else _jitter(rng, (0.55, 0.75, 0.90), 0.05)
    detail = np.zeros((size, size), np.uint8)  # 1 = door, 2 = window
    if ww >= 5:
        dw, dh = ww * rng.uniform(0.16, 0.24), wh * rng.uniform(0.4, 0.6)
        dx = bx + rng.uniform(-0.25, 0.25) * ww
        _poly(detail, [(dx - dw / 2, by), (dx + dw / 2, by), (dx + dw / 2, by - dh), (dx - dw / 2, by - dh)])
        ws = max(ww * rng.uniform(0.14, 0.2), 0.8)
        wy = yt + wh * 0.3
        for wx in (x0 + ww * 0.22, x1 - ww * 0.22):
            if abs(wx - dx) > dw / 2 + ws / 2 + 0.5:
                pts = [
                    (wx - ws / 2, wy - ws / 2),
                    (wx + ws / 2, wy - ws / 2),
                    (wx + ws / 2, wy + ws / 2),
                    (wx - ws / 2, wy + ws / 2),
                ]
                cv2.fillPoly(detail, [_fix(pts)], 2, cv2.LINE_8, _SHIFT)
    brick = rng.random() < 0.35
    period = max(2, int(round(size / 32)))
    lx = ctx["lx"]
    roof_b = roof.astype(bool)
    wall_b = wall.astype(bool) & ~roof_b
    mask = roof_b | wall_b

    def paint(canvas):
        ys, xs = _grid(size)
        side = np.clip((xs - bx) / max(ww / 2, 0.5), -1, 1)
        wshade = 1.0 + 0.12 * lx * side
        if brick:
            wshade = wshade * np.where((ys.astype(np.int32) % period) == 0, 0.86, 1.0)
        canvas[wall_b] = _field(wall_col, wshade)[wall_b]
        d = (detail == 1) & wall_b
        canvas[d] = door_col
        g = (detail == 2) & wall_b
        canvas[g] = glass
        rshade = 1.0 + 0.18 * lx * side - 0.15 * np.clip((ys - (yt - rh)) / max(rh, 1.0), 0, 1)
        canvas[roof_b] = _field(roof_col, rshade)[roof_b]

    return mask, paint


def _rock(rng, size, bx, by, s, ctx):
    rw = s * rng.uniform(0.12, 0.25) * size
    rh = rw * rng.uniform(0.45, 0.85)
    n = int(rng.integers(6, 11))
    ang = np.sort(rng.uniform(np.pi * 1.05, np.pi * 1.95, n))
    rad = rng.uniform(0.78, 1.1, n)
    pts = [(bx + rw / 2 * rng.uniform(0.85, 1.0), by)]
    pts += [(bx + np.cos(a) * rw / 2 * q, by + np.sin(a) * rh * q) for a, q in zip(ang[::-1], rad[::-1], strict=False)]
    pts += [(bx - rw / 2 * rng.uniform(0.85, 1.0), by)]
    m = np.zeros((size, size), np.uint8)
    _poly(m, pts)
    mask = m.astype(bool)
    colour = _jitter(rng, _pick(rng, _ROCK), 0.04)
    lx = ctx["lx"]

    def paint(canvas):
        ys, xs = _grid(size)
        shade = (
            1.0
            + 0.25 * lx * np.clip((xs - bx) / max(rw / 2, 0.5), -1, 1)
            + 0.22 * np.clip((by - rh * 0.5 - ys) / max(rh * 0.5, 0.5), -1, 1)
        )
        tex = 1.0 + 0.1 * _blotch(rng, size, max(4, size // 5), max(4, size // 5)) + 0.13 * _fine(rng, size)
        canvas[mask] = _field(colour, shade * tex)[mask]

    return mask, paint


# ---------------------------------------------------------------- scene


def _layout(rng, size, horizon, light, min_px):
    n = int(rng.integers(1, 7))
    cats = []
    for _ in range(n):
        p = _CATEGORY_P.copy()
        if "sun" in cats:
            p[2] = 0.0
        cats.append(CATEGORIES[int(rng.choice(5, p=p / p.sum()))])
    ctx = {"lx": None}
    sky = sorted((c for c in cats if c in SKY), key=lambda c: c != "sun")  # sun behind clouds
    objs = []
    for cat in sky:
        for _ in range(6):
            mask, paint = (_sun if cat == "sun" else _cloud)(rng, size, horizon, ctx)
            if np.count_nonzero(mask) >= min_px:
                objs.append((cat, mask, paint))
                break
    ctx["lx"] = (
        float(np.clip((ctx["sun_x"] - size / 2) / (size / 2), -1, 1)) if "sun_x" in ctx else float(rng.uniform(-1, 1))
    )
    ground = [c for c in cats if c not in SKY]
    lo = horizon + max(1.0, 0.03 * size)
    hi = size - 1.0
    placed = []
    for cat in ground:
        by = rng.uniform(lo, hi)
        for attempt in range(6):
            if attempt:  # too small: stand it nearer
                by = rng.uniform(by, hi)
            s = 0.4 + 0.6 * (by - horizon) / max(hi - horizon, 1.0)
            bx = rng.uniform(0.06 * size, 0.94 * size)
            if cat == "tree":
                mask, paint = _tree(rng, size, bx, by, s, ctx)
            elif cat == "house":
                mask, paint = _house(rng, size, bx, by, s, ctx, light)
            else:
                mask, paint = _rock(rng, size, bx, by, s, ctx)
            if np.count_nonzero(mask) >= min_px:
                placed.append((by, cat, mask, paint))
                break
    placed.sort(key=lambda o: o[0])  # far (higher up) to near
    objs += [o[1:] for o in placed]
    # keep only objects that stay visible: front to back, drop the hidden ones
    covered = np.zeros((size, size), bool)
    keep = []
    for obj in reversed(objs):
        if np.count_nonzero(obj[1] & ~covered) >= min_px:
            keep.append(obj)
            covered |= obj[1]
    keep.reverse()
    return keep, ctx


def make_scene(rng: np.random.Generator, size: int = 64) -> Scene:
    """One random scene, drawn from ``rng`` only (see the module docstring)."""
    size = int(size)
    if size < _MIN_SIZE:
        raise ValueError(f"size must be at least {_MIN_SIZE}, got {size}")
    min_px = min_object_pixels(size)
    light = LIGHTS[int(rng.choice(3, p=LIGHT_SHARES))]
    horizon = int(round(size * rng.uniform(0.35, 0.65)))
    mult, add = _lighting(rng, light)
    albedo = _background(rng, size, horizon, light)
    background = _to_uint8(albedo, mult, add)
    objs, _ = _layout(rng, size, horizon, light, min_px)
    while not objs:  # every kept candidate was hidden or tiny: add one near rock
        by = size - 1.0
        mask, paint = _rock(rng, size, rng.uniform(0.2, 0.8) * size, by, 1.0, {"lx": 0.0})
        if np.count_nonzero(mask) >= min_px:
            objs = [("rock", mask, paint)]
    for _, _, paint in objs:
        paint(albedo)
    image = _to_uint8(albedo, mult, add)
    return Scene(
        image=image, background=background, objects=[(cat, mask) for cat, mask, _ in objs], light=light, horizon=horizon
    )


# ---------------------------------------------------------------- dataset


def _scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def _write_png(path: str, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path}")
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def _render_range(args) -> list:
    """Generate scenes [start, stop), write their PNGs, return their records."""
    out, seed, size, start, stop = args
    records = []
    # PNG encoding and file I/O release the GIL: a small writer pool overlaps
    # them with generating the next scenes (file contents do not depend on it).
    with ThreadPoolExecutor(max_workers=2) as writers:
        pending = []
        for i in range(start, stop):
            scene = make_scene(_scene_rng(seed, i), size)
            name = f"{i:06d}.png"
            pending.append(writers.submit(_write_png, os.path.join(out, "images", name), scene.image))
            pending.append(writers.submit(_write_png, os.path.join(out, "backgrounds", name), scene.background))
            records.append(_record(scene, i))
        for job in pending:
            job.result()  # re-raise any write error
    return records


def _record(scene: Scene, index: int) -> tuple:
    """(light, horizon, [(category_id, rle counts, area, bbox)], preview image or None)."""
    from pycocotools import mask as mask_utils

    anns = []
    for cat, mask in scene.objects:
        rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
        anns.append(
            (
                _CATEGORY_IDS[cat],
                rle["counts"].decode("ascii"),
                int(mask_utils.area(rle)),
                [float(v) for v in mask_utils.toBbox(rle)],
            )
        )
    return (scene.light, scene.horizon, anns, scene.image if index < 16 else None)


def _contact_sheet(images: list[np.ndarray], cols: int = 4, scale: int = 2, gap: int = 2) -> np.ndarray:
    size = images[0].shape[0] * scale
    rows = (len(images) + cols - 1) // cols
    ncols = min(cols, len(images))
    sheet = np.full((rows * size + (rows + 1) * gap, ncols * size + (ncols + 1) * gap, 3), 40, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        y, x = gap + r * (size + gap), gap + c * (size + gap)
        sheet[y : y + size, x : x + size] = np.repeat(np.repeat(img, scale, 0), scale, 1)
    return sheet


def write_dataset(out, count: int, size: int = 64, seed: int = 0, workers: int = 1, overwrite: bool = False) -> dict:
    """Write ``count`` scenes to the folder ``out`` as a COCO instances dataset.

    Layout: ``images/{i:06d}.png`` and ``backgrounds/{i:06d}.png`` (RGB; the
    backgrounds are for evaluation only), ``annotations.json`` (COCO
    instances, compressed-RLE masks, annotations in paint order, written
    atomically, no timestamps so equal seeds give byte-identical files) and
    ``preview.png`` (the first up to 16 scenes, 4x4, upscaled 2x). The folder
    is written as a whole (`scenecomp.atomic.new_folder`): a non-empty ``out`` is
    refused unless ``overwrite``, which replaces it, never mixing old and new files.
    ``workers > 1`` renders with that many processes (same output).

    Returns stats: count, objects, per_category, per_light, seconds, scenes_per_s.
    """
    count, size, seed, workers = int(count), int(size), int(seed), max(1, int(workers))
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if size < _MIN_SIZE:
        raise ValueError(f"size must be at least {_MIN_SIZE}, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    t0 = time.perf_counter()
    with new_folder(out, overwrite) as tmp:
        stats = _write_dataset(tmp, count, size, seed, workers)
    seconds = time.perf_counter() - t0
    return {**stats, "seconds": seconds, "scenes_per_s": count / seconds}


def _write_dataset(out: Path, count: int, size: int, seed: int, workers: int) -> dict:
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "backgrounds").mkdir(parents=True, exist_ok=True)
    chunk = 256
    jobs = [(str(out), seed, size, a, min(a + chunk, count)) for a in range(0, count, chunk)]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            parts = pool.map(_render_range, jobs, chunksize=1)
    else:
        parts = [_render_range(job) for job in jobs]

    images, annotations, previews = [], [], []
    per_category = {c: 0 for c in CATEGORIES}
    per_light = {k: 0 for k in LIGHTS}
    i = 0
    for part in parts:
        for light, horizon, anns, preview in part:
            images.append(
                {
                    "id": i + 1,
                    "file_name": f"{i:06d}.png",
                    "height": size,
                    "width": size,
                    "light": light,
                    "horizon": horizon,
                }
            )
            per_light[light] += 1
            for cat_id, counts, area, bbox in anns:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": cat_id,
                        "segmentation": {"size": [size, size], "counts": counts},
                        "area": area,
                        "bbox": bbox,
                        "iscrowd": 0,
                    }
                )
                per_category[CATEGORIES[cat_id - 1]] += 1
            if preview is not None:
                previews.append(preview)
            i += 1
    coco = {
        "info": {
            "description": "scenecomp Shapes: procedural landscape scenes",
            "paint_order": "annotation_order",
            "generator": "scenecomp.shapes",
            "seed": seed,
            "size": size,
            "count": count,
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": k + 1, "name": name, "supercategory": "sky" if name in SKY else "ground"}
            for k, name in enumerate(CATEGORIES)
        ],
    }
    write_atomically(
        out / "annotations.json",
        lambda tmp: tmp.write_text(json.dumps(coco, separators=(",", ":")) + "\n", encoding="utf-8"),
    )
    _write_png(str(out / "preview.png"), _contact_sheet(previews))
    return {"count": count, "objects": len(annotations), "per_category": per_category, "per_light": per_light}
