"""Loaders on small fixtures built here: comic folders, HF datasets on disk/parquet, COMICS windows, COCO."""
import json

import numpy as np
import pytest
from PIL import Image

from gazekit.comics import comics_windows, from_hub, load_folder
from gazekit.regions import Strip
from gazekit.scenes import from_coco

COLOURS = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), (200, 0, 200)]


def _panels(seed):
    # different sizes per panel so that resizing matters
    return [Image.new("RGB", (40 + 8 * i + seed, 50 + 4 * i), tuple((c + 17 * seed) % 256 for c in col))
            for i, col in enumerate(COLOURS)]


def _write_comic(root, name, seed, suffix=".png", skip=()):
    d = root / name
    d.mkdir(parents=True)
    for k, p in enumerate(_panels(seed), start=1):
        if k not in skip:
            p.save(d / f"p{k}{suffix}")


def _same(a: Image.Image, b: Image.Image, tol=0):
    x, y = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    return x.shape == y.shape and np.abs(x - y).max() <= tol


# ---------------------------------------------------------------------------------------------------- folders
def test_load_folder_reference_layout(tmp_path):
    for n in (10, 2, 1):
        _write_comic(tmp_path, f"comic{n}", seed=n)
    caps = {f"comic{n}": [f"caption {n}.{k}" for k in range(1, 7)] for n in (1, 2, 10)}
    (tmp_path / "captions.json").write_text(json.dumps(caps))
    strips = load_folder(tmp_path)
    assert [s.id for s in strips] == ["comic1", "comic2", "comic10"]  # natural order
    for s, n in zip(strips, (1, 2, 10)):
        assert isinstance(s, Strip) and s.captions == caps[f"comic{n}"]
        assert _same(s.image, Strip.from_panels(_panels(n)).image)  # oracle: the core's strip builder


def test_load_folder_jpeg_and_csv_captions(tmp_path):
    _write_comic(tmp_path / "data", "comic1", seed=1, suffix=".jpg")
    _write_comic(tmp_path / "data", "comic2", seed=2, suffix=".JPEG")
    wide = tmp_path / "wide.csv"
    wide.write_text("comic,p1,p2,p3,p4,p5,p6\ncomic1,a,b,c,d,e,f\n")
    long = tmp_path / "long.csv"
    long.write_text("comic,panel,caption\n" + "".join(f"comic2,{k},cap {7 - k}\n" for k in (6, 5, 4, 3, 2, 1)))
    s = load_folder(tmp_path / "data", captions=wide)
    assert s[0].captions == list("abcdef") and s[1].captions is None
    s = load_folder(tmp_path / "data", captions=long)
    assert s[1].captions == [f"cap {7 - k}" for k in range(1, 7)]
    assert _same(s[0].image, Strip.from_panels(_panels(1)).image, tol=40)  # jpeg is lossy
    assert load_folder(tmp_path / "data", captions=False)[0].captions is None


def test_load_folder_missing_panels(tmp_path):
    _write_comic(tmp_path, "comic1", seed=1)
    _write_comic(tmp_path, "comic7", seed=7, skip=(3, 5))
    with pytest.raises(FileNotFoundError, match=r"comic 'comic7'.*missing panel\(s\) p3, p5"):
        load_folder(tmp_path)
    with pytest.warns(UserWarning, match="comic7.*p3, p5.*skipped"):
        strips = load_folder(tmp_path, skip_incomplete=True)
    assert [s.id for s in strips] == ["comic1"]


def test_load_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no comic folders"):
        load_folder(tmp_path / "empty")
    _write_comic(tmp_path / "c", "comic1", seed=1)
    (tmp_path / "bad.json").write_text(json.dumps({"comic1": ["only", "two"]}))
    with pytest.raises(ValueError, match="2 captions"):
        load_folder(tmp_path / "c", captions=tmp_path / "bad.json")


# -------------------------------------------------------------------------------------------------------- hub
@pytest.fixture(scope="module")
def hub_rows():
    return [{"panels": _panels(i), "captions": [f"strip {i} panel {k}" for k in range(1, 7)]} for i in range(3)]


def test_from_hub_save_to_disk_numbered_columns(tmp_path, hub_rows):
    import datasets
    feats = {f"p{k}": datasets.Image() for k in range(1, 7)}
    feats.update({f"caption_{k}": datasets.Value("string") for k in range(1, 7)})
    data = {f"p{k}": [r["panels"][k - 1] for r in hub_rows] for k in range(1, 7)}
    data.update({f"caption_{k}": [r["captions"][k - 1] for r in hub_rows] for k in range(1, 7)})
    ds = datasets.Dataset.from_dict(data, features=datasets.Features(feats))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "ds"))
    strips = from_hub(str(tmp_path / "ds"))  # columns guessed: p1..p6, caption_1..caption_6
    assert len(strips) == 3 and strips[2].id == "train/2"
    for s, r in zip(strips, hub_rows):
        assert s.captions == r["captions"]
        assert _same(s.image, Strip.from_panels(r["panels"]).image)
    assert len(from_hub(str(tmp_path / "ds"), split="test")) == 1
    with pytest.raises(KeyError, match="splits"):
        from_hub(str(tmp_path / "ds"), split="validation")


