"""Training: every config composes and builds, the tiny experiment trains and writes a loadable
bundle, resume continues, DDP on 2 CPU processes keeps ranks identical, bad configs fail early."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_config
from scenecomp import training
from scenecomp.compose import Composer, build_network, load_bundle
from scenecomp.data import DataError
from scenecomp.layout import Layout, LayoutObject
from scenecomp.train import CONF, ConfigError, build, give_priors, grown_inputs, run, run_recipe, warm_start
from scenecomp.training import SceneGAN

CATEGORIES = ["tree", "house", "sun", "cloud", "rock"]


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", group_options("experiment"))
@pytest.mark.parametrize("model", group_options("model"))
def test_every_model_and_experiment_config_builds(experiment, model, tmp_path):
    cfg = compose_config([f"experiment={experiment}", f"model={model}", f"out={tmp_path}"])
    module = SceneGAN(
        categories=CATEGORIES, resolution=cfg.data.resolution, **OmegaConf.to_container(cfg.model, resolve=True)
    )
    assert module.optimizer_steps_per_batch == 2 * len(cfg.model.stages)
    assert set(OmegaConf.to_container(cfg.data)) >= {"train", "resolution", "batch_size"}


@pytest.mark.parametrize("trainer", group_options("trainer"))
def test_every_trainer_config_instantiates(trainer, tmp_path):
    cfg = compose_config([f"trainer={trainer}", f"out={tmp_path}"])
    kwargs = OmegaConf.to_container(cfg.trainer)
    if kwargs["accelerator"] == "gpu" and not torch.cuda.is_available():
        kwargs["accelerator"] = "cpu"  # the rest of the config must still be valid Trainer arguments
        kwargs["precision"] = "bf16-mixed"
    if "ddp" in str(kwargs.get("strategy")):
        kwargs.update(accelerator="cpu", devices=1)
    L.Trainer(**kwargs, default_root_dir=tmp_path, logger=False)


def test_tiny_experiment_writes_a_bundle_that_loads_without_hydra_or_lightning(tiny_config, tmp_path):
    cfg = tiny_config()
    written = run(cfg)
    out = Path(cfg.out)
    assert written == [out / "composer.safetensors"]
    assert sorted(p.name for p in (out / "previews").glob("*.png"))[-1] == "step_0000006.png"
    with Image.open(out / "previews" / "step_0000006.png") as preview:  # real, plates, G_bg of their codes and of
        assert preview.height == 6 * 32 * 2  # N(0, I), an object repainted, a whole composition (shown 2x)
    assert (out / "checkpoints" / "last.ckpt").exists() and (out / "metrics.csv").exists()
    code = f"""
import sys, torch
from scenecomp.compose import load_bundle
data = load_bundle({str(out / "composer.safetensors")!r})
assert data["format"] == "scenecomp-bundle" and data["categories"] == {CATEGORIES!r}, data.keys()
from scenecomp.compose import build_network
g_bg, g_fg = build_network(data, "background"), build_network(data, "foreground")
assert g_bg.resolution == 32 and g_fg.z_dim == 16
img = g_bg(g_bg.latent(torch.randn(1, g_bg.noise_dim)))
assert g_bg.prior_size == 64  # the style prior: every plate of the tiny training set
assert img.shape == (1, 3, 32, 32)
assert "hydra" not in sys.modules and "lightning" not in sys.modules, [m for m in sys.modules if m.startswith(("hydra", "lightning"))]
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_bundle_holds_the_ema_weights(tiny_config):
    cfg = tiny_config("steps=3")
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    from scenecomp.compose import load_bundle
    from scenecomp.train import write_bundles

    (path,) = write_bundles(model, Path(cfg.out))
    data = load_bundle(path)
    for name, ema in (("background", model.g_bg_ema), ("foreground", model.g_fg_ema)):
        saved = data["networks"][name]["state_dict"]
        assert all(torch.equal(saved[k], v) for k, v in ema.state_dict().items())
    raw = model.g_fg.state_dict()
    assert any(not torch.equal(data["networks"]["foreground"]["state_dict"][k], raw[k]) for k in raw)


def test_a_resumed_run_keeps_its_metrics_up_to_the_checkpoint(tiny_config):
    """Lightning's CSVLogger deletes metrics.csv when a run resumes into its folder; the run keeps it whole: its
    rows up to the checkpoint, then those of the batches trained again."""
    cfg = tiny_config("steps=2", "checkpoint_every=2", "log_every=1")
    run(cfg)
    path, ckpt = Path(cfg.out) / "metrics.csv", Path(cfg.out) / "checkpoints" / "last.ckpt"
    at_two = ckpt.read_bytes()

    def batches():
        with open(path, newline="") as f:
            return [float(r["batches"]) for r in csv.DictReader(f)]

    run(tiny_config("steps=3", "checkpoint_every=2", "log_every=1"))
    assert batches() == [1, 2, 3]
    ckpt.write_bytes(at_two)  # as if killed after batch 3 was logged and before its checkpoint: batch 3 trains again
    run(tiny_config("steps=4", "checkpoint_every=2", "log_every=1"))
    assert batches() == [1, 2, 3, 4]


def test_resume_continues_from_the_saved_step(tiny_config, tmp_path):
    first = tiny_config("steps=3", f"out={tmp_path / 'first'}")
    run(first)
    ckpt = Path(first.out) / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    assert state["global_step"] == 3 * 4  # 2 stages x (G + D) per batch
    resumed = tiny_config("steps=6", f"out={tmp_path / 'resumed'}", f"ckpt_path={ckpt}")
    datamodule, model, trainer = build(resumed)
    starts = []

    class FirstStep(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if not starts:
                starts.append(trainer.global_step)
                ema = {k: v.clone() for k, v in module.g_fg_ema.state_dict().items()}
                saved = {k[len("g_fg_ema.") :]: v for k, v in state["state_dict"].items() if k.startswith("g_fg_ema.")}
                assert all(torch.equal(ema[k], saved[k]) for k in saved)

    trainer.callbacks.append(FirstStep())
    trainer.fit(model, datamodule=datamodule, ckpt_path=resumed.ckpt_path)
    assert starts == [12]
    assert trainer.global_step == 24
    assert len(trainer.optimizers[0].state) > 0  # Adam moments came back with the checkpoint


def test_resuming_another_configs_checkpoint_is_refused_naming_the_file_and_networks(tiny_config, tmp_path):
    """A checkpoint trained with the appearance classifier, resumed without it: a clear error that names the file,
    the networks that differ and init_from= (Lightning's own load stops with a raw state-dict error); a truncated
    checkpoint: the same kind of error."""
    first = tiny_config("steps=1", f"out={tmp_path / 'first'}", "model.fg_class_weight=1")
    run(first)
    ckpt = Path(first.out) / "checkpoints" / "last.ckpt"
    other = tiny_config("steps=2", f"out={tmp_path / 'other'}", f"ckpt_path={ckpt}")
    with pytest.raises(ConfigError) as refused:
        run(other)
    assert str(refused.value).startswith(
        f"ckpt_path: {ckpt}: its networks are not this config's (only in the checkpoint: c_obj.fc, c_obj.trunk)"
    )
    assert "init_from=" in str(refused.value)
    assert not (tmp_path / "other" / "checkpoints").exists()  # refused before anything trained
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[:4096])
    with pytest.raises(ConfigError, match=f"ckpt_path: {cut}: not a readable scenecomp-train checkpoint"):
        run(tiny_config("steps=2", f"out={tmp_path / 'cut'}", f"ckpt_path={cut}"))
    run(
        tiny_config("steps=2", f"out={tmp_path / 'same'}", "model.fg_class_weight=1", f"ckpt_path={ckpt}")
    )  # its own config resumes


