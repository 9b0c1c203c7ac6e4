"""Training the in-domain feature network (`FeatureNet`); ``tools/train_features.py`` is its command.

The network must be trained on Shapes scenes disjoint from the generators'
training data (data/shapes64/train is seed 0, the test split seed 1): the
command generates its own split with another seed (``--generate-shapes 2``).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from scenecomp.eval.features import FeatureNet
from scenecomp.eval.metrics import accuracy, background_purity
from scenecomp.eval.protocol import read_background
from scenecomp.images import to_float
from scenecomp.nets import fill_outside, object_crops, swap_silhouettes, visible_masks


def _read_pool(dataset, indices, S: int, backgrounds: Path | None):
    """Images, backgrounds, per-object visible masks, categories and filled crops of some samples."""
    imgs, bgs, vis, cats, owner = [], [], [], [], []
    for n, i in enumerate(indices):
        s = dataset.read(i)
        imgs.append(torch.from_numpy(s["image"]).permute(2, 0, 1))
        if backgrounds is not None:
            bgs.append(read_background(dataset, i, backgrounds))
        m = torch.from_numpy(s["masks"]).bool()[:, None]  # [n,1,R,R]
        v = visible_masks(m[None].float())[0]
        keep = v.flatten(1).sum(1) > 0  # every object with a visible pixel (presence labels need them all)
        vis.append(v[keep].bool())
        cats.append(torch.from_numpy(s["categories"])[keep])
        owner.append(torch.full((int(keep.sum()),), n))
    imgs = torch.stack(imgs)
    vis, cats, owner = torch.cat(vis), torch.cat(cats), torch.cat(owner)
    crops = []
    for a in range(0, len(vis), 256):
        m = vis[a : a + 256].float()
        c = object_crops(to_float(imgs[owner[a : a + 256]]), m, S)
        crops.append(torch.cat([c, fill_outside(c)], 1).half())
    crops = torch.cat(crops) if crops else torch.zeros(0, 7, S, S, dtype=torch.half)
    return {
        "images": imgs,
        "backgrounds": torch.stack(bgs) if bgs else None,
        "vis": vis,
        "cats": cats,
        "owner": owner,
        "crops": crops[:, :4],
        "filled": crops[:, 4:],
    }


def _presence_batch(pool, rows, C, gen, p_background: float = 0.25, p_drop: float = 0.5):
    """Whole images with labels; some are the object-free background, some lose a random subset of objects."""
    images, labels = [], []
    for n in rows.tolist():
        image = pool["images"][n]
        objs = (pool["owner"] == n).nonzero().flatten()
        keep = torch.ones(len(objs), dtype=torch.bool)
        if pool["backgrounds"] is not None:
            u = float(torch.rand((), generator=gen))
            if u < p_background:
                keep[:] = False
            elif u < p_background + p_drop:
                keep = torch.rand(len(objs), generator=gen) < 0.5
            if not bool(keep.all()):
                shown = pool["vis"][objs[keep]].any(0) if bool(keep.any()) else torch.zeros_like(pool["vis"][0])
                image = torch.where(shown, image, pool["backgrounds"][n])
        label = torch.zeros(C)
        label[pool["cats"][objs[keep]]] = 1.0
        images.append(image)
        labels.append(label)
    return to_float(torch.stack(images)), torch.stack(labels)


def _object_batch(pool, rows, gen, p_swap: float = 0.5):
    """Crops with labels; a share ``p_swap`` carry another object's silhouette."""
    swap = torch.rand(len(rows), generator=gen) < p_swap
    other = pool["crops"][torch.randint(0, len(pool["cats"]), (len(rows),), generator=gen), 3:].float()
    swapped = swap_silhouettes(pool["filled"][rows].float(), other)
    return torch.where(swap[:, None, None, None], swapped, pool["crops"][rows].float()), pool["cats"][rows]


def _flip(x: torch.Tensor, gen) -> torch.Tensor:
    f = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(f[:, None, None, None], x.flip(-1), x)


