"""Steering: bias chosen heads' attention toward a region while the model reads and generates.

>>> with gazekit.steer(vlm, scores.top(8), target=3):
...     vlm.ask(strip, gazekit.VQA_QUESTION)

Modes (the reference's closed set), with B = strength, on the selected heads only:
  boost_suppress   +B on the target region's image tokens, -B on every other image token (the paper's recipe)
  suppress_image   -B on every non-target image token
  suppress_all     -B on every prompt token except the target region (image and text)
  max_suppress_all suppress_all, plus -B on tokens decoded so far
Targets are resolved against the prepared input each forward runs on (`vlm.ask`, `vlm.generate(prepared)`,
`vlm.forward(prepared)`, or `vlm.model(**prepared)`). `steer` is a thin layer over `gazekit.intervene`.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Literal, NamedTuple, Optional, Union

import torch

from gazekit.intervene import Intervention, intervene

Mode = Literal["boost_suppress", "suppress_image", "suppress_all", "max_suppress_all"]
Phase = Literal["all", "decode", "prefill"]
MODES = ("boost_suppress", "suppress_image", "suppress_all", "max_suppress_all")
PHASES = ("all", "decode", "prefill")
MAX_STRENGTH = 1e30  # 2 x MAX_STRENGTH stays finite in float32 (max 3.4e38)


class Head(NamedTuple):
    """One query head of the language model, 0-based. Shown as L<layer>.H<head>."""

    layer: int
    head: int

    def __str__(self):
        return f"L{self.layer}.H{self.head}"


def as_heads(vlm, heads) -> list[Head]:
    """Validate heads: an iterable of (layer, head) pairs, or "all"."""
    L, H = vlm.n_layers, vlm.n_heads
    if isinstance(heads, str):
        if heads != "all":
            raise ValueError(f"heads must be a list of (layer, head) pairs or 'all', got {heads!r}")
        return [Head(l, h) for l in range(L) for h in range(H)]
    out = []
    for item in heads:
        try:
            l, h = (int(v) for v in item)
        except (TypeError, ValueError):
            raise ValueError(f"each head must be a (layer, head) pair, got {item!r}: use e.g. [(0, 3), (1, 2)] or "
                             "scores.top(k)") from None
        if not (0 <= l < L and 0 <= h < H):
            raise ValueError(f"head ({l}, {h}) out of range: this model has layers 0..{L - 1} and heads 0..{H - 1} "
                             "(0-based); use heads in these ranges, e.g. scores.top(k) of this model")
        out.append(Head(l, h))
    return out


@dataclass(frozen=True)
class SteerSpec:
    """What a steering run did, as a value saved next to results."""

    heads: tuple
    target: Any
    mode: str
    strength: float
    phase: str

    def to_dict(self):
        """A JSON-able dict (heads as [layer, head] pairs; a callable target by its name)."""
        d = asdict(self)
        d["heads"] = [list(h) for h in self.heads]
        if callable(self.target):
            d["target"] = getattr(self.target, "__name__", "callable")
        elif isinstance(self.target, dict):
            d["target"] = {str(k): v for k, v in self.target.items()}
        return d


class _Steerer(Intervention):
    """The intervention behind `steer`: a key bias on the selected heads, recomputed when the input or target
    changes and extended over the keys decoded since."""

    def __init__(self, vlm, heads: list[Head], target, mode: str, strength: float, phase: str):
        self.vlm = vlm
        self.by_layer: dict[int, list[int]] = {}
        for h in heads:
            self.by_layer.setdefault(h.layer, [])
            if h.head not in self.by_layer[h.layer]:
                self.by_layer[h.layer].append(h.head)
        self.target = target
        self.mode = mode
        self.strength = float(strength)
        self.phase = phase
        self._key_bias: Optional[torch.Tensor] = None  # [total_len] float32 for the current step
        self._cache_key = None

    def _target_at(self, step: int, session):
        t = self.target
        if callable(t) and not isinstance(t, (dict, int, str, tuple, list)):
            text = self.vlm.decode([session.generated])[0] if session.generated else ""
            return t(step, text)
        if isinstance(t, dict):
            keys = sorted(k for k in t if k <= step)
            return t[keys[-1]] if keys else None
        return t

    def on_step(self, session):
        step = session.step
        active = (self.phase == "all" or (self.phase == "decode" and step > 0) or
                  (self.phase == "prefill" and step == 0))
        target = self._target_at(step, session) if active else None
        if target is None or not self.by_layer:
            self._key_bias = None
            return
        prep = session.require_prepared("steer")
        T, B = session.total_len, self.strength
        key = (id(prep), _hashable(target), session.prompt_len)
        if key == self._cache_key and self._key_bias is not None:
            n = self._key_bias.shape[-1]
            if n < T:  # keys decoded since: no bias, or -B for max_suppress_all
                fill = -B if self.mode == "max_suppress_all" else 0.0
                pad = torch.full((*self._key_bias.shape[:-1], T - n), fill)
                self._key_bias = torch.cat([self._key_bias, pad], dim=-1)
            return
        self._cache_key = key
        if isinstance(target, RowTargets):
            rows = int(prep.input_ids.shape[0])
            if len(target) != rows:
                raise ValueError(f"RowTargets gives {len(target)} targets for a batch of {rows} rows; give one "
                                 "target per row of the prepared batch")
            self._key_bias = torch.stack([self._one_key_bias(prep, t, T, session.prompt_len) for t in target])
        else:
            self._key_bias = self._one_key_bias(prep, target, T, session.prompt_len)

    def _one_key_bias(self, prep, target, T: int, P: int) -> torch.Tensor:
        """[T] float32: the bias over keys that steers toward `target` under this steerer's mode."""
        B = self.strength
        tgt_pos = resolve_target(prep, target)
        bias = torch.zeros(T, dtype=torch.float32)
        img = prep.image_positions.cpu()
        if self.mode == "boost_suppress":
            bias[img] = -B
            bias[tgt_pos.cpu()] = B
        elif self.mode == "suppress_image":
            bias[img] = -B
            bias[tgt_pos.cpu()] = 0.0
        elif self.mode in ("suppress_all", "max_suppress_all"):
            bias[:P] = -B
            if self.mode == "max_suppress_all":
                bias[P:] = -B
            bias[tgt_pos.cpu()] = 0.0
        return bias

    def key_bias(self, session, layer, K, device):
        """(this layer's selected heads, their key bias [K] — or [batch, K] for `RowTargets` — float32), or None
        when nothing is steered here."""
        heads = self.by_layer.get(layer)
        if not heads or self._key_bias is None:
            return None
        T = session.total_len  # on_step has extended the key bias to T keys
        keys = self._key_bias[..., T - K:T]  # keys are right-aligned (sliding-window layers keep only the last K)
        return heads, keys.to(device)