def test_from_hub_parquet_list_columns_and_mapping(tmp_path, hub_rows):
    import datasets
    feats = datasets.Features({"imgs": datasets.Sequence(datasets.Image()),
                               "texts_per_panel": datasets.Sequence(datasets.Value("string")),
                               "title": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"imgs": [r["panels"] for r in hub_rows],
                                     "texts_per_panel": [r["captions"] for r in hub_rows],
                                     "title": ["a", "b", "c"]}, features=feats)
    pq = tmp_path / "strips.parquet"
    ds.to_parquet(str(pq))
    with pytest.raises(ValueError, match=r"columns are \['imgs', 'texts_per_panel', 'title'\]"):
        from_hub(str(pq))
    strips = from_hub(str(pq), columns={"panels": "imgs", "captions": "texts_per_panel"}, limit=2)
    assert len(strips) == 2 and strips[1].captions == hub_rows[1]["captions"]
    assert _same(strips[1].image, Strip.from_panels(hub_rows[1]["panels"]).image)
    with pytest.raises(KeyError, match="nope"):
        from_hub(str(pq), columns={"panels": "nope"})


# ----------------------------------------------------------------------------------------------------- COMICS
def _colour(book, idx):
    return (40 * book + 10, (37 * idx) % 250, (91 * idx + 5) % 250)


@pytest.fixture
def comics_root(tmp_path):
    """3 books of 9, 6 and 4 panels over pages of 3 panels: <book>/<page>_<panel>.jpg, each panel a solid colour
    that encodes (book, reading index)."""
    sizes = {0: 9, 1: 6, 2: 4}
    for book, n in sizes.items():
        d = tmp_path / "raw_panel_images" / str(book)
        d.mkdir(parents=True)
        for idx in range(n):
            page, panel = divmod(idx, 3)
            # page 10 would sort before page 2 as text: use such numbers to check numeric ordering
            page = page * 5
            Image.new("RGB", (60, 80), _colour(book, idx)).save(d / f"{page}_{panel}.png")
    return tmp_path / "raw_panel_images", sizes


def _decode(strip):
    out = []
    for k in range(1, 7):
        c = np.asarray(strip.panel(k)).reshape(-1, 3).mean(0)
        book = int(round((c[0] - 10) / 40))
        idx = next(i for i in range(20) if np.allclose(c[1:], _colour(book, i)[1:], atol=2))
        out.append((book, idx))
    return out


def test_comics_windows_are_consecutive_and_seeded(comics_root):
    root, sizes = comics_root
    total = sum(n - 5 for n in sizes.values() if n >= 6)  # 4 + 1 windows; book 2 is too short
    ws = comics_windows(root, total, seed=0)
    seen = set()
    for s in ws:
        panels = _decode(s)
        book, start = panels[0]
        assert panels == [(book, start + j) for j in range(6)]  # one book, consecutive in reading order
        assert s.id.startswith(f"{book}/") and s.captions is None
        seen.add((book, start))
    assert len(seen) == total  # without replacement
    a, b = comics_windows(root, 3, seed=1), comics_windows(root, 3, seed=1)
    assert [s.id for s in a] == [s.id for s in b]
    assert {tuple(s.id for s in comics_windows(root, 2, seed=sd)) for sd in range(6)} != {tuple(s.id for s in a[:2])}
    with pytest.raises(ValueError, match="only 5"):
        comics_windows(root, 6, seed=0)


# ------------------------------------------------------------------------------------------------------- COCO
def test_from_coco(tmp_path):
    imgs = tmp_path / "val"
    imgs.mkdir()
    for i, (w, h) in enumerate([(200, 100), (100, 100), (300, 200)], start=1):
        Image.new("RGB", (w, h), (i * 50, 0, 0)).save(imgs / f"{i:012d}.jpg")
    ann = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h}
                   for i, (w, h) in enumerate([(200, 100), (100, 100), (300, 200)], start=1)],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "traffic light"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 50, 40], "area": 2000, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 10, 80, 80], "area": 6400, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [150.5, 0, 60, 30], "area": 1800, "iscrowd": 0},
            {"id": 4, "image_id": 1, "category_id": 3, "bbox": [0, 0, 3, 3], "area": 9, "iscrowd": 0},
            {"id": 5, "image_id": 2, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0},
            {"id": 6, "image_id": 2, "category_id": 3, "bbox": [0, 0, 90, 90], "area": 8100, "iscrowd": 1},
            {"id": 7, "image_id": 3, "category_id": 3, "bbox": [10, 10, 100, 100], "area": 1e4, "iscrowd": 0},
            {"id": 8, "image_id": 3, "category_id": 1, "bbox": [150, 50, 100, 120], "area": 1.2e4, "iscrowd": 0},
        ]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(ann))
    scenes = from_coco(path, imgs)
    # image 1: the larger dog kept, the traffic light clipped to the image, the tiny cat dropped;
    # image 2: only one non-crowd box → skipped; image 3: dog then cat (largest first)
    assert [s.id for s in scenes] == ["000000000001.jpg", "000000000003.jpg"]
    s1, s3 = scenes
    assert s1.names == ["dog", "traffic light"]
    assert s1.region_boxes == [(100.0, 10.0, 180.0, 90.0), (150.5, 0.0, 200.0, 30.0)]  # x1 = min(W, x + w)
    assert s3.names == ["dog", "cat"] and s3.region_boxes[1] == (10.0, 10.0, 110.0, 110.0)
    assert s1.image.size == (200, 100)
    only = from_coco(ann, imgs, categories=["dog", "cat"], min_boxes=1)
    assert [s.names for s in only] == [["dog"], ["dog"], ["dog", "cat"]]
    assert len(from_coco(path, imgs, max_images=1)) == 1
    assert [s.names for s in from_coco(path, imgs, max_boxes=1)] == [["dog"], ["dog"]]
    with pytest.raises(ValueError, match="unknown COCO categories.*'unicorn'"):
        from_coco(path, imgs, categories=["unicorn"])
