"""Interactive widgets for the tutorials: pick a head, a target panel, K, a schedule or a box, and see the result.

Every widget is a small class with a `.widget` (an ipywidgets box: display it, or just leave the object as a cell's
last expression) and plain methods and attributes, so the same object can be driven from code (tests, scripts) and
by hand. What a widget shows is kept on the object: `.text` (the visible text), `.figure` (the matplotlib Figure
drawn last) and `.png` (the exact PNG bytes put on screen).

- `HeadPicker(scores)`                 any head's 6x6 matrix (queried x attended panel) and its gaze score.
- `TargetPicker(vlm, strip, scores)`   steer toward a panel and read the answer; K slider; top / random / all heads.
- `ScheduleBuilder(vlm, strip, heads)` a target per narration segment; the trajectory heatmap follows it.
- `BoxSelector(vlm, scene, heads)`     steer toward a named box, or drag a custom one, on any image.

Only core ipywidgets are used (no custom front-end code), so they render in JupyterLab, classic Notebook, VS Code,
Voilà and Colab (there after `google.colab.output.enable_custom_widget_manager()`, which the tutorials' setup cell
runs). Figures are drawn without pyplot (no stray inline figures, no global figure registry growing with every
redraw) and sent as PNG into an `Output` widget's outputs directly, which works without a running kernel too.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = ["HeadPicker", "TargetPicker", "ScheduleBuilder", "BoxSelector", "figure_png"]

TARGET_COLOUR = "#d62728"
DPI = 80


# --------------------------------------------------------------------------------------------------- helpers
def _widgets():
    try:
        import ipywidgets
    except ImportError as e:  # pragma: no cover - ipywidgets is a dependency
        raise ImportError("gazekit.widgets needs ipywidgets: pip install 'ipywidgets>=8'") from e
    return ipywidgets


def _figure(figsize):
    """A matplotlib Figure that is not registered with pyplot (so notebooks do not show it a second time)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=DPI)


