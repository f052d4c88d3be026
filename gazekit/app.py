"""The local steering app: ``python -m gazekit app`` — the offline counterpart of the paper's web demo.

A Voilà page on 127.0.0.1 (no code shown, nothing leaves the machine): choose a synthetic strip (by seed) or upload
six panel images, click a panel to steer the model toward it, pick K and the head condition (the top-K gaze heads,
K random control heads, or no steering), and read the answer, the judge's verdict (the caption judge, for strips
with captions) and the steered heads' attention over the panels.

The page is one notebook cell (``app_page.ipynb``, shipped with the package) that calls `app_from_environment`;
everything else is `SteeringApp`, an ordinary object that tests and scripts drive without a browser:

>>> app = SteeringApp(vlm, scores)       # scores = gazekit.discover(vlm, strips)
>>> app.click(3); app.answer, app.verdict
>>> app.set(condition="random", k=8); app.load_synthetic(seed=7)

The answer and figure come from `gazekit.widgets.TargetPicker` (which calls `gazekit.steer` and `vlm.ask`), so the
app shows exactly what the Python API answers.
"""
from __future__ import annotations

import html
import io
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["SteeringApp", "app_from_environment", "serve", "PAGE", "CONFIG_ENV", "DEFAULT_DISCOVER_STRIPS",
           "DEFAULT_STRIP_SEED", "CONDITIONS"]

