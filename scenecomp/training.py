"""Training: the losses, the EMA, and one LightningModule that trains the enabled stages.

Stages (any subset, trained side by side on every batch; the paper trains them separately,
``experiment=shapes64_background`` trains the background alone):

- ``background``: G_bg from noise. ``background_method: plates`` (default): a background
  inpainter paints the objects out of real images, G_bg learns those plates as a cVAE-GAN
  (reconstruction + KL) with D_bg judging either real pixels outside the objects
  (``bg_judged_on: real``) or the plates. ``two_head``: the paper's head A (layout) against a
  global discriminator, head B (noise only) pulled towards head A outside the objects.
  ``masked``: noise only, judged where real images show no object.
- ``foreground``: one object of a real image is blanked and G_fg repaints it in context, as a
  cVAE-GAN (the encoder of the real object's crop gives z for an L1 reconstruction, z from the
  prior is judged by the object discriminator), half of it on G_bg's canvases.
- ``baseline``: a single-shot SPADE-style generator (the same network as G_bg, head A only)
  with its own global discriminator: the comparison the paper makes.

Each stage has a generator and a discriminator optimiser, so Lightning's
``global_step`` advances by two per stage per batch. ``stage_steps`` ends a stage early
(``{foreground: 2250}``: G_fg trains for the first 2250 batches, then only the background
goes on), so one run can give each stage its own length. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import default_collate

from scenecomp.compose import paint_layers
from scenecomp.images import to_array
from scenecomp.nets import (
    AppearanceEncoder,
    ForegroundGenerator,
    GlobalDiscriminator,
    LayoutGenerator,
    ObjectClassifier,
    ObjectDiscriminator,
    composite,
    crop_objects,
    fill_outside,
    layout_map,
    object_crops,
    swap_silhouettes,
    visible_masks,
)

STAGES = ("background", "foreground", "baseline")
BACKGROUND_METHODS = ("plates", "two_head", "masked")


# ----------------------------------------------------------------------------- losses


# Losses are computed in fp32 whatever the autocast precision of the networks (bf16-mixed).


def d_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real.float()).mean() + F.relu(1 + fake.float()).mean()


def g_hinge(fake: torch.Tensor) -> torch.Tensor:
    return -fake.float().mean()


def r1_penalty(real_score: torch.Tensor, real_input: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(real_score.float().sum(), real_input, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def feature_matching(real_feats: list[torch.Tensor], fake_feats: list[torch.Tensor]) -> torch.Tensor:
    """L1 between the batch-mean discriminator features of real and fake."""
    return sum(
        F.l1_loss(f.float().mean(0), r.detach().float().mean(0)) for r, f in zip(real_feats, fake_feats, strict=False)
    )


def mode_seeking(
    a: torch.Tensor, b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """MSGAN's diversity term: small when two noises give different paintings inside the mask.

    ``1 / (mean |a - b| in mask / mean |z_a - z_b| + eps)``; inpainting GANs
    otherwise learn to ignore their noise.
    """
    a, b, inside = a.float(), b.float(), mask.float().expand_as(a)
    image_gap = ((a - b).abs() * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp(min=1)
    noise_gap = (z_a - z_b).abs().mean(1)
    return 1 / ((image_gap / noise_gap).mean() + 1e-5)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL of ``N(mu, exp(logvar))`` from ``N(0, I)``, summed over dimensions, mean over the batch."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()


def posterior_sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """A draw of z from the encoder's ``N(mu, exp(logvar))`` (the reparameterisation trick)."""
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


