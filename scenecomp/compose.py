"""Composition: a background from noise, then objects one at a time."""
from __future__ import annotations

import torch

from scenecomp.nets import ForegroundGenerator, LayoutGenerator, composite


def paint_layers(background: LayoutGenerator, foreground: ForegroundGenerator, z_background: torch.Tensor,
                 z_objects: torch.Tensor, masks: torch.Tensor, categories: torch.Tensor,
                 start: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The data flow of DESIGN.md, batched: every canvas from x0 to x_T.

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


# ----------------------------------------------------------------------------- bundles

BUNDLE_FORMAT = "scenecomp-bundle"
BUNDLE_VERSION = 1
NETWORKS = {"background": LayoutGenerator, "foreground": ForegroundGenerator, "baseline": LayoutGenerator}


class BundleError(ValueError):
    """A bundle file that cannot be used; the message names the file and the problem."""


def bundle_dict(categories: list[str], half: bool = False, **networks: torch.nn.Module) -> dict:
    """Plain data for a bundle: format tag, version, categories, resolution and, per
    network (``background``, ``foreground``, ``baseline``), its constructor
    arguments and weights. ``half`` stores weights as float16 (they load as float32)."""
    first = next(iter(networks.values()))
    data = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "categories": list(categories),
            "resolution": first.resolution, "z_dim": first.z_dim, "networks": {}}
    for name, net in networks.items():
        state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
                 for k, v in net.state_dict().items()}
        data["networks"][name] = {"kwargs": dict(net.init_kwargs), "state_dict": state}
    return data


def save_bundle(path, data: dict) -> None:
    """Write atomically: a temporary file renamed into place, never a half-written bundle."""
    from pathlib import Path
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    tmp.replace(path)


def load_bundle(path) -> dict:
    """Read a bundle with ``weights_only=True`` (loading never runs code) and check its tag and version."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BundleError(f"{path}: no such file") from None
    except Exception as e:  # unpickling refused, truncated file, not a torch file
        raise BundleError(f"{path}: not a readable scenecomp bundle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a scenecomp bundle (format tag {data.get('format') if isinstance(data, dict) else None!r})")
    if data.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle version {data.get('version')!r}, this scenecomp reads version {BUNDLE_VERSION}")
    return data


def build_network(data: dict, name: str, path=None) -> torch.nn.Module:
    """Rebuild network ``name`` of a loaded bundle from its saved constructor arguments, in eval mode."""
    if name not in data["networks"]:
        raise BundleError(f"{path or 'bundle'}: holds no {name!r} network (it has {sorted(data['networks'])})")
    entry = data["networks"][name]
    net = NETWORKS[name](**entry["kwargs"])
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in entry["state_dict"].items()})
    return net.eval().requires_grad_(False)
