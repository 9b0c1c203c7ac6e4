"""The results as a table (one row per metric, one column per model plus ``real``) and as JSON."""

from __future__ import annotations

import json

from scenecomp.atomic import write_atomically

# key: (description, better, format). "real" is the real-vs-real figure at the same sample size: for
# distances the floor, for two-sample tests the calibration, elsewhere the split's own images.
METRICS = {
    "fid": ("FID, in-domain features (vs the reference)", "lower", "{:.2f}"),
    "fid_over_floor": ("FID / real-vs-real floor", "lower", "{:.2f}"),
    "kid": ("KID x1000, in-domain features (vs the reference)", "lower", "{:.2f}"),
    "fid_inception": ("FID, Inception-v3 features", "lower", "{:.2f}"),
    "kid_inception": ("KID x1000, Inception-v3 features", "lower", "{:.2f}"),
    "two_sample_scenes": ("two-sample test, whole scenes (0.5 = indistinguishable)", "0.5", "{:.3f}"),
    "two_sample_scenes_real_backgrounds": (
        "two-sample test, scenes painted on their real backgrounds (G_fg alone)",
        "0.5",
        "{:.3f}",
    ),
    "two_sample_objects": ("two-sample test, object crops, identical masks", "0.5", "{:.3f}"),
    "two_sample_objects_native": (
        "two-sample test, object crops at their own resolution (not scaled up), identical masks",
        "0.5",
        "{:.3f}",
    ),
    "two_sample_backgrounds": ("two-sample test, backgrounds", "0.5", "{:.3f}"),
    "inception_score": ("Inception score, in-domain classifier on object crops", "higher", "{:.3f}"),
    "object_accuracy": ("object accuracy (crop classified as the requested category)", "higher", "{:.3f}"),
    "appearance_accuracy": ("appearance accuracy (same mask painted as each category)", "higher", "{:.3f}"),
    "appearance_min_category": ("appearance accuracy, worst category", "higher", "{:.3f}"),
    "diversity": ("diversity (mean feature distance, same layout, other seeds)", "higher", "{:.3f}"),
    "diversity_min_category": ("diversity, least diverse category (object crops)", "higher", "{:.3f}"),
    "locality_look": ("edit locality, new look (mean |change| outside the object)", "lower", "{:.3g}"),
    "locality_category": ("edit locality, new category (mean |change| outside)", "lower", "{:.3g}"),
    "background_purity": ("background purity (share with no object detected)", "higher", "{:.3f}"),
    "illumination": ("illumination consistency (object vs scene brightness corr.)", "near real", "{:.3f}"),
}


def format_table(result: dict) -> str:
    """The protocol (sample sizes, seeds, feature network, models), then the table."""
    p, f = result["protocol"], result["protocol"]["feature_network"]
    columns = [*result["models"], "real"]
    lines = [
        f"protocol: split {p['split']}: layouts = its first {p['layouts']} images, reference = the next "
        f"{p['reference_images']} ({p['layouts_in_split']} in the split); {p['samples_per_layout']} sample(s) per "
        f"layout -> {p['generated_images_per_model']} generated images per model; {p['resolution']}x{p['resolution']}; "
        f"{p['counted_objects']} counted objects (visible >= {p['min_visible']:.1%} of the image)",
        f"sample sizes: FID/KID and two-sample tests compare {p['distance_sample_size']} images (sample 0 of each "
        f"layout) with {p['reference_images']} (KID subsets of {p['kid_subset_size']}); object crops: "
        f"{p['counted_objects']} per side (reference: {p['reference_objects']})",
        f"seeds: {p['sample_seed']}",
        f"features: {f['path']} ({f['kind']}, {f['feature_dim']}-d; held-out real crops: accuracy "
        f"{_fmt(f['heldout_object_accuracy'], '{:.3f}')}, silhouette-swapped {_fmt(f['heldout_swapped_accuracy'], '{:.3f}')}; "
        f"trained on {f['trained_on']}"
        + (f", Shapes seed {f['trained_on_seed']}" if f.get("trained_on_seed") is not None else "")
        + ")",
        f"two-sample: {p['two_sample']}",
    ]
    if p.get("inception"):
        lines.append(f"inception: {p['inception']}")
    for name, m in result["models"].items():
        lines.append(f"model {name}: {m['path']} ({m['kind']}, {m['parameters'] / 1e6:.2f}M generator parameters)")
    per = result.get("diversity_per_category") or {}
    rows = []
    for key, (desc, better, fmt) in METRICS.items():
        if key in result["metrics"]:
            spread = (result.get("two_sample_figures") or {}).get(key, {})
            rows.append(
                (desc, better)
                + tuple(_fmt(result["metrics"][key].get(c), fmt) + _range(spread.get(c), fmt) for c in columns)
            )
        if key == "diversity_min_category" and per:  # then one row per category (real: no seeds, "-")
            rows += [
                (f"diversity, {cat} objects", better) + tuple(_fmt((per.get(c) or {}).get(cat), fmt) for c in columns)
                for cat in p["categories"]
            ]
    head = ("metric", "better", *columns)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines.append("")
    for r in [head, *rows]:
        lines.append(
            "  ".join(
                str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=False))
            )
        )
    lines.append(
        "(real: FID/KID = the floor, the layouts' real images vs the reference; two-sample = the calibration, "
        "layouts' real vs reference; other rows: the split's own images, crops and backgrounds; "
        "- : not meaningful for that column)"
    )
    if per:
        lines.append(
            "no collapsed category (per-category diversity > 0): "
            + ", ".join(f"{name} " + _collapse(values) for name, values in per.items())
        )
    return "\n".join(lines)


def result_json(result: dict) -> dict:
    """The result with each metric's description and direction, as written by ``--json``."""
    return {
        **result,
        "descriptions": {k: v[0] for k, v in METRICS.items()},
        "better": {k: v[1] for k, v in METRICS.items()},
    }


def write_json(path, data) -> None:
    """Write atomically: a temporary file renamed into place."""
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2), encoding="utf-8"))


def _fmt(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _range(figures: list | None, fmt: str) -> str:
    """' [0.780-0.840]': a two-sample mean's range over its classifier seeds (nothing for one seed)."""
    if not figures or len(figures) < 2 or any(v != v for v in figures):  # nan: too few images to split
        return ""
    return f" [{fmt.format(min(figures))}-{fmt.format(max(figures))}]"


def _collapse(per_category: dict | None) -> str:
    """'yes (min 0.123, rock)' / 'NO (min 0, rock)' from one model's per-category diversity."""
    if per_category is None:
        return "- (needs --seeds >= 2)"
    measured = {c: v for c, v in per_category.items() if v is not None}
    if not measured:
        return "- (no counted objects)"
    cat = min(measured, key=measured.get)
    return f"{'yes' if measured[cat] > 0 else 'NO'} (min {measured[cat]:.3g}, {cat})"