def _heldout_scores(net: FeatureNet, pool, C: int) -> dict:
    with torch.no_grad():
        n = len(pool["cats"])
        plain = pool["crops"].float()
        other = pool["crops"][:, 3:].float().roll(1, 0)  # each object's look in the next object's silhouette
        swapped = swap_silhouettes(pool["filled"].float(), other)
        logits = torch.cat([net.object_logits(plain[a : a + 256]) for a in range(0, n, 256)])
        logits_s = torch.cat([net.object_logits(swapped[a : a + 256]) for a in range(0, n, 256)])
        labels = pool["cats"]
        differs = labels != labels.roll(1, 0)
        images = to_float(pool["images"])
        truth = torch.zeros(len(images), C)
        truth[pool["owner"], pool["cats"]] = 1.0
        pres = torch.cat([torch.sigmoid(net.presence_logits(images[a : a + 256])) for a in range(0, len(images), 256)])
        out = {
            "heldout_object_accuracy": accuracy(logits, labels),
            "heldout_swapped_accuracy": accuracy(logits_s[differs], labels[differs]),
            "heldout_presence_accuracy": float(((pres > 0.5).float() == truth).all(1).float().mean()),
            "heldout_presence_label_accuracy": float(((pres > 0.5).float() == truth).float().mean()),
            "heldout_presence_object_recall": float((pres[pool["owner"], pool["cats"]] > 0.5).float().mean()),
            "heldout_objects": n,
            "heldout_images": len(images),
        }
        if pool["backgrounds"] is not None:
            bg = to_float(pool["backgrounds"])
            bp = torch.cat([torch.sigmoid(net.presence_logits(bg[a : a + 256])) for a in range(0, len(bg), 256)])
            out["heldout_background_purity"] = background_purity(bp)
    return out


def train_features(
    data,
    *,
    images: int = 6000,
    holdout: int = 500,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    categories=None,
    resolution: int | None = None,
    net_kwargs: dict | None = None,
    progress: bool = False,
    log=None,
) -> FeatureNet:
    """Train a `FeatureNet` on a COCO split (Shapes: with its ``backgrounds/``).

    The first ``images`` samples train it, the last ``holdout`` (disjoint) measure
    it. Each step: ``batch_size`` object crops (half of them silhouette-swapped)
    for the object head and ``batch_size // 2`` whole images (a quarter of them
    backgrounds, half with a random subset of objects removed) for the presence
    head; Adam with cosine decay. Returns the network (eval mode) with
    ``.categories`` and ``.meta`` (held-out accuracies and how it was trained).
    """
    from scenecomp.data import SceneDataset

    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if resolution is None:
        probe = SceneDataset(data, None, categories, 8, None, limit=1)
        resolution = min(probe.image_info(0)["height"], probe.image_info(0)["width"])
    dataset = SceneDataset(data, None, categories, resolution, None)
    n = len(dataset)
    holdout = min(holdout, n // 2)
    train_idx = list(range(min(images, n - holdout)))
    held_idx = list(range(n - holdout, n))
    folder = dataset.annotations_path.parent / "backgrounds"
    folder = folder if folder.is_dir() else None
    C = len(dataset.categories)
    net = FeatureNet(num_categories=C, resolution=resolution, crop_size=max(8, resolution // 2), **(net_kwargs or {}))
    S = net.crop_size
    pool = _read_pool(dataset, train_idx, S, folder)
    held = _read_pool(dataset, held_idx, S, folder)
    if log:
        log(
            f"read {len(train_idx)} training images ({len(pool['cats'])} objects) and {len(held_idx)} held-out "
            f"({len(held['cats'])} objects) in {time.perf_counter() - start:.1f} s"
        )
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    net.train()
    steps_iter = range(steps)
    if progress:
        from tqdm import tqdm

        steps_iter = tqdm(steps_iter, desc="features", unit="step", file=sys.stderr, disable=None)
    for step in steps_iter:
        rows = torch.randint(0, len(pool["cats"]), (batch_size,), generator=gen)
        crops, labels = _object_batch(pool, rows, gen)
        rows = torch.randint(0, len(pool["images"]), (max(1, batch_size // 2),), generator=gen)
        whole, present = _presence_batch(pool, rows, C, gen)
        loss_obj = F.cross_entropy(net.object_logits(_flip(crops, gen)), labels)
        loss_pres = F.binary_cross_entropy_with_logits(net.presence_logits(_flip(whole, gen)), present)
        opt.zero_grad(set_to_none=True)
        (loss_obj + loss_pres).backward()
        opt.step()
        sched.step()
        if log and (step + 1) % max(1, steps // 10) == 0:
            log(
                f"step {step + 1}/{steps}: object loss {loss_obj.item():.3f}, presence loss {loss_pres.item():.3f} "
                f"({time.perf_counter() - start:.0f} s)"
            )
    net.eval().requires_grad_(False)
    with torch.no_grad():
        f = torch.cat(
            [net._whole(to_float(pool["images"][a : a + 256])) for a in range(0, min(2048, len(pool["images"])), 256)]
        )
        net.feature_scale.fill_(float(f.square().mean().rsqrt()))
    meta = _heldout_scores(net, held, C)
    meta.update(
        {
            "data": str(dataset.annotations_path),
            "data_seed": dataset.info.get("seed"),
            "train_images": len(train_idx),
            "train_objects": len(pool["cats"]),
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "seconds": round(time.perf_counter() - start, 1),
            "backgrounds": folder is not None,
        }
    )
    net.categories = list(dataset.categories)
    net.meta = meta
    return net
