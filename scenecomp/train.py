"""``scenecomp-train``: Hydra configuration in, Lightning checkpoints and bundles out.

Examples: ``scenecomp-train --help`` (they live in ``conf/train.yaml``, ``hydra.help``).

Writes, in the run folder (``hydra.run.dir``): ``checkpoints/`` (Lightning),
``previews/`` (PNG grids of fixed seeds), ``metrics.csv``, and
``composer.safetensors`` (background + foreground stages) or
``baseline.safetensors``: bundles that load without running code (`scenecomp.bundle`).
"""

from __future__ import annotations

import csv
import shutil
import sys
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from scenecomp.atomic import build_folder_once, write_atomically
from scenecomp.bundle import BundleError
from scenecomp.compose import BUNDLE_NAME, bundle_dict, load_bundle, save_bundle
from scenecomp.data import DataError
from scenecomp.datamodule import SceneDataModule
from scenecomp.precision import keep_freed_memory, training_precision
from scenecomp.training import FinalCheckpoint, PreviewGrid, RankChecksums, SceneGAN


class ConfigError(ValueError):
    """A configuration that cannot train; raised before any training starts."""


def prepare_shapes(data: DictConfig) -> None:
    """Generate the Shapes splits named by ``data.generate`` when they are missing.

    Every process of a launch calls this (DDP ranks on every node): one generates
    under a lock while the others wait, then all find the folder complete.
    """
    from scenecomp.shapes import write_dataset

    for split in ("train", "val"):
        count = data.generate.get(f"{split}_count")
        path = data.get(split)
        if count and path and not Path(path).exists():
            folder = Path(path).parent if str(path).endswith(".json") else Path(path)
            seed = data.generate.seed + (0 if split == "train" else 1)  # disjoint scenes for the held-out split

            def generate(tmp: Path, count=count, seed=seed, folder=folder):
                print(f"generating {count} Shapes scenes into {folder} (seed {seed})")
                write_dataset(tmp, count=count, size=data.generate.size, seed=seed)

            try:
                build_folder_once(folder, generate, complete=lambda f: (f / "annotations.json").is_file())
            except FileExistsError as e:
                raise DataError(f"data.{split}: {e}") from None


def build(cfg: DictConfig) -> tuple[SceneDataModule, SceneGAN, L.Trainer]:
    """Data, model and trainer from a composed config, all checked before training."""
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    data_cfg.pop("generate", None)
    if cfg.data.get("generate"):
        prepare_shapes(cfg.data)
    datamodule = SceneDataModule(**data_cfg).check()
    if data_cfg["categories"] is None:  # record the resolved names, as the model does (Lightning compares them)
        data_cfg["categories"] = datamodule.categories
        datamodule = SceneDataModule(**data_cfg).check()
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    try:
        model = SceneGAN(categories=datamodule.categories, resolution=cfg.data.resolution, **model_cfg)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None
    model.seed = cfg.seed
    if cfg.get("init_from"):
        warm_start(model, cfg.init_from, cfg.get("init_networks"))
    elif cfg.get("init_networks") is not None:
        raise ConfigError("init_networks: given without init_from (the file whose networks start this run)")
    elif cfg.model.get("frozen"):
        raise ConfigError("model.frozen: given without init_from (frozen weights would stay as initialised, random)")
    if cfg.channels_last:
        model.memory_format = torch.channels_last
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        for name in ("g_bg", "g_fg", "g_base"):
            if hasattr(model, name):
                # in place, not torch.compile(module): the state dict keeps its plain keys (no "_orig_mod."),
                # so checkpoints and bundles of a compiled run load without compile
                getattr(model, name).compile()
    out = Path(cfg.out)
    callbacks = [
        L.pytorch.callbacks.ModelCheckpoint(
            dirpath=out / "checkpoints",
            save_last=True,
            save_top_k=0,
            every_n_train_steps=cfg.checkpoint_every * model.optimizer_steps_per_batch,
        ),
        FinalCheckpoint(str(out / "checkpoints" / "last.ckpt"), every=cfg.checkpoint_every),
        PreviewGrid(str(out / "previews"), every=cfg.preview_every),
    ]
    if cfg.rank_checksums:
        callbacks.append(RankChecksums(str(out / "rank_checksums")))
    if not (out / "metrics.csv").exists():  # Lightning warns of any file, but the run folder always holds .hydra/
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    loggers = [L.pytorch.loggers.CSVLogger(out, name="", version="")]
    try:
        import tensorboard  # noqa: F401

        loggers.append(L.pytorch.loggers.TensorBoardLogger(out, name="tb", version=""))
    except ImportError:
        pass
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = training_precision(
        trainer_cfg.get("precision", "32-true"), trainer_cfg.get("accelerator", "auto")
    )
    try:
        trainer = L.Trainer(
            **trainer_cfg,
            default_root_dir=out,
            max_steps=cfg.steps * model.optimizer_steps_per_batch,
            callbacks=callbacks,
            logger=loggers,
            log_every_n_steps=cfg.log_every,  # Lightning counts batches here (global_step counts optimiser steps)
            num_sanity_val_steps=0,
            limit_val_batches=0,
            enable_model_summary=False,
        )
        cluster = getattr(trainer.strategy, "cluster_environment", None)
        if cluster is not None and cluster.creates_processes_externally:  # Lightning checks this only in fit
            cluster.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
    except ValueError as e:  # e.g. devices x num_nodes is not what torchrun or srun started
        raise ConfigError(f"trainer: {e}") from None
    return datamodule, model, trainer