PAGE = Path(__file__).with_name("app_page.ipynb")
CONFIG_ENV = "GAZEKIT_APP_CONFIG"  # JSON the CLI hands to the page's kernel (Voilà kernels inherit the environment)
DEFAULT_DISCOVER_STRIPS = "synthetic:100:100"  # the organism's discovery split, as for the CLI's experiments
DEFAULT_STRIP_SEED = 2000  # the first strip of the organism's evaluation split (disjoint from discovery)
DEFAULT_PORT = 8866
CONDITIONS = (("top-K gaze heads", "top"), ("K random control heads", "random"), ("unsteered", "unsteered"))
THUMB_HEIGHT = 96


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class SteeringApp:
    """Steer by clicking panels: strip choice (synthetic seed or six uploaded panels), panel buttons, K and
    head condition, and the answer / verdict / attention bars of a `TargetPicker` underneath.

    State: `.strip`, `.panel` (the clicked panel, 1-based, or None), `.condition` ("top", "random", "unsteered"),
    `.k`; results: `.answer`, `.verdict`, `.text` (the visible text), `.png` (the figure shown), `.status` (the last
    error or notice, "" when fine). `.target` is what is actually steered toward: None when unsteered or when no
    panel has been clicked yet."""

    def __init__(self, vlm, scores, *, strip=None, seed: int = DEFAULT_STRIP_SEED, k: Optional[int] = None,
                 condition: str = "top", max_new_tokens: int = 15, judge="auto"):
        from gazekit.widgets import _widgets

        w = _widgets()
        if scores is None:
            raise ValueError("SteeringApp needs gaze scores: scores = gazekit.discover(vlm, strips)")
        self._check_condition(condition)
        self.vlm, self.scores = vlm, scores
        self.max_new_tokens, self.judge = max_new_tokens, judge
        if k is None:
            from gazekit.evaluate import default_k

            k = default_k(vlm, scores)
        self.panel: Optional[int] = None
        self.picker = None
        kmax = max(1, vlm.n_layers * vlm.n_heads // 2)
        self.seed_box = w.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="strip seed")
        self.seed_button = w.Button(description="show synthetic strip")
        self.seed_button.on_click(lambda _b: self._guard(lambda: self.load_synthetic(self.seed_box.value)))
        self.upload = w.FileUpload(accept="image/*", multiple=True, description="upload 6 panels")
        self.upload.observe(lambda ch: self._guard(lambda: self.load_uploads(ch["new"])), "value")
        self.k_slider = w.IntSlider(value=min(int(k), kmax), min=1, max=kmax, description="K heads",
                                    continuous_update=False)
        self.condition_buttons = w.ToggleButtons(options=list(CONDITIONS), value=condition, description="heads",
                                                 style={"button_width": "auto"})
        self.k_slider.observe(lambda _c: self._guard(self._refresh), "value")
        self.condition_buttons.observe(lambda _c: self._guard(self._refresh), "value")
        self._panels = w.HBox()
        self._panels.add_class("gazekit-panels")
        self._status = w.HTML()
        self._status.add_class("gazekit-status")
        self._result = w.VBox()
        self.widget = w.VBox([
            w.HTML("<h3>gazekit: steer a VLM's gaze heads</h3><p>Click a panel to steer the model toward it.</p>"),
            w.HBox([self.seed_box, self.seed_button, self.upload]),
            self._panels,
            w.HBox([self.k_slider, self.condition_buttons]),
            self._status, self._result])
        self.widget.add_class("gazekit-app")
        if strip is None:
            self.load_synthetic(seed)
        else:
            self.load_strip(strip)

    # -- state ------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_condition(condition):
        names = [v for _, v in CONDITIONS]
        if condition not in names:
            raise ValueError(f"condition must be one of {names}, got {condition!r}")

    @property
    def strip(self):
        """The strip on screen now (a synthetic one, or the six panels uploaded)."""
        return self.picker.strip

    @property
    def k(self) -> int:
        """The number of heads steered (the K slider)."""
        return int(self.k_slider.value)

    @property
    def condition(self) -> str:
        """The head condition chosen: "top", "random", "all" or "unsteered"."""
        return self.condition_buttons.value

    @property
    def target(self):
        """The panel steered toward now (1-based), or None (unsteered condition, or no panel clicked yet)."""
        return None if self.condition == "unsteered" else self.panel

    @property
    def answer(self) -> str:
        """The model's answer for the current strip, panel and condition."""
        return self.picker.answer

    @property
    def verdict(self):
        """The judge's `Verdict` on the answer (which panel it describes, or junk)."""
        return self.picker.verdict

    @property
    def text(self) -> str:
        """The answer panel's plain text: the steering, the answer and the unsteered answer."""
        return self.picker.text

    @property
    def png(self) -> Optional[bytes]:
        """The attention-bar figure as PNG bytes (None before the first answer)."""
        return self.picker.png

    @property
    def status(self) -> str:
        """The status line as plain text (what the app is doing, or the last error)."""
        return html.unescape(self._status.value)

    # -- actions ----------------------------------------------------------------------------------------------
    def click(self, panel: Optional[int]):
        """Steer toward `panel` (1-based; None: clear the target), as a click on that panel's button does."""
        n = len(self.strip)
        if panel is not None and not (isinstance(panel, int) and 1 <= panel <= n):
            raise ValueError(f"panel must be 1..{n} (1-based) or None, got {panel!r}")
        self.panel = panel
        self._refresh()
        return self

    def set(self, k: Optional[int] = None, condition: Optional[str] = None):
        """Change K and/or the head condition ("top", "random", "unsteered") and redraw once."""
        if condition is not None:
            self._check_condition(condition)
        with self._quiet():
            if k is not None:
                self.k_slider.value = int(k)
            if condition is not None:
                self.condition_buttons.value = condition
        self._refresh()
        return self

    def load_synthetic(self, seed: int):
        """Show gazekit's synthetic strip number `seed` (`gazekit.comics.synthetic(1, seed=seed)[0]`)."""
        from gazekit.comics import synthetic

        seed = int(seed)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        with self._quiet():
            self.seed_box.value = seed
        return self.load_strip(synthetic(1, seed=seed)[0])

    def load_panels(self, images: Sequence, captions: Optional[Sequence[str]] = None):
        """Build a strip from six panel images (PIL images or image bytes, left to right) and show it."""
        from PIL import Image

        from gazekit.regions import N_PANELS, Strip

        if len(images) != N_PANELS:
            raise ValueError(f"upload exactly {N_PANELS} panel images (left to right), got {len(images)}")
        pil = [im if isinstance(im, Image.Image) else Image.open(io.BytesIO(bytes(im))) for im in images]
        return self.load_strip(Strip.from_panels([im.convert("RGB") for im in pil], captions))

    def load_uploads(self, files):
        """Six files from the upload button (ipywidgets 8 FileUpload value), ordered by file name."""
        if not files:
            return self
        files = sorted(files, key=lambda f: f["name"])
        return self.load_panels([f["content"] for f in files])

    def load_strip(self, strip):
        """Show any `Strip` (or Scene with six regions); clears the clicked panel."""
        from gazekit.widgets import TargetPicker, _widgets

        w = _widgets()
        self.panel = None
        self.picker = TargetPicker(self.vlm, strip, self.scores, k=self.k, condition=self._picker_condition(),
                                   max_new_tokens=self.max_new_tokens, judge=self.judge)
        buttons = []
        for i, (x0, y0, x1, y1) in enumerate(strip.region_boxes):
            crop = strip.image.crop(tuple(int(round(v)) for v in (x0, y0, x1, y1)))
            thumb = w.Image(value=_png(crop), format="png", layout=w.Layout(height=f"{THUMB_HEIGHT}px"))
            b = w.Button(description=f"steer to panel {i + 1}", layout=w.Layout(width="auto"))
            b.add_class(f"gazekit-panel-{i + 1}")
            b.on_click(lambda _b, p=i + 1: self._guard(lambda: self.click(p)))
            buttons.append(w.VBox([thumb, b]))
        self._panels.children = buttons
        self._result.children = [self.picker._question, self.picker._info, self.picker._out]
        self._status.value = ""
        return self

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _picker_condition(self) -> str:
        return "top" if self.condition == "unsteered" else self.condition

    def _refresh(self):
        if self.picker is None:
            return
        self.picker.set(target=self.target, k=self.k, condition=self._picker_condition())
        self._status.value = ""
        for i, box in enumerate(self._panels.children):
            box.children[1].button_style = "danger" if self.target == i + 1 else ""

    class _Quiet:
        def __init__(self, app):
            self.app = app

        def __enter__(self):
            self.app._busy = True

        def __exit__(self, *exc):
            self.app._busy = False

    _busy = False

    def _quiet(self):
        """Change controls from code without their observers redrawing (the caller redraws once)."""
        return self._Quiet(self)

    def _guard(self, action):
        """Run a UI callback; a failure is shown on the page (and kept in .last_error), not lost in a kernel log."""
        if self._busy:
            return
        self.last_error = None
        try:
            action()
        except Exception as e:  # noqa: BLE001 — shown to the user, kept for inspection
            self.last_error = e
            self._status.value = (f"<span style='color:#d62728'>{html.escape(type(e).__name__)}: "
                                  f"{html.escape(str(e))}</span>")

    last_error: Optional[BaseException] = None

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        data = dict(bundle[0] if isinstance(bundle, tuple) else bundle)
        data["text/plain"] = repr(self)
        return data

    def __repr__(self):
        return (f"SteeringApp(panel={self.panel}, condition={self.condition!r}, K={self.k}, "
                f"answer={self.answer!r})")