def with_grain(z: torch.Tensor, latent_dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A style ``[B,z_dim]`` completed to a G_bg latent ``[B,latent_dim]`` with fresh per-pixel grain
    (drawn from ``generator`` if given, which must live on ``z``'s device)."""
    extra = latent_dim - z.shape[1]
    if not extra:
        return z
    grain = torch.randn(z.shape[0], extra, generator=generator, device=z.device, dtype=z.dtype)
    return torch.cat([z, grain], 1)


def without_grain(z: torch.Tensor, latent_dim: int) -> torch.Tensor:
    """A style ``[B,z_dim]`` completed to a G_bg latent ``[B,latent_dim]`` with a zero grain map:
    the reconstruction's image without grain, so its L1 never pulls the grain strengths down."""
    return F.pad(z, (0, latent_dim - z.shape[1]))


def pooled_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, pool: int) -> torch.Tensor:
    """L1 of ``[B,C,H,W]`` images average-pooled in ``pool``x``pool`` cells, over the cells wholly inside
    ``mask [B,1,H,W]``. Pooled, it teaches the layout and colours (horizon, sky, ground) without pulling
    grain and stars towards their blurred mean (those are the discriminator's to teach), but it is
    blind to how sharp an edge is within a cell (a horizon blurred over a cell's rows has the same
    average), so a reconstruction without grain against real pixels uses ``pool=1``; masked to
    the real pixels, it never teaches the inpainter's smooth fills (ghosts of the objects)."""
    gap = F.avg_pool2d(a.float() - b.float(), pool)
    whole = (F.avg_pool2d(mask.float(), pool) > 0.999).float()
    return (gap.abs() * whole).sum() / (whole.sum() * a.shape[1]).clamp(min=1)


def _blur(x: torch.Tensor, height: int, width: int | None = None) -> torch.Tensor:
    """Mean over ``height`` x ``width`` windows (default square; edges replicated), as two 1-D passes: h + w,
    not h·w, reads a pixel."""
    width = height if width is None else width
    x = F.pad(x, [width // 2, width // 2, height // 2, height // 2], mode="replicate")
    return F.avg_pool2d(F.avg_pool2d(x, (height, 1), 1), (1, width), 1)


def texture_stats(x: torch.Tensor, cell: int | tuple[int, int] = 8, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Local texture of ``[B,3,H,W]`` images: ``[B,20,H/h,W/w]``, per cell (``cell``: h = w, or ``(h, w)``) the
    RMS of five detail bands, over the cell's pixels where ``weight [B,1,H,W]`` is 1 (default: all), per channel
    and of their channel sum (which tells grain that brightens all channels together from grain of colour):
    three isotropic ones (the image less its 3x3 mean, that mean less the 9x9 one, that less the 25x25 one:
    grain, speckle, blotches) and two directional ones (the 3x3 mean less its mean along 9 pixels of its row,
    and of its column). Why directional: a texture's shape, not only its amount: measured, a G_bg taught the
    isotropic bands alone painted round blotches, twice as rough along the rows as Shapes' ground (whose
    blotches are wider than tall), and night grounds of them read as rocks (docs/RESULTS.md).
    Channels band by band in that order, each band's three channels then its channel sum (band k: 4k..4k+3)."""
    means = [x, _blur(x, 3), _blur(x, 9), _blur(x, 25)]
    details = [fine - coarse for fine, coarse in zip(means[:-1], means[1:], strict=True)]
    details += [means[1] - _blur(means[1], 1, 9), means[1] - _blur(means[1], 9, 1)]
    energy = torch.cat([b for d in details for b in (d, d.sum(1, keepdim=True))], 1).pow(2)
    if weight is None:
        return F.avg_pool2d(energy, cell).add(1e-8).sqrt()
    return (F.avg_pool2d(energy * weight, cell) / F.avg_pool2d(weight, cell).clamp(min=1e-8)).add(1e-8).sqrt()


def band_texture(x: torch.Tensor, mask: torch.Tensor, cell: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The texture of ``[B,3,H,W]`` images band by band of ``cell`` rows: ``[B,40,H/cell,1]``, the mean and the
    spread (standard deviation) of its ``cell`` x ``cell`` cells' `texture_stats`, each over the pixels whose
    25x25 surroundings lie wholly inside ``mask [B,1,H,W]`` (cells with under a quarter of such pixels do not
    count); and ``[B,1,H/cell,1]``, 1 where a band holds two such cells or more (the others do not count). Why a
    band's mean and spread, not each cell: 30 % of Shapes' night-sky 8x8 cells hold a star (a band of 8 rows
    about two and a half), and the spread tells such points, or one dark blotch among smooth ground (read as
    a rock), from the same amount of texture spread evenly."""
    inside = 1 - dilate(1 - mask.float(), 12)
    use = (F.avg_pool2d(inside, cell) >= 0.25).float()  # [B,1,H/cell,W/cell]
    n = use.sum(-1, keepdim=True)
    stats = texture_stats(x.float(), cell, inside)
    mean = (stats * use).sum(-1, keepdim=True) / n.clamp(min=1)
    spread = ((stats - mean).pow(2) * use).sum(-1, keepdim=True).div(n.clamp(min=1)).add(1e-8).sqrt()
    return torch.cat([mean, spread], 1), (n >= 2).float()


def texture_energy(
    a: torch.Tensor, a2: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, cell: int = 8
) -> torch.Tensor:
    """The energy score (Gneiting and Raftery 2007) of the `band_texture` of two ``[B,3,H,W]`` images ``a``,
    ``a2`` (one style, each with its own grain) against the real ``b``'s, per statistic:
    ``(|a - b| + |a2 - b|) / 2 - |a - a2| / 2``, averaged over the bands that count. The texture's
    teacher, as `pooled_l1` is the mean's: grain is random, so an L1 of pixels pulls it towards none, while its
    amount (and where it is absent: a smooth sky) can be matched sample by sample. Why a score of two draws
    and not the L1 of one: where a band's statistic is itself random (a few blotches of random height in it:
    Shapes' ground holds four 16-px cells a band), an L1 of two independent draws is least when the painted one
    does not vary, so it shrank the blotches (measured, docs/RESULTS.md "The texture loss's pull"); the energy
    score is least in expectation when the painted statistics are distributed as the real ones."""
    (sa, _), (sa2, _), (sb, counts) = (band_texture(x, mask, cell) for x in (a, a2, b))  # one mask: one count
    score = ((sa - sb).abs() + (sa2 - sb).abs() - (sa - sa2).abs()) / 2 * counts
    return score.sum() / (counts.sum() * score.shape[1]).clamp(min=1)


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of ``[B,C,H,W]`` images over the pixels where ``mask [B,1,H,W]`` is 1."""
    diff = (a.float() - b.float()).abs() * mask
    return diff.sum() / (mask.sum() * a.shape[1]).clamp(min=1)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow ``[B,1,H,W]`` binary masks by ``radius`` pixels (a square structuring element), as two 1-D
    passes (a square's maximum is its rows' maximum of its columns' maxima)."""
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    mask = F.max_pool2d(mask, (k, 1), stride=1, padding=(radius, 0))
    return F.max_pool2d(mask, (1, k), stride=1, padding=(0, radius))


def agreement(head_b: torch.Tensor, head_a: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of head B from (detached) head A where ``outside`` is 1."""
    diff = (head_b.float() - head_a.detach().float()).abs() * outside
    return diff.sum() / (outside.sum() * head_b.shape[1]).clamp(min=1)


def noise_seed(seed: int, rank: int, batches: int) -> int:
    """A 32-bit seed for the noise of ``rank`` from batch ``batches`` on: well mixed, so streams do not overlap."""
    return int(np.random.SeedSequence([seed, rank, batches]).generate_state(1)[0])


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int | None) -> None:
    """EMA with a warm-up (decay at most ``(1 + step) / (10 + step)``), so early averages are not dominated by the
    initial weights; ``step=None``: no warm-up (an EMA that starts trained)."""
    decay = decay if step is None else min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters(), strict=False):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=False):
        e.copy_(b)


# ----------------------------------------------------------------------------- the module


class SceneGAN(L.LightningModule):
    """Trains the stages named in ``stages`` with manual optimisation and EMA generators.

    Every argument is a plain value (Hydra passes them from ``scenecomp/conf/model``);
    the network sizes are the constructor arguments of the networks in
    :mod:`scenecomp.nets`.
    """

    def __init__(
        self,
        categories: list[str],
        resolution: int = 64,
        z_dim: int = 64,
        stages: list[str] = ("background", "foreground"),
        background: dict | None = None,
        foreground: dict | None = None,
        global_disc: dict | None = None,
        object_disc: dict | None = None,
        encoder: dict | None = None,
        plate: dict | None = None,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: tuple[float, float] = (0.0, 0.99),
        background_method: str = "plates",
        agreement_weight: float = 10.0,
        object_weight: float = 1.0,
        fm_weight: float = 0.0,
        r1_gamma: float = 0.0,
        ms_weight: float = 0.0,
        rec_weight: float = 10.0,
        kl_weight: float = 0.01,
        generated_canvas: float = 0.5,
        plate_dilate: int = 1,
        bg_rec_pool: int = 1,
        bg_judged_on: str = "plates",
        bg_rec_on: str = "plates",
        ema_decay: float = 0.999,
        min_visible: float = 0.003,
        stage_steps: dict | None = None,
        background_prior: int = 0,
        foreground_prior: int = 0,
        bg_adv_posterior: float = 0.0,
        fg_adv_posterior: float = 0.0,
        bg_texture_weight: float = 0.0,
        fg_scene_weight: float = 0.0,
        fg_swap: float = 0.0,
        fg_class_weight: float = 0.0,
        frozen: list[str] = (),
    ):
        super().__init__()
        for name, size in (("background_prior", background_prior), ("foreground_prior", foreground_prior)):
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"{name}: a number of real images >= 0, got {size!r}")
        if not bg_texture_weight >= 0:
            raise ValueError(f"bg_texture_weight: a weight >= 0, got {bg_texture_weight!r}")
        if not fg_scene_weight >= 0:
            raise ValueError(f"fg_scene_weight: a weight >= 0, got {fg_scene_weight!r}")
        if not fg_class_weight >= 0:
            raise ValueError(f"fg_class_weight: a weight >= 0, got {fg_class_weight!r}")
        if fg_swap > 0 and not fg_class_weight > 0:
            raise ValueError(
                "fg_swap: rows painted as another category are judged by the classifier alone; set fg_class_weight > 0"
            )
        for name, share in (
            ("bg_adv_posterior", bg_adv_posterior),
            ("fg_adv_posterior", fg_adv_posterior),
            ("fg_swap", fg_swap),
        ):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name}: a share in [0, 1], got {share!r}")
        if background_method not in BACKGROUND_METHODS:
            raise ValueError(f"background_method must be one of {list(BACKGROUND_METHODS)}, got {background_method!r}")
        for name, value in (("bg_judged_on", bg_judged_on), ("bg_rec_on", bg_rec_on)):
            if value not in ("plates", "real"):
                raise ValueError(f"{name} must be 'plates' or 'real', got {value!r}")
        unknown = set(stages) - set(STAGES)
        if unknown or not stages:
            raise ValueError(f"stages must be a non-empty subset of {list(STAGES)}, got {list(stages)}")
        for stage, limit in (stage_steps or {}).items():
            # a stage this run does not train may keep its count (model=spade_baseline beside a layered recipe's)
            # 0: the stage stays as it starts (warm-started G_bg painting G_fg's canvases while G_fg trains)
            if stage not in STAGES or not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                raise ValueError(f"stage_steps: {stage}: {limit!r}; give a stage of {list(STAGES)} a batch count >= 0")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.categories, self.resolution, self.z_dim = list(categories), resolution, z_dim
        self.stages = list(stages)
        C = len(self.categories)
        common = dict(num_categories=C, resolution=resolution)
        if "background" in self.stages:
            self.g_bg = LayoutGenerator(z_dim=z_dim, **common, **(background or {}))
            # two_head: D sees image ⊕ layout; masked (and plates judged on real images): image ⊕ union of
            # the masks; plates: the image alone
            d_cats = {"two_head": C, "masked": 1, "plates": int(bg_judged_on == "real")}[background_method]
            self.d_bg = GlobalDiscriminator(num_categories=d_cats, resolution=resolution, **(global_disc or {}))
            self.g_bg_ema = copy.deepcopy(self.g_bg).eval().requires_grad_(False)
            if background_method == "plates":
                # a background inpainter (one category, no noise) that removes the objects from real images
                self.g_plate = ForegroundGenerator(
                    z_dim=z_dim, num_categories=1, resolution=resolution, **(plate or foreground or {})
                )
                self.g_plate_ema = copy.deepcopy(self.g_plate).eval().requires_grad_(False)
                self.e_bg = AppearanceEncoder(3, resolution, z_dim, **(encoder or {}))
                # the style prior is fitted with this EMA, averaged over the same batches as G_bg's: the live
                # encoder's codes have moved on from those the EMA G_bg learned to paint
                self.e_bg_ema = copy.deepcopy(self.e_bg).eval().requires_grad_(False)
        if "foreground" in self.stages:
            self.g_fg = ForegroundGenerator(z_dim=z_dim, **common, **(foreground or {}))
            self.d_obj = ObjectDiscriminator(num_categories=C, crop_size=resolution // 2, **(object_disc or {}))
            self.e_fg = AppearanceEncoder(4, resolution // 2, z_dim, **(encoder or {}))
            self.e_fg_ema = copy.deepcopy(self.e_fg).eval().requires_grad_(False)  # fits the foreground prior
            if fg_scene_weight > 0:
                # judges the whole scene at full resolution, the repainted object's layout beside it: a crop
                # scaled to 32 px hides a large object's smeared texture and halos that the scene shows
                self.d_scene = GlobalDiscriminator(num_categories=C, resolution=resolution, **(global_disc or {}))
            if fg_class_weight > 0:
                self.c_obj = ObjectClassifier(num_categories=C, crop_size=resolution // 2)
            self.g_fg_ema = copy.deepcopy(self.g_fg).eval().requires_grad_(False)
        if "baseline" in self.stages:
            self.g_base = LayoutGenerator(z_dim=z_dim, **common, **(background or {}))
            self.d_base = GlobalDiscriminator(**common, **(global_disc or {}))
            self.g_base_ema = copy.deepcopy(self.g_base).eval().requires_grad_(False)
        self.preview: dict | None = None
        self.freeze_parts(frozen)

    # ``build`` switches to channels_last where that layout makes the CPU's (or GPU's) convolutions faster
    memory_format = torch.contiguous_format

    def on_after_batch_transfer(self, batch, dataloader_idx):
        batch["image"] = batch["image"].contiguous(memory_format=self.memory_format)
        return batch

    # EMA copies that a warm start filled with trained weights (``train.warm_start``): they keep their full decay from
    # the first batch, since a warm-up would replace a long average with the last few batches' noisy weights
    trained_emas: frozenset[str] = frozenset()
    # the priors of the bundle that started a generator, by stage (``train.warm_start``): G_bg's ([M,z], [M,z]),
    # G_fg's ([M,z], [M,z], [M] categories)
    carried_priors: dict[str, tuple[torch.Tensor, ...]] = {}

    def update_ema(self, name: str) -> None:
        """Move the EMA copy ``name`` (e.g. ``g_fg_ema``) towards its network (``g_fg``)."""
        step = None if name in self.trained_emas else self.batches_done
        ema_update(getattr(self, name), getattr(self, name.removesuffix("_ema")), self.hparams.ema_decay, step)

    seed = 0  # the run's seed (``build`` sets it): each rank's noise stream is derived from it

    def seed_noise(self) -> None:
        """Seed this rank's noise from (seed, rank, batch), batch by batch: at the start of training for its
        first batch, then after each batch for the next.

        Every rank starts from the same seed, so the initial weights agree (and
        Lightning's DDP reseeds all ranks alike): without this they would all draw
        the same z. Lightning's checkpoints hold no RNG state: seeded by the batch,
        a resumed run draws the noise the uninterrupted run drew (with the data
        loader's saved place in the epoch, it trains to the same weights). Seeded
        between batches, not in ``on_train_batch_start``: callbacks' hooks run before the module's.
        """
        torch.manual_seed(noise_seed(self.seed, self.global_rank, self.batches_done))

    def on_train_start(self):
        self.seed_noise()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.seed_noise()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["trained_emas"] = sorted(self.trained_emas)  # a resumed run goes on with the same EMA rule
        # the priors its generators came with (`warm_start`), for a run started from this checkpoint (init_from)
        checkpoint["carried_priors"] = {name: list(prior) for name, prior in self.carried_priors.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint from before the plates encoder had an EMA resumes (and exports) with the EMA
        starting as its encoder; one whose EMA G_bg drew G_fg's canvases from a style prior (`warm_start`)
        resumes with that prior."""
        self.trained_emas = frozenset(checkpoint.get("trained_emas", ()))
        if "carried_priors" in checkpoint:
            self.carried_priors = {name: tuple(prior) for name, prior in checkpoint["carried_priors"].items()}
        state = checkpoint["state_dict"]
        if "g_bg_ema.prior_mu" in state and hasattr(self, "g_bg_ema"):
            self.g_bg_ema.set_prior(
                state["g_bg_ema.prior_mu"].to(self.device), state["g_bg_ema.prior_logvar"].to(self.device)
            )
        for enc in ("e_bg", "e_fg"):
            if hasattr(self, f"{enc}_ema") and not any(k.startswith(f"{enc}_ema.") for k in state):
                state.update(
                    {f"{enc}_ema.{k[len(enc) + 1 :]}": v for k, v in list(state.items()) if k.startswith(f"{enc}.")}
                )

    def freeze_parts(self, names) -> None:
        """Keep the weights of the networks or their parts named in ``names`` (as in a checkpoint:
        ``g_bg.pixels.layers``) as they start: no optimiser holds them. Why: a warm start whose colour is
        finished can train one part (its texture strengths, ``g_bg.pixels.to_grain``) against a fresh
        discriminator without that discriminator's first, uninformed gradients reaching the rest."""
        if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"frozen: a list of network or part names (g_bg.pixels.layers), got {names!r}")
        params = dict(self.named_parameters())
        for name in names:
            hits = [p for key, p in params.items() if key == name or key.startswith(name + ".")]
            if not hits:
                networks = sorted({k.split(".")[0] for k in params})
                raise ValueError(f"frozen: {name!r} names no weights of this model (its networks: {networks})")
            for p in hits:
                p.requires_grad_(False)

    @property
    def optimizer_steps_per_batch(self) -> int:
        return 2 * len(self.stages)

    @property
    def batches_done(self) -> int:
        """Training batches so far (Lightning's ``global_step`` counts optimiser steps)."""
        return self.global_step // self.optimizer_steps_per_batch

    def configure_optimizers(self):
        def adam(params, lr):
            params = [p for p in params if p.requires_grad]  # `frozen` parts train in no optimiser
            if not params:
                raise ValueError(f"frozen: {list(self.hparams.frozen)} leaves a network of this run nothing to train")
            return torch.optim.Adam(params, lr=lr, betas=tuple(self.hparams.betas))

        opts = []
        for stage in self.stages:
            if stage == "background":
                # with plates the inpainter and the encoder share G_bg's optimiser: their losses touch disjoint weights
                extra = [*self.g_plate.parameters(), *self.e_bg.parameters()] if hasattr(self, "g_plate") else []
                opts += [
                    adam([*self.g_bg.parameters(), *extra], self.hparams.lr_g),
                    adam(self.d_bg.parameters(), self.hparams.lr_d),
                ]
            elif stage == "foreground":
                judges = [getattr(self, name) for name in ("d_obj", "d_scene", "c_obj") if hasattr(self, name)]
                opts += [
                    adam([*self.g_fg.parameters(), *self.e_fg.parameters()], self.hparams.lr_g),
                    adam([p for judge in judges for p in judge.parameters()], self.hparams.lr_d),
                ]
            else:
                opts += [
                    adam(self.g_base.parameters(), self.hparams.lr_g),
                    adam(self.d_base.parameters(), self.hparams.lr_d),
                ]
        return opts

    # ------------------------------------------------------------------ steps

    def _step(self, g_opt, d_opt, d_loss_fn, g_loss_fn) -> dict:
        """One discriminator then one generator update; the loss functions return (loss, logs)."""
        self.toggle_optimizer(d_opt)
        d_loss, logs = d_loss_fn()
        d_opt.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        d_opt.step()
        self.untoggle_optimizer(d_opt)
        self.toggle_optimizer(g_opt)
        g_loss, g_logs = g_loss_fn()
        g_opt.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        g_opt.step()
        self.untoggle_optimizer(g_opt)
        return {**logs, **g_logs}

    def _d_loss(self, disc, real_in: tuple, fake_in: tuple, prefix: str):
        """Hinge loss (plus R1 when enabled) for ``disc(*inputs)``; the first input is the image."""
        r1_on = self.hparams.r1_gamma > 0
        real_img = real_in[0].detach().requires_grad_(r1_on)
        real_s, _ = disc(real_img, *real_in[1:])
        fake_s, _ = disc(fake_in[0].detach(), *fake_in[1:])
        loss = d_hinge(real_s, fake_s)
        logs = {
            f"{prefix}/d": loss.detach(),
            f"{prefix}/d_real": real_s.mean().detach(),
            f"{prefix}/d_fake": fake_s.mean().detach(),
        }
        if r1_on:
            r1 = r1_penalty(real_s, real_img)
            loss = loss + self.hparams.r1_gamma / 2 * r1
            logs[f"{prefix}/r1"] = r1.detach()
        return loss, logs

    def _g_loss(self, disc, real_in: tuple, fake_in: tuple) -> torch.Tensor:
        """Hinge generator loss, plus feature matching when enabled."""
        fake_s, fake_f = disc(*fake_in)
        loss = g_hinge(fake_s)
        if self.hparams.fm_weight > 0:
            with torch.no_grad():
                _, real_f = disc(*real_in)
            loss = loss + self.hparams.fm_weight * feature_matching(real_f, fake_f)
        return loss

    def _layout_stage(self, g, d, ema_name, g_opt, d_opt, x, seg, union, prefix, agreement_weight):
        z = torch.randn(x.shape[0], g.latent_dim, device=x.device)

        def d_loss():
            with torch.no_grad():
                fake = g(z, seg)
            return self._d_loss(d, (x, seg), (fake, seg), prefix)

        def g_loss():
            fake = g(z, seg)
            loss = self._g_loss(d, (x, seg), (fake, seg))
            logs = {f"{prefix}/g": loss.detach()}
            if agreement_weight > 0:
                agree = agreement(g(z, None), fake, 1 - union)
                loss = loss + agreement_weight * agree
                logs[f"{prefix}/agree"] = agree.detach()
            return loss, logs

        logs = self._step(g_opt, d_opt, d_loss, g_loss)
        self.update_ema(ema_name)
        return logs

    def _masked_background_stage(self, g_opt, d_opt, x, union):
        """The noise-only background judged only where real images show no object.

        Real images and samples are blanked by the same masks (those of the
        real batch) and the discriminator sees the mask too: as the masks
        move from batch to batch, every pixel gets judged as background, and
        no background-only image is ever needed.
        """
        z = torch.randn(x.shape[0], self.g_bg.latent_dim, device=x.device)
        keep = 1 - union

        def d_loss():
            with torch.no_grad():
                fake = self.g_bg(z)
            return self._d_loss(self.d_bg, (x * keep, union), (fake * keep, union), "bg")

        def g_loss():
            loss = self._g_loss(self.d_bg, (x * keep, union), (self.g_bg(z) * keep, union))
            return loss, {"bg/g": loss.detach()}

        logs = self._step(g_opt, d_opt, d_loss, g_loss)
        self.update_ema("g_bg_ema")
        return logs

    def _fill(self, inpainter, x: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """The background inpainter's painting of ``hole`` in ``x`` (its one category, no noise): ``[B,3,H,W]``."""
        zeros = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return inpainter(x.new_zeros(x.shape[0], self.z_dim), zeros, hole, x * (1 - hole))

    def plates(self, x: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
        """Real images with their (dilated) objects painted out by the EMA background inpainter: ``[B,3,H,W]``."""
        hole = dilate(union, self.hparams.plate_dilate)
        return composite(x, self._fill(self.g_plate_ema, x, hole), hole)

    @torch.no_grad()
    def fit_background_prior(self, dataset, size: int = 2048, batch_size: int = 64) -> int:
        """Give the EMA G_bg its style prior (`LayoutGenerator.set_prior`): the EMA encoder's posteriors of
        the plates of the first ``size`` images of ``dataset`` (a `SceneDataset`; in order, so the same
        data give the same prior). G_bg learned to paint where the encoder puts real plates; the
        standard normal also reaches between those codes, where it paints blends of day and dusk skies
        and blobs (docs/RESULTS.md). Returns the number of images used (fewer if the set is smaller)."""
        if not hasattr(self, "e_bg"):
            raise ValueError("a background prior needs the plates method's encoder (background_method: plates)")
        mus, logvars = [], []
        device, stop = self.g_bg_ema.prior_mu.device, min(size, len(dataset))
        for start in range(0, stop, batch_size):
            batch = default_collate([dataset[i] for i in range(start, min(start + batch_size, stop))])
            masks = batch["masks"] * batch["valid"][:, :, None, None, None]  # as in training_step
            mu, logvar = self.e_bg_ema(self.plates(batch["image"].to(device), masks.amax(1).to(device)))
            mus.append(mu.float())
            logvars.append(logvar.float())
        self.g_bg_ema.set_prior(torch.cat(mus), torch.cat(logvars))
        return self.g_bg_ema.prior_size

    def fit_foreground_prior(self, dataset, size: int = 2048, batch_size: int = 64) -> int:
        """Give the EMA G_fg its foreground prior (`ForegroundGenerator.set_prior`): the EMA encoder's
        posteriors of the objects of the first ``size`` images of ``dataset`` (those training repaints:
        visible share >= ``min_visible``; in order, so the same data give the same prior), each under its
        category. The standard normal reaches between the codes of real objects, where G_fg paints blends of
        their colours (patchy multicoloured walls: docs/RESULTS.md). Returns the number of objects used."""
        mus, logvars, cats = [], [], []
        device, stop = self.g_fg_ema.prior_mu.device, min(size, len(dataset))
        S, native = self.d_obj.crop_size, self.d_obj.native
        for start in range(0, stop, batch_size):
            batch = default_collate([dataset[i] for i in range(start, min(start + batch_size, stop))])
            x = batch["image"].to(device)
            vis = visible_masks(batch["masks"].to(device) * batch["valid"].to(device)[:, :, None, None, None])
            rows, cols = (batch["valid"].to(device) & (vis.flatten(2).mean(2) >= self.hparams.min_visible)).nonzero(
                as_tuple=True
            )
            if len(rows):
                m = vis[rows, cols]
                mu, logvar = self.e_fg_ema(crop_objects(torch.cat([x[rows], m], 1), m, S, native=native))
                mus.append(mu.float())
                logvars.append(logvar.float())
                cats.append(batch["categories"][rows.cpu(), cols.cpu()])
        if not mus:
            return 0
        self.g_fg_ema.set_prior(torch.cat(mus), torch.cat(logvars), torch.cat(cats))
        return self.g_fg_ema.prior_size

    def _plates_background_stage(self, g_opt, d_opt, x, union):
        """Background from clean plates, with no background-only data.

        The inpainter learns to fill object-shaped holes (another image's masks) where this image
        shows no object, by L1 against the real pixels; its EMA then paints the objects out of each
        real image. G_bg learns those plates as a cVAE-GAN: the encoder's z of a plate reconstructs
        it (`pooled_l1` + KL, the fast teacher): the whole plate with grain (``bg_rec_on="plates"``) or,
        without grain, only its real pixels (``"real"``: L1 then teaches neither ghosts nor a grain
        strength) while z from the prior is judged by D_bg, either against the
        plates (``bg_judged_on="plates"``) or against the real images outside their objects, G_bg's
        samples blanked by the same masks (``"real"``): the plates' filled holes are smooth, grainless
        ghosts of the objects, and a D that sees them teaches G_bg to paint them.
        """
        hp = self.hparams
        B = x.shape[0]
        taken = dilate(union, hp.plate_dilate)
        hole = taken.roll(1, dims=0) * (1 - taken)  # object shapes where this image shows background
        with torch.no_grad():
            plate = self.plates(x, union)
        if hp.bg_judged_on == "real":
            keep = 1 - taken
            real, judged = (x * keep, taken), (lambda img: (img * keep, taken))
        else:
            empty = x.new_zeros(B, 0, *x.shape[2:])
            real, judged = (plate, empty), (lambda img: (img, empty))
        z = torch.randn(B, self.g_bg.latent_dim, device=x.device)
        n = round(hp.bg_adv_posterior * B)
        if n:  # these judged samples paint the encoder's codes of this batch's plates (fresh grain): the
            # region the bundle's prior draws from (`fit_background_prior`) is taught sharpness too
            with torch.no_grad():
                z[:n, : self.z_dim] = posterior_sample(*self.e_bg(plate[:n])).to(z.dtype)

        def d_loss():
            with torch.no_grad():
                fake = self.g_bg(z)
            return self._d_loss(self.d_bg, real, judged(fake), "bg")

        def g_loss():
            plate_l1 = masked_l1(self._fill(self.g_plate, x, hole), x, hole)
            mu, logvar = self.e_bg(plate)
            z_rec = posterior_sample(mu, logvar)
            if hp.bg_rec_on == "real":  # no grain, only real pixels: neither grain nor ghosts taught by L1
                rec, target, seen = self.g_bg(without_grain(z_rec, self.g_bg.latent_dim)), x, 1 - taken
            else:  # the whole plate, with grain
                rec, target, seen = self.g_bg(with_grain(z_rec, self.g_bg.latent_dim)), plate, torch.ones_like(taken)
            rec_l1, kl = pooled_l1(rec, target, seen, hp.bg_rec_pool), kl_divergence(mu, logvar)
            adv = self._g_loss(self.d_bg, real, judged(self.g_bg(z)))
            loss = plate_l1 + adv + hp.rec_weight * rec_l1 + hp.kl_weight * kl
            logs = {
                "plate/l1": plate_l1.detach(),
                "bg/g": adv.detach(),
                "bg/rec_l1": rec_l1.detach(),
                "bg/kl": kl.detach(),
            }
            if hp.bg_texture_weight > 0:  # the same reconstruction twice with grain: its local texture's score
                grained = [self.g_bg(with_grain(z_rec, self.g_bg.latent_dim)) for _ in range(2)]
                texture = texture_energy(*grained, x, 1 - taken)
                loss = loss + hp.bg_texture_weight * texture
                logs["bg/texture"] = texture.detach()
            return loss, logs

        logs = self._step(g_opt, d_opt, d_loss, g_loss)
        for name in ("g_bg_ema", "g_plate_ema", "e_bg_ema"):
            self.update_ema(name)
        return logs

    def _foreground_stage(self, g_opt, d_opt, x, masks, cats, valid):
        """Blank one visible object per image and repaint it, as a cVAE-GAN.

        With z from the encoder of the real object's crop, G_fg reconstructs it (L1 inside the mask
        + KL): the fast teacher of texture and light. With z from the prior it paints into either
        the real canvas or, for a share ``generated_canvas`` of the rows, a background from the EMA
        G_bg (what it sees when composing), judged by the object discriminator on crops. With
        ``fg_class_weight`` a classifier of the look inside the outline (`ObjectClassifier`) names each
        painted object's category too, and a share ``fg_swap`` of the rows paints another category into
        the real object's mask (a user's category edit), judged by that classifier alone.
        """
        hp = self.hparams
        vis = visible_masks(masks)
        eligible = valid & (vis.flatten(2).mean(2) >= hp.min_visible)
        rows = eligible.any(1).nonzero().squeeze(1)
        if rows.numel() == 0:  # still step both optimisers (with no gradient), so batches count exactly
            g_opt.zero_grad(set_to_none=True), d_opt.zero_grad(set_to_none=True)
            g_opt.step(), d_opt.step()
            return {}
        idx = torch.multinomial(eligible[rows].float(), 1).squeeze(1)
        x = x[rows]
        m, c = vis[rows, idx], cats[rows, idx]
        n = rows.numel()
        z = torch.randn(n, self.z_dim, device=x.device)
        canvas, on_real = x, torch.ones(n, dtype=torch.bool, device=x.device)
        if hasattr(self, "g_bg_ema") and hp.generated_canvas > 0:
            on_real = torch.rand(n, device=x.device) >= hp.generated_canvas
            with torch.no_grad():
                # drawn as composing draws them: from G_bg's style prior when it has one (`warm_start`)
                noise = torch.randn(n, self.g_bg_ema.noise_dim, device=x.device)
                generated = self.g_bg_ema(self.g_bg_ema.latent(noise)).to(x.dtype)
            canvas = torch.where(on_real[:, None, None, None], x, generated)
        S = self.d_obj.crop_size
        # the last rows paint another category into the real object's mask; D_obj and D_scene judge the rest (they
        # would tell a swapped object by its outline alone, which G_fg cannot change); one row is always judged
        swaps = min(round(hp.fg_swap * n), n - 1)
        paint, judged = c, torch.arange(n, device=x.device) < n - swaps
        if swaps:
            C = len(self.categories)
            paint = torch.where(judged, c, (c + torch.randint(1, C, (n,), device=x.device)) % C)

        def crops(img, rows=slice(None)):
            return crop_objects(torch.cat([img[rows], m[rows]], 1), m[rows], S, native=self.d_obj.native), c[rows]

        def looks(img):  # the classifier's crops: the look inside the outline, scaled to S as the evaluation's
            return object_crops(img, m, S)

        real = crops(x)  # the real objects' crops serve both discriminator steps and the encoder
        classify = hasattr(self, "c_obj")
        if classify:  # the real looks, and each cut into its neighbour's silhouette: the look names the category
            with torch.no_grad():
                real_looks = looks(x)
                real_looks = torch.cat(
                    [real_looks, swap_silhouettes(fill_outside(real_looks), real_looks[:, 3:].roll(1, 0))]
                )
        k = round(hp.fg_adv_posterior * n)
        if k:  # these judged objects paint the encoder's codes of this batch's real objects: the region the
            # bundle's foreground prior draws from (`fit_foreground_prior`) is taught by D_obj too, not by L1 alone
            with torch.no_grad():
                z[:k] = posterior_sample(*self.e_fg(real[0][:k])).to(z.dtype)
        # the scene discriminator sees the rows painted into their real canvas: there the real image and the
        # composite differ only inside the object
        on_scene = on_real & judged
        scene = hasattr(self, "d_scene") and bool(on_scene.any())
        if scene:
            layout = layout_map(m[on_scene, None], c[on_scene, None], len(self.categories))  # the one object's
            real_scene = (x[on_scene], layout)

        def d_loss():
            with torch.no_grad():
                fake = composite(canvas, self.g_fg(z, paint, m, canvas * (1 - m)), m)
            loss, logs = self._d_loss(self.d_obj, real, crops(fake, judged), "fg_object")
            if scene:
                loss_s, logs_s = self._d_loss(self.d_scene, real_scene, (fake[on_scene], layout), "fg_scene")
                loss, logs = loss + loss_s, logs | logs_s
            if classify:
                ce = F.cross_entropy(self.c_obj(real_looks), c.repeat(2))
                loss, logs = loss + ce, logs | {"fg_class/d": ce.detach()}
            return loss, logs

        def g_loss():
            painted = self.g_fg(z, paint, m, canvas * (1 - m))
            fake = composite(canvas, painted, m)
            lo = self._g_loss(self.d_obj, real, crops(fake, judged))
            loss, logs = hp.object_weight * lo, {"fg_object/g": lo.detach()}
            if scene:
                ls = self._g_loss(self.d_scene, real_scene, (fake[on_scene], layout))
                loss, logs["fg_scene/g"] = loss + hp.fg_scene_weight * ls, ls.detach()
            if classify:
                logits = self.c_obj(looks(fake))
                lc = F.cross_entropy(logits, paint)
                loss, logs = loss + hp.fg_class_weight * lc, logs | {"fg_class/g": lc.detach()}
                if swaps:  # how often the classifier names the category a swapped object was painted as
                    logs["fg_class/swapped_acc"] = (logits.argmax(1) == paint)[~judged].float().mean().detach()
            if hp.rec_weight > 0:
                mu, logvar = self.e_fg(real[0])
                rec = self.g_fg(posterior_sample(mu, logvar), c, m, x * (1 - m))
                rec_l1, kl = masked_l1(rec, x, m), kl_divergence(mu, logvar)
                loss = loss + hp.rec_weight * rec_l1 + hp.kl_weight * kl
                logs |= {"fg/rec_l1": rec_l1.detach(), "fg/kl": kl.detach()}
            if hp.ms_weight > 0:
                z2 = torch.randn_like(z)
                ms = mode_seeking(painted, self.g_fg(z2, paint, m, canvas * (1 - m)), z, z2, m)
                loss = loss + hp.ms_weight * ms
                logs["fg/mode_seeking"] = ms.detach()
            return loss, logs

        logs = self._step(g_opt, d_opt, d_loss, g_loss)
        self.update_ema("g_fg_ema")
        self.update_ema("e_fg_ema")
        return logs

    def training_step(self, batch, batch_idx):
        x, masks, cats, valid = batch["image"], batch["masks"], batch["categories"], batch["valid"]
        masks = masks * valid[:, :, None, None, None]
        seg = layout_map(masks, cats, len(self.categories))
        union = masks.amax(1)
        if self.preview is None:
            self.preview = {k: v[:8].detach().clone() for k, v in batch.items() if torch.is_tensor(v)}
        opts = iter(self.optimizers())
        logs = {}
        for stage in self.stages:
            g_opt, d_opt = next(opts), next(opts)
            if self.batches_done >= (self.hparams.stage_steps or {}).get(stage, float("inf")):
                # a stage that has had its batches stays as it is (its EMA too), but its optimisers still
                # count their steps (without gradients nothing moves): global_step stays two per stage per batch
                for opt in (g_opt, d_opt):
                    opt.zero_grad(set_to_none=True)  # the last update's gradients would move it again
                    opt.step()
                continue
            if stage == "background" and self.hparams.background_method == "plates":
                logs |= self._plates_background_stage(g_opt, d_opt, x, union)
            elif stage == "background" and self.hparams.background_method == "masked":
                logs |= self._masked_background_stage(g_opt, d_opt, x, union)
            elif stage == "background":
                logs |= self._layout_stage(
                    self.g_bg,
                    self.d_bg,
                    "g_bg_ema",
                    g_opt,
                    d_opt,
                    x,
                    seg,
                    union,
                    "bg",
                    self.hparams.agreement_weight,
                )
            elif stage == "foreground":
                logs |= self._foreground_stage(g_opt, d_opt, x, masks, cats, valid)
            else:
                logs |= self._layout_stage(
                    self.g_base, self.d_base, "g_base_ema", g_opt, d_opt, x, seg, union, "base", 0.0
                )
        self.log_dict(logs, prog_bar=False, sync_dist=False)
        self.log("batches", float(self.batches_done), prog_bar=True)

    # ------------------------------------------------------------------ previews and bundles

    @torch.no_grad()
    def preview_grid(self) -> np.ndarray:
        """Rows of fixed-seed samples from the EMA generators, uint8 ``[H',W',3]``.

        Rows: real images; background head A, or the clean plates and G_bg painting their encoder codes;
        head B from N(0, I) (background stage);
        one object repainted in a real image (foreground stage); a full
        composition, background then each object (both stages); baseline.
        """
        p = self.preview
        x, masks, cats = p["image"], p["masks"] * p["valid"][:, :, None, None, None], p["categories"]
        B, K = cats.shape
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(B, self.z_dim, generator=gen).to(x.device)
        zk = torch.randn(B, K, self.z_dim, generator=gen).to(x.device)

        # the layout generator's noise: a style, then per-pixel grain if it takes any (drawn on the CPU)
        def zb(net, style=z):
            return with_grain(style.cpu(), net.latent_dim, gen).to(x.device)

        seg = layout_map(masks, cats, len(self.categories))
        rows = [x]
        if "background" in self.stages:
            if self.hparams.background_method == "two_head":
                rows.append(self.g_bg_ema(zb(self.g_bg_ema), seg))
            if self.hparams.background_method == "plates":
                plate = self.plates(x, masks.amax(1))
                rows.append(plate)
                # the encoder's codes of these plates (means, fresh grain): where the bundle's style prior
                # draws from, so this row shows what users get better than N(0, I) does
                rows.append(self.g_bg_ema(zb(self.g_bg_ema, self.e_bg_ema(plate)[0])))
            rows.append(self.g_bg_ema(zb(self.g_bg_ema)))
        if "foreground" in self.stages:
            top = masks.flatten(2).amax(2).cumsum(1).argmax(1)  # each image's last real object: never covered
            m = masks[torch.arange(B), top]
            c = cats[torch.arange(B), top]
            rows.append(composite(x, self.g_fg_ema(z, c, m, x * (1 - m)), m))
            if "background" in self.stages:
                rows.append(paint_layers(self.g_bg_ema, self.g_fg_ema, zb(self.g_bg_ema), zk, masks, cats)[-1])
        if "baseline" in self.stages:
            rows.append(self.g_base_ema(zb(self.g_base_ema), seg))
        grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # [3, rows*H, B*W]
        return to_array(grid)

    def save_preview(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{self.batches_done:07d}.png"
        img = Image.fromarray(self.preview_grid())
        img.resize((img.width * 2, img.height * 2), Image.NEAREST).save(path)
        return path


class PreviewGrid(L.Callback):
    """Saves :meth:`SceneGAN.preview_grid` as PNG every ``every`` batches and at the end (rank 0 only)."""

    def __init__(self, folder: str, every: int = 200):
        self.folder, self.every = Path(folder), every

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.is_global_zero and self.every > 0 and module.batches_done % self.every == 0:
            module.save_preview(self.folder)

    def on_train_end(self, trainer, module):
        if trainer.is_global_zero and module.preview is not None:
            module.save_preview(self.folder)


class FinalCheckpoint(L.Callback):
    """Saves ``path`` (the run's ``last.ckpt``) after its final batch when ``every`` batches do not divide its
    length: ModelCheckpoint saves every ``every`` only, so a run's last batches would be in its bundle but not in
    the checkpoint that a longer run resumes from. Saved where ModelCheckpoint saves, after the batch and before
    the module's hook, so a run resumed from it trains to the bits of one that never stopped (a save after
    ``fit``, tried first, did not)."""

    def __init__(self, path: str, every: int):
        self.path, self.every = path, every

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step >= trainer.max_steps and module.batches_done % self.every:
            trainer.save_checkpoint(self.path)


class RankChecksums(L.Callback):
    """Every rank writes ``folder/rank{N}.json``: ``weights``, a SHA-256 of each network's weights at
    the end of training (under DDP all ranks must agree), and ``first_z``, a SHA-256 of the first
    noise batch the rank draws (ranks must differ)."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.first_z = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.first_z is None:  # the first draw of the first stage, without consuming it
            with torch.random.fork_rng(devices=[module.device] if module.device.type == "cuda" else []):
                z = torch.randn(batch["image"].shape[0], module.z_dim, device=module.device)
            self.first_z = _sha256([z])

    def on_train_end(self, trainer, module):
        import json

        sums = {
            name: _sha256(value for _, value in sorted(net.state_dict().items()))
            for name, net in module.named_children()
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"weights": sums, "first_z": self.first_z}, indent=1)
        )


def _sha256(tensors) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
