"""Images with named regions: the six-panel comic `Strip` and the general `Scene`.

A region is a box in the image's own pixel coordinates. Which *tokens* belong to a region is decided later,
by the family adapter (`gazekit.models.adapters`), which knows how the processor resized or tiled the image.
Panel and region numbers that users type or read are 1-based; array axes are 0-based.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

from PIL import Image

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in image pixels, x1/y1 exclusive

STRIP_HEIGHT = 256
STRIP_GAP = 6
N_PANELS = 6
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")
REFERENCE_ORDINALS = ("1st", "2nd", "3rd", "4th", "5th", "6th")  # the reference code's ordinal() for 1..6
STYLES = ("gazekit", "reference")


def _check_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    return style


def _round32_reference(width: int) -> int:
    """The reference's round_to_multiple: Python's round (halves to even) of width / 32, at least 32."""
    return max(32, 32 * round(float(width) / 32.0))


def _round32(x: float) -> int:
    return max(32, int(round(x / 32.0)) * 32)


@dataclass
class Scene:
    """An image with boxes. `boxes` is a list of boxes (numbered 1, 2, ...) or a dict name -> box.

    >>> Scene(img, {"dog": (10, 20, 120, 200), "ball": (150, 40, 190, 80)})
    """

    image: Image.Image
    boxes: Union[Sequence[Box], dict[str, Box]]
    names: list[str] = field(init=False)

    def __post_init__(self):
        if not isinstance(self.image, Image.Image):
            raise TypeError(f"Scene needs a PIL image, got {type(self.image).__name__}; open it with PIL.Image.open")
        self.image = self.image.convert("RGB")
        if isinstance(self.boxes, dict):
            self.names = [str(k) for k in self.boxes]
            boxes = list(self.boxes.values())
        else:
            boxes = list(self.boxes)
            self.names = [str(i + 1) for i in range(len(boxes))]
        if not boxes:
            raise ValueError("Scene needs at least one box, e.g. Scene(img, [(x0, y0, x1, y1)])")
        W, H = self.image.size
        checked = []
        for name, b in zip(self.names, boxes):
            if len(b) != 4:
                raise ValueError(f"box {name!r} must be (x0, y0, x1, y1), got {b!r}")
            x0, y0, x1, y1 = (float(v) for v in b)
            if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
                raise ValueError(f"box {name!r} = {tuple(b)} lies outside the {W}x{H} image or is empty; "
                                 f"give (x0, y0, x1, y1) with 0 <= x0 < x1 <= {W} and 0 <= y0 < y1 <= {H}")
            checked.append((x0, y0, x1, y1))
        self._box_list = checked

    @property
    def region_boxes(self) -> list[Box]:
        """Boxes in region order (what `prepare(...).regions` follows)."""
        return list(self._box_list)

    @property
    def token_boxes(self) -> list[Box]:
        """Boxes used to assign image tokens to regions (same as `region_boxes` for a Scene)."""
        return self.region_boxes

    def region_index(self, target) -> int:
        """0-based index of a region given as a 1-based number or a box name."""
        if isinstance(target, str):
            if target not in self.names:
                raise ValueError(f"no region named {target!r}; use one of this scene's names {self.names} or a 1-based number")
            return self.names.index(target)
        n = len(self._box_list)
        if isinstance(target, bool) or not isinstance(target, int) or not 1 <= target <= n:
            raise ValueError(f"region {target!r} out of range: use a number 1..{n} (1-based) or a name from {self.names}")
        return target - 1

    def __len__(self):
        return len(self._box_list)


class Strip(Scene):
    """A six-panel comic strip: panels resized to a common height (256 px, width keeping the aspect ratio, both
    multiples of 32), pasted left to right on white with a 6 px gap.

    `panel_boxes` are the panels' pixel boxes; `token_boxes` split the whole width into six columns (each gap shared
    half and half), so every image token belongs to exactly one panel, as in the paper.
    """

    def __init__(self, image: Image.Image, panel_boxes: Sequence[Box], captions: Sequence[str] | None = None):
        if len(panel_boxes) != N_PANELS:
            raise ValueError(f"a Strip has {N_PANELS} panels, got {len(panel_boxes)} boxes")
        super().__init__(image, list(panel_boxes))
        if captions is not None:
            captions = [str(c) for c in captions]
            if len(captions) != N_PANELS:
                raise ValueError(f"give one caption per panel ({N_PANELS}), got {len(captions)}")
        self.captions = captions
        self.panel_boxes = self.region_boxes

    @classmethod
    def from_panels(cls, panels: Sequence[Image.Image], captions: Sequence[str] | None = None,
                    *, height: int = STRIP_HEIGHT, gap: int = STRIP_GAP, style: str = "gazekit") -> "Strip":
        """Build the paper's strip from six panel images (left to right).

        style="gazekit" (default): each panel resized (BICUBIC) to the common height, width keeping the aspect
            ratio, both rounded to a multiple of 32; panels pasted with `gap` white pixels between them, so no panel
            pixel is covered (the strip is 5 * gap px wider than the panels).
        style="reference": the reference code's strip pixel for pixel: LANCZOS, width = the aspect-kept width
            truncated to an integer, then rounded to a multiple of 32 (halves to even); strip width = the sum of
            the panel widths (a multiple of 32); then a `gap`-px white band is painted over each boundary, centred
            on it (gap // 2 px of the left panel, the rest of the right one). Panel boxes are the panels' full
            columns (the band included), which is also how the reference assigns tokens to panels."""
        _check_style(style)
        panels = list(panels)
        if len(panels) != N_PANELS:
            raise ValueError(f"a comic strip needs exactly {N_PANELS} panels, got {len(panels)}; "
                             "pass six PIL images, left to right")
        for i, p in enumerate(panels):
            if not isinstance(p, Image.Image):
                raise TypeError(f"panel {i + 1} is a {type(p).__name__}, not a PIL image")
        if style == "reference":
            return cls._from_panels_reference(panels, captions, height, gap)
        h = _round32(height)
        resized = []
        for p in panels:
            w = _round32(p.width * h / p.height)
            resized.append(p.convert("RGB").resize((w, h), Image.BICUBIC))
        W = sum(p.width for p in resized) + gap * (N_PANELS - 1)
        strip = Image.new("RGB", (W, h), (255, 255, 255))
        boxes, x = [], 0
        for p in resized:
            strip.paste(p, (x, 0))
            boxes.append((float(x), 0.0, float(x + p.width), float(h)))
            x += p.width + gap
        return cls(strip, boxes, captions)

    @classmethod
    def _from_panels_reference(cls, panels, captions, height, gap) -> "Strip":
        from PIL import ImageDraw

        h = _round32_reference(height)
        resized = []
        for p in panels:
            w = _round32_reference(int(p.width * h / max(p.height, 1)))
            resized.append(p.convert("RGB").resize((w, h), Image.LANCZOS))
        strip = Image.new("RGB", (sum(p.width for p in resized), h), (255, 255, 255))
        boxes, x = [], 0
        for p in resized:
            strip.paste(p, (x, 0))
            boxes.append((float(x), 0.0, float(x + p.width), float(h)))
            x += p.width
        if gap > 0:
            draw = ImageDraw.Draw(strip)
            for _, _, x1, _ in boxes[:-1]:
                x1 = int(x1)  # the band covers x1 - gap // 2 .. x1 + (gap - gap // 2) - 1, inclusive
                draw.rectangle([x1 - gap // 2, 0, x1 + (gap - gap // 2) - 1, h - 1], fill="white")
        out = cls(strip, boxes, captions)
        out.style = "reference"
        return out

    @property
    def token_boxes(self) -> list[Box]:
        """Boxes that assign image tokens to panels: each panel widened to the middle of the gutter on either
        side (the first and last to the image edges), so every token cell belongs to exactly one panel."""
        W, H = self.image.size
        out = []
        for i, (x0, _, x1, _) in enumerate(self.panel_boxes):
            left = 0.0 if i == 0 else (self.panel_boxes[i - 1][2] + x0) / 2
            right = float(W) if i == N_PANELS - 1 else (x1 + self.panel_boxes[i + 1][0]) / 2
            out.append((left, 0.0, right, float(H)))
        return out

    def panel(self, k: int) -> Image.Image:
        """Panel k (1-based) as its own image."""
        x0, y0, x1, y1 = self.panel_boxes[self.region_index(k)]
        return self.image.crop((int(x0), int(y0), int(x1), int(y1)))

    def _repr_png_(self):  # show the strip itself in notebooks
        import io
        buf = io.BytesIO()
        self.image.save(buf, format="PNG")
        return buf.getvalue()

    def __repr__(self):
        cap = "" if self.captions is None else f", captions={self.captions}"
        return f"Strip({self.image.width}x{self.image.height}{cap})"


def panel_question(k: int, style: str = "gazekit") -> str:
    """The paper's discovery prompt for panel k (1-based). style="gazekit" names the panel with a word ("first",
    as the paper's text does); style="reference" as the reference code does ("1st" ... "6th")."""
    _check_style(style)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= N_PANELS:
        raise ValueError(f"panel must be 1..{N_PANELS}, got {k!r}")
    ordinal = (REFERENCE_ORDINALS if style == "reference" else ORDINALS)[k - 1]
    return ("Look carefully at this six-panel comic strip. "
            f"What is happening in the {ordinal} panel from the left? Answer briefly.")


VQA_QUESTION = "What is the main action or event happening in this comic strip? Answer briefly."
NARRATION_PROMPT = "What is happening in this panel of the comic strip?"
PANEL_BY_PANEL_PROMPT = "Please describe what happens in each panel, in order."
# The reference scripts' prompts where they differ from gazekit's defaults (02_narration_trajectory.py: the
# trajectory prompt; 05_steer_dynamic_narration.py: the dynamic narration prompt).
REFERENCE_TRAJECTORY_PROMPT = ("Please describe what happens in each panel, in order. "
                               "Start each panel description with 'Panel 1:', 'Panel 2:', and so on.")
REFERENCE_DYNAMIC_PROMPT = ("Please describe each panel of this comic strip in order as I point you to them. "
                            "Keep each description SHORT \u2014 one brief sentence per panel, naming the action and "
                            "the salient objects. Do not summarise the whole strip first; just describe panel by "
                            "panel.")
