"""Tracking: per generated token, where chosen heads look (the staircase of the paper)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from gazekit.capture import _RegionRecorder
from gazekit.intervene import intervene
from gazekit.steer import Head, as_heads


@dataclass
class Trajectory:
    """Attention of `heads` over regions at each generated token.

    `attention` [T, n_heads, R]: raw last-row mass per region at the step that *produced* token t;
    `weighted` [T, n_heads, R]: the same weighted by value-vector norms (Kobayashi et al. 2020: a_j * |v_j|,
    renormalised over all keys); `tokens`: the T generated token strings; `text`: the decoded answer."""

    heads: list
    tokens: list
    attention: np.ndarray
    weighted: np.ndarray
    text: str
    region_names: list = field(default_factory=list)

    def mean(self, weighted: bool = False) -> np.ndarray:
        """[T, R]: mean over heads."""
        return (self.weighted if weighted else self.attention).mean(axis=1)

    def argmax_region(self, weighted: bool = False) -> np.ndarray:
        """[T]: 0-based region with the most mean attention at each token."""
        return self.mean(weighted).argmax(axis=-1)

    def plot(self, weighted: bool = False, ax=None, title: Optional[str] = None, vmax: Optional[float] = None):
        """The staircase figure (`gazekit.plots.plot_trajectory`); vmax fixes the top of the colour scale."""
        from gazekit.plots import plot_trajectory

        return plot_trajectory(self, weighted=weighted, ax=ax, title=title, vmax=vmax)


@torch.no_grad()
def track(vlm, image, prompt: str, heads, *, max_new_tokens: int = 40, style: str = "gazekit",
          **generate_kwargs) -> Trajectory:
    """Generate greedily and record, at each step, each head's attention over the image's regions.

    style="gazekit" (default): one row per generated token, from the forward that produced it (row 0 is the
        prompt's last position, in the prefill); `weighted` is a_j * |v_j| renormalised over all keys.
    style="reference": the reference's trajectory (its 02 script): decode steps only — the prefill row is
        dropped, so row t is the forward that reads generated token t and produces token t + 1 (`tokens` are the
        tokens read) — and `weighted` is a_j * |v_j| NOT renormalised (its scale is the value norms').
    Works inside `steer(...)` (to see steered heads follow a schedule)."""
    from gazekit.regions import _check_style
    _check_style(style)
    hs = as_heads(vlm, heads)
    prep = vlm.prepare(image, prompt)
    rec = _RegionRecorder(vlm, prep.regions, value_norms=True, renormalise=style != "reference")
    with intervene(vlm, rec):
        out = vlm.generate(prep, max_new_tokens=max_new_tokens, **generate_kwargs)
    new = out[0, prep.prompt_len:]
    eos = _eos_ids(vlm)
    T = len(new)
    for i, t in enumerate(new.tolist()):
        if t in eos:
            T = i
            break
    T = min(T, len(rec.raw))
    li = torch.tensor([h.layer for h in hs])
    hi = torch.tensor([h.head for h in hs])
    att, wat = [], []
    for step in range(T):
        raw = rec.stacked(step)[:, 0]  # [L, H, R]
        att.append(raw[li, hi])
        wat.append(rec.stacked(step, weighted=True)[:, 0][li, hi])
    R = len(prep.regions)
    tokens = [vlm.tokenizer.decode([t]) for t in new[:T].tolist()]
    text = vlm.decode(new[None, :T])[0]
    if style == "reference":  # decode steps only: drop the prefill's row; row t reads token t
        att, wat, tokens = att[1:], wat[1:], tokens[:max(T - 1, 0)]
        T = len(att)
    return Trajectory(heads=hs, tokens=tokens,
                      attention=np.array(att).reshape(T, len(hs), R), weighted=np.array(wat).reshape(T, len(hs), R),
                      text=text, region_names=list(prep.scenes[0].names))


def _eos_ids(vlm) -> set:
    ids = set()
    gc = getattr(vlm.model, "generation_config", None)
    e = getattr(gc, "eos_token_id", None)
    if e is not None:
        ids |= set(e if isinstance(e, (list, tuple)) else [e])
    t = getattr(vlm.tokenizer, "eos_token_id", None)
    if t is not None:
        ids.add(t)
    return ids