def figure_png(fig) -> bytes:
    """PNG bytes of a figure, without the Software metadata (the same figure gives the same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _show_png(out, png: bytes, alt: str) -> None:
    out.outputs = ({"output_type": "display_data",
                    "data": {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": alt},
                    "metadata": {}},)


def _strip_axes(ax, scene, highlight=None, box=None, title=None):
    """Draw the image with its region boxes; outline region `highlight` (0-based) or a pixel `box` in red."""
    from matplotlib.patches import Rectangle

    ax.imshow(np.asarray(scene.image))
    for i, (x0, y0, x1, y1) in enumerate(scene.region_boxes):
        sel = highlight is not None and i == highlight
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=4 if sel else 0.8,
                               ec=TARGET_COLOUR if sel else "0.4", ls="-" if sel else ":"))
        ax.text((x0 + x1) / 2, y0 + 4, scene.names[i], ha="center", va="top", fontsize=9,
                color="white", bbox=dict(boxstyle="round,pad=0.15", fc=TARGET_COLOUR if sel else "0.3", lw=0))
    if box is not None:
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=4, ec=TARGET_COLOUR))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)


def _region_options(scene):
    from gazekit.regions import Strip

    if isinstance(scene, Strip):
        return [(f"panel {i + 1}", i + 1) for i in range(len(scene))]
    return [(n, n) for n in scene.names]


class _Widget:
    """Shared plumbing: the displayed box, the visible text, the last figure and its PNG, error reporting."""

    widget = None
    name = "widget"

    def __init__(self):
        w = _widgets()
        self.figure = None
        self.png: Optional[bytes] = None
        self.last_error: Optional[BaseException] = None
        self._info = w.HTML(value="")
        self._info.add_class("gazekit-text")
        self._out = w.Output()
        self._out.add_class("gazekit-figure")
        self._busy = False

    @property
    def text(self) -> str:
        """The visible text (HTML tags removed)."""
        import re

        return html.unescape(re.sub(r"<[^>]+>", "", self._info.value.replace("<br>", "\n")))

    def _set_text(self, lines: Sequence[str]):
        self._info.value = "<br>".join(lines)

    def _draw(self, fig, alt):
        self.figure = fig
        self.png = figure_png(fig)
        _show_png(self._out, self.png, alt)

    def _on_change(self, _change=None):
        """Observer callback: a failure is shown in the widget instead of vanishing into the kernel log."""
        if self._busy:
            return
        try:
            self.last_error = None
            self.refresh()
        except Exception as e:  # noqa: BLE001 — shown to the user, kept for inspection
            self.last_error = e
            self._info.value = (f"<span style='color:{TARGET_COLOUR}'>error: "
                                f"{html.escape(type(e).__name__)}: {html.escape(str(e))}</span>")

    def refresh(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs):
        # the widget view for front ends, and a short, stable plain-text form (what nbval compares)
        bundle = self.widget._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        data = dict(data)
        data["text/plain"] = repr(self)
        return data

    def _ipython_display_(self):  # older IPython front ends
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)


# ------------------------------------------------------------------------------------------------ HeadPicker
class HeadPicker(_Widget):
    """Show any head's 6x6 matrix (queried panel x attended panel) from `gazekit.discover`.

    >>> picker = HeadPicker(scores); picker            # sliders for layer and head, a menu of the top heads
    >>> picker.select(1, 3); picker.text, picker.matrix

    `.head` is the shown `Head`, `.matrix` its 6x6 matrix, `.score` its gaze score, `.rank` (1 = best)."""

    name = "HeadPicker"

    def __init__(self, scores, head=None, top: int = 20):
        super().__init__()
        w = _widgets()
        if scores.matrix is None:
            raise ValueError("HeadPicker needs the 6x6 matrices: use scores from gazekit.discover(...) or a ranking "
                             "saved with GazeScores.save (its .gazekit.npz sidecar holds them)")
        self.scores = scores
        self._ranking = scores.ranking()
        self._rank_of = {h: i + 1 for i, h in enumerate(self._ranking)}
        L, H = scores.n_layers, scores.n_heads
        head = tuple(head) if head is not None else tuple(self._ranking[0])
        self.layer_slider = w.IntSlider(value=head[0], min=0, max=L - 1, description="layer",
                                        continuous_update=False)
        self.head_slider = w.IntSlider(value=head[1], min=0, max=H - 1, description="head",
                                       continuous_update=False)
        top = max(1, min(top, L * H))
        self.top_menu = w.Dropdown(options=[("(choose)", None)] + [
            (f"#{i + 1}  {h}  ({scores.scores[h]:.2f})", h) for i, h in enumerate(self._ranking[:top])],
            value=None, description="top heads")
        self.layer_slider.observe(self._on_change, "value")
        self.head_slider.observe(self._on_change, "value")
        self.top_menu.observe(self._on_menu, "value")
        self.widget = w.VBox([w.HBox([self.layer_slider, self.head_slider]), self.top_menu, self._info, self._out])
        self.refresh()

    def _on_menu(self, change):
        if change["new"] is not None:
            self.select(*change["new"])

    def select(self, layer: int, head: int):
        """Show head (layer, head), both 0-based."""
        L, H = self.scores.n_layers, self.scores.n_heads
        if not (0 <= layer < L and 0 <= head < H):
            raise ValueError(f"head ({layer}, {head}) out of range: layers 0..{L - 1}, heads 0..{H - 1} (0-based)")
        self._busy = True
        try:
            self.layer_slider.value, self.head_slider.value = int(layer), int(head)
        finally:
            self._busy = False
        self.refresh()
        return self

    @property
    def head(self):
        """The selected head as a `Head(layer, head)`, from the two sliders."""
        from gazekit.steer import Head

        return Head(int(self.layer_slider.value), int(self.head_slider.value))

    @property
    def matrix(self) -> np.ndarray:
        """The selected head's 6x6 matrix: attention on each panel (columns) per asked panel (rows)."""
        return self.scores.matrix[self.head]

    @property
    def score(self) -> float:
        """The selected head's gaze score (mean of its matrix's diagonal, raw attention mass)."""
        return float(self.scores.scores[self.head])

    @property
    def rank(self) -> int:
        """The selected head's 1-based rank in the gaze-score ranking (1 = highest score)."""
        return self._rank_of[self.head]

    def refresh(self):
        """Redraw the matrix and the score line for the selected head."""
        from gazekit.plots import plot_head_matrix

        h = self.head
        total = self.scores.scores.size
        m = self.matrix
        off = (m.sum() - np.trace(m)) / max(m.size - m.shape[0], 1)
        self._set_text([f"<b>{h}</b>: gaze score {self.score:.2f} (mean of the diagonal), rank {self.rank} of "
                        f"{total}; mean off-diagonal {off:.2f}"])
        fig = _figure((3.8, 3.3))
        plot_head_matrix(self.scores, h, ax=fig.add_subplot(1, 1, 1))
        fig.tight_layout()
        self._draw(fig, f"6x6 matrix of {h}")

    def __repr__(self):
        return f"HeadPicker({self.head}, score={self.score:.2f}, rank={self.rank}/{self.scores.scores.size})"