# ------------------------------------------------------------------------------------------- page and server
def app_from_environment() -> SteeringApp:
    """The page's one call: load the model and gaze scores named in $GAZEKIT_APP_CONFIG (written by
    ``python -m gazekit app``; without it, the embedded organism and discovery on the default strips)."""
    import gazekit
    from gazekit.cli import parse_strips

    cfg = json.loads(os.environ.get(CONFIG_ENV) or "{}")
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg["threads"]))
    vlm = gazekit.load(cfg.get("model"), quantize=cfg.get("quantize"), dtype=cfg.get("dtype"),
                       device_map=cfg.get("device_map"))
    if cfg.get("heads"):
        scores = gazekit.GazeScores.load(cfg["heads"], vlm=vlm)
    else:
        scores = gazekit.discover(vlm, parse_strips(cfg.get("discover_strips") or DEFAULT_DISCOVER_STRIPS),
                                  progress=False)
    return SteeringApp(vlm, scores, seed=int(cfg.get("seed", DEFAULT_STRIP_SEED)), k=cfg.get("k"))


def voila_command(port: int, open_browser: bool) -> list:
    """The Voilà command line that serves the app page on 127.0.0.1:port."""
    cmd = [sys.executable, "-m", "voila", str(PAGE), f"--port={port}", "--Voila.ip=127.0.0.1",
           "--show_tracebacks=True"]
    if not open_browser:
        cmd.append("--no-browser")
    return cmd


def serve(*, model: Optional[str] = None, heads: Optional[str] = None, discover_strips: Optional[str] = None,
          seed: int = DEFAULT_STRIP_SEED, k: Optional[int] = None, port: int = DEFAULT_PORT, open_browser: bool = True,
          quantize: Optional[str] = None, dtype: Optional[str] = None, device_map: Optional[str] = None,
          threads: Optional[int] = None) -> int:
    """Check the arguments, then become the Voilà server of the app page (stop it with Ctrl-C)."""
    from gazekit.cli import check_strips_spec

    try:
        import voila  # noqa: F401
    except ImportError:
        raise SystemExit("the app needs Voilà: pip install \"gazekit-vlm[notebooks]\" (or pip install voila)") \
            from None
    if not 1 <= int(port) <= 65535:
        raise SystemExit(f"--port must be 1..65535, got {port}")
    if heads and not Path(heads).is_file():
        raise SystemExit(f"--heads {heads} does not exist; run `python -m gazekit discover --out DIR` first "
                         "(it writes DIR/ranking.json) or leave --heads out to discover on --discover-strips")
    if discover_strips:
        check_strips_spec(discover_strips, "--discover-strips")
    if seed < 0:
        raise SystemExit(f"--seed must be >= 0, got {seed}")
    if k is not None and k < 1:
        raise SystemExit(f"--k must be >= 1, got {k}")
    cfg = dict(model=model, heads=str(Path(heads).resolve()) if heads else None, discover_strips=discover_strips,
               seed=seed, k=k, quantize=quantize, dtype=dtype, device_map=device_map, threads=threads)
    env = dict(os.environ, **{CONFIG_ENV: json.dumps(cfg)})
    cmd = voila_command(port, open_browser)
    print(f"gazekit app: http://127.0.0.1:{port}/ (model: {model or 'the embedded organism'}; Ctrl-C stops)",
          file=sys.stderr, flush=True)
    if os.name != "posix":  # pragma: no cover - Windows has no exec
        import subprocess

        return subprocess.call(cmd, env=env)
    # become the server (same pid): a signal to us reaches Voilà, which shuts its kernels down
    os.execve(sys.executable, cmd, env)
    return 0  # only reached when execve is replaced (tests)