@pytest.mark.parametrize("stop", [2, 3])
def test_an_interrupted_run_resumed_trains_to_the_weights_of_one_never_stopped(tiny_config, tmp_path, stop):
    """Noise seeded batch by batch and the data loader's place in the epoch saved: stopped at batch 2 or 3 of an
    8-batch epoch and resumed, a run ends with the bits of one that ran through (a plain DataLoader restarts the
    epoch's order, and noise seeded once per fit draws other z after a resume). Stopped at 3 with a checkpoint
    every 2, the run's last.ckpt is its final batch's (FinalCheckpoint), not batch 2's."""
    through = tiny_config("steps=4", "checkpoint_every=2", f"out={tmp_path / 'through'}")
    run(through)
    stopped = f"out={tmp_path / 'stopped'}"
    run(tiny_config(f"steps={stop}", "checkpoint_every=2", stopped))
    last = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == stop * 4
    run(tiny_config("steps=4", "checkpoint_every=2", stopped))

    def weights(cfg_out):
        ckpt = torch.load(Path(cfg_out) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == 4 * 4
        return ckpt["state_dict"]

    a, b = weights(tmp_path / "through"), weights(tmp_path / "stopped")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "scenecomp.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_ddp_on_two_cpu_processes_keeps_ranks_identical_through_a_recipes_phases(tiny_shapes, tmp_path):
    out = tmp_path / "ddp"
    res = cli(
        [
            "experiment=tiny",
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            f"data.train={tiny_shapes}",
            f"hydra.run.dir={out}",
            "rank_checksums=true",
            # the second phase starts on every rank from the bundle rank 0 wrote at the end of the first
            "phases={first: {steps: 3}, second: {steps: 3, start: bundle, model: {stage_steps: {background: 0}}}}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for phase in ("first", "second"):
        ranks = [json.loads((out / "phases" / phase / "rank_checksums" / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["weights"] == ranks[1]["weights"] and "g_fg_ema" in ranks[0]["weights"]
        assert ranks[0]["first_z"] != ranks[1]["first_z"]  # each rank its own noise
    second = out / "phases" / "second" / "composer.safetensors"
    assert (out / "composer.safetensors").read_bytes() == second.read_bytes()
    # a fresh run folder: no warning that it "exists and is not empty", no empty train.log
    assert "exists and is not empty" not in res.stderr and not (out / "train.log").exists(), res.stderr[-3000:]


def test_help_shows_examples(tmp_path):
    res = cli(["--help"], cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("scenecomp-train: train the layered scene composer")
    assert "== Configuration groups ==" in res.stdout and "experiment: coco128, shapes64" in res.stdout
    assert "examples:\n  scenecomp-train experiment=tiny" in res.stdout and "threads=1" in res.stdout


def test_threads_sets_the_threads_of_the_process(tiny_config, tmp_path):
    try:
        with pytest.raises(DataError, match="annotations file not found"):  # set before the data is read
            run(tiny_config("threads=2", f"data.train={tmp_path / 'missing.json'}", "data.generate=null"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.categories=[tree,unicorn]", "unicorn"),
        ("data.resolution=48", "power of two"),
        ("data.train=does/not/exist.json", "does/not/exist.json"),
        ("model.bg_judged_on=ghosts", "bg_judged_on"),
        ("model.bg_rec_on=ghosts", "bg_rec_on"),
        ("model.background_prior=-1", "background_prior"),
        ("model.bg_adv_posterior=2", "bg_adv_posterior"),
        ("model.bg_texture_weight=-1", "bg_texture_weight"),
        ("model.background.synthesis=diffusion", "synthesis"),
        ("init_from=does/not/exist.ckpt", "does/not/exist.ckpt"),
    ],
)
def test_bad_config_fails_before_training_with_a_clear_message(override, message, tiny_shapes, tmp_path):
    res = cli(
        [
            "experiment=tiny",
            f"data.train={tiny_shapes}",
            "data.generate=null",
            f"hydra.run.dir={tmp_path / 'r'}",
            override,
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert res.returncode == 2
    assert res.stderr.startswith("scenecomp-train: error:") and message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_empty_folder_is_a_clear_error(tiny_config, tmp_path):
    folder = tmp_path / "train_split"  # a name the expected message does not contain
    folder.mkdir()
    expected = re.escape(f"{folder / 'annotations.json'}: annotations file not found")
    with pytest.raises(DataError, match=expected):
        build(tiny_config(f"data.train={folder}", "data.generate=null"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_experiment_on_gpu_with_bf16(tiny_config):
    written = run(tiny_config("trainer=gpu"))
    assert written and written[0].exists()


# ----------------------------------------------------------------------------- precision and the cVAE-GAN stages


def test_bf16_falls_back_to_fp32_on_cpus_without_native_bf16(monkeypatch):
    import scenecomp.precision as precision

    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16"):
        assert precision.training_precision("bf16-mixed", "cpu") == "32-true"
    assert precision.training_precision("32-true", "cpu") == "32-true"
    assert precision.training_precision("bf16-mixed", "gpu") == "bf16-mixed"  # GPUs decide for themselves
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert precision.training_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert precision.auto_dtype("cpu") == torch.bfloat16


def test_default_cpu_trainer_is_bf16_in_channels_last(tiny_config):
    cfg = tiny_config()
    assert cfg.trainer.precision == "bf16-mixed" and cfg.channels_last
    datamodule, model, trainer = build(cfg)
    from scenecomp.precision import cpu_has_fast_bf16

    assert trainer.precision == ("bf16-mixed" if cpu_has_fast_bf16() else "32-true")
    assert model.g_bg.to_rgb.weight.is_contiguous(memory_format=torch.channels_last)
    batch = model.on_after_batch_transfer({"image": torch.zeros(2, 3, 8, 8)}, 0)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)


def test_vae_losses_have_their_known_values():
    from scenecomp.training import dilate, kl_divergence, masked_l1

    assert kl_divergence(torch.zeros(4, 8), torch.zeros(4, 8)).item() == 0  # the prior itself
    mu = torch.full((2, 3), 2.0)
    assert kl_divergence(mu, torch.zeros(2, 3)).item() == pytest.approx(0.5 * 4 * 3)
    a, b = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    b[..., :2, :] = 5  # outside the mask: must not count
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 2:, :] = 1
    assert masked_l1(a, b, mask).item() == 1
    dot = torch.zeros(1, 1, 5, 5)
    dot[..., 2, 2] = 1
    assert dilate(dot, 1).sum().item() == 9 and torch.equal(dilate(dot, 0), dot)


def test_the_background_reconstruction_sees_neither_grain_nor_the_filled_holes():
    from scenecomp.training import pooled_l1, without_grain

    z = torch.randn(2, 4)
    full = without_grain(z, 4 + 16)
    assert torch.equal(full[:, :4], z) and not full[:, 4:].any()  # the grain map is zero
    a, b = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    b[..., :2, :2] = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])  # grain: averages out in its 2x2 cell
    b[..., 2:, :] = 3.0  # cells partly covered by objects: not compared
    mask = torch.ones(1, 1, 4, 4)
    mask[..., 3, 0] = mask[..., 3, 3] = 0
    assert pooled_l1(a, b, mask, 2).item() == 0
    b[..., :2, 2:] = 2.0  # a wholly visible cell that differs: its mean gap, over the two whole cells
    assert pooled_l1(a, b, mask, 2).item() == pytest.approx(1.0)


def test_the_texture_loss_matches_the_local_amount_of_grain_not_the_grain_itself():
    from scenecomp.training import texture_energy

    torch.manual_seed(0)
    smooth = torch.linspace(-0.5, 0.5, 64).view(1, 1, 64, 1).expand(2, 3, 64, 64)  # a sky gradient

    def grained(strength=0.05, channels=1):  # one more draw of the real texture (or one of its own colours)
        return smooth + strength * torch.randn(2, channels, 64, 64).expand(2, 3, 64, 64)

    real, seen = grained(), torch.ones(2, 1, 64, 64)

    def score(paint, target=real, mask=seen):  # two draws of the painted texture against the real one
        return texture_energy(paint(), paint(), target, mask).item()

    assert texture_energy(real, real, real, seen).item() == 0
    assert score(grained) < 0.25 * score(lambda: smooth)  # the same texture with other grain is close
    assert score(lambda: grained(channels=3)) > 1.5 * score(grained)  # as strong, but each channel its own
    # an object where the mask is 0 does not count, nor do the cells within 12 pixels of it
    covered = seen.clone()
    covered[..., 4:12, 4:12] = 0
    with_object = real.clone()
    with_object[..., 4:12, 4:12] = 1.0
    assert score(lambda: real, with_object, covered) == 0 < score(lambda: real, with_object)
    far = real.clone()
    far[..., 40:48, 40:48] += 0.3 * torch.randn(2, 3, 8, 8)  # speckle far from it still counts
    assert score(lambda: far, real, covered) > 0
    # the same amount of grain gathered in one column of cells is another texture (one blotch among smooth ground)
    column = torch.zeros(1, 1, 1, 64)
    column[..., :8] = 8**0.5
    assert score(lambda: smooth + (grained() - smooth) * column) > 5 * score(grained)
    # and its gradient grows a grain that is too faint
    strength = torch.tensor(0.01, requires_grad=True)
    texture_energy(grained(strength), grained(strength), real, seen).backward()
    assert strength.grad < 0
    # and stars too faint: points in 30 % of the 8x8 cells (as Shapes' night skies), elsewhere than the real ones
    stars = [(torch.rand(2, 1, 64, 64) < 0.0055).float().expand(2, 3, 64, 64) for _ in range(3)]
    assert 0.2 < F.max_pool2d(stars[0], 8).mean() < 0.4
    strength = torch.tensor(0.2, requires_grad=True)
    texture_energy(smooth + strength * stars[1], smooth + strength * stars[2], smooth + 0.8 * stars[0], seen).backward()
    assert strength.grad < 0


def test_the_texture_loss_grows_random_blotches_to_the_real_strength_where_one_draws_l1_shrank_them():
    # Shapes' ground: a 10 x 4 grid of noise stretched to 64x64, each image its own; four cells across a band
    # of 8 rows, so a band's amount of blotch is itself random
    from scenecomp.training import band_texture, texture_energy

    torch.manual_seed(0)
    smooth = torch.linspace(-0.5, 0.5, 64).view(1, 1, 64, 1).expand(64, 3, 64, 64)
    seen = torch.ones(64, 1, 64, 64)

    def ground(strength):
        blotch = F.interpolate(torch.randn(64, 1, 10, 4), size=(64, 64), mode="bilinear", align_corners=False)
        return smooth * (1 + strength * blotch)

    real = ground(0.07)

    def pull(strength: float, energy: bool) -> float:  # d loss / d strength
        s = torch.tensor(strength, requires_grad=True)
        if energy:
            loss = texture_energy(ground(s), ground(s), real, seen)
        else:  # the L1 of one draw's band statistics, the texture loss before the energy score
            (a, _), (b, counts) = band_texture(ground(s), seen), band_texture(real, seen)
            loss = ((a - b).abs() * counts).sum() / (counts.sum() * a.shape[1])
        (grad,) = torch.autograd.grad(loss, s)
        return grad.item()

    assert pull(0.035, True) < 0 < pull(0.14, True)  # too faint grows, too strong shrinks
    assert pull(0.07, False) > 0 and abs(pull(0.07, True)) < 0.5 * pull(0.07, False)  # L1: less than real


def test_the_texture_loss_tells_blotches_wider_than_tall_from_the_same_blotches_turned():
    from scenecomp.training import texture_stats

    torch.manual_seed(0)
    coarse = torch.randn(2, 1, 10, 4)  # Shapes' ground: a grid 10 rows by 4 columns, stretched to 64x64
    wide = F.interpolate(coarse, size=(64, 64), mode="bilinear", align_corners=False).expand(2, 3, 64, 64)
    tall = wide.transpose(2, 3)
    stats = texture_stats(wide).mean((0, 2, 3))
    along_row, along_column = stats[12:16], stats[16:20]
    assert (along_row < 0.5 * along_column).all()  # smooth along its rows, varied down its columns
    turned = texture_stats(tall).mean((0, 2, 3))
    assert torch.allclose(turned[16:20], along_row, rtol=0.02) and torch.allclose(
        turned[12:16], along_column, rtol=0.02
    )


def test_a_background_run_trains_the_pixel_generator_with_its_texture_loss(tiny_config):
    cfg = tiny_config(
        "model.background.synthesis=pixels",
        "model.background.mlp_axes=y",
        "model.background.pixel_noise=true",
        "model.bg_texture_weight=10",
    )
    run(cfg)
    metrics = (Path(cfg.out) / "metrics.csv").read_text()
    assert "bg/texture" in metrics.splitlines()[0]
    bundle = load_bundle(Path(cfg.out) / "composer.safetensors")
    assert bundle["networks"]["background"]["kwargs"]["synthesis"] == "pixels"
    g = build_network(bundle, "background")
    assert g.pixels is not None and g.prior_size > 0  # the style prior is fitted as for the other trunk
    image = g(g.latent(torch.randn(2, g.noise_dim)))
    assert image.shape == (2, 3, 32, 32) and torch.isfinite(image).all()


def test_frozen_parts_keep_their_start_and_a_generator_whose_colour_was_frozen_keeps_its_style_prior(tiny_config):
    # a warm start's colour kept while its texture strengths learn (experiment=shapes64_texture): G_bg's MLP
    # frozen, its to_grain and a new grain gate not; its style prior (the first run's encoder's codes) still
    # draws the styles it drew
    colour = ["g_bg.mapping", "g_bg.pixels.inp", "g_bg.pixels.layers", "g_bg.pixels.films", "g_bg.pixels.to_rgb"]
    pixels = ("model.background.synthesis=pixels", "model.background.pixel_noise=true")
    frozen = (*pixels, "model.stages=[background]", "steps=2", "model.background.texture_grid=[4,2]")
    frozen += ("model.background.grain_gate=true",)
    frozen += (f"model.frozen=[{','.join(colour)},g_bg.pixels.kernels]",)
    with pytest.raises(ConfigError, match="model.frozen: given without init_from"):
        build(tiny_config(*frozen))
    first = tiny_config(*pixels, "steps=1", "model.background_prior=32")
    (start,) = run(first)
    cfg = tiny_config(*frozen, f"init_from={start}", f"out={first.out}-texture")
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    give_priors(model, datamodule.train_set)  # as `run` does before writing the bundle
    before, ckpt = load_bundle(start)["networks"]["background"], Path(cfg.out) / "checkpoints" / "last.ckpt"
    after = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    kept = [k for k in before["state_dict"] if any(k.startswith(part[5:] + ".") for part in colour)]
    for net in ("g_bg", "g_bg_ema"):  # the EMA's copy too (a bundle holds the EMA)
        assert len(kept) > 10 and all(torch.equal(before["state_dict"][k], after[f"{net}.{k}"]) for k in kept)
        assert not torch.equal(before["state_dict"]["pixels.to_grain.bias"], after[f"{net}.pixels.to_grain.bias"])
        assert "pixels.to_gate.bias" not in before["state_dict"] and float(after[f"{net}.pixels.to_gate.bias"]) != 1
    assert torch.equal(model.g_bg_ema.prior_mu, before["state_dict"]["prior_mu"])  # kept, not refitted
    # and so does tools/export_bundle.py pair the checkpoint's G_bg with the bundle's prior, not a refitted one
    out = Path(cfg.out) / "paired.safetensors"
    cmd = ["tools/export_bundle.py", str(start), "--background-from", str(ckpt), "--out", str(out)]
    data = ["--prior-data", str(Path(cfg.data.train).parent)]
    subprocess.run([sys.executable, *cmd, *data], cwd=Path(__file__).resolve().parent.parent, check=True, timeout=300)
    paired = load_bundle(out)["networks"]["background"]
    assert torch.equal(paired["state_dict"]["prior_mu"], model.g_bg_ema.prior_mu) and paired["kwargs"]["grain_gate"]
    with pytest.raises(ValueError, match=r"frozen: 'g_bg.pixel' names no weights of this model \(its networks: \["):
        SceneGAN(categories=CATEGORIES, resolution=32, stages=["background"], frozen=["g_bg.pixel"])
    with pytest.raises(ValueError, match="leaves a network of this run nothing to train"):
        SceneGAN(categories=CATEGORIES, resolution=32, stages=["background"], frozen=["d_bg"]).configure_optimizers()


def test_plates_keep_every_pixel_outside_the_dilated_objects(tiny_config):
    cfg = tiny_config()
    datamodule, model, trainer = build(cfg)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    union = torch.zeros(2, 1, 32, 32)
    union[:, :, 10:14, 10:14] = 1
    with torch.no_grad():
        plate = model.plates(x, union)
    outside = model.hparams.plate_dilate
    keep = torch.ones_like(union, dtype=torch.bool)
    keep[:, :, 10 - outside : 14 + outside, 10 - outside : 14 + outside] = False
    assert torch.equal(plate.expand_as(x)[keep.expand_as(x)], x[keep.expand_as(x)])
    assert not torch.equal(plate, x)


def test_foreground_stage_counts_a_batch_without_eligible_objects(tiny_config):
    """Batches are counted from optimiser steps, so a stage must step even when it has nothing to learn."""
    datamodule, model, trainer = build(tiny_config("steps=2"))
    steps = []

    class NoEligibleObject(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            batch["valid"][:] = False

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            steps.append(trainer.global_step)

    trainer.callbacks.append(NoEligibleObject())
    trainer.fit(model, datamodule=datamodule)
    assert steps == [4, 8] and model.batches_done == 2


def test_compile_keeps_plain_state_dict_keys_so_bundles_load_without_compile(tiny_config):
    cfg = tiny_config("compile=true")
    _, model, _ = build(cfg)  # torch.compile is lazy: nothing compiles until the first batch
    assert model.g_bg._compiled_call_impl is not None and model.g_fg._compiled_call_impl is not None
    assert not [k for k in model.state_dict() if "_orig_mod" in k]
    from scenecomp.compose import Composer, load_bundle
    from scenecomp.train import write_bundles

    Path(cfg.out).mkdir(parents=True)
    (path,) = write_bundles(model, Path(cfg.out))
    data = load_bundle(path)
    assert not [k for net in data["networks"].values() for k in net["state_dict"] if "_orig_mod" in k]
    assert Composer.from_checkpoint(path).resolution == 32


@pytest.mark.slow
def test_a_compiled_run_writes_a_checkpoint_and_bundle_that_load_without_compile(tiny_config):
    cfg = tiny_config("compile=true", "steps=2")  # compiling takes minutes on a 2-core CPU
    (bundle,) = run(cfg)
    from scenecomp.compose import Composer

    assert Composer.from_checkpoint(bundle).resolution == 32
    _, plain, _ = build(tiny_config())
    checkpoint = torch.load(Path(cfg.out) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    plain.load_state_dict(checkpoint["state_dict"])  # strict: every key matches an uncompiled model's


def test_a_warm_start_copies_the_matching_weights_and_keeps_new_layers_initial(tiny_config, tmp_path):
    first = tiny_config(
        "steps=2", f"out={tmp_path / 'first'}", "model.background.pixel_noise=false", "model.background.rgb_grain=0"
    )
    run(first)
    ckpt = Path(first.out) / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    # the background stage alone, with per-pixel noise and D_bg judging real pixels (one more input channel)
    cfg = tiny_config(
        "model.stages=[background]", "model.bg_judged_on=real", f"init_from={ckpt}", f"out={tmp_path / 'warm'}"
    )
    datamodule, model, trainer = build(cfg)
    own = model.state_dict()
    copied = [k for k in own if k in saved and own[k].shape == saved[k].shape]
    assert all(torch.equal(own[k], saved[k]) for k in copied)
    assert any(k.startswith("g_plate_ema.") for k in copied) and any(k.startswith("g_bg_ema.blocks") for k in copied)
    noise = [k for k in own if "noise" in k]
    assert noise and all(k not in saved and not own[k].any() for k in noise)  # zero strength: grain starts silent
    stem = model.d_bg.trunk.stem.parametrizations.weight.original
    assert stem.shape[1] == 3 + 3 + 1  # image, its detail, mask: trained afresh
    trainer.fit(model, datamodule=datamodule)
    assert model.batches_done == cfg.steps


def test_a_warm_start_from_a_bundle_starts_both_generator_copies(tiny_config, tmp_path):
    first = tiny_config("steps=2", f"out={tmp_path / 'first'}")
    (bundle,) = run(first)
    saved = load_bundle(bundle)["networks"]
    cfg = tiny_config(
        "model.stages=[background]", "model.bg_rec_on=real", f"init_from={bundle}", f"out={tmp_path / 'warm'}"
    )
    datamodule, model, trainer = build(cfg)
    weights = {k: v for k, v in saved["background"]["state_dict"].items() if not k.startswith("prior_")}
    assert len(weights) == len(saved["background"]["state_dict"]) - 2
    for module in (model.g_bg, model.g_bg_ema):
        own = module.state_dict()  # the bundle's style prior is not carried: a run fits its own at the end
        assert own.keys() == weights.keys() and module.prior_size == 0
        assert all(torch.equal(own[k], v.float()) for k, v in weights.items())
    with pytest.raises(ConfigError, match="no such file"):
        warm_start(model, str(tmp_path / "missing.safetensors"))
    trainer.fit(model, datamodule=datamodule)  # and trains on, its L1 on the real pixels only
    assert model.batches_done == cfg.steps and torch.isfinite(trainer.callback_metrics["bg/rec_l1"])


def test_init_networks_starts_only_the_named_generators_and_the_rest_afresh(tiny_config, tmp_path):
    first = tiny_config("steps=2", f"out={tmp_path / 'first'}")
    (bundle,) = run(first)
    ckpt = Path(first.out) / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    torch.manual_seed(0)
    fresh = build(tiny_config(f"out={tmp_path / 'fresh'}"))[1].state_dict()  # initial weights of seed 0
    for source, names in ((ckpt, "[background]"), (bundle, "background")):
        cfg = tiny_config(f"init_from={source}", f"init_networks={names}", f"out={tmp_path / 'bg'}")
        torch.manual_seed(0)
        datamodule, model, trainer = build(cfg)
        own = model.state_dict()
        for k, v in own.items():
            module = k.split(".")[0]
            if module in ("g_bg", "g_bg_ema") and "prior_" not in k:
                assert torch.equal(v, saved[f"g_bg_ema.{k.split('.', 1)[1]}"] if source == bundle else saved[k]), k
            elif module not in ("g_bg", "g_bg_ema"):  # G_fg, the encoders and every discriminator: as initialised
                assert torch.equal(v, fresh[k]), k
        assert not torch.equal(own["g_fg.to_rgb.weight"], saved["g_fg.to_rgb.weight"])
        assert model.trained_emas == {"g_bg_ema"}
    trainer.fit(model, datamodule=datamodule)
    assert model.batches_done == cfg.steps
    for bad in ("init_networks=[backgrund]", "init_networks=[]"):
        with pytest.raises(ConfigError, match="init_networks: .*name some of"):
            build(tiny_config(f"init_from={bundle}", bad, f"out={tmp_path / 'bad'}"))
    with pytest.raises(ConfigError, match="init_networks: given without init_from"):
        build(tiny_config("init_networks=[background]", f"out={tmp_path / 'bad'}"))


def test_export_bundle_pairs_one_runs_g_fg_with_another_bundles_g_bg(tiny_config, tmp_path):
    (first,) = run(tiny_config("steps=1", f"out={tmp_path / 'first'}"))
    cfg = tiny_config("steps=2", "model.stages=[foreground]", f"out={tmp_path / 'fg'}")
    run(cfg)
    out = tmp_path / "paired.safetensors"
    ckpt = Path(cfg.out) / "checkpoints" / "last.ckpt"
    cmd = ["tools/export_bundle.py", str(first), "--foreground-from", str(ckpt), "--out", str(out)]
    subprocess.run([sys.executable, *cmd], cwd=Path(__file__).resolve().parent.parent, check=True, timeout=300)
    paired, before = load_bundle(out)["networks"], load_bundle(first)["networks"]
    fg_ema = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(v, fg_ema[f"g_fg_ema.{k}"]) for k, v in paired["foreground"]["state_dict"].items())
    assert not all(
        torch.equal(v, before["foreground"]["state_dict"][k]) for k, v in paired["foreground"]["state_dict"].items()
    )
    assert all(
        torch.equal(v, before["background"]["state_dict"][k]) for k, v in paired["background"]["state_dict"].items()
    )
    assert "prior_count" not in paired["foreground"]["state_dict"]
    # --prior-data: that G_fg with its foreground prior, fitted by the checkpoint's encoder EMA on the training set
    subprocess.run(
        [sys.executable, *cmd, "--prior-data", str(Path(cfg.data.train).parent)],
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
        timeout=300,
    )
    prior = load_bundle(out)["networks"]
    assert prior["foreground"]["state_dict"]["prior_count"].sum() == prior["foreground"]["kwargs"]["prior_size"] > 0
    assert prior["background"]["state_dict"].keys() == paired["background"]["state_dict"].keys()  # G_bg's as it was


def test_a_warm_started_ema_keeps_its_full_decay_and_a_fresh_one_warms_up(tiny_config, tmp_path):
    (bundle,) = run(tiny_config("steps=2", f"out={tmp_path / 'first'}"))
    cfg = tiny_config("steps=1", f"init_from={bundle}", f"out={tmp_path / 'warm'}")
    datamodule, model, trainer = build(cfg)
    # the bundle fills both generators' EMA copies; the plate inpainter's and the encoder's start fresh
    assert model.trained_emas == {"g_fg_ema", "g_bg_ema"}
    start = {n: {k: v.clone() for k, v in getattr(model, n).named_parameters()} for n in ("g_fg_ema", "g_plate_ema")}
    trainer.fit(model, datamodule=datamodule)
    for name, share in (("g_fg_ema", 1 - cfg.model.ema_decay), ("g_plate_ema", 1 - 1 / 10)):  # warm-up at batch 0
        live = dict(getattr(model, name.removesuffix("_ema")).named_parameters())
        for k, v in getattr(model, name).named_parameters():
            assert torch.allclose(v, start[name][k] + share * (live[k] - start[name][k]), atol=1e-6), (name, k)
    saved = torch.load(Path(cfg.out) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    resumed = SceneGAN(**saved["hyper_parameters"])
    resumed.on_load_checkpoint(saved)  # as Lightning does on resume, whatever the command says of init_from
    assert resumed.trained_emas == {"g_fg_ema", "g_bg_ema"}
    assert build(tiny_config("steps=1"))[1].trained_emas == set()


def test_a_warm_start_into_layers_with_new_inputs_paints_what_it_painted(tiny_config, tmp_path):
    first = tiny_config("steps=2", f"out={tmp_path / 'first'}")
    (bundle,) = run(first)
    data = load_bundle(bundle)
    old = build_network(data, "background")
    cfg = tiny_config("model.stages=[background]", "model.background.row_coord=true", f"init_from={bundle}")
    _, model, _ = build(cfg)
    shared = model.g_bg.blocks[0].conv1.shared[0].weight  # one more input (the height) than in the bundle
    saved = data["networks"]["background"]["state_dict"]["blocks.0.conv1.shared.0.weight"]
    assert shared.shape[1] == saved.shape[1] + 1 and not shared[:, -1].any()
    assert torch.equal(shared[:, :-1], saved.float())
    z = torch.randn(2, model.g_bg.noise_dim)
    with torch.no_grad():  # the new input starts at zero weight: the same images until training moves it
        old = old.to(memory_format=torch.channels_last)  # as build() lays out the model: the same kernels
        assert torch.equal(model.g_bg_ema.eval()(z), old(z))
    assert grown_inputs(torch.ones(4, 2, 3, 3), torch.zeros(5, 3, 3, 3)) is None  # more outputs: not grown


def test_a_run_gives_its_bundle_the_encoders_posteriors_of_training_plates_as_background_prior(tiny_config):
    # half of D_bg's samples painted from the encoder's codes; 64 training images, fewer than asked for
    cfg = tiny_config("steps=2", "model.bg_adv_posterior=0.5", "model.background_prior=100")
    (bundle,) = run(cfg)
    background = load_bundle(bundle)["networks"]["background"]
    assert background["kwargs"]["prior_size"] == 64 and background["state_dict"]["prior_mu"].shape == (64, 16)
    # the prior is the checkpoint's encoder EMA applied to the plates of the first images, in order: refitting
    # the checkpoint's model on the same data gives the same tensors
    state = torch.load(Path(cfg.out) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    weights = state["state_dict"]
    assert not torch.equal(weights["e_bg_ema.head.weight"], weights["e_bg.head.weight"])  # its own average
    # a checkpoint from before the encoder's EMA loads, the EMA starting as the encoder
    older = {"state_dict": {k: v for k, v in weights.items() if not k.startswith("e_bg_ema.")}}
    model = SceneGAN(**state["hyper_parameters"])
    model.on_load_checkpoint(older)
    model.load_state_dict(older["state_dict"])
    assert torch.equal(model.e_bg_ema.head.weight, weights["e_bg.head.weight"])
    model.load_state_dict(state["state_dict"])
    datamodule, _, _ = build(cfg)
    datamodule.setup("fit")
    assert model.fit_background_prior(datamodule.train_set, 10) == 10
    assert torch.allclose(model.g_bg_ema.prior_mu, background["state_dict"]["prior_mu"][:10], atol=1e-5)
    composer = Composer.from_checkpoint(bundle)
    assert composer.background_net.noise_dim == composer.background_net.latent_dim + 1
    assert torch.equal(composer.background(seed=3).image, composer.background(seed=3).image)


def test_a_background_run_trains_a_discriminator_without_spectral_norm_under_r1(tiny_config):
    cfg = tiny_config("steps=2", "model.stages=[background]", "model.global_disc.spectral=false", "model.r1_gamma=1")
    run(cfg)
    state = torch.load(Path(cfg.out) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    keys = [k for k in state["state_dict"] if k.startswith("d_bg.")]
    assert keys and not any("parametrizations" in k for k in keys)
    assert state["hyper_parameters"]["global_disc"]["spectral"] is False
    model = SceneGAN(**state["hyper_parameters"])
    model.load_state_dict(state["state_dict"])  # the checkpoint rebuilds the same plain D


def test_a_stage_with_its_own_batch_count_stops_there_while_the_others_train_on(tiny_config):
    cfg = tiny_config("steps=4", "model.stage_steps={foreground: 2}")
    datamodule, model, trainer = build(cfg)
    seen = []

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            nets = ("g_fg", "g_fg_ema", "d_obj", "e_fg", "g_bg", "g_bg_ema")
            seen.append({n: {k: v.clone() for k, v in getattr(module, n).state_dict().items()} for n in nets})

    trainer.callbacks.append(Snapshot())
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 4 * 4 and model.batches_done == 4  # the stopped stage still counts its steps

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert not same(seen[0]["g_fg"], seen[1]["g_fg"])  # batch 2 is still G_fg's
    for name in ("g_fg", "g_fg_ema", "d_obj", "e_fg"):  # then the foreground stage is left as it is
        assert same(seen[1][name], seen[3][name]), name
    for name in ("g_bg", "g_bg_ema"):
        assert not same(seen[1][name], seen[3][name]), name
    with pytest.raises(ValueError, match="stage_steps: foregrund"):
        SceneGAN(categories=CATEGORIES, resolution=32, stage_steps={"foregrund": 2})
    with pytest.raises(ValueError, match="stage_steps: foreground: -1"):
        SceneGAN(categories=CATEGORIES, resolution=32, stage_steps={"foreground": -1})


def test_a_stage_given_no_batches_stays_as_warm_started_while_the_other_trains(tiny_config, tmp_path):
    (bundle,) = run(tiny_config("steps=1", f"out={tmp_path / 'first'}"))
    cfg = tiny_config("steps=2", f"init_from={bundle}", "+model.stage_steps.background=0")
    datamodule, model, trainer = build(cfg)
    before = {
        n: {k: v.clone() for k, v in getattr(model, n).state_dict().items()} for n in ("g_bg", "g_bg_ema", "g_fg")
    }
    trainer.fit(model, datamodule=datamodule)
    for name in ("g_bg", "g_bg_ema"):  # G_bg only paints G_fg's canvases
        assert all(torch.equal(v, getattr(model, name).state_dict()[k]) for k, v in before[name].items()), name
    assert not all(torch.equal(v, model.g_fg.state_dict()[k]) for k, v in before["g_fg"].items())


def test_a_recipe_runs_its_phases_each_from_the_one_before_and_resumes_the_first_not_done(tiny_config, capsys):
    phases = (
        "phases={colour: {steps: 2, model: {stage_steps: {foreground: 0}}}, objects: {steps: 2, start: bundle, "
        "init_networks: [background], model: {stage_steps: {background: 0}}}, named: {steps: 1, "
        "model: {stage_steps: {background: 0}, fg_class_weight: 1}}}"
    )
    cfg = tiny_config(phases)
    (final,) = run_recipe(cfg)
    folder = Path(cfg.out) / "phases"
    bundles = {name: folder / name / "composer.safetensors" for name in ("colour", "objects", "named")}
    assert final == Path(cfg.out) / "composer.safetensors" and final.read_bytes() == bundles["named"].read_bytes()
    colour, objects, named = (load_bundle(bundles[name])["networks"] for name in ("colour", "objects", "named"))
    first = colour["background"]["state_dict"]
    assert first["prior_mu"].shape[0] > 0  # fitted at the end of its phase
    # the later phases kept that G_bg and its prior, bit for bit (the third from the second's checkpoint, whose
    # encoder never trained), and trained a G_fg from scratch on its canvases, their styles drawn from that prior
    # (set on its EMA G_bg from the start: the checkpoint holds it)
    for later in (objects, named):
        assert all(torch.equal(v, later["background"]["state_dict"][k]) for k, v in first.items())
    assert not torch.equal(
        colour["foreground"]["state_dict"]["to_rgb.weight"], objects["foreground"]["state_dict"]["to_rgb.weight"]
    )
    state = torch.load(folder / "objects" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert torch.equal(state["state_dict"]["g_bg_ema.prior_mu"], first["prior_mu"].float())
    # the same command again: a phase with its bundle is done; one without resumes from its own checkpoint
    before = {name: path.read_bytes() for name, path in bundles.items()}
    bundles["objects"].unlink()
    capsys.readouterr()
    run_recipe(cfg)
    printed = capsys.readouterr().out
    assert "recipe: phase colour done" in printed and "resuming from" in printed, printed
    assert all(path.read_bytes() == before[name] for name, path in bundles.items())
    with pytest.raises(ConfigError, match="phases.colour: .*lr_gg"):
        run_recipe(tiny_config("phases={colour: {steps: 1, model: {lr_gg: 1}}}"))
    # every phase is checked before the first trains: a typo in the last is an error at the start, not hours in
    typo = tiny_config("phases={first: {steps: 1}, last: {steps: 1, start: bundle, model: {r1_gama: 0}}}")
    with pytest.raises(ConfigError, match="phases.last: .*r1_gama"):
        run_recipe(typo)
    assert not (folder / "first").exists()
    with pytest.raises(ConfigError, match="phases.colour: give it steps"):
        run_recipe(tiny_config("phases={colour: {model: {lr_g: 1}}}"))
    with pytest.raises(ConfigError, match="phases.colour.start: 'bundel'"):
        run_recipe(tiny_config("phases={colour: {steps: 1, start: bundel}}"))


def test_a_run_gives_its_bundle_the_encoders_posteriors_of_training_objects_as_foreground_prior(tiny_config, tmp_path):
    # half of D_obj's samples painted from the encoder's codes of the batch's real objects
    cfg = tiny_config("steps=2", "model.fg_adv_posterior=0.5", "model.foreground_prior=100")
    (bundle,) = run(cfg)
    foreground = load_bundle(bundle)["networks"]["foreground"]
    saved, count = foreground["state_dict"], foreground["state_dict"]["prior_count"]
    assert foreground["kwargs"]["prior_size"] == int(count.sum()) == len(saved["prior_mu"]) > 64  # objects, not images
    assert len(count) == 5 and (count > 0).all()  # every category of the tiny set has its codes
    state = torch.load(Path(cfg.out) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    weights = state["state_dict"]
    assert not torch.equal(weights["e_fg_ema.head.weight"], weights["e_fg.head.weight"])  # its own average
    # the prior is the checkpoint's encoder EMA on the objects of the first images, in order: refitting gives it
    model = SceneGAN(**state["hyper_parameters"])
    model.load_state_dict(weights)
    datamodule, _, _ = build(cfg)
    datamodule.setup("fit")
    assert model.fit_foreground_prior(datamodule.train_set, 64) == int(count.sum())
    assert torch.allclose(model.g_fg_ema.prior_mu, saved["prior_mu"], atol=1e-5)
    assert torch.equal(model.g_fg_ema.prior_count, count)
    composer = Composer.from_checkpoint(bundle)
    assert composer.foreground_net.noise_dim == composer.foreground_net.z_dim + 1
    house = Layout((32, 32), [LayoutObject("house", {"bbox": [4, 8, 20, 20]}, 3)], background_seed=1)
    tree = Layout((32, 32), [LayoutObject("tree", {"bbox": [2, 2, 12, 20]}, 4)], background_seed=2)
    # an object's seed picks its component and its eps, whatever else is in the batch
    assert torch.equal(
        composer.render([house, house], batch_size=2)[0], composer.render([house, tree], batch_size=2)[0]
    )
    # the codes feed D_obj: the same run without them (fg_adv_posterior=0) trains G_fg to other weights
    (other,) = run(tiny_config("steps=2", "model.fg_adv_posterior=0", f"out={tmp_path / 'other'}"))
    assert not torch.equal(
        load_bundle(other)["networks"]["foreground"]["state_dict"]["to_rgb.weight"], saved["to_rgb.weight"]
    )


def test_a_run_that_kept_its_bundles_generator_keeps_its_prior_and_one_that_trained_it_fits_its_own(
    tiny_config, tmp_path
):
    (bundle,) = run(tiny_config("steps=1", "model.foreground_prior=100", f"out={tmp_path / 'first'}"))
    frozen = ("steps=1", f"init_from={bundle}", "+model.stage_steps.background=0")
    (kept,) = run(tiny_config(*frozen, f"out={tmp_path / 'kept'}"))
    (trained,) = run(tiny_config("steps=1", f"init_from={bundle}", f"out={tmp_path / 'trained'}"))
    # G_bg neither from the bundle nor trained: no prior from an untrained encoder's codes
    (fresh,) = run(tiny_config(*frozen, "init_networks=[foreground]", f"out={tmp_path / 'fresh'}"))
    first, kept, trained, fresh = (
        load_bundle(p)["networks"]["background"]["state_dict"] for p in (bundle, kept, trained, fresh)
    )
    assert first["prior_mu"].shape[0] > 0 and first.keys() == kept.keys()
    assert all(torch.equal(first[k], kept[k]) for k in first)  # the weights and the prior, bit for bit
    assert not torch.equal(first["prior_mu"], trained["prior_mu"])  # refitted by the encoder that trained
    assert "prior_mu" not in fresh
    # the same for G_fg: kept as it was, it keeps its foreground prior (its categories too)
    keep_fg = ("steps=1", f"init_from={bundle}", "+model.stage_steps.foreground=0", "model.foreground_prior=100")
    (fg_kept,) = run(tiny_config(*keep_fg, f"out={tmp_path / 'fg_kept'}"))
    first, fg_kept = (load_bundle(p)["networks"]["foreground"]["state_dict"] for p in (bundle, fg_kept))
    assert first["prior_count"].sum() > 0 and first.keys() == fg_kept.keys()
    assert all(torch.equal(first[k], fg_kept[k]) for k in first)


def test_the_scene_discriminator_judges_objects_painted_into_real_canvases_and_teaches_g_fg(tiny_config):
    # the crop discriminator and the reconstruction silenced: whatever moves G_fg comes from the scene D
    cfg = tiny_config(
        "steps=2", "model.stages=[foreground]", "model.fg_scene_weight=1", "model.object_weight=0", "model.rec_weight=0"
    )
    datamodule, model, trainer = build(cfg)
    g0 = {k: v.clone() for k, v in model.g_fg.state_dict().items()}
    d0 = {k: v.clone() for k, v in model.d_scene.state_dict().items()}
    trainer.fit(model, datamodule=datamodule)
    assert not all(torch.equal(v, model.d_scene.state_dict()[k]) for k, v in d0.items())
    assert not all(torch.equal(v, model.g_fg.state_dict()[k]) for k, v in g0.items())
    assert model.d_scene.init_kwargs["num_categories"] == len(model.categories)
    rows = list(csv.DictReader(open(Path(cfg.out) / "metrics.csv")))
    assert any(r.get("fg_scene/d") for r in rows)
    plain = build(tiny_config("steps=2", "model.stages=[foreground]"))[1]
    assert not hasattr(plain, "d_scene")  # off by default: older checkpoints load as they are
    with pytest.raises(ValueError, match="fg_scene_weight"):
        SceneGAN(categories=CATEGORIES, resolution=32, fg_scene_weight=-1.0)


def test_the_appearance_classifier_teaches_g_fg_and_swapped_rows_paint_another_category_unjudged(tiny_config):
    # D_obj and the reconstruction silenced: whatever moves G_fg comes from the classifier
    cfg = tiny_config(
        "steps=2",
        "model.stages=[foreground]",
        "model.fg_class_weight=1",
        "model.fg_swap=0.5",
        "model.object_weight=0",
        "model.rec_weight=0",
    )
    datamodule, model, trainer = build(cfg)
    painted, judged, classified = [], [], []
    model.g_fg.register_forward_hook(lambda module, args, out: painted.append(args[1].clone()))
    model.d_obj.register_forward_hook(lambda module, args, out: judged.append(args[1].clone()))
    model.c_obj.register_forward_hook(lambda module, args, out: classified.append(len(args[0])))
    g0 = {k: v.clone() for k, v in model.g_fg.state_dict().items()}
    c0 = {k: v.clone() for k, v in model.c_obj.state_dict().items()}
    trainer.fit(model, datamodule=datamodule)
    assert not all(torch.equal(v, model.c_obj.state_dict()[k]) for k, v in c0.items())
    assert not all(torch.equal(v, model.g_fg.state_dict()[k]) for k, v in g0.items())
    assert len(painted) == 4 and len(judged) == 6  # per batch: G_fg in D's and G's step; D_obj real, fake, fake
    for batch in range(2):
        real, fake_d, fake_g = judged[3 * batch : 3 * batch + 3]
        n = len(real)
        swaps = min(round(0.5 * n), n - 1)
        assert swaps >= 1 and len(fake_d) == len(fake_g) == n - swaps  # D_obj never sees a swapped row
        for paint in painted[2 * batch : 2 * batch + 2]:
            assert torch.equal(paint[: n - swaps], real[: n - swaps]) and torch.equal(fake_d, real[: n - swaps])
            assert (paint[n - swaps :] != real[n - swaps :]).all()  # another category, in the real object's mask
        # the classifier learns from the real looks and from them cut into other silhouettes; it names the painted
        assert classified[2 * batch : 2 * batch + 2] == [2 * n, n]
    rows = list(csv.DictReader(open(Path(cfg.out) / "metrics.csv")))
    assert any(r.get("fg_class/swapped_acc") for r in rows)
    assert not hasattr(build(tiny_config("steps=2", "model.stages=[foreground]"))[1], "c_obj")  # off by default
    for bad, match in ((dict(fg_swap=0.5), "fg_class_weight > 0"), (dict(fg_class_weight=-1.0), "fg_class_weight")):
        with pytest.raises(ValueError, match=match):
            SceneGAN(categories=CATEGORIES, resolution=32, **bad)
    with pytest.raises(ValueError, match="fg_swap"):
        SceneGAN(categories=CATEGORIES, resolution=32, fg_class_weight=1.0, fg_swap=1.5)


def test_the_object_discriminator_can_judge_crops_at_their_own_resolution(tiny_config, monkeypatch):
    cfg = tiny_config("steps=1", "model.stages=[foreground]", "model.object_disc.native=true")
    datamodule, model, trainer = build(cfg)
    assert model.d_obj.native and model.d_obj.init_kwargs["native"]
    seen, crop = [], training.crop_objects

    def recorded(*args, **kwargs):  # the real cropping, its `native` noted
        seen.append(kwargs.get("native"))
        return crop(*args, **kwargs)

    monkeypatch.setattr(training, "crop_objects", recorded)
    trainer.fit(model, datamodule=datamodule)
    assert seen and all(seen)
    assert not build(tiny_config("steps=1", "model.stages=[foreground]"))[1].d_obj.native  # off by default


def test_the_same_command_in_the_same_folder_resumes_the_run(tiny_config, capsys):
    cfg = tiny_config("steps=3")
    run(cfg)
    last = Path(cfg.out) / "checkpoints" / "last.ckpt"
    assert "resuming" not in capsys.readouterr().out
    # mark the checkpoint: a run that resumes from it (and has no batch left) writes the mark into its bundle
    state = torch.load(last, map_location="cpu", weights_only=True)
    key = next(k for k in state["state_dict"] if k.startswith("g_fg_ema.") and k.endswith("weight"))
    state["state_dict"][key] = torch.zeros_like(state["state_dict"][key])
    torch.save(state, last)
    (bundle,) = run(tiny_config("steps=3"))
    assert f"resuming from {last}" in capsys.readouterr().out
    saved = load_bundle(bundle)["networks"]["foreground"]["state_dict"][key[len("g_fg_ema.") :]]
    assert not saved.any()
    (bundle,) = run(tiny_config("steps=3", "ckpt_path=null"))  # null: afresh, whatever the folder holds
    assert load_bundle(bundle)["networks"]["foreground"]["state_dict"][key[len("g_fg_ema.") :]].any()