# a bundle's networks -> the SceneGAN modules they start (the generator and its EMA copy)
BUNDLE_MODULES = {
    "background": ("g_bg", "g_bg_ema"),
    "foreground": ("g_fg", "g_fg_ema"),
    "baseline": ("g_base", "g_base_ema"),
}


def warm_start(model: SceneGAN, path: str, networks: list[str] | None = None) -> None:
    """Copy another run's weights into ``model`` wherever a name and shape match (new layers keep their
    initialisation; optimisers, step and schedule start fresh, unlike ``ckpt_path``, which resumes).
    ``path`` is a Lightning checkpoint (every network) or a bundle such as the shipped
    ``composer.safetensors`` (its generators start both the trained and the EMA copies; discriminators,
    encoders and the plate inpainter start fresh). ``networks`` (e.g. ``["background"]``) copies only those
    generators and their EMA copies, from either kind of file: every other network starts fresh, so G_fg can
    learn afresh on a finished G_bg. An EMA copy filled entirely keeps its full decay from the first
    batch (``SceneGAN.trained_emas``)."""
    if isinstance(networks, str):  # init_networks=background: one name
        networks = [networks]
    if networks is not None:
        unknown = sorted(set(networks) - set(BUNDLE_MODULES))
        if unknown or not networks:
            raise ConfigError(f"init_networks: {list(networks)!r}; name some of {list(BUNDLE_MODULES)}")
    if str(path).endswith(".safetensors"):
        try:
            bundled = load_bundle(path)["networks"]
        except BundleError as e:
            raise ConfigError(f"init_from: {e}") from None
        for name, net in bundled.items():
            saved = net["state_dict"]
            if "prior_mu" in saved and name in PRIORS and (networks is None or name in networks):
                # kept aside, not set: the generator trains on the standard normal; `give_priors` gives it back
                # if its encoder does not train
                prior = [saved["prior_mu"].float(), saved["prior_logvar"].float()]
                if "prior_count" in saved:  # G_fg's: the components' categories, grouped
                    prior.append(torch.repeat_interleave(torch.arange(len(saved["prior_count"])), saved["prior_count"]))
                model.carried_priors = {**model.carried_priors, name: tuple(prior)}
        state = {
            f"{module}.{key}": value.float() if value.is_floating_point() else value
            for name, net in bundled.items()
            for module in BUNDLE_MODULES.get(name, ())
            for key, value in net["state_dict"].items()
        }
    else:
        checkpoint = read_checkpoint(path, "init_from")
        state = checkpoint["state_dict"]
        carried = checkpoint.get("carried_priors", {})  # those its run came with (`SceneGAN.on_save_checkpoint`)
        model.carried_priors = {
            name: tuple(prior) for name, prior in carried.items() if networks is None or name in networks
        }
    if networks is not None:
        modules = {m for name in networks for m in BUNDLE_MODULES[name]}
        state = {k: v for k, v in state.items() if k.split(".")[0] in modules}
    own = model.state_dict()
    taken = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    taken |= {
        k: grown_inputs(v, own[k]) for k, v in state.items() if k in own and k not in taken and k.endswith("weight")
    }
    taken = {k: v for k, v in taken.items() if v is not None}
    if not taken:
        raise ConfigError(f"init_from: {path}: no weight matches this model (another architecture or stages)")
    model.load_state_dict(taken, strict=False)
    carried = model.carried_priors.get("background")
    if carried is not None and (model.hparams.stage_steps or {}).get("background") == 0:
        # G_bg stays as it came: G_fg's generated canvases draw its styles as composing does, from its prior
        # (the standard normal also reaches between the styles of real plates, where G_bg paints blends)
        model.g_bg_ema.set_prior(*carried)
    emas = {k.split(".")[0] for k in own if k.split(".")[0].endswith("_ema")}
    model.trained_emas = frozenset(e for e in emas if all(k in taken for k in own if k.startswith(f"{e}.")))
    fresh = network_parts(k for k in own if k not in taken)
    print(f"init_from {path}: {len(taken)} of {len(own)} tensors copied; initial weights kept in {fresh or 'none'}")


