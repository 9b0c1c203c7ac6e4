"""Write a composer or baseline bundle from a training run, optionally in float16 (for shipping).

    python tools/export_bundle.py runs/shapes64/composer.safetensors --half --out scenecomp/assets/composer.safetensors
    python tools/export_bundle.py runs/shapes64/checkpoints/last.ckpt --out /tmp/mid_run   # EMA weights of a checkpoint

    python tools/export_bundle.py runs/shapes64/composer.safetensors --background-from runs/bgmasked/checkpoints/last.ckpt \
        --out runs/combined/composer.safetensors      # another run's G_bg with this bundle's G_fg
    python tools/export_bundle.py old/composer.pt --half --out new/composer.safetensors  # convert an old pickled bundle
    python tools/export_bundle.py runs/shapes64/composer.safetensors --background-from runs/bg9/checkpoints/last.ckpt \
        --prior-data data/shapes64/train --out runs/combined/composer.safetensors   # and fit G_bg's style prior
    python tools/export_bundle.py scenecomp/assets/composer.safetensors --foreground-from runs/fg/checkpoints/last.ckpt \
        --out runs/combined/composer.safetensors      # another run's G_fg with this bundle's G_bg (and its prior)

``--prior-data`` (with a ``.ckpt`` source, ``--background-from`` or ``--foreground-from``) fits the
checkpoint's G_bg its style prior and G_fg its foreground prior (those it takes from the checkpoint) as
``scenecomp-train`` does at the end of a run (``model.background_prior`` / ``model.foreground_prior`` images
of that training set, 2048 for a checkpoint that does not say). A ``--background-from`` G_bg whose colour
weights are the bundle's own (a run warm-started from it with them frozen, ``model.frozen``, its texture alone
trained) keeps the bundle's style prior instead, as ``scenecomp-train`` keeps it.

A ``.ckpt`` (Lightning checkpoint of ``scenecomp-train``) gives the EMA
generators of every stage it trained: ``OUT/composer.safetensors`` and/or
``OUT/baseline.safetensors``. A bundle is re-saved as it is (``--half``: float16 weights;
they load back as float32), or with its background generator taken from the
EMA G_bg of a background-stage checkpoint, or its foreground generator from the EMA
G_fg of a foreground-stage checkpoint (the stages train independently, so neither
generator depends on which one it is paired with).
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import torch

from scenecomp.compose import bundle_dict, load_bundle, save_bundle


def load_run(path: Path, prior_data: Path | None = None, priors: tuple[str, ...] = ("background", "foreground")):
    """The SceneGAN of a ``scenecomp-train`` checkpoint (plain data: loads with ``weights_only=True``),
    the EMA generators of the stages ``priors`` (those it has) given their priors from ``prior_data`` (a
    training set) if given: G_bg's style prior, G_fg's foreground prior."""
    from scenecomp.training import SceneGAN

    state = torch.load(path, map_location="cpu", weights_only=True)
    model = SceneGAN(**state["hyper_parameters"])
    model.on_load_checkpoint(state)  # as Lightning does on resume: fills what older checkpoints lack
    model.load_state_dict(state["state_dict"])
    if prior_data is not None:
        fit_priors(model, prior_data, priors)
    return model


def fit_priors(model, prior_data: Path, priors: tuple[str, ...]) -> None:
    """Fit the EMA generators of the stages ``priors`` their priors on the training set ``prior_data``, as
    ``scenecomp-train`` does at the end of a run."""
    from scenecomp.data import SceneDataset
    from scenecomp.train import PRIORS

    dataset = SceneDataset(prior_data, categories=model.categories, resolution=model.resolution)
    for stage in priors:
        encoder, _, what = PRIORS[stage]
        if not hasattr(model, encoder):
            continue
        used = getattr(model, f"fit_{stage}_prior")(dataset, model.hparams.get(f"{stage}_prior") or 2048)
        print(f"{stage} prior: the encoder's posteriors of {used} {what} of {prior_data}")


def same_colour(a, b) -> bool:
    """Whether two G_bg paint a style in the same colour (`LayoutGenerator.colour_weights` equal): a checkpoint
    warm-started from a bundle with those weights frozen, whose texture alone trained."""
    ours, theirs = a.colour_weights(), b.colour_weights()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k].float(), theirs[k].float()) for k in ours)


def load_bundle_or_pickle(path: Path) -> dict:
    """A bundle, or a bundle of the old pickled format (torch.save; read with ``weights_only=True``,
    which unpickles only tensors and plain containers): converting one is what this tool is for."""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        return load_bundle(path)
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != "scenecomp-bundle" or "networks" not in data:
        raise SystemExit(f"{path}: not a scenecomp bundle of the old format either")
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "source",
        type=Path,
        help="a bundle (.safetensors, or an old pickled .pt to convert) or a Lightning checkpoint (.ckpt)",
    )
    ap.add_argument("--out", type=Path, required=True, help="bundle path (from a bundle) or folder (from a .ckpt)")
    ap.add_argument("--half", action="store_true", help="store weights as float16")
    ap.add_argument("--background-from", type=Path, help="a .ckpt whose EMA G_bg replaces the bundle's")
    ap.add_argument("--foreground-from", type=Path, help="a .ckpt whose EMA G_fg replaces the bundle's")
    ap.add_argument("--prior-data", type=Path, help="a training set: fit the checkpoint's G_bg its style prior on it")
    args = ap.parse_args()
    if args.prior_data and not (args.source.suffix == ".ckpt" or args.background_from or args.foreground_from):
        ap.error("--prior-data needs a checkpoint: a .ckpt source, --background-from or --foreground-from")
    if args.source.suffix == ".ckpt":
        from scenecomp.train import write_bundles

        args.out.mkdir(parents=True, exist_ok=True)
        written = write_bundles(load_run(args.source, args.prior_data), args.out, half=args.half)
    else:
        from scenecomp.compose import NETWORKS, build_network

        data = load_bundle_or_pickle(args.source)
        nets = {name: build_network(data, name, args.source) for name in data["networks"] if name in NETWORKS}
        if args.background_from:
            run, ours = load_run(args.background_from), nets.get("background")
            if ours is not None and ours.prior_size and same_colour(ours, run.g_bg_ema):  # its texture alone trained
                run.g_bg_ema.set_prior(ours.prior_mu, ours.prior_logvar)
                print(f"background prior: this bundle's ({ours.prior_size} codes; the checkpoint's colour is its own)")
            elif args.prior_data:
                fit_priors(run, args.prior_data, ("background",))
            nets["background"] = run.g_bg_ema
        if args.foreground_from:
            nets["foreground"] = load_run(args.foreground_from, args.prior_data, ("foreground",)).g_fg_ema
        save_bundle(args.out, bundle_dict(data["categories"], half=args.half, **nets))
        written = [args.out]
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