class RowTargets(tuple):
    """One steering target per row of a batched input (`vlm.prepare_batch` / `ask_batch`), e.g.
    `steer(vlm, heads, RowTargets([3, 1, 6]))` steers row 0 to panel 3, row 1 to panel 1, row 2 to panel 6 in one
    generate call. Each element is a target as `steer` takes it (a region number, name or box)."""

    def __new__(cls, targets):
        targets = tuple(targets)
        if not targets:
            raise ValueError("RowTargets needs one target per batch row, got none")
        for t in targets:
            if isinstance(t, (dict, RowTargets)) or (callable(t) and not isinstance(t, (int, str, tuple, list))):
                raise ValueError(f"each row's target must be a region number, name or box, got {t!r}")
            _check_target(t)
        return super().__new__(cls, (tuple(t) if isinstance(t, list) else t for t in targets))


def _hashable(t):
    if isinstance(t, list):
        return tuple(t)
    return t


def resolve_target(prep, target) -> torch.Tensor:
    """Token positions of a target: 1-based region number, region name, or box (x0, y0, x1, y1)."""
    scene = prep.scenes[0]
    if isinstance(target, (tuple, list)) and len(target) == 4:
        return prep.positions_for_box(target)
    if isinstance(target, (int, str)) and not isinstance(target, bool):
        return prep.regions[scene.region_index(target)]
    raise ValueError(f"cannot use {target!r} as a steering target: give a 1-based region number (1..{len(scene)}), "
                     f"a region name {scene.names}, a box (x0, y0, x1, y1), a schedule {{step: target}} or a callable")