def read_checkpoint(path, what: str, keys: tuple[str, ...] = ("state_dict",)) -> dict:
    """A ``scenecomp-train`` checkpoint (plain data: ``weights_only``; memory-mapped, so a check reads only what
    it looks at) holding ``keys``; anything else is a `ConfigError` that names the option ``what`` and the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        for key in keys:
            state[key]  # a KeyError (a TypeError for no dict) names what is not there
    except Exception as e:  # missing, truncated, refused by weights_only, not a Lightning checkpoint
        raise ConfigError(
            f"{what}: {path}: not a readable scenecomp-train checkpoint ({type(e).__name__}: {e})"
        ) from None
    return state


def network_parts(keys) -> list[str]:
    """State-dict keys -> the networks' parts they belong to (``g_fg.up``), sorted, each once: what a message names."""
    return sorted({".".join(k.split(".")[:2]) for k in keys})


def grown_inputs(weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """``weight`` of a layer that has since gained input channels (``[O,I,...]`` -> ``like``'s ``[O,I+k,...]``),
    with zeros for the new inputs, so the warm-started network computes what it did until training
    teaches it to use them (e.g. ``row_coord``); None for any other change of shape."""
    if weight.dim() < 2 or like.dim() != weight.dim() or like.shape[1] <= weight.shape[1]:
        return None
    if like.shape[:1] != weight.shape[:1] or like.shape[2:] != weight.shape[2:]:
        return None
    out = torch.zeros_like(like)
    out[:, : weight.shape[1]] = weight
    return out


def write_bundles(model: SceneGAN, out: Path, half: bool = False) -> list[Path]:
    """``composer.safetensors`` from the EMA generators of the layered stages, ``baseline.safetensors``
    from the baseline's (`save_bundle`)."""
    written = []
    if hasattr(model, "g_bg_ema") and hasattr(model, "g_fg_ema"):
        save_bundle(
            out / BUNDLE_NAME,
            bundle_dict(model.categories, half=half, background=model.g_bg_ema, foreground=model.g_fg_ema),
        )
        written.append(out / BUNDLE_NAME)
    if hasattr(model, "g_base_ema"):
        save_bundle(out / "baseline.safetensors", bundle_dict(model.categories, half=half, baseline=model.g_base_ema))
        written.append(out / "baseline.safetensors")
    return written


# Lightning warnings that describe this design, not a problem: EMA copies stay in eval mode, GAN
# checkpoints are taken after the optimiser steps, and validation data is only for evaluation.
for message in (
    ".*module\\(s\\) in eval mode.*",
    ".*no pre-optimization state was saved.*",
    ".*`val_dataloader` but have no `validation_step`.*",
    ".*isinstance\\(treespec, LeafSpec\\).*",
    ".*overridden `on_after_batch_transfer` in `LightningModule`.*",  # SceneGAN prepares batches on the device
):
    warnings.filterwarnings("ignore", message=message)


def run(cfg: DictConfig) -> list[Path]:
    if cfg.threads:
        # on a shared machine one thread per run beats two: each parallel region of a 2-thread run
        # waits for a core that another process holds, and a GAN step has thousands of small ones
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model, trainer = build(cfg)
    ckpt_path = cfg.ckpt_path
    if ckpt_path == "last":  # the run folder's own checkpoint, if an earlier start of this run left one
        last = Path(cfg.out) / "checkpoints" / "last.ckpt"
        ckpt_path = str(last) if last.is_file() else None
        if ckpt_path and trainer.is_global_zero:
            print(f"resuming from {last} (ckpt_path=last; ckpt_path=null starts afresh)")
    if ckpt_path:
        done = check_resume(model, ckpt_path) // model.optimizer_steps_per_batch
        if trainer.is_global_zero:
            keep_metrics(trainer.loggers[0], done)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    written = []
    if trainer.is_global_zero:
        give_priors(model, datamodule.train_set)
        written = write_bundles(model, Path(cfg.out))
        for path in written:
            print(f"wrote {path}")
    trainer.strategy.barrier("bundles")  # every rank: a recipe's next phase starts from them
    return written


def recipe_phases(cfg: DictConfig) -> list[tuple[str, Path, DictConfig]]:
    """The phases of ``cfg.phases`` (name -> the options it sets over the rest of the config, ``steps`` its
    batches) as (name, folder ``OUT/phases/NAME``, its run's config), every one checked before any trains: a
    typo in the last phase is an error at the start, not hours in. The first starts from ``init_from`` (or
    afresh); each later one from the phase before: its last checkpoint (every network; optimisers fresh), or with
    ``start: bundle`` its bundle (the generators, with their style priors; ``init_networks`` may name some; every
    other network fresh)."""
    out, previous, planned = Path(cfg.out), None, []
    for name, phase in OmegaConf.to_container(cfg.phases).items():
        if not isinstance(phase, dict) or not isinstance(phase.get("steps"), int) or phase["steps"] < 1:
            raise ConfigError(f"phases.{name}: give it steps (its batches, >= 1) and the options it sets")
        start = phase.pop("start", "checkpoint")
        if start not in ("checkpoint", "bundle"):
            raise ConfigError(
                f"phases.{name}.start: {start!r}; checkpoint or bundle (how it starts from the phase before)"
            )
        folder = out / "phases" / name
        own = {"phases": None, "out": str(folder), "ckpt_path": "last"}
        if previous is not None:
            own["init_from"] = str(previous / (BUNDLE_NAME if start == "bundle" else "checkpoints/last.ckpt"))
        try:
            planned.append((name, folder, OmegaConf.merge(cfg, own, phase)))
        except Exception as e:  # an option this config does not have (a typo)
            raise ConfigError(f"phases.{name}: {e}") from None
        previous = folder
    return planned


def run_recipe(cfg: DictConfig) -> list[Path]:
    """Run the phases of ``cfg.phases`` (`recipe_phases`) in order, each a run of its own. A phase whose bundle
    exists is done: the same command again resumes the first that is not, from its own last checkpoint. The last
    phase's bundle is the recipe's, ``OUT/composer.safetensors``."""
    say = print if rank_zero_only.rank == 0 else lambda *_: None  # DDP: every rank runs the phases
    planned, written = recipe_phases(cfg), []
    for name, folder, phase_cfg in planned:
        if (folder / BUNDLE_NAME).is_file():
            say(f"recipe: phase {name} done ({folder / BUNDLE_NAME})")
            continue
        say(f"recipe: phase {name}, {phase_cfg.steps} batches, from {phase_cfg.init_from or 'scratch'}, in {folder}")
        written = run(phase_cfg)
    if rank_zero_only.rank != 0:
        return []
    out, (name, last, _) = Path(cfg.out), planned[-1]
    if written or not (out / BUNDLE_NAME).is_file():
        write_atomically(out / BUNDLE_NAME, lambda tmp: shutil.copyfile(last / BUNDLE_NAME, tmp))
        print(f"wrote {out / BUNDLE_NAME} (phase {name}'s)")
    return [out / BUNDLE_NAME]


# the stages whose EMA generator draws from its encoder's posteriors: (encoder EMA, generator EMA, what it encodes);
# stage S's prior is sized by the hyperparameter ``S_prior`` and fitted by ``SceneGAN.fit_S_prior``
PRIORS = {"background": ("e_bg_ema", "g_bg_ema", "plates"), "foreground": ("e_fg_ema", "g_fg_ema", "objects")}


def give_priors(model: SceneGAN, train_set) -> None:
    """The EMA generators' priors (``model.background_prior``, ``model.foreground_prior``: how many training
    images), fitted from the EMA encoders' posteriors of ``train_set``. An encoder learns only in its stage: a
    run that kept its generator as it came (``stage_steps: {stage: 0}``) keeps the prior it came with (from a
    bundle, or carried by a checkpoint), since its encoder may be untrained (a bundle holds none; a checkpoint's
    may never have trained either); with none, an encoder that came trained fits one and an untrained one gives
    none. So does one whose colour weights were frozen (``frozen``; `LayoutGenerator.colour_weights`), whose
    encoder started afresh: measured, a prior refitted from such an encoder's codes after 100 batches painted
    backgrounds told from real ones 0.79 of the time, against 0.61 with the prior it came with (docs/RESULTS.md,
    "The texture loss's pull")."""
    hp = model.hparams
    for stage, (encoder, generator, what) in PRIORS.items():
        size = hp[f"{stage}_prior"]
        if not size or not hasattr(model, encoder):
            continue
        kept = (hp.stage_steps or {}).get(stage) == 0  # its generator did not train: the prior it came with still fits
        untrained = kept and encoder not in model.trained_emas
        # its colour frozen (`model.frozen`), only its texture trained: the codes still paint what they painted
        colour = getattr(getattr(model, generator.removesuffix("_ema")), "colour_weights", dict)()
        colour_kept = bool(colour) and not any(p.requires_grad for p in colour.values())
        carried = model.carried_priors.get(stage)
        if carried is not None and (kept or colour_kept):
            getattr(model, generator).set_prior(*carried)
            why = "it did not train" if kept else "its colour weights were frozen"
            print(f"{stage} prior: kept from init_from ({len(carried[0])} codes; {why})")
        elif untrained:
            print(f"{stage} prior: none (it did not train and its encoder is untrained): the standard normal")
        else:
            used = getattr(model, f"fit_{stage}_prior")(train_set, size)
            print(f"{stage} prior: the encoder's posteriors of {used} training {what}")


def check_resume(model: SceneGAN, ckpt_path: str) -> int:
    """The optimiser steps of the checkpoint ``ckpt_path``, after checking that it holds this model's networks.
    Why: Lightning would stop on another config's checkpoint (say, one trained with ``model.fg_class_weight``
    resumed without it) with a raw state-dict error; this names the file, the networks that differ and the way
    on (``init_from=`` starts a run from its weights wherever they match)."""
    state = read_checkpoint(ckpt_path, "ckpt_path", ("state_dict", "global_step"))
    model.on_load_checkpoint(state)  # fills what older checkpoints lack, as Lightning's own load will
    theirs, own = state["state_dict"], model.state_dict()
    differ = {
        "only in the checkpoint": network_parts(k for k in theirs if k not in own),
        "only in this config": network_parts(k for k in own if k not in theirs),
        "of another shape": network_parts(k for k in own if k in theirs and own[k].shape != theirs[k].shape),
    }
    if any(differ.values()):
        listed = "; ".join(f"{what}: {', '.join(names)}" for what, names in differ.items() if names)
        raise ConfigError(
            f"ckpt_path: {ckpt_path}: its networks are not this config's ({listed}). Resume with the options "
            "it was trained with, or start a new run from its weights with init_from= (optimisers fresh)"
        )
    return int(state["global_step"])


def keep_metrics(logger, done: int) -> None:
    """Keep a resumed run's metrics.csv whole. Lightning's CSVLogger deletes the file when its writer starts
    in a folder that has one; the rows up to the checkpoint's batch ``done`` (those after it are trained
    again) are read first and logged again through the writer, so one file holds the run from its first batch."""
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("batches") and float(r["batches"]) <= done]
    with warnings.catch_warnings():  # its warning that the file will be deleted: not so here
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        writer = logger.experiment  # starts the writer, which deletes the file
    for row in rows:
        step = int(row.pop("step"))
        writer.log_metrics({k: float(v) for k, v in row.items() if v != ""}, step)
    writer.save()


CONF = str(Path(__file__).resolve().parent / "conf")  # shipped inside the package: any install, any folder


@hydra.main(version_base="1.3", config_path=CONF, config_name="train")
def main(cfg: DictConfig) -> None:
    keep_freed_memory()
    try:
        run_recipe(cfg) if cfg.get("phases") else run(cfg)
    except (ConfigError, DataError) as e:
        print(f"scenecomp-train: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
