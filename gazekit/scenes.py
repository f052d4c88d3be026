"""Natural images with named boxes (`Scene`s) from COCO annotations, for the box-steering protocol."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable, Optional, Union

from PIL import Image

from gazekit.regions import Scene

__all__ = ["from_coco"]


def from_coco(annotations: Union[str, Path, dict], images_dir: Union[str, Path], categories: Optional[Iterable[str]] = None,
              max_images: Optional[int] = None, *, min_area: float = 0.02, min_boxes: int = 2,
              max_boxes: Optional[int] = None, seed: Optional[int] = None) -> list[Scene]:
    """COCO instance annotations (via pycocotools) → `Scene`s whose boxes are named by category.

    annotations: path to an ``instances_*.json`` file (or the loaded dict); images_dir: the folder of its images.
    categories: only these category names (default: all). Per image, crowd boxes and boxes smaller than `min_area`
    (fraction of the image area) are dropped; a category with several instances keeps its largest one, so each box
    name ("dog", "traffic light") means one object and a mention of the name can be scored. Images with fewer than
    `min_boxes` such boxes are skipped (steering needs something to choose between). `max_boxes` keeps the largest.
    COCO boxes are (x, y, width, height); they become (x0, y0, x1, y1), clipped to the image.
    Images are taken in image-id order, or shuffled with `seed`; at most `max_images`. Each scene's ``id`` is the
    image's file name.
    """
    try:
        from pycocotools.coco import COCO
    except ImportError as e:
        raise ImportError("from_coco needs pycocotools: pip install pycocotools") from e
    import contextlib
    import io

    coco = COCO()
    if isinstance(annotations, dict):
        coco.dataset = annotations
    else:
        import json
        with open(annotations, encoding="utf-8") as f:
            coco.dataset = json.load(f)
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    cat_ids = None
    if categories is not None:
        wanted = list(categories)
        unknown = [c for c in wanted if c not in names.values()]
        if unknown:
            raise ValueError(f"unknown COCO categories {unknown}; available: {sorted(names.values())}")
        cat_ids = {i for i, n in names.items() if n in wanted}
    img_ids = sorted(coco.getImgIds())
    if seed is not None:
        random.Random(seed).shuffle(img_ids)
    images_dir = Path(images_dir)
    scenes = []
    for iid in img_ids:
        info = coco.loadImgs(iid)[0]
        W, H = float(info["width"]), float(info["height"])
        best: dict[str, tuple[float, tuple]] = {}
        for a in coco.loadAnns(coco.getAnnIds(imgIds=iid, iscrowd=False)):
            if cat_ids is not None and a["category_id"] not in cat_ids:
                continue
            x, y, w, h = (float(v) for v in a["bbox"])
            x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(W, x + w), min(H, y + h)
            area = (x1 - x0) * (y1 - y0)
            if x1 <= x0 or y1 <= y0 or area < min_area * W * H:
                continue
            name = names[a["category_id"]]
            if name not in best or area > best[name][0]:
                best[name] = (area, (x0, y0, x1, y1))
        if len(best) < min_boxes:
            continue
        items = sorted(best.items(), key=lambda kv: -kv[1][0])
        if max_boxes is not None:
            items = items[:max_boxes]
        path = images_dir / info["file_name"]
        if not path.exists():
            raise FileNotFoundError(f"image {info['file_name']!r} of the annotations is not in {images_dir}")
        with Image.open(path) as im:
            img = im.convert("RGB")
        if img.size != (int(W), int(H)):
            raise ValueError(f"{path} is {img.size[0]}x{img.size[1]} but the annotations say {int(W)}x{int(H)}")
        sc = Scene(img, {n: box for n, (_, box) in items})
        sc.id = info["file_name"]
        scenes.append(sc)
        if max_images is not None and len(scenes) >= max_images:
            break
    return scenes
