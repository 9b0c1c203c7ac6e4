"""Layout files: a canvas size, a background seed and objects in paint order."""
from __future__ import annotations


def order_annotations(annotations: list[dict], info: dict | None) -> list[dict]:
    """Paint order (back to front) of one image's COCO annotations.

    Files written by scenecomp (Shapes, prepared COCO subsets) say
    ``info["paint_order"] == "annotation_order"``: their annotations are
    already back to front. Any other COCO file (real COCO) has no paint
    order, so objects are painted largest first: big regions are usually
    behind small ones.
    """
    if (info or {}).get("paint_order") == "annotation_order":
        return list(annotations)
    return sorted(annotations, key=lambda a: -float(a.get("area", 0.0)))
