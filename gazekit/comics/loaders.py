"""Loaders for real comic strips: a folder of panel images, a Hugging Face dataset, and COMICS windows.

Every loader returns `gazekit.regions.Strip` objects built with `Strip.from_panels` (the paper's 256 px strip),
each with an ``id`` attribute naming where it came from (``comic12``, ``hub:train/41``, ``book 17: 3_2..4_1``).
"""
from __future__ import annotations

import csv
import json
import random
import re
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

from PIL import Image

from gazekit.regions import N_PANELS, Strip

__all__ = ["load_folder", "from_hub", "comics_windows", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_NUM = re.compile(r"(\d+)")


def _natural_key(s: str):
    """'comic10' after 'comic9': compare digit runs as numbers."""
    return [int(t) if t.isdigit() else t.lower() for t in _NUM.split(s)]


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


# ------------------------------------------------------------------------------------------------------ folders
def _read_captions(path: Path) -> dict[str, list[str]]:
    """Captions file → {comic folder name: six captions}.

    JSON: ``{"comic1": ["...", ... six]}`` or a list of ``{"comic": "comic1", "captions": [...]}``.
    CSV: wide (``comic,p1,p2,p3,p4,p5,p6`` — or caption1..caption6) or long (``comic,panel,caption``,
    panel 1-based)."""
    out: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            out = {str(k): [str(c) for c in v] for k, v in data.items()}
        elif isinstance(data, list):
            for item in data:
                out[str(item["comic"])] = [str(c) for c in item["captions"]]
        else:
            raise ValueError(f"{path}: expected an object {{comic: [six captions]}} or a list of "
                             "{comic, captions} objects")
    elif path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return {}
        cols = {c.lower().strip(): c for c in rows[0].keys()}
        if "comic" not in cols:
            raise ValueError(f"{path}: the CSV needs a 'comic' column; has {list(rows[0])}")
        wide = [next((cols[n] for n in (f"p{k}", f"caption{k}", f"caption_{k}", f"panel{k}", f"panel_{k}")
                      if n in cols), None) for k in range(1, N_PANELS + 1)]
        if all(wide):
            for r in rows:
                out[r[cols["comic"]].strip()] = [r[c] for c in wide]
        elif "panel" in cols and "caption" in cols:
            tmp: dict[str, dict[int, str]] = {}
            for r in rows:
                tmp.setdefault(r[cols["comic"]].strip(), {})[int(r[cols["panel"]])] = r[cols["caption"]]
            for comic, d in tmp.items():
                if sorted(d) != list(range(1, N_PANELS + 1)):
                    raise ValueError(f"{path}: comic {comic!r} has captions for panels {sorted(d)}, need 1..6")
                out[comic] = [d[k] for k in range(1, N_PANELS + 1)]
        else:
            raise ValueError(f"{path}: use columns comic,p1..p6 (wide) or comic,panel,caption (long); "
                             f"found {list(rows[0])}")
    else:
        raise ValueError(f"captions file must be .json or .csv, got {path.name}")
    for comic, caps in out.items():
        if len(caps) != N_PANELS:
            raise ValueError(f"{path}: comic {comic!r} has {len(caps)} captions, need {N_PANELS}")
    return out


def load_folder(root, captions: Union[str, Path, None, bool] = None, skip_incomplete: bool = False,
                limit: Optional[int] = None, style: str = "gazekit") -> list[Strip]:
    """Strips from the reference layout ``root/comicN/p1.png … p6.png``.

    - Any sub-folder holding panel files ``p1``…``p6`` counts (any of .png .jpg .jpeg .webp .bmp .gif .tif);
      folders are read in natural order (comic2 before comic10); each strip's ``id`` is its folder name.
    - captions: a .json/.csv file (see `_read_captions` for the formats). None looks for ``captions.json`` or
      ``captions.csv`` in `root`; False ignores captions. A comic missing from the file gets no captions.
      Per-comic ``captions.txt`` files (six lines) inside a comic folder are read too.
    - A comic with missing panels raises an error naming the comic and the panels; ``skip_incomplete=True``
      warns and skips it instead.
    - style: how panels become a strip (`Strip.from_panels`): "gazekit" (gaps between panels) or "reference" (the
      reference code's strip pixel for pixel: LANCZOS, a 6 px white band painted over each boundary).
    """
    from gazekit.regions import _check_style
    _check_style(style)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; expected root/comicN/p1.png … p6.png")
    cap_map: dict[str, list[str]] = {}
    if captions is None:
        for name in ("captions.json", "captions.csv"):
            if (root / name).exists():
                cap_map = _read_captions(root / name)
                break
    elif captions is not False:
        cap_map = _read_captions(Path(captions))
    dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: _natural_key(d.name))
    strips, skipped = [], []
    for d in dirs:
        found: dict[int, Path] = {}
        for f in d.iterdir():
            m = re.fullmatch(r"p([1-6])", f.stem, flags=re.IGNORECASE)
            if m and f.suffix.lower() in IMAGE_SUFFIXES:
                k = int(m.group(1))
                if k in found:
                    raise ValueError(f"comic {d.name!r} has two files for panel {k}: {found[k].name} and {f.name}")
                found[k] = f
        if not found:
            continue  # not a comic folder
        missing = [k for k in range(1, N_PANELS + 1) if k not in found]
        if missing:
            msg = (f"comic {d.name!r} ({d}) is missing panel(s) {', '.join(f'p{k}' for k in missing)}; "
                   "every comic needs p1 … p6 (pass skip_incomplete=True to skip such comics)")
            if not skip_incomplete:
                raise FileNotFoundError(msg)
            skipped.append(d.name)
            warnings.warn(msg.replace(" (pass skip_incomplete=True to skip such comics)", "; skipped"),
                          stacklevel=2)
            continue
        caps = cap_map.get(d.name)
        if caps is None and (d / "captions.txt").exists():
            lines = [ln.strip() for ln in (d / "captions.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
            if len(lines) != N_PANELS:
                raise ValueError(f"{d / 'captions.txt'} has {len(lines)} non-empty lines, need {N_PANELS}")
            caps = lines
        s = Strip.from_panels([_open(found[k]) for k in range(1, N_PANELS + 1)], caps, style=style)
        s.id = d.name
        strips.append(s)
        if limit is not None and len(strips) >= limit:
            break
    if not strips:
        raise FileNotFoundError(f"no comic folders with panels p1 … p6 found under {root}"
                                + (f" ({len(skipped)} incomplete ones skipped)" if skipped else ""))
    return strips


# ---------------------------------------------------------------------------------------------------------- hub
def _to_pil(v) -> Image.Image:
    if isinstance(v, Image.Image):
        return v.convert("RGB")
    if isinstance(v, dict):  # datasets' undecoded Image feature: {"bytes": ..., "path": ...}
        if v.get("bytes"):
            import io
            return Image.open(io.BytesIO(v["bytes"])).convert("RGB")
        if v.get("path"):
            return _open(Path(v["path"]))
    if isinstance(v, (bytes, bytearray)):
        import io
        return Image.open(io.BytesIO(v)).convert("RGB")
    if isinstance(v, (str, Path)) and Path(v).exists():
        return _open(Path(v))
    raise TypeError(f"cannot read an image from a {type(v).__name__}")


def _guess_columns(names: Sequence[str]) -> dict:
    """Find the panel and caption columns: a list column ('panels', 'images') or six numbered columns
    ('p1'…'p6', 'panel_1'…, 'image1'…); captions likewise ('captions' or 'caption_1'…)."""
    low = {n.lower(): n for n in names}

    def numbered(prefixes):
        for pre in prefixes:
            cols = [low.get(f"{pre}{k}") or low.get(f"{pre}_{k}") for k in range(1, N_PANELS + 1)]
            if all(cols):
                return cols
        return None

    panels = next((low[n] for n in ("panels", "images", "panel_images") if n in low), None) \
        or numbered(("p", "panel", "image", "img", "panel_image"))
    caps = next((low[n] for n in ("captions", "panel_captions", "texts", "descriptions") if n in low), None) \
        or numbered(("caption", "text", "description", "panel_caption"))
    return {"panels": panels, "captions": caps}


def from_hub(name: str = "baulab/openai-comic-strips", split: str = "train", columns: Optional[dict] = None, *,
             limit: Optional[int] = None, revision: Optional[str] = None, cache_dir: Optional[str] = None,
             **load_kwargs) -> list[Strip]:
    """Strips from a Hugging Face dataset (six panel images + per-panel captions per row), via `datasets`.

    name: a hub id (downloads once into the datasets cache), a folder written by ``Dataset.save_to_disk`` /
    ``DatasetDict.save_to_disk``, or a local ``.parquet`` file / folder of parquet files.

    columns: ``{"panels": <list column> or [six image columns], "captions": <list column> or [six columns] or
    None}``. When omitted, the columns are guessed (``panels``/``images`` or ``p1``…``p6``/``panel_1``…;
    ``captions`` or ``caption_1``…); if that fails the error lists the dataset's columns so you can pass them.
    Each strip's ``id`` is ``"<split>/<row>"``.
    """
    import datasets

    p = Path(name)
    if p.exists():
        if p.is_file() and p.suffix == ".parquet" or (p.is_dir() and any(p.glob("*.parquet"))
                                                      and not (p / "dataset_info.json").exists()
                                                      and not (p / "dataset_dict.json").exists()):
            files = [str(p)] if p.is_file() else sorted(str(f) for f in p.glob("*.parquet"))
            ds = datasets.load_dataset("parquet", data_files={split: files}, split=split, cache_dir=cache_dir)
        else:
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise KeyError(f"{name} has splits {list(ds)}, not {split!r}; pass split=")
                ds = ds[split]
    else:
        ds = datasets.load_dataset(name, split=split, revision=revision, cache_dir=cache_dir, **load_kwargs)
    cols = dict(columns) if columns else _guess_columns(ds.column_names)
    if not cols.get("panels"):
        raise ValueError(f"cannot tell which columns hold the six panels of {name!r}; its columns are "
                         f"{ds.column_names}. Pass columns={{'panels': [six image columns] or 'list_column', "
                         "'captions': [six text columns] or 'list_column' or None}")
    for key in ("panels", "captions"):
        c = cols.get(key)
        for col in ([c] if isinstance(c, str) else (c or [])):
            if col not in ds.column_names:
                raise KeyError(f"column {col!r} (for {key}) is not in {name!r}; columns are {ds.column_names}")
    n = len(ds) if limit is None else min(limit, len(ds))
    strips = []
    for i in range(n):
        row = ds[i]
        pc, cc = cols["panels"], cols.get("captions")
        panels = row[pc] if isinstance(pc, str) else [row[c] for c in pc]
        if len(panels) != N_PANELS:
            raise ValueError(f"row {i} of {name!r} has {len(panels)} panels, need {N_PANELS}")
        caps = None
        if cc:
            caps = row[cc] if isinstance(cc, str) else [row[c] for c in cc]
        s = Strip.from_panels([_to_pil(v) for v in panels], caps)
        s.id = f"{split}/{i}"
        strips.append(s)
    return strips


# ------------------------------------------------------------------------------------------------------- COMICS
_PANEL_FILE = re.compile(r"(\d+)_(\d+)")


def comics_windows(root, n: int, seed: int = 0, *, window: int = N_PANELS, style: str = "gazekit") -> list[Strip]:
    """`n` random windows of six consecutive panels from the COMICS corpus (Iyyer et al. 2017), as strips.

    Assumed layout (the corpus's ``raw_panel_images`` download): ``root/<book>/<page>_<panel>.jpg``, one folder per
    book, pages and panels numbered from 0 (e.g. ``root/17/3_0.jpg``). Panels of a book are ordered by
    (page, panel) numerically; a window is six consecutive panels of one book and may cross a page break, as in
    reading order. Windows are drawn uniformly without replacement over all books with `random.Random(seed)`,
    so the same (root, n, seed) gives the same strips. No captions (use the semantic or an LLM judge).
    Each strip's ``id`` is ``"<book>/<first page>_<panel>"``.

    style="reference": the reference code's sampler instead (`_reference_windows`): each window lies within one
    page, drawn with ``numpy.random.RandomState(seed)`` (random book, random interior page holding >= 6 panels —
    the first and last 5 pages skipped in books of more than 10 pages —, random start), with replacement, and
    the strips are built with ``Strip.from_panels(..., style="reference")``.
    """
    from gazekit.regions import _check_style
    _check_style(style)
    if window != N_PANELS:
        raise ValueError(f"a strip has {N_PANELS} panels; window must be {N_PANELS}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; expected the COMICS raw panels: root/<book>/<page>_<panel>.jpg")
    if style == "reference":
        return _reference_windows(root, n, seed)
    books = []
    for d in sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: _natural_key(d.name)):
        files = []
        for f in d.iterdir():
            m = _PANEL_FILE.fullmatch(f.stem)
            if m and f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(((int(m.group(1)), int(m.group(2))), f))
        files.sort()
        if len(files) >= window:
            books.append((d.name, [f for _, f in files]))
    total = sum(len(fs) - window + 1 for _, fs in books)
    if total == 0:
        raise FileNotFoundError(f"no book under {root} has {window} panels named <page>_<panel>.jpg")
    if n > total:
        raise ValueError(f"asked for {n} windows but {root} has only {total}")
    picks = sorted(random.Random(seed).sample(range(total), n))
    strips, book_i, offset = [], 0, 0
    for g in picks:  # map a global window number to (book, start)
        while g >= offset + len(books[book_i][1]) - window + 1:
            offset += len(books[book_i][1]) - window + 1
            book_i += 1
        name, files = books[book_i]
        start = g - offset
        chosen = files[start:start + window]
        s = Strip.from_panels([_open(f) for f in chosen])
        s.id = f"{name}/{chosen[0].stem}"
        strips.append(s)
    order = random.Random(seed + 1).sample(range(n), n)  # shuffle so a prefix of the list is not one book
    return [strips[i] for i in order]


_REFERENCE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # the reference's IMAGE_SUFFIXES


def _pages(book: Path) -> dict[int, list[Path]]:
    """{page: panel files in panel order} for files named <page>_<panel> (the reference's grouping)."""
    grouped: dict[int, list] = {}
    for f in sorted(book.iterdir()):
        parts = f.stem.split("_")
        if not f.is_file() or f.suffix.lower() not in _REFERENCE_SUFFIXES or len(parts) != 2:
            continue
        try:
            page, panel = int(parts[0]), int(parts[1])
        except ValueError:
            continue
        grouped.setdefault(page, []).append((panel, f))
    return {p: [f for _, f in sorted(items)] for p, items in sorted(grouped.items())}


def _reference_windows(root: Path, n: int, seed: int) -> list[Strip]:
    """The reference's COMICS sampler (its data.py, sample_raw_panel_paths), drawn n times from one RandomState:
    a random book (names in string order), a random interior page with >= 6 panels (any such page where the
    interior has none), a random start within that page; up to 200 tries per strip."""
    import numpy as np

    books = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not books:
        raise FileNotFoundError(f"no book folders under {root}; expected root/<book>/<page>_<panel>.jpg")
    rng = np.random.RandomState(seed)
    strips = []
    for _ in range(n):
        for _try in range(200):
            book = books[int(rng.randint(len(books)))]
            pages = _pages(root / book)
            order = sorted(pages)
            interior = order[5:-5] if len(order) > 10 else order
            eligible = [p for p in interior if len(pages[p]) >= N_PANELS]
            if not eligible:
                eligible = [p for p, fs in pages.items() if len(fs) >= N_PANELS]
            if not eligible:
                continue
            page = int(eligible[int(rng.randint(len(eligible)))])
            files = pages[page]
            extra = len(files) - N_PANELS
            start = int(rng.randint(extra + 1)) if extra > 0 else 0
            chosen = files[start:start + N_PANELS]
            s = Strip.from_panels([_open(f) for f in chosen], style="reference")
            s.id = f"{book}_page{page}_start{start}"  # the reference's strip name
            strips.append(s)
            break
        else:
            raise RuntimeError(f"could not sample a {N_PANELS}-panel window within one page from {root} "
                               "in 200 tries: no book has a page with 6 panels")
    return strips
