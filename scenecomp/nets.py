"""The networks: generators, discriminators, and the tensor ops they share.

Every network is a plain ``nn.Module`` that describes itself (``z_dim``,
``resolution``, ``num_categories``) and keeps its constructor arguments in
``init_kwargs``, so a bundle can rebuild it without restating the architecture.
Images are ``[B,3,H,W]`` in [-1,1]; masks are ``[B,1,H,W]`` floats in {0,1}.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def _levels(resolution: int, smallest: int) -> int:
    """Number of 2x steps between ``smallest`` and ``resolution`` (a power of two)."""
    levels = math.log2(resolution / smallest)
    if resolution < 2 * smallest or levels != int(levels):
        raise ValueError(f"resolution must be a power of two >= {2 * smallest}, got {resolution}")
    return int(levels)


def composite(canvas: torch.Tensor, painted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``m * painted + (1 - m) * canvas`` for binary masks, exact outside the mask.

    ``torch.where`` rather than the blend: outside the mask the canvas comes
    through bit for bit, whatever ``painted`` holds there (even inf or nan).
    """
    return torch.where(mask > 0.5, painted, canvas)


def layout_map(masks: torch.Tensor, categories: torch.Tensor, num_categories: int) -> torch.Tensor:
    """One-hot semantic map of a layout, objects painted in order (later ones on top).

    masks ``[B,K,1,H,W]``, categories ``[B,K]`` -> ``[B,C,H,W]``; padded objects
    have empty masks and so leave no trace.
    """
    B, K, _, H, W = masks.shape
    seg = masks.new_zeros(B, num_categories, H, W)
    onehot = F.one_hot(categories.clamp(min=0), num_categories).to(masks.dtype)  # [B,K,C]
    for k in range(K):
        m = masks[:, k]
        seg = seg * (1 - m) + m * onehot[:, k, :, None, None]
    return seg


def visible_masks(masks: torch.Tensor) -> torch.Tensor:
    """Each object's mask less what later objects cover: ``[B,K,1,H,W]`` -> same."""
    covered = torch.zeros_like(masks[:, 0])
    out = torch.empty_like(masks)
    for k in reversed(range(masks.shape[1])):
        out[:, k] = masks[:, k] * (1 - covered)
        covered = torch.maximum(covered, masks[:, k])
    return out