# ---------------------------------------------------------------------------------------------- TargetPicker
class TargetPicker(_Widget):
    """Steer the model toward a panel (or a Scene's region) and read its answer, live.

    >>> tp = TargetPicker(vlm, strip, scores)            # target menu, K slider, top / random / all heads
    >>> tp.set(target=3, k=8); tp.answer, tp.verdict

    Controls: target ("no steering" or a panel), K (number of heads; with `scores`), and which heads: the top-K
    gaze heads, K random heads from those scoring at or below the median (`scores.controls`, size-matched), or all
    heads.
    With `heads=` instead of `scores`, those heads are steered and the K and head-set controls are hidden.
    Shows the answer, which panel it describes (the caption judge, when the strip has captions), and a figure:
    the image with the target outlined, and the steered heads' mean attention over the regions for the last
    prompt token, steered (bars) and unsteered (outline)."""

    name = "TargetPicker"
    CONDITIONS = ("top", "random", "all")

    def __init__(self, vlm, strip, scores=None, *, heads=None, k: Optional[int] = None, target=None,
                 condition: str = "top", question: Optional[str] = None, max_new_tokens: int = 15,
                 mode: str = "boost_suppress", strength: float = 1e4, judge="auto", seed: int = 0):
        super().__init__()
        w = _widgets()
        from gazekit.regions import VQA_QUESTION

        if scores is None and heads is None:
            raise ValueError("give gaze scores (scores=gazekit.discover(vlm, strips)) or heads=[(layer, head), ...]")
        if condition not in self.CONDITIONS:
            raise ValueError(f"condition must be one of {self.CONDITIONS}, got {condition!r}")
        self.vlm, self.strip, self.scores = vlm, strip, scores
        self.fixed_heads = None if heads is None else [tuple(h) for h in heads]
        self.question = question or VQA_QUESTION
        self.max_new_tokens, self.mode, self.strength, self.seed = max_new_tokens, mode, strength, seed
        self.judge = self._make_judge(judge)
        self._cache: dict = {}
        total = vlm.n_layers * vlm.n_heads
        if k is None:
            from gazekit.evaluate import default_k

            k = default_k(vlm, scores)
        kmax = max(1, total // 2)
        self.target_menu = w.Dropdown(options=[("no steering", 0)] + _region_options(strip),
                                      value=0 if target is None else target, description="target")
        self.k_slider = w.IntSlider(value=min(int(k), kmax), min=1, max=kmax, description="K heads",
                                    continuous_update=False)
        self.condition_menu = w.Dropdown(options=[("top-K gaze heads", "top"),
                                                  ("K random heads (score ≤ median)", "random"),
                                                  ("all heads", "all")], value=condition, description="heads")
        for c in (self.target_menu, self.k_slider, self.condition_menu):
            c.observe(self._on_change, "value")
        controls = [self.target_menu]
        if self.fixed_heads is None:
            controls += [self.k_slider, self.condition_menu]
        self._question = w.HTML(value=f"<i>{html.escape(self.question)}</i>")
        self.widget = w.VBox([w.HBox(controls), self._question, self._info, self._out])
        self.answer = ""
        self.unsteered_answer = ""
        self.verdict = None
        self.refresh()

    @staticmethod
    def _make_judge(judge):
        if judge == "auto":
            from gazekit.judges import CaptionJudge

            return CaptionJudge()
        return judge

    # -- state ------------------------------------------------------------------------------------------------
    @property
    def target(self):
        """The region steered toward (1-based panel or box name), or None for "no steering"."""
        v = self.target_menu.value
        return None if v == 0 else v

    @property
    def k(self) -> int:
        """How many heads are steered (the K slider; unused when the heads are fixed or "all")."""
        return int(self.k_slider.value)

    @property
    def condition(self) -> str:
        """Which heads are steered: "top", "random" or "all" from the menu, or "fixed" when heads were given."""
        return "fixed" if self.fixed_heads is not None else self.condition_menu.value

    @property
    def heads(self):
        """The heads steered now: a list of (layer, head), or "all"."""
        if self.fixed_heads is not None:
            return list(self.fixed_heads)
        if self.condition == "all":
            return "all"
        if self.condition == "random":
            return list(self.scores.controls(self.k, seed=self.seed))
        return list(self.scores.top(self.k))

    def set(self, target=..., k: Optional[int] = None, condition: Optional[str] = None):
        """Change any control from code (target None = no steering) and redraw once."""
        self._busy = True
        try:
            if target is not ...:
                self.target_menu.value = 0 if target is None else target
            if k is not None:
                self.k_slider.value = int(k)
            if condition is not None:
                if condition not in self.CONDITIONS:
                    raise ValueError(f"condition must be one of {self.CONDITIONS}, got {condition!r}")
                self.condition_menu.value = condition
        finally:
            self._busy = False
        self.refresh()
        return self

    # -- work -------------------------------------------------------------------------------------------------
    def _run(self, target, heads):
        """(answer, steered heads' mean attention per region at the last prompt token) — cached per setting."""
        import gazekit

        key = (target, "all" if isinstance(heads, str) else tuple(map(tuple, heads)))
        if key not in self._cache:
            track_heads = [(l, h) for l in range(self.vlm.n_layers) for h in range(self.vlm.n_heads)] \
                if isinstance(heads, str) else heads
            li = [h[0] for h in track_heads]
            hi = [h[1] for h in track_heads]
            if target is None:
                answer = self.vlm.ask(self.strip, self.question, max_new_tokens=self.max_new_tokens)
                att = gazekit.capture(self.vlm, self.strip, self.question)
            else:
                with gazekit.steer(self.vlm, heads, target, mode=self.mode, strength=self.strength):
                    answer = self.vlm.ask(self.strip, self.question, max_new_tokens=self.max_new_tokens)
                    att = gazekit.capture(self.vlm, self.strip, self.question)
            self._cache[key] = (answer, att[li, hi].mean(axis=0))
        return self._cache[key]

    def refresh(self):
        """Answer steered and unsteered (cached per target and heads), judge them and redraw the attention bars."""
        heads = self.heads
        self.answer, self.attention = self._run(self.target, heads)
        self.unsteered_answer, self.unsteered_attention = self._run(None, heads)
        captions = getattr(self.strip, "captions", None)
        self.verdict = self.judge(self.answer, self.strip) if (self.judge is not None and captions) else None
        n = "all" if isinstance(heads, str) else len(heads)
        what = {"top": f"top-{n} gaze heads", "random": f"{n} random heads", "all": "all heads",
                "fixed": f"{n} heads"}[self.condition]
        lines = [f"<b>answer:</b> <span class='gazekit-answer'>{html.escape(self.answer)}</span>",
                 "steering: " + ("none" if self.target is None else f"{what} toward {self._name(self.target)}")]
        if self.verdict is not None:
            if self.verdict.junk or self.verdict.failed:
                lines.append("judge: describes no single panel")
            else:
                mark = "" if self.target is None else (" — the target" if self.verdict.panel == self.target
                                                       else " — not the target")
                lines.append(f"judge: describes panel {self.verdict.panel}{mark}")
        self._set_text(lines)
        self._draw(self._plot(what), f"target {self.target}")

    def _name(self, target):
        return f"panel {target}" if isinstance(target, int) else repr(target)

    def _plot(self, what):
        scene = self.strip
        idx = None if self.target is None else scene.region_index(self.target)
        W, H = scene.image.size
        fig = _figure((min(11.0, 2.0 + 8.0 * W / max(W, 3 * H)), 3.6))
        gs = fig.add_gridspec(2, 1, height_ratios=[1.6, 1])
        _strip_axes(fig.add_subplot(gs[0]), scene, highlight=idx)
        ax = fig.add_subplot(gs[1])
        R = len(scene)
        x = np.arange(R)
        colours = ["0.6"] * R
        if idx is not None:
            colours[idx] = TARGET_COLOUR
        ax.bar(x, self.attention, color=colours, width=0.6)
        if idx is not None:
            from matplotlib.patches import Patch

            ax.bar(x, self.unsteered_attention, fill=False, ec="black", width=0.6, lw=1)
            ax.legend(handles=[Patch(fc=TARGET_COLOUR, label="steered"),
                               Patch(fill=False, ec="black", label="unsteered")],
                      frameon=False, fontsize=7, loc="upper right")
        ax.set_xticks(x, scene.names)
        ax.set_ylim(0, 1)
        ax.set_ylabel("attention", fontsize=8)
        ax.set_title(f"{what}: mean attention on each region (last prompt token)", fontsize=8)
        fig.tight_layout()
        return fig

    def __repr__(self):
        return f"TargetPicker(target={self.target}, heads={self.condition}, K={self.k}, answer={self.answer!r})"


# ------------------------------------------------------------------------------------------- ScheduleBuilder
class ScheduleBuilder(_Widget):
    """Build a mid-generation switching schedule, run it, and watch the heads follow it.

    >>> sb = ScheduleBuilder(vlm, strip, scores.top(8), order=[3, 1, 5], every=4)
    >>> sb.run(); sb.answer, sb.trajectory.argmax_region()

    One menu per segment chooses its target panel ("off" ends the schedule), `every` is the number of decode steps
    per segment (0 = switch after each sentence the model completes). `.schedule` is what `gazekit.steer` gets: a
    {decode_step: panel} dict, or a callable for sentence mode. The heatmap shows, at each generated token, the
    steered heads' mean attention over the panels; the red line is the scheduled target."""

    name = "ScheduleBuilder"

    def __init__(self, vlm, strip, heads, *, order: Optional[Sequence[int]] = None, every: int = 4,
                 prompt: Optional[str] = None, max_new_tokens: Optional[int] = None, n_segments: Optional[int] = None,
                 mode: str = "boost_suppress", strength: float = 1e4, auto_run: bool = True):
        super().__init__()
        w = _widgets()
        from gazekit.regions import PANEL_BY_PANEL_PROMPT

        self.vlm, self.strip = vlm, strip
        self.heads = [tuple(h) for h in heads] if not isinstance(heads, str) else heads
        self.prompt = prompt or PANEL_BY_PANEL_PROMPT
        self.mode, self.strength = mode, strength
        R = len(strip)
        n_segments = n_segments or R
        order = list(order) if order is not None else list(range(1, R + 1))
        if len(order) > n_segments:
            raise ValueError(f"order has {len(order)} segments but the builder has {n_segments}")
        opts = [("off", 0)] + _region_options(strip)
        valid = {v for _, v in opts}
        for t in order:
            if t not in valid:
                raise ValueError(f"segment target {t!r} is not one of {sorted(valid - {0}, key=str)}")
        self.segment_menus = [w.Dropdown(options=opts, value=order[i] if i < len(order) else 0,
                                         description=f"seg {i + 1}", layout=w.Layout(width="150px"),
                                         style={"description_width": "40px"}) for i in range(n_segments)]
        self.every_slider = w.IntSlider(value=every, min=0, max=60, description="steps/seg",
                                        continuous_update=False)
        self.max_new_tokens = max_new_tokens
        self.run_button = w.Button(description="run", button_style="primary")
        self.run_button.on_click(lambda _b: self._on_change())
        self.auto_run = auto_run
        for c in [*self.segment_menus, self.every_slider]:
            c.observe(self._on_controls, "value")
        self._preview = w.HTML()
        self.widget = w.VBox([w.HBox(self.segment_menus[:3]), w.HBox(self.segment_menus[3:]),
                              w.HBox([self.every_slider, self.run_button]), self._preview, self._info, self._out])
        self.trajectory = None
        self.answer = ""
        self._update_preview()
        if auto_run:
            self.run()

    def _on_controls(self, _change=None):
        self._update_preview()
        if self.auto_run and not self._busy:
            self._on_change()

    # -- state ------------------------------------------------------------------------------------------------
    @property
    def order(self) -> list:
        """The scheduled targets (1-based panels or box names), in segment order, up to the first menu set to "off"."""
        out = []
        for m in self.segment_menus:
            if m.value == 0:
                break
            out.append(m.value)
        return out

    @property
    def every(self) -> int:
        """Generated tokens per segment; 0 means switch at each full stop (one segment per sentence)."""
        return int(self.every_slider.value)

    @property
    def schedule(self):
        """What `gazekit.steer` gets: {decode_step: target} (every > 0) or a sentence-counting callable."""
        order = self.order
        if not order:
            return None
        from gazekit.evaluate import Schedule

        sched = Schedule(order, self.every)
        # steps mode as a plain dict (steer needs no decoding then); it ends with None: no steering after the last
        return sched.steps() if self.every > 0 else sched

    def set(self, order: Optional[Sequence] = None, every: Optional[int] = None, run: bool = True):
        """Set the segments' targets (a list of panels; the rest are switched off) and/or steps per segment."""
        self._busy = True
        try:
            if order is not None:
                order = list(order)
                if len(order) > len(self.segment_menus):
                    raise ValueError(f"at most {len(self.segment_menus)} segments, got {len(order)}")
                for i, m in enumerate(self.segment_menus):
                    m.value = order[i] if i < len(order) else 0
            if every is not None:
                self.every_slider.value = int(every)
        finally:
            self._busy = False
        self._update_preview()
        if run:
            self.run()
        return self

    def _update_preview(self):
        order, every = self.order, self.every
        if not order:
            self._preview.value = "schedule: no steering"
        elif every > 0:
            parts = [f"steps {i * every}–{(i + 1) * every - 1} → {self._label(t)}" for i, t in enumerate(order)]
            self._preview.value = "schedule: " + ", ".join(parts)
        else:
            self._preview.value = "schedule: sentence by sentence → " + ", ".join(self._label(t) for t in order)

    def _label(self, t):
        return f"panel {t}" if isinstance(t, int) else str(t)

    def scheduled_targets(self) -> list:
        """The scheduled target of every generated token of the last run (None where not steered)."""
        if self.trajectory is None:
            return []
        from gazekit.evaluate import Schedule

        sched = Schedule(self.order, self.every)
        out = []
        text = ""
        for i, tok in enumerate(self.trajectory.tokens):
            out.append(sched.target_at(i, text))
            text += tok
        return out

    # -- work -------------------------------------------------------------------------------------------------
    def run(self):
        """Generate with the current schedule (same as `refresh`); returns the builder, so it displays in a cell."""
        self.refresh()
        return self

    def refresh(self):
        """Generate steered along the schedule and unsteered, and redraw the per-segment panel attention."""
        import gazekit

        order = self.order
        n = self.max_new_tokens or (len(order) * self.every if (order and self.every > 0) else 40)
        n = max(n, 1)
        sched = self.schedule
        track_heads = self.heads
        if sched is None:
            self.trajectory = gazekit.track(self.vlm, self.strip, self.prompt, track_heads, max_new_tokens=n)
        else:
            with gazekit.steer(self.vlm, self.heads, sched, mode=self.mode, strength=self.strength):
                self.trajectory = gazekit.track(self.vlm, self.strip, self.prompt, track_heads, max_new_tokens=n)
        self.answer = self.trajectory.text
        tr = self.trajectory
        follow = ""
        targets = self.scheduled_targets()
        if targets and tr.tokens:
            idx = [self.strip.region_index(t) if t is not None else None for t in targets]
            am = tr.argmax_region()
            pairs = [(a, b) for a, b in zip(am, idx) if b is not None]
            if pairs:
                agree = np.mean([a == b for a, b in pairs])
                follow = f"the heads look at the scheduled panel on {100 * agree:.0f}% of steered tokens"
        self._set_text([f"<b>answer:</b> <span class='gazekit-answer'>{html.escape(self.answer)}</span>"]
                       + ([follow] if follow else []))
        self._draw(self._plot(targets), "trajectory")

    def _plot(self, targets):
        from gazekit.plots import plot_trajectory

        tr = self.trajectory
        fig = _figure((max(5.0, 0.3 * len(tr.tokens) + 2.5), 3.0))
        ax = fig.add_subplot(1, 1, 1)
        if not tr.tokens:
            ax.text(0.5, 0.5, "no tokens generated", ha="center", va="center")
            return fig
        ys = [self.strip.region_index(t) if t is not None else np.nan for t in targets]
        scheduled = any(y == y for y in ys)
        plot_trajectory(tr, ax=ax, title=f"attention of {len(tr.heads)} steered heads while generating"
                        + (" (red: scheduled panel)" if scheduled else ""))
        if scheduled:
            ax.step(np.arange(len(ys)), ys, where="mid", color=TARGET_COLOUR, lw=2, alpha=0.8)
        return fig

    def __repr__(self):
        return f"ScheduleBuilder(order={self.order}, every={self.every}, answer={self.answer!r})"


# ----------------------------------------------------------------------------------------------- BoxSelector
class BoxSelector(_Widget):
    """Steer toward a box on any image: one of the Scene's named boxes, or your own (x and y range sliders).

    >>> bs = BoxSelector(vlm, scene, heads)          # scene = gazekit.Scene(image, {"dog": (x0, y0, x1, y1), ...})
    >>> bs.select("dog"); bs.answer
    >>> bs.set_box((0, 0, 128, 96)); bs.answer

    Shows the image with the box, the unsteered answer and the steered answer. A box takes the image tokens whose
    cell centres lie inside it (see `Prepared.positions_for_box`), so very small boxes may cover none."""

    name = "BoxSelector"
    CUSTOM = "(custom box)"

    def __init__(self, vlm, scene, heads, *, prompt: Optional[str] = None, max_new_tokens: int = 20,
                 mode: str = "boost_suppress", strength: float = 1e4, box=None):
        super().__init__()
        w = _widgets()
        from gazekit.evaluate.protocols import BOX_PROMPT

        self.vlm, self.scene = vlm, scene
        self.heads = [tuple(h) for h in heads] if not isinstance(heads, str) else heads
        self.prompt = prompt or BOX_PROMPT
        self.max_new_tokens, self.mode, self.strength = max_new_tokens, mode, strength
        W, H = scene.image.size
        self.box_menu = w.Dropdown(options=list(scene.names) + [self.CUSTOM], value=scene.names[0],
                                   description="box")
        x0, y0, x1, y1 = scene.region_boxes[0]
        self.x_range = w.IntRangeSlider(value=(int(x0), int(x1)), min=0, max=W, description="x",
                                        continuous_update=False)
        self.y_range = w.IntRangeSlider(value=(int(y0), int(y1)), min=0, max=H, description="y",
                                        continuous_update=False)
        self.box_menu.observe(self._on_menu, "value")
        self.x_range.observe(self._on_slider, "value")
        self.y_range.observe(self._on_slider, "value")
        self.widget = w.VBox([w.HBox([self.box_menu]), w.HBox([self.x_range, self.y_range]), self._info, self._out])
        self._cache: dict = {}
        self.answer = ""
        self.unsteered_answer = self.vlm.ask(self.scene, self.prompt, max_new_tokens=self.max_new_tokens)
        if box is not None:
            self.set_box(box)
        else:
            self.refresh()

    @property
    def target(self):
        """What is steered toward: a box name, or an (x0, y0, x1, y1) tuple for a custom box."""
        if self.box_menu.value != self.CUSTOM:
            return self.box_menu.value
        return self.box

    @property
    def box(self) -> tuple:
        """The box shown, in image pixels (x0, y0, x1, y1)."""
        if self.box_menu.value != self.CUSTOM:
            return tuple(self.scene.region_boxes[self.scene.names.index(self.box_menu.value)])
        (x0, x1), (y0, y1) = self.x_range.value, self.y_range.value
        return (float(x0), float(y0), float(x1), float(y1))

    def select(self, name: str):
        """Steer toward the Scene's box called `name`."""
        if name not in self.scene.names:
            raise ValueError(f"no box named {name!r}; this scene has {self.scene.names}")
        self._busy = True
        try:
            self.box_menu.value = name
            x0, y0, x1, y1 = self.scene.region_boxes[self.scene.names.index(name)]
            self.x_range.value, self.y_range.value = (int(x0), int(x1)), (int(y0), int(y1))
        finally:
            self._busy = False
        self.refresh()
        return self

    def set_box(self, box):
        """Steer toward a custom box (x0, y0, x1, y1) in image pixels."""
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        W, H = self.scene.image.size
        if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
            raise ValueError(f"box {tuple(box)} must lie inside the {W}x{H} image with x0 < x1 and y0 < y1")
        self._busy = True
        try:
            self.box_menu.value = self.CUSTOM
            self.x_range.value, self.y_range.value = (x0, x1), (y0, y1)
        finally:
            self._busy = False
        self.refresh()
        return self

    def _on_menu(self, change):
        if change["new"] == self.CUSTOM or self._busy:
            return
        # move the sliders onto the named box without triggering their own redraw, then redraw once
        self._busy = True
        try:
            x0, y0, x1, y1 = self.scene.region_boxes[self.scene.names.index(change["new"])]
            self.x_range.value, self.y_range.value = (int(x0), int(x1)), (int(y0), int(y1))
        finally:
            self._busy = False
        self._on_change()

    def _on_slider(self, _change):
        if self._busy:
            return
        self._busy = True
        try:
            self.box_menu.value = self.CUSTOM
        finally:
            self._busy = False
        self._on_change()

    def refresh(self):
        """Answer steered toward the selected box (cached per box) and redraw the image with the box outlined."""
        import gazekit

        target = self.target
        key = target if isinstance(target, str) else tuple(target)
        if key not in self._cache:
            with gazekit.steer(self.vlm, self.heads, target, mode=self.mode, strength=self.strength):
                self._cache[key] = self.vlm.ask(self.scene, self.prompt, max_new_tokens=self.max_new_tokens)
        self.answer = self._cache[key]
        label = target if isinstance(target, str) else "custom box " + str(tuple(int(v) for v in target))
        self._set_text([f"<b>steered toward {html.escape(label)}:</b> "
                        f"<span class='gazekit-answer'>{html.escape(self.answer)}</span>",
                        f"unsteered: {html.escape(self.unsteered_answer)}"])
        fig = _figure((5.5, 5.5 * self.scene.image.size[1] / self.scene.image.size[0] + 0.4))
        ax = fig.add_subplot(1, 1, 1)
        named = isinstance(target, str)
        _strip_axes(ax, self.scene, highlight=self.scene.names.index(target) if named else None,
                    box=None if named else self.box)
        fig.tight_layout()
        self._draw(fig, f"box {label}")

    def __repr__(self):
        t = self.target
        return f"BoxSelector(target={t if isinstance(t, str) else tuple(int(v) for v in t)!r}, answer={self.answer!r})"
