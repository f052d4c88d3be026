"""Synthetic six-panel comic strips: deterministic, PIL-drawn, with a caption per panel.

This is the data the embedded model organism (`gazekit.organism`) is trained and evaluated on, and a way to try
every gazekit operation without downloading anything.

Vocabulary (each panel is "colour object action", e.g. "red ball flies"):

- colour  — the colour of the one object in the panel: red, blue, yellow, purple, orange, black.
- object  — always a filled circle; its SIZE names it: ``dot`` (small), ``ball`` (medium), ``sun`` (large).
  (Shapes were measured not to train through the full VLM in the time budget; sizes did. Sizes here are further
  apart than in the prototype, because the object word was its weakest attribute.)
- action  — the background scene names the action: sky blue = ``flies``, green = ``runs``, teal = ``swims``,
  dark grey = ``sleeps``.
- cue     — exactly one panel per strip has a thick white frame, the "main event" (all others a thin black frame).
  The organism answers the whole-strip question with that panel's caption: its default panel comes from this
  visual cue, not from position.

Captions within a strip are distinct, so a caption identifies its panel. A panel is recognisable only by looking
at it: nothing about position or order determines its caption.

Panels are drawn at 256 x 256 px (the strip height, so `Strip.from_panels` does not resample them) with every
length a multiple of 8 px, i.e. on the 32 x 32 grid of the organism's tiles scaled by 8. The organism's processor
area-averages (PIL BOX filter) each panel to 32 x 32, so edges become exact partial-coverage greys and the three
object sizes stay clearly apart after downsampling (see `tests/organism/test_synthetic.py`).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from gazekit.regions import N_PANELS, STRIP_HEIGHT, Strip

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "blue": (30, 60, 230), "yellow": (245, 220, 20),
    "purple": (150, 40, 190), "orange": (250, 140, 0), "black": (15, 15, 15),
}
# radius in tile pixels (a tile is 32 px): areas ~28 : ~154 : ~452 tile px, i.e. ratios of ~5.5x and ~3x
OBJECTS: dict[str, float] = {"dot": 3.0, "ball": 7.0, "sun": 12.0}
ACTIONS: dict[str, tuple[int, int, int]] = {
    "flies": (150, 200, 255), "runs": (120, 210, 110), "swims": (40, 150, 170), "sleeps": (70, 70, 90),
}
TILE = 32                     # the organism's tile size (px)
SCALE = STRIP_HEIGHT // TILE  # 8: panels are drawn at 8x the tile grid
PANEL_PX = TILE * SCALE       # 256
JITTER = 3                    # object centre moves up to +-3 tile px from the panel centre
CUE_WIDTH = 3                 # white "main event" frame, tile px
FRAME_WIDTH = 1               # ordinary black frame, tile px

Attrs = tuple[str, str, str]  # (colour, object, action)


def caption_of(attrs: Attrs) -> str:
    """'colour object action', e.g. 'red ball flies'."""
    return " ".join(attrs)


def draw_panel(colour: str, obj: str, action: str, cue: bool = False, dx: int = 0, dy: int = 0) -> Image.Image:
    """One 256 x 256 panel. `dx`, `dy` (tile px, |.| <= JITTER) move the object off centre."""
    if colour not in COLOURS or obj not in OBJECTS or action not in ACTIONS:
        raise ValueError(f"unknown attribute in {(colour, obj, action)}; colours {list(COLOURS)}, "
                         f"objects {list(OBJECTS)}, actions {list(ACTIONS)}")
    if abs(dx) > JITTER or abs(dy) > JITTER:
        raise ValueError(f"dx, dy must lie in [-{JITTER}, {JITTER}], got {dx}, {dy}")
    im = Image.new("RGB", (PANEL_PX, PANEL_PX), ACTIONS[action])
    d = ImageDraw.Draw(im)
    cx, cy = (TILE / 2 + dx) * SCALE, (TILE / 2 + dy) * SCALE
    r = OBJECTS[obj] * SCALE
    d.ellipse([cx - r, cy - r, cx + r - 1, cy + r - 1], fill=COLOURS[colour])
    # frame drawn last, on top of the object, so the cue is never hidden by a large sun
    w = (CUE_WIDTH if cue else FRAME_WIDTH) * SCALE
    d.rectangle([0, 0, PANEL_PX - 1, PANEL_PX - 1], outline=(255, 255, 255) if cue else (0, 0, 0), width=w)
    return im


def panel_tile(img: Image.Image) -> np.ndarray:
    """The organism's view of one panel: area-averaged to TILE x TILE, uint8 [TILE, TILE, 3].

    The organism processor uses exactly this resize; the training recipe uses it through `cached_tile`."""
    return np.asarray(img.convert("RGB").resize((TILE, TILE), Image.BOX))


@lru_cache(maxsize=None)
def cached_tile(colour: str, obj: str, action: str, cue: bool, dx: int, dy: int) -> np.ndarray:
    """`panel_tile(draw_panel(...))`, memoised (there are only 6*3*4*2*7*7 = 7,056 distinct panels), so training
    draws through the same code path as `synthetic` without paying for PIL at 256 px on every step."""
    t = panel_tile(draw_panel(colour, obj, action, cue, dx, dy))
    t.setflags(write=False)
    return t


def sample_strip_attrs(rng: np.random.Generator):
    """Attributes of one strip: six distinct (colour, object, action) triples, the cued panel (0-based) and the
    object offsets. Shared by `synthetic` and the training recipe so both sample the same distribution."""
    cols, objs, acts = list(COLOURS), list(OBJECTS), list(ACTIONS)
    seen, attrs = set(), []
    while len(attrs) < N_PANELS:
        a = (cols[rng.integers(len(cols))], objs[rng.integers(len(objs))], acts[rng.integers(len(acts))])
        if a in seen:
            continue
        seen.add(a)
        attrs.append(a)
    cue = int(rng.integers(N_PANELS))
    offsets = [tuple(int(v) for v in rng.integers(-JITTER, JITTER + 1, size=2)) for _ in range(N_PANELS)]
    return attrs, cue, offsets


def synthetic(n: int, seed: int = 0) -> list[Strip]:
    """`n` deterministic six-panel strips from `seed` (same arguments -> identical images and captions).

    Each returned `Strip` also carries:
      - ``strip.main_panel``: 1-based number of the cued "main event" panel (white frame) — the organism's
        answer to the whole-strip question;
      - ``strip.attributes``: per panel, the (colour, object, action) tuple;
      - ``strip.offsets``: per panel, the object's (dx, dy) offset in tile px.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        attrs, cue, offsets = sample_strip_attrs(rng)
        panels = [draw_panel(*a, cue=(i == cue), dx=o[0], dy=o[1]) for i, (a, o) in enumerate(zip(attrs, offsets))]
        s = Strip.from_panels(panels, [caption_of(a) for a in attrs])
        s.main_panel = cue + 1
        s.attributes = [tuple(a) for a in attrs]
        s.offsets = offsets
        out.append(s)
    return out