def _check_target(target):
    if isinstance(target, RowTargets):
        return  # checked element by element when it was made
    if isinstance(target, dict):
        if not target:
            raise ValueError("an empty schedule steers nothing; give {decode_step: target, ...}")
        for k in target:
            if not isinstance(k, int) or k < 0:
                raise ValueError(f"schedule keys are decode steps (ints >= 0; 0 = first generated token), got {k!r}: use e.g. {{0: 1, 20: 3}}")
        return
    if callable(target) or isinstance(target, (int, str)) or (isinstance(target, (tuple, list)) and len(target) == 4):
        if isinstance(target, bool):
            raise ValueError("a steering target cannot be a bool: use a 1-based panel number, a region name or a box")
        if isinstance(target, int) and target < 1:
            raise ValueError(f"panel/region numbers are 1-based, got {target}: use 1 for the first panel")
        return
    raise ValueError(f"cannot use {target!r} as a steering target: give a 1-based region number, a region name, a box "
                     "(x0, y0, x1, y1), a schedule {decode_step: target} or a callable (step, text_so_far) -> target")


@contextlib.contextmanager
def steer(vlm, heads, target, *, mode: Mode = "boost_suppress", strength: float = 1e4, phase: Phase = "all"):
    """Bias `heads` toward `target` for every forward run inside the context; restores the model on exit.

    heads: list of (layer, head) (e.g. `scores.top(8)`), or "all". target: 1-based panel/region number, region name,
    box (x0, y0, x1, y1) in image pixels, schedule {decode_step: target} (0 = first generated token; a target holds
    until the next key; before the first key nothing is steered), or callable (step, text_so_far) -> target|None.
    mode: one of MODES. strength: B, a finite number >= 0 (1e4 saturates softmax; negative is refused). Steering
    the same head toward two different targets in nested blocks is refused (the biases would cancel). phase: "all" (prefill and decoding), "decode" or
    "prefill". Yields a SteerSpec describing the intervention.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    hs = as_heads(vlm, heads)
    if not hs:  # legal (a null-steering control is exactly the unsteered model) but almost always a mistake
        warnings.warn("steer got no heads, so nothing is steered: pass scores.top(k) with k >= 1, a list of "
                      "(layer, head) pairs, or 'all' (an empty list is only useful as a null-steering control)",
                      UserWarning, stacklevel=3)
    _check_target(target)
    strength = _check_strength(strength)
    _check_not_steered_elsewhere(vlm, hs, target, mode)
    steerer = _Steerer(vlm, hs, target, mode, strength, phase)
    spec = SteerSpec(tuple(hs), target, mode, strength, phase)
    with intervene(vlm, steerer):
        yield spec


def _check_strength(strength) -> float:
    """Strength B must be a finite number >= 0 (NaN made every attention weight NaN; a negative B reversed the
    mode's meaning without a word). Steering away from a region is not a strength: steer toward the others."""
    try:
        b = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"strength must be a number (1e4 saturates softmax), got {strength!r}") from None
    if b != b or b in (float("inf"), float("-inf")):
        raise ValueError(f"strength must be finite, got {b}: use a large finite value such as 1e4 (it already "
                         "saturates softmax)")
    if b > MAX_STRENGTH:  # the bias is float32 and suppressed keys can get -2B: keep it representable
        raise ValueError(f"strength {b:g} is larger than gazekit's float32 bias can hold: use at most "
                         f"{MAX_STRENGTH:g} (1e4 already saturates softmax)")
    if b < 0:
        raise ValueError(f"strength must be >= 0, got {b}: a negative strength is not 'steer away'. To pull heads "
                         "away from a region, steer them toward another region or a box around the rest of the image")
    return b


def _check_not_steered_elsewhere(vlm, heads, target, mode):
    """Refuse nesting that steers one head toward two targets at once: the two biases add up and cancel (issue 26
    measured 0.05 attention per panel), which is no one's intent. The same head with the same target and mode nests
    (biases add, the target stays the same); disjoint heads nest freely."""
    mine = set(heads)
    for other in vlm.interventions:
        if not isinstance(other, _Steerer):
            continue
        theirs = {Head(l, h) for l, hs in other.by_layer.items() for h in hs}
        both = mine & theirs
        if both and (_hashable_target(other.target) != _hashable_target(target) or other.mode != mode):
            shown = ", ".join(str(h) for h in sorted(both)[:4]) + (" ..." if len(both) > 4 else "")
            raise ValueError(f"head(s) {shown} are already steered toward {other.target!r} ({other.mode}) by an outer "
                             f"steer(); steering them toward {target!r} ({mode}) as well would cancel the two biases. "
                             "Close the outer steer() first, or steer disjoint heads")


def _hashable_target(t):
    if isinstance(t, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in t.items()))
    return _hashable(t) if not callable(t) else id(t)