def crop_objects(
    images: torch.Tensor, masks: torch.Tensor, size: int, margin: float = 0.15, native: bool = False
) -> torch.Tensor:
    """Square crops around each mask's bounding box, resampled to ``size``.

    images ``[B,C,H,W]`` (any channels, e.g. image ⊕ mask), masks ``[B,1,H,W]``
    -> ``[B,C,size,size]``. ``F.grid_sample`` with an affine grid stands in for
    torchvision's ``roi_align``, which is unavailable here. An empty mask crops
    the whole image. ``native``: a box that fits is not scaled up but cut as a
    ``size``-pixel window on the pixel grid (its pixels exactly, no interpolation):
    scaling a small object up blurs its finest detail (a house's brick rows two
    pixels apart), which a discriminator then never sees. Larger boxes are scaled down as before.
    """
    B, _, H, W = images.shape
    ys = torch.linspace(-1 + 1 / H, 1 - 1 / H, H, device=images.device)
    xs = torch.linspace(-1 + 1 / W, 1 - 1 / W, W, device=images.device)
    inside = masks[:, 0] > 0.5
    big = torch.tensor(4.0, device=images.device)
    any_x, any_y = inside.any(1), inside.any(2)  # [B,W], [B,H]
    x0 = torch.where(any_x, xs, big).amin(1) - 1 / W
    x1 = torch.where(any_x, xs, -big).amax(1) + 1 / W
    y0 = torch.where(any_y, ys[None], big).amin(1) - 1 / H
    y1 = torch.where(any_y, ys[None], -big).amax(1) + 1 / H
    empty = ~inside.flatten(1).any(1)
    x0, y0 = torch.where(empty, -1.0, x0), torch.where(empty, -1.0, y0)
    x1, y1 = torch.where(empty, 1.0, x1), torch.where(empty, 1.0, y1)
    half = torch.maximum(x1 - x0, y1 - y0) * (0.5 + margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if native:
        window = size / max(H, W)  # half of `size` pixels in grid units (2 / W a pixel; images are square)
        fits = half <= window
        half = torch.where(fits, torch.full_like(half, window), half)
        # a window centred on a pixel boundary samples pixel centres exactly (for an even `size`)
        cx = torch.where(fits, ((cx + 1) * W / 2).round() * 2 / W - 1, cx)
        cy = torch.where(fits, ((cy + 1) * H / 2).round() * 2 / H - 1, cy)
    theta = torch.zeros(B, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = half
    theta[:, 1, 1] = half
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [B, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def object_crops(images: torch.Tensor, masks: torch.Tensor, size: int, native: bool = False) -> torch.Tensor:
    """Classifier input: the image inside the mask (0 = mid grey outside) ⊕ the mask,
    cropped around the mask (``native``: small objects at their own resolution, `crop_objects`).
    images ``[B,3,H,W]`` in [-1,1], masks ``[B,1,H,W]`` -> ``[B,4,S,S]``."""
    return crop_objects(torch.cat([images * masks, masks], dim=1), masks, size, native=native)


def fill_outside(crops: torch.Tensor) -> torch.Tensor:
    """Extend each crop's pixels beyond its mask by repeated neighbour averaging, so that
    another silhouette can be cut from them: ``[B,4,S,S]`` -> RGB ``[B,3,S,S]``."""
    value, known = crops[:, :3] * (crops[:, 3:] > 0.5), (crops[:, 3:] > 0.5).float()
    for _ in range(2 * crops.shape[-1]):
        if bool(known.min() > 0):
            break
        num = F.avg_pool2d(value, 3, 1, 1, count_include_pad=False)
        den = F.avg_pool2d(known, 3, 1, 1, count_include_pad=False)
        new = (den > 0) & (known < 0.5)
        value = torch.where(new, num / den.clamp(min=1e-6), value)
        known = torch.maximum(known, new.float())
    return value


def swap_silhouettes(filled: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """One object's appearance in another's silhouette: filled RGB ``[B,3,S,S]`` (`fill_outside`)
    and crop masks ``[B,1,S,S]`` -> crops ``[B,4,S,S]`` as `object_crops` makes them."""
    return torch.cat([filled * masks, masks], dim=1)


# ----------------------------------------------------------------------------- generators


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise each pixel's feature vector to unit RMS (ProGAN): keeps activations from
    running away without tying samples together (no batch statistics) or erasing a
    scene's overall brightness (as instance norm would)."""
    return x * (x.pow(2).mean(dim=1, keepdim=True) + eps).rsqrt()


def draw_from_prior(
    noise: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, first: torch.Tensor, count: torch.Tensor
) -> torch.Tensor:
    """A style prior's draw: a cVAE-GAN's encoder posteriors of real images, ``mu``, ``logvar`` ``[M,z]``
    (the aggregate posterior: where the generator learned to paint; the standard normal also reaches between
    those codes, where it paints blends). ``noise`` ``[B,z+1]`` standard normal, as drawn (float32): its last
    entry picks row b's component uniformly among ``first[b] .. first[b]+count[b]-1`` (picked before any cast,
    so a seed picks the same component in every precision), the others are its ``eps``:
    ``mu[k] + exp(logvar[k]/2) * eps`` ``[B,z]``. A row with ``count`` 0 keeps its ``eps`` (the standard normal)."""
    eps = noise[:, :-1].to(mu.device, torch.float32)
    if not len(mu):
        return eps
    pick = torch.special.ndtr(noise[:, -1].double()).to(mu.device)  # uniform in (0, 1)
    count = count.to(mu.device)
    k = (first.to(mu.device) + (pick * count).long().clamp(max=count - 1)).clamp(0, len(mu) - 1)
    style = mu.float()[k] + (0.5 * logvar.float()[k]).exp() * eps
    return torch.where((count > 0)[:, None], style, eps)


def _mapping(z_dim: int, style: int) -> nn.Module:
    """The noise's mapping to a style vector (StyleGAN's, two layers)."""
    return nn.Sequential(nn.Linear(z_dim, style), nn.LeakyReLU(0.2), nn.Linear(style, style), nn.LeakyReLU(0.2))


class FiLM(nn.Module):
    """Per-channel scale and shift from a style vector."""

    def __init__(self, style: int, channels: int):
        super().__init__()
        self.affine = nn.Linear(style, 2 * channels)
        nn.init.zeros_(self.affine.bias)  # starts near identity, but with the noise already in play

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(w)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + gamma) + beta


class Modulated(nn.Module):
    """SPADE-style conv: pixel-normalised input, scaled and shifted per pixel by a conditioning
    map and per channel by a style vector from the noise (which is how the noise sets a
    scene's light and colours at every scale)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        cond: int,
        style: int,
        hidden: int = 16,
        padding_mode: str = "zeros",
        cond_padding: str = "zeros",
    ):
        super().__init__()
        # the 3x3 conv sees object edges; 1x1 heads keep the cost low at full resolution. A height
        # channel in the map needs cond_padding="replicate": zeros would mark the left and right edges
        self.shared = nn.Sequential(nn.Conv2d(cond, hidden, 3, padding=1, padding_mode=cond_padding), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, cin, 1)
        self.beta = nn.Conv2d(hidden, cin, 1)
        self.style = FiLM(style, cin)
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        c = self.shared(F.interpolate(cond, size=x.shape[-2:], mode="nearest"))
        x = self.style(pixel_norm(x), w) * (1 + self.gamma(c)) + self.beta(c)
        return self.conv(F.leaky_relu(x, 0.2))


class NoiseInjection(nn.Module):
    """Adds a per-pixel noise map, scaled per channel by learned strengths that start at zero
    (StyleGAN): meant for grain, stars and speckle, which a convolution cannot make out of the
    style vector as independent per-pixel detail."""

    def __init__(self, channels: int):
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor, grain: torch.Tensor) -> torch.Tensor:
        """x ``[B,C,h,w]``, grain ``[B,1,H,W]`` unit Gaussian at full resolution (average-pooled to h, w
        and rescaled to unit variance)."""
        factor = grain.shape[-1] // x.shape[-1]
        if factor > 1:
            grain = F.avg_pool2d(grain, factor) * factor
        return x + self.strength * grain


GLOW_SIGMA = 2.5  # PixelSynthesis: grain beyond this lights a point (0.6% of pixels, ~25 in a 64x64 image)
GLOW_GAIN = 4.0  # and its colour's scale: Adam moves a weight by about lr a step, so a light needs a larger unit
KERNEL_NORM = 0.125  # PixelSynthesis: the texture filters' stored norm (only their direction is used); see texture_maps


def _to_norm(kernels: torch.Tensor, norm: float) -> torch.Tensor:
    """``[K,1,k,k]`` filters each scaled to L2 norm ``norm``."""
    return kernels * (norm / kernels.flatten(1).norm(dim=1).clamp(min=1e-8))[:, None, None, None]


def grid_cells(grid, resolution: int) -> int:
    """The noise entries of a texture grid ``[rows, cols]`` (0 for None); anything else is refused."""
    if grid is None:
        return 0
    problem = ValueError(f"texture grid must be [rows, cols], each an integer in 1..{resolution}, got {grid!r}")
    try:
        rows, cols = grid
    except (TypeError, ValueError):
        raise problem from None
    if not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= resolution for n in (rows, cols)):
        raise problem
    return rows * cols


class PixelSynthesis(nn.Module):
    """Paints every pixel on its own from its position, the noise there and a style (CIPS, Anokhin et
    al. 2021; FiLM-conditioned as in pi-GAN): a per-pixel MLP (1x1 convolutions), no upsampling.

    ``forward(w [B,style], grain [B,1,H,W], layout [B,C,H,W] or None) -> [B,3,H,W]`` in [-1,1].
    Each pixel sees its position along ``axes`` ("y": its height only; "yx": height and width), raw
    and as sines and cosines at ``frequencies`` octaves, the grain map there (for what needs a
    nonlinear function of it) and the layout's categories there. Why: a convolutional
    generator grown from a 4x4 grid must build a straight, sharp horizon and a sky that is the same
    along each row out of its grid, and on Shapes it painted soft, tilted horizons and grain in the
    sky; here a horizon is a step in y. With ``axes="y"`` the generator is horizontally stationary by
    construction (what varies along a row comes from the noise: a landscape's sky and ground look
    alike at every x, and its objects are G_fg's); with "yx" it must learn that. Texture is a
    brightness grain: the image's colour (in [0,1]) times ``1 + sum_k gain_k * texture_k``, where each
    texture is the grain map filtered by a learned filter half the image wide (unit norm: a filter of
    white noise makes any stationary texture, fine grain to blotches, whatever its spectrum or its
    direction) and each gain a per-pixel scalar from the last features (texture where the scene has
    it, none in a clean sky), starting at ``rgb_grain`` (a zero gain gets no gradient: the noise averages
    out). Why brightness: a Shapes ground, like most natural texture, varies in brightness with its
    colour kept; measured, per-channel gains painted blotches of colour (docs/RESULTS.md, "A per-pixel
    G_bg"). The MLP sees the fine grain only (coarse noise maps fed to it painted blotches too).
    Points of light (a night's stars, emissive in Shapes) are added, not multiplied: ``to_glow``'s
    per-pixel colour (never negative: unclamped, it painted dark dots read as rocks) where the grain lies
    beyond ``GLOW_SIGMA`` (measured: without it the MLP imitated stars by grain over the whole night sky).
    ``grain_gate``: every gain times a per-pixel gate ``max(0, to_gate(h))`` that starts open (1 everywhere,
    so a warm start paints what it did). Why: a gain is a linear read-out of the features, and one that must
    be the real strength on the ground cannot also be exactly zero in a Shapes sky (measured: the texture's RMS
    in the top rows was 0.015-0.019 against 0.03-0.04 on the ground, docs/RESULTS.md); a gate at or below zero
    is zero.
    A gate and not the gains clamped: a texture's sign is arbitrary, and a warm start's gains may be negative.
    """

    def __init__(
        self,
        cond: int,
        style: int,
        resolution: int,
        width: int = 128,
        depth: int = 6,
        frequencies: int = 6,
        rgb_grain: float = 0.03,
        axes: str = "yx",
        textures: int = 2,
        grid: tuple[int, int] | None = None,
        grain_gate: bool = False,
    ):
        super().__init__()
        if axes not in ("y", "yx"):
            raise ValueError(f"axes must be 'y' or 'yx', got {axes!r}")
        self.grid_cells = grid_cells(grid, resolution)
        self.cond, self.frequencies, self.axes, self.resolution = cond, frequencies, axes, resolution
        self.grid = tuple(grid) if grid is not None else None
        if self.grid is not None:  # the grid texture's RMS over the image, a constant of the grid and resolution
            basis = torch.eye(self.grid_cells).view(-1, 1, *self.grid)
            up = F.interpolate(basis, size=(resolution, resolution), mode="bilinear", align_corners=False)
            self.grid_rms = float(up.pow(2).sum(0).mean().sqrt())
        position = len(axes) * (1 + 2 * frequencies)
        self.inp = nn.Conv2d(position + 1 + cond, width, 1)  # the fine grain only: see the class docstring
        self.layers = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(depth))
        self.films = nn.ModuleList(FiLM(style, width) for _ in range(depth))
        for layer in (self.inp, *self.layers):  # keeps the signal's scale through a deep leaky-ReLU MLP
            nn.init.kaiming_normal_(layer.weight, a=0.2)
            nn.init.zeros_(layer.bias)
        with torch.no_grad():  # start smooth: octave k's weights scaled by 2^-k, the noise's at zero (measured:
            # at full scale the MLP painted blobs of colour from the coarse noise for hundreds of
            # batches, docs/RESULTS.md); training grows what the images need
            octave = (2.0 ** -torch.arange(frequencies)).repeat(2 * len(axes))  # sines, cosines; per axis
            self.inp.weight[:, len(axes) : position] *= octave[:, None, None]
            self.inp.weight[:, position] = 0
        self.to_rgb = nn.Conv2d(width, 3, 1)
        # filters start as a point (fine grain), then Gaussians of sigma 4, 16, ... pixels (blotches)
        kernel = 2 * (resolution // 4) + 1  # half the image wide: blotches up to a quarter of it
        r = (torch.arange(kernel, dtype=torch.float32) - kernel // 2).pow(2)
        d2 = r[:, None] + r[None, :]
        starts = torch.stack([(d2 == 0).float()] + [(-d2 / (2 * 16.0**k)).exp() for k in range(1, textures)])[:, None]
        self.kernels = nn.Parameter(_to_norm(starts, KERNEL_NORM))  # [K,1,kernel,kernel]
        self.to_grain = nn.Conv2d(width, textures + (1 if grid is not None else 0), 1)
        nn.init.zeros_(self.to_grain.weight)
        nn.init.constant_(self.to_grain.bias, rgb_grain)
        self.to_gate = None
        if grain_gate:
            self.to_gate = nn.Conv2d(width, 1, 1)
            nn.init.zeros_(self.to_gate.weight)
            nn.init.ones_(self.to_gate.bias)
        # points of light (stars): added where the grain lies beyond GLOW_SIGMA, in a colour per pixel from
        # the last features; starts off, and still gets a gradient (the map is >= 0)
        self.to_glow = nn.Conv2d(width, 3, 1)
        nn.init.zeros_(self.to_glow.weight)
        nn.init.zeros_(self.to_glow.bias)

    def position(self, H: int, W: int, device) -> torch.Tensor:
        """``[1,A(1+2F),H,W]``: y (and x) in (-1,1) at pixel centres, then their sines, then their cosines
        at F octaves (each axis's octaves together)."""
        ys = torch.linspace(-1 + 1 / H, 1 - 1 / H, H, device=device)
        xs = torch.linspace(-1 + 1 / W, 1 - 1 / W, W, device=device)
        yx = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))[: len(self.axes)]  # [A,H,W]
        octaves = math.pi * 2.0 ** torch.arange(self.frequencies, device=device)
        angles = (yx[:, None] * octaves[None, :, None, None]).flatten(0, 1)  # [A*F,H,W]
        return torch.cat([yx, angles.sin(), angles.cos()])[None]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # filters saved at another norm (before KERNEL_NORM) load at it: the same texture, learning at this speed
        key = prefix + "kernels"
        if key in state_dict:
            state_dict[key] = _to_norm(state_dict[key].float(), KERNEL_NORM).to(state_dict[key].dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def texture_maps(self, grain: torch.Tensor, cells: torch.Tensor | None = None) -> torch.Tensor:
        """``[B,1,H,W]`` unit Gaussian -> ``[B,K,H,W]``: filtered by the kernels made unit-norm (so each texture
        is unit variance too; edges reflected). The kernels are stored at norm ``KERNEL_NORM``: Adam moves a
        weight by about lr a step whatever its scale, and stored near unit norm (a sigma-4 Gaussian: norm 5.7)
        the blotch filter was still its isotropic start after 1400 batches at lr 5e-5, while Shapes' blotches
        are 2.5x wider than tall (docs/RESULTS.md, "Texture filters that learn"). With a ``grid``, one more
        texture: ``cells`` ``[B,rows*cols]`` unit Gaussian upsampled bilinearly (value noise), unit RMS."""
        k = _to_norm(self.kernels, 1.0)
        pad = self.kernels.shape[-1] // 2
        maps = F.conv2d(F.pad(grain, [pad] * 4, mode="reflect"), k.to(grain.dtype))
        if self.grid is None:
            return maps
        return torch.cat([maps, self.grid_texture(cells.reshape(-1, 1, *self.grid))], 1)

    def grid_texture(self, cells: torch.Tensor) -> torch.Tensor:
        """``[B,1,rows,cols]`` -> ``[B,1,R,R]``: upsampled bilinearly (cell centres at fixed pixels, as an
        image resized), divided by its RMS over the image for unit-variance cells. Why a grid and not a
        filter: value noise has creases at fixed places and more variance at the cell centres, and a
        stationary texture (white noise filtered) is told from it by a two-sample classifier (0.92 on
        synthetic Shapes ground strips, docs/RESULTS.md "What tells G_bg's backgrounds from real ones")."""
        size = (self.resolution, self.resolution)
        return F.interpolate(cells, size=size, mode="bilinear", align_corners=False) / self.grid_rms

    def forward(
        self, w: torch.Tensor, grain: torch.Tensor, layout: torch.Tensor | None, cells: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, _, H, W = grain.shape
        if layout is None:
            layout = grain.new_zeros(B, self.cond, H, W)
        layout = F.interpolate(layout.to(grain.dtype), size=(H, W), mode="nearest")
        position = self.position(H, W, grain.device).to(grain.dtype).expand(B, -1, -1, -1)
        x = torch.cat([position, grain, layout], 1).contiguous(memory_format=torch.channels_last)
        h = F.leaky_relu(self.inp(x), 0.2)
        for layer, film in zip(self.layers, self.films, strict=True):
            h = F.leaky_relu(film(pixel_norm(layer(h)), w), 0.2)
        colour = torch.tanh(self.to_rgb(h)) * 0.5 + 0.5  # [B,3,H,W] in [0,1]
        gains = self.to_grain(h)  # [B,K,H,W]
        if self.to_gate is not None:
            gains = gains * self.to_gate(h).clamp(min=0)
        brightness = 1 + (gains * self.texture_maps(grain, cells)).sum(1, keepdim=True)  # [B,1,H,W]
        glow = self.to_glow(h).clamp(min=0) * (grain > GLOW_SIGMA).to(h.dtype) * GLOW_GAIN  # [B,3,H,W], light only adds
        return (colour * brightness + glow).clamp(0, 1) * 2 - 1


class LayoutBlock(nn.Module):
    """2x upsampling residual block conditioned on a semantic map and a style vector, with optional
    per-pixel noise after each conv."""

    def __init__(
        self,
        cin: int,
        cout: int,
        cond: int,
        style: int,
        upsample: str = "nearest",
        padding_mode: str = "zeros",
        pixel_noise: bool = False,
        cond_padding: str = "zeros",
    ):
        super().__init__()
        self.conv1 = Modulated(cin, cout, cond, style, padding_mode=padding_mode, cond_padding=cond_padding)
        self.conv2 = Modulated(cout, cout, cond, style, padding_mode=padding_mode, cond_padding=cond_padding)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)
        self.noise1, self.noise2 = (NoiseInjection(cout), NoiseInjection(cout)) if pixel_noise else (None, None)
        self.upsample = upsample

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, w: torch.Tensor, grain: torch.Tensor | None = None
    ) -> torch.Tensor:
        # bilinear: nearest upsampling from 4x4 leaves blocky streaks that the convs must learn to hide
        x = F.interpolate(
            x, scale_factor=2, mode=self.upsample, **({} if self.upsample == "nearest" else {"align_corners": False})
        )
        h = self.conv1(x, cond, w)
        if self.noise1 is not None:
            h = self.noise1(h, grain)
        h = self.conv2(h, cond, w)
        if self.noise2 is not None:
            h = self.noise2(h, grain)
        return self.skip(x) + h


class LayoutGenerator(nn.Module):
    """Noise and an optional semantic map -> image; the background generator and the single-shot baseline.

    ``forward(z [B,latent_dim], layout [B,C,H,W] or None) -> [B,3,H,W]``. The latent holds
    ``z_dim`` style entries and, with ``pixel_noise``, then ``resolution**2`` entries of per-pixel
    grain (a ``[H,W]`` map in row-major order), so one seed still gives one vector.
    As the background generator it is the paper's one trunk with two heads:
    with a layout (head A) it paints a whole scene and is trained
    adversarially on real photos; with ``layout=None`` (head B, the only one
    used when composing) the conditioning map is empty, and it is trained to
    agree with head A outside the object masks, so it learns backgrounds
    without ever seeing a background-only image. As the single-shot baseline
    (SPADE-style) only head A is trained and used. ``padding_mode="reflect"``
    keeps zero padding from drawing a frame at the image's edges. ``rgb_grain > 0`` (needs
    ``pixel_noise``) adds the grain map to the output too, scaled per pixel and channel by a 1x1
    conv of the last features that starts at ``rgb_grain`` everywhere: a zero strength gets no
    gradient (the noise averages out), so the output grain starts on and D decides where it belongs
    (measured on Shapes: D_bg turned it down everywhere, docs/RESULTS.md; off in the shipped model).
    ``synthesis="pixels"`` replaces the convolutional trunk (and with it ``channels``,
    ``max_channels``, ``upsample``, ``padding_mode``) by a per-pixel MLP, `PixelSynthesis`
    (``mlp_width``, ``mlp_depth``, ``mlp_axes``; needs ``pixel_noise``, ``rgb_grain`` is its output
    grain's start; the shipped G_bg's). ``texture_grid`` ``[rows, cols]`` (pixels only) draws its
    blotches as value noise on that grid (``rows*cols`` more noise entries, after the grain) instead of
    grain filtered by a learned kernel. ``grain_gate`` (pixels only): `PixelSynthesis`'s gate on the texture,
    which can be exactly zero (a clean sky).
    ``const_input`` starts from a learned ``[C,4,4]`` constant instead of a linear map of the noise
    (StyleGAN): the noise then acts through the styles (per channel, everywhere alike) and the
    per-pixel noise only, so a sample gets no independent 4x4 grid of its own, which paints soft
    blobs where a scene has none (a Shapes sky is the same along every row).
    ``row_coord`` adds each pixel's height in the image (-1 top, 1 bottom) to the conditioning map
    (CoordConv): with reflect padding a convolution cannot tell where in the image it is, so sky
    above, ground below and a sharp horizon at a row the style picks (``beta(w) + beta(y)``, then a
    nonlinearity) must otherwise be built out of the 4x4 start. Height only: a scene is not the
    same from top to bottom, but it is from left to right.

    ``forward`` takes a *latent* ``[B,latent_dim]`` (style, then grain). A noise vector
    ``[B,noise_dim]`` becomes one through `latent`: unchanged, unless the generator carries a style
    prior (``prior_size`` > 0, set after training by `set_prior`): then the style is drawn from the
    mixture of ``prior_size`` Gaussians it holds (a cVAE-GAN's encoder posteriors of real images: the
    aggregate posterior, where the generator learned to paint), the component picked by one more
    entry at the end of the noise vector.
    """

    def __init__(
        self,
        z_dim: int = 64,
        num_categories: int = 5,
        resolution: int = 64,
        channels: int = 32,
        max_channels: int = 256,
        style_dim: int = 128,
        upsample: str = "nearest",
        padding_mode: str = "zeros",
        pixel_noise: bool = False,
        rgb_grain: float = 0.0,
        const_input: bool = False,
        row_coord: bool = False,
        prior_size: int = 0,
        synthesis: str = "conv",
        mlp_width: int = 128,
        mlp_depth: int = 6,
        mlp_axes: str = "yx",
        texture_grid: tuple[int, int] | None = None,
        grain_gate: bool = False,
    ):
        super().__init__()
        if synthesis not in ("conv", "pixels"):
            raise ValueError(f"synthesis must be 'conv' or 'pixels', got {synthesis!r}")
        if synthesis == "pixels" and not pixel_noise:
            raise ValueError(
                "synthesis='pixels' needs pixel_noise=True (its grain and texture come from the noise map)"
            )
        if texture_grid is not None and synthesis != "pixels":
            raise ValueError("texture_grid is a texture of synthesis='pixels'; the convolutional trunk has none")
        if grain_gate and synthesis != "pixels":
            raise ValueError("grain_gate gates the texture of synthesis='pixels'; the convolutional trunk has none")
        cells = grid_cells(texture_grid, resolution)
        if synthesis == "pixels" and (const_input or row_coord):
            raise ValueError("const_input and row_coord shape the convolutional trunk; synthesis='pixels' has none")
        if rgb_grain and not pixel_noise:
            raise ValueError("rgb_grain needs pixel_noise=True (the grain map is the noise vector's tail)")
        if upsample not in ("nearest", "bilinear"):
            raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {upsample!r}")
        if padding_mode not in ("zeros", "reflect", "replicate"):
            raise ValueError(f"padding_mode must be 'zeros', 'reflect' or 'replicate', got {padding_mode!r}")
        self.init_kwargs = dict(
            z_dim=z_dim,
            num_categories=num_categories,
            resolution=resolution,
            channels=channels,
            max_channels=max_channels,
            style_dim=style_dim,
            upsample=upsample,
            padding_mode=padding_mode,
            pixel_noise=pixel_noise,
        )
        if rgb_grain:  # absent from older bundles' kwargs, which then build unchanged
            self.init_kwargs["rgb_grain"] = rgb_grain
        if const_input:
            self.init_kwargs["const_input"] = True
        if row_coord:
            self.init_kwargs["row_coord"] = True
        if synthesis != "conv":
            self.init_kwargs |= dict(synthesis=synthesis, mlp_width=mlp_width, mlp_depth=mlp_depth, mlp_axes=mlp_axes)
        if texture_grid is not None:  # absent from older bundles' kwargs, which then build unchanged
            texture_grid = list(texture_grid)  # plain ints for the bundle's JSON (Hydra passes a ListConfig)
            self.init_kwargs["texture_grid"] = texture_grid
        if grain_gate:
            self.init_kwargs["grain_gate"] = True
        self.z_dim, self.num_categories, self.resolution, self.const_input, self.row_coord = (
            z_dim,
            num_categories,
            resolution,
            const_input,
            row_coord,
        )
        self.latent_dim = z_dim + (resolution**2 if pixel_noise else 0) + cells
        self.set_prior(torch.zeros(prior_size, z_dim), torch.zeros(prior_size, z_dim))
        self.pixels = None
        if synthesis == "pixels":  # the per-pixel MLP replaces the convolutional trunk
            self.mapping = _mapping(z_dim, style_dim)
            self.pixels = PixelSynthesis(
                num_categories,
                style_dim,
                resolution,
                mlp_width,
                mlp_depth,
                rgb_grain=rgb_grain,
                axes=mlp_axes,
                textures=1 if texture_grid is not None else 2,  # the grid takes the blotch filter's place
                grid=texture_grid,
                grain_gate=grain_gate,
            )
            return
        n = _levels(resolution, 4)
        widths = [min(channels * 2 ** (n - i), max_channels) for i in range(n + 1)]  # 4x4 ... res
        if const_input:
            self.const = nn.Parameter(torch.randn(1, widths[0], 4, 4))
        else:
            self.fc = nn.Linear(z_dim, widths[0] * 16)
        self.mapping = _mapping(z_dim, style_dim)
        self.blocks = nn.ModuleList(
            LayoutBlock(
                widths[i],
                widths[i + 1],
                num_categories + row_coord,
                style_dim,
                upsample,
                padding_mode,
                pixel_noise,
                cond_padding="replicate" if row_coord else "zeros",
            )
            for i in range(n)
        )
        self.to_rgb = nn.Conv2d(widths[-1], 3, 3, padding=1, padding_mode=padding_mode)
        self.rgb_grain = None
        if rgb_grain:
            self.rgb_grain = nn.Conv2d(widths[-1], 3, 1)
            nn.init.zeros_(self.rgb_grain.weight)
            nn.init.constant_(self.rgb_grain.bias, rgb_grain)

    # weights that only scale noise (a texture's strength and shape, points of light): training them changes a
    # style's texture, not the colour it paints
    TEXTURE = ("pixels.to_grain.", "pixels.to_gate.", "pixels.kernels", "pixels.to_glow.", "rgb_grain.")

    def colour_weights(self) -> dict[str, torch.Tensor]:
        """The weights that decide the colour a style paints (all but `TEXTURE`'s): while they are unchanged, a
        style prior fitted for them (an encoder's codes of real plates) still draws the styles it drew."""
        return {name: p for name, p in self.named_parameters() if not name.startswith(self.TEXTURE)}

    def set_prior(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        """Draw styles from the mixture of the Gaussians ``mu``, ``logvar`` ``[M,z_dim]`` (equal weights)
        from now on; ``M = 0``: the standard normal. The noise vector grows by one entry (the pick)."""
        if mu.shape != logvar.shape or mu.dim() != 2 or mu.shape[1] != self.z_dim:
            raise ValueError(f"a prior is two [M,{self.z_dim}] tensors, got {list(mu.shape)} and {list(logvar.shape)}")
        self.prior_size = len(mu)
        keep = self.prior_size > 0  # an empty prior stays out of the state dict: older bundles load strictly
        self.register_buffer("prior_mu", mu.detach().float().clone(), persistent=keep)
        self.register_buffer("prior_logvar", logvar.detach().float().clone(), persistent=keep)
        self.init_kwargs.pop("prior_size", None)
        if self.prior_size:  # absent from the kwargs of a generator without one (older bundles build unchanged)
            self.init_kwargs["prior_size"] = self.prior_size
        self.noise_dim = self.latent_dim + (1 if self.prior_size else 0)

    def latent(self, noise: torch.Tensor) -> torch.Tensor:
        """Standard normal noise ``[B,noise_dim]`` -> the latent ``[B,latent_dim]`` that `forward` takes,
        float32 on the generator's device. Pass the noise as drawn (float32): the component is picked
        from it before any cast, so a seed picks the same component in every precision."""
        if noise.dim() != 2 or noise.shape[1] != self.noise_dim:
            raise ValueError(f"noise must be [B,{self.noise_dim}], got {list(noise.shape)}")
        device = self.prior_mu.device
        if not self.prior_size:
            return noise.to(device, torch.float32)
        B = len(noise)
        every = torch.full((B,), self.prior_size, dtype=torch.long)  # one group: all M components
        style = draw_from_prior(
            torch.cat([noise[:, : self.z_dim], noise[:, -1:]], 1),
            self.prior_mu,
            self.prior_logvar,
            torch.zeros(B, dtype=torch.long),
            every,
        )
        return torch.cat([style, noise[:, self.z_dim : self.latent_dim].to(device, torch.float32)], dim=1)

    def forward(self, z: torch.Tensor, layout: torch.Tensor | None = None) -> torch.Tensor:
        B, R = z.shape[0], self.resolution
        if z.shape[1] != self.latent_dim:
            raise ValueError(f"latent must be [B,{self.latent_dim}], got {list(z.shape)}")
        grain = z[:, self.z_dim : self.z_dim + R * R].reshape(B, 1, R, R) if self.latent_dim > self.z_dim else None
        if self.pixels is not None:
            return self.pixels(self.mapping(z[:, : self.z_dim]), grain, layout, z[:, self.z_dim + R * R :])
        z = z[:, : self.z_dim]
        if layout is None:  # head B: an empty map (at full resolution when the height joins it)
            side = R if self.row_coord else 4
            layout = z.new_zeros(B, self.num_categories, side, side)
        if self.row_coord:
            H = layout.shape[-2]
            rows = torch.linspace(-1, 1, H, device=z.device, dtype=layout.dtype)
            layout = torch.cat([layout, rows.view(1, 1, H, 1).expand(B, 1, H, layout.shape[-1])], dim=1)
        x = self.const.expand(B, -1, -1, -1) if self.const_input else self.fc(z).view(B, -1, 4, 4)
        w = self.mapping(z)
        for block in self.blocks:
            x = block(x, layout, w, grain)
        x = F.leaky_relu(pixel_norm(x), 0.2)
        rgb = self.to_rgb(x)
        if self.rgb_grain is not None:
            rgb = rgb + self.rgb_grain(x) * grain
        return torch.tanh(rgb)


class ForegroundGenerator(nn.Module):
    """Paints one object into a canvas: a U-Net inpainter conditioned on category and noise.

    ``forward(z [B,z_dim], category [B] long, mask [B,1,H,W], hole [B,3,H,W]) -> [B,3,H,W]``
    where ``hole`` is the canvas with the object's region blanked. The encoder
    sees the whole canvas, and a pooled summary of it joins the noise and the
    category embedding in the style that modulates the decoder: that is how
    the object picks up the scene's light and colour. Use
    :func:`composite` to place the result; only pixels inside the mask count.
    With a foreground prior (``prior_size`` > 0, set after training by `set_prior`), noise
    ``[B,noise_dim]`` becomes ``z`` through `latent`: drawn from the encoder's posteriors of real
    objects of the same category (`draw_from_prior`); without one, ``z`` is the noise itself.
    """

    def __init__(
        self,
        z_dim: int = 64,
        num_categories: int = 5,
        resolution: int = 64,
        channels: int = 32,
        max_channels: int = 128,
        embed_dim: int = 16,
        prior_size: int = 0,
    ):
        super().__init__()
        self.init_kwargs = dict(
            z_dim=z_dim,
            num_categories=num_categories,
            resolution=resolution,
            channels=channels,
            max_channels=max_channels,
            embed_dim=embed_dim,
        )
        self.z_dim, self.num_categories, self.resolution = z_dim, num_categories, resolution
        empty = torch.zeros(prior_size, z_dim)
        self.set_prior(empty, empty, torch.zeros(prior_size, dtype=torch.long))
        n = _levels(resolution, 8)
        widths = [min(channels * 2**i, max_channels) for i in range(n + 1)]  # res ... 8x8
        self.embed = nn.Embedding(num_categories, embed_dim)
        self.stem = nn.Conv2d(3 + 1 + embed_dim, widths[0], 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1) for i in range(n))
        style = 2 * widths[-1]
        self.mapping = nn.Sequential(
            nn.Linear(z_dim + embed_dim + widths[-1], style),
            nn.LeakyReLU(0.2),
            nn.Linear(style, style),
            nn.LeakyReLU(0.2),
        )
        self.mid = nn.Conv2d(widths[-1], widths[-1], 3, padding=1)
        self.mid_film = FiLM(style, widths[-1])
        # decoder, 8x8 -> res: upsample, concatenate the encoder's skip, conv, modulate
        self.up = nn.ModuleList(
            nn.Conv2d(widths[i + 1] + widths[i], widths[i], 3, padding=1) for i in reversed(range(n))
        )
        self.up_film = nn.ModuleList(FiLM(style, widths[i]) for i in reversed(range(n)))
        self.to_rgb = nn.Conv2d(widths[0], 3, 3, padding=1)

    def set_prior(self, mu: torch.Tensor, logvar: torch.Tensor, category: torch.Tensor) -> None:
        """Draw each object's ``z`` from the Gaussians ``mu``, ``logvar`` ``[M,z_dim]`` of its category
        (``category`` ``[M]``; equal weights) from now on; ``M = 0``: the standard normal. The noise
        vector grows by one entry (the pick). A category without components keeps the standard normal."""
        if mu.shape != logvar.shape or mu.dim() != 2 or mu.shape[1] != self.z_dim or category.shape != mu.shape[:1]:
            raise ValueError(
                f"a prior is two [M,{self.z_dim}] tensors and [M] categories, got "
                f"{list(mu.shape)}, {list(logvar.shape)} and {list(category.shape)}"
            )
        if len(category) and not 0 <= int(category.min()) <= int(category.max()) < self.num_categories:
            raise ValueError(f"a prior's categories must lie in [0, {self.num_categories}), got {category.unique()}")
        order = torch.argsort(category, stable=True)  # components grouped by category, in their order
        self.prior_size = len(mu)
        keep = self.prior_size > 0  # an empty prior stays out of the state dict: older bundles load strictly
        self.register_buffer("prior_mu", mu.detach().float()[order].clone(), persistent=keep)
        self.register_buffer("prior_logvar", logvar.detach().float()[order].clone(), persistent=keep)
        count = torch.bincount(category.long(), minlength=self.num_categories)
        self.register_buffer("prior_count", count, persistent=keep)
        self.init_kwargs.pop("prior_size", None)
        if self.prior_size:  # absent from the kwargs of a generator without one (older bundles build unchanged)
            self.init_kwargs["prior_size"] = self.prior_size
        self.noise_dim = self.z_dim + (1 if self.prior_size else 0)

    def latent(self, noise: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """Standard normal noise ``[B,noise_dim]`` and categories ``[B]`` -> ``z`` ``[B,z_dim]`` (float32, on
        the generator's device). Pass the noise as drawn (float32), as `LayoutGenerator.latent`."""
        if noise.dim() != 2 or noise.shape[1] != self.noise_dim:
            raise ValueError(f"noise must be [B,{self.noise_dim}], got {list(noise.shape)}")
        if not self.prior_size:
            return noise.to(self.prior_mu.device, torch.float32)
        category, count = category.long().cpu(), self.prior_count.cpu()
        first = count.cumsum(0) - count  # components are grouped by category (`set_prior`)
        return draw_from_prior(noise, self.prior_mu, self.prior_logvar, first[category], count[category])

    def forward(self, z: torch.Tensor, category: torch.Tensor, mask: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        e = self.embed(category)
        x = torch.cat([hole * (1 - mask), mask, e[:, :, None, None] * mask], dim=1)
        x = F.leaky_relu(self.stem(x), 0.2)
        skips = [x]
        for conv in self.down:
            x = F.leaky_relu(conv(x), 0.2)
            skips.append(x)
        w = self.mapping(torch.cat([z, e, x.mean(dim=(2, 3))], dim=1))
        x = F.leaky_relu(self.mid_film(self.mid(x), w), 0.2)
        for conv, film, skip in zip(self.up, self.up_film, reversed(skips[:-1]), strict=False):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = F.leaky_relu(film(conv(torch.cat([x, skip], dim=1)), w), 0.2)
        return torch.tanh(self.to_rgb(x))


class AppearanceEncoder(nn.Module):
    """An image's look as a Gaussian in noise space (the cVAE-GAN encoder that teaches a generator by
    reconstruction).

    ``forward(image [B,C,S,S]) -> (mu [B,z_dim], logvar [B,z_dim])``; for G_fg the input is an
    object crop ⊕ its mask (C=4), for G_bg a whole background plate (C=3).
    """

    def __init__(
        self, in_channels: int = 4, resolution: int = 32, z_dim: int = 64, channels: int = 32, max_channels: int = 256
    ):
        super().__init__()
        self.init_kwargs = dict(
            in_channels=in_channels, resolution=resolution, z_dim=z_dim, channels=channels, max_channels=max_channels
        )
        self.z_dim, self.resolution = z_dim, resolution
        n = _levels(resolution, 4)
        widths = [min(channels * 2**i, max_channels) for i in range(n + 1)]
        layers = [nn.Conv2d(in_channels, widths[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for i in range(n):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1] * 16, 2 * z_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.trunk(image).flatten(1)).float().chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)


# ----------------------------------------------------------------------------- discriminators


def with_detail(x: torch.Tensor) -> torch.Tensor:
    """``[B,C,H,W]`` -> ``[B,2C,H,W]``: the image and its high-pass residual (image less its 3x3 mean, x4).
    A small or spectral-normed CNN given only the image learns colours and layouts long before it
    notices grain (the fine noise of a real ground is a few grey levels): the residual puts that
    amplitude in front of it."""
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return torch.cat([x, 4 * (x - blur)], 1)


def _disc_conv(cin: int, cout: int, k: int = 3, stride: int = 1, spectral: bool = True) -> nn.Module:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2 if stride == 1 else 1)
    if spectral:
        return spectral_norm(conv)
    # without spectral norm nothing rescales the weights: PyTorch's default init shrinks the signal
    # about 3x a layer, so a deep D starts with a constant score and no input gradient (measured)
    nn.init.kaiming_normal_(conv.weight, a=0.2)
    nn.init.zeros_(conv.bias)
    return conv


def minibatch_stddev(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append the feature standard deviation across a group of samples as one channel (StyleGAN's guard against mode collapse)."""
    B, C, H, W = x.shape
    g = math.gcd(group, B)
    std = x.view(g, -1, C, H, W).var(dim=0, unbiased=False).add(1e-8).sqrt().mean(dim=(1, 2, 3))  # [B/g]
    return torch.cat([x, std.repeat(g)[:, None, None, None].expand(B, 1, H, W)], dim=1)


class DownStack(nn.Module):
    """Conv stack (spectral-normed unless ``spectral=False``) halving the resolution down to 4x4;
    returns every stage's features."""

    def __init__(self, cin: int, resolution: int, channels: int, max_channels: int, spectral: bool = True):
        super().__init__()
        n = _levels(resolution, 4)
        widths = [min(channels * 2**i, max_channels) for i in range(n + 1)]
        self.stem = _disc_conv(cin, widths[0], spectral=spectral)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                _disc_conv(widths[i], widths[i], spectral=spectral),
                nn.LeakyReLU(0.2),
                _disc_conv(widths[i], widths[i + 1], 4, stride=2, spectral=spectral),
                nn.LeakyReLU(0.2),
            )
            for i in range(n)
        )
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [F.leaky_relu(self.stem(x), 0.2)]
        for block in self.blocks:
            feats.append(block(feats[-1]))
        return feats


class GlobalDiscriminator(nn.Module):
    """Scores a whole image together with its layout.

    ``forward(image [B,3,H,W], layout [B,C,H,W]) -> (score [B], features)``;
    the features serve feature matching. ``detail`` also shows it the image's high-pass
    residual (`with_detail`), so that it judges the amplitude of grain. ``spectral=False`` drops
    spectral normalisation (StyleGAN2's discriminator: R1 alone keeps it in check, ``r1_gamma``):
    a small spectral-normed D outputs scores near zero and sat at chance for ~800 batches against a
    warm G_bg (docs/RESULTS.md).
    """

    def __init__(
        self,
        num_categories: int = 5,
        resolution: int = 64,
        channels: int = 32,
        max_channels: int = 256,
        mbstd: bool = True,
        detail: bool = False,
        spectral: bool = True,
    ):
        super().__init__()
        self.init_kwargs = dict(
            num_categories=num_categories,
            resolution=resolution,
            channels=channels,
            max_channels=max_channels,
            mbstd=mbstd,
            detail=detail,
            spectral=spectral,
        )
        self.mbstd, self.detail = mbstd, detail
        self.trunk = DownStack(3 * (1 + detail) + num_categories, resolution, channels, max_channels, spectral)
        c = self.trunk.out_channels
        self.head = nn.Sequential(_disc_conv(c + int(mbstd), c, spectral=spectral), nn.LeakyReLU(0.2))
        fc = nn.Linear(c * 16, 1)
        self.fc = spectral_norm(fc) if spectral else fc

    def forward(self, image: torch.Tensor, layout: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.trunk(torch.cat([with_detail(image) if self.detail else image, layout], dim=1))
        x = minibatch_stddev(feats[-1]) if self.mbstd else feats[-1]
        x = self.head(x)
        return self.fc(x.flatten(1)).squeeze(1), feats


class ObjectClassifier(nn.Module):
    """Names an object's category from its look inside its outline (G_fg's auxiliary teacher, AC-GAN style).

    ``forward(crop [B,4,S,S] (image × mask ⊕ mask, as `object_crops` cuts it)) -> logits [B,C]``.
    Taught on real crops and on real looks cut into other objects' silhouettes (`swap_silhouettes`), so it
    reads colour and texture rather than the outline: a sun painted into a rock's mask must still read as a sun.
    """

    def __init__(self, num_categories: int = 5, crop_size: int = 32, channels: int = 16, max_channels: int = 128):
        super().__init__()
        self.init_kwargs = dict(
            num_categories=num_categories, crop_size=crop_size, channels=channels, max_channels=max_channels
        )
        self.crop_size = crop_size
        self.trunk = DownStack(4, crop_size, channels, max_channels, spectral=False)
        self.fc = nn.Linear(self.trunk.out_channels, num_categories)

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(crop)[-1].mean(dim=(2, 3)))


class ObjectDiscriminator(nn.Module):
    """Scores an object crop with its mask, projected on its category.

    ``forward(crop [B,4,S,S] (image ⊕ mask), category [B]) -> (score [B], features)``;
    ``native`` says how the caller should cut the crops (`crop_objects`): objects that fit at their own
    resolution, not scaled up to S.
    """

    def __init__(
        self,
        num_categories: int = 5,
        crop_size: int = 32,
        channels: int = 32,
        max_channels: int = 256,
        native: bool = False,
    ):
        super().__init__()
        self.init_kwargs = dict(
            num_categories=num_categories,
            crop_size=crop_size,
            channels=channels,
            max_channels=max_channels,
            native=native,
        )
        self.crop_size, self.native = crop_size, native
        self.trunk = DownStack(4, crop_size, channels, max_channels)
        c = self.trunk.out_channels
        self.fc = spectral_norm(nn.Linear(c, 1))
        self.embed = spectral_norm(nn.Embedding(num_categories, c))

    def forward(self, crop: torch.Tensor, category: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.trunk(crop)
        h = feats[-1].sum(dim=(2, 3))
        return self.fc(h).squeeze(1) + (self.embed(category) * h).sum(1), feats
