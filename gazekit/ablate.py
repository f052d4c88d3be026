"""Ablation: remove chosen heads' contribution while the model reads and generates.

>>> with gazekit.ablate(vlm, scores.top(8)):                 # mean-ablate the top gaze heads
...     vlm.ask(strip, gazekit.panel_question(3))

Each selected head's attention output (softmax(QK^T)V of that head, before the layer's output projection) is
replaced, at every query position, by (closed set of `how`):

  zero     0: the head writes nothing into the residual stream.
  mean     the mean of the head's own outputs over the positions that query attends to under the layer's mask —
           for a causal model the causal running mean over positions 0..t of the current sequence (prompt and
           the tokens generated so far). Well-defined while decoding with a KV cache: gazekit keeps the selected
           heads' outputs of the sequence (float32, [batch, heads, tokens, head_dim] per layer). The outputs
           averaged are the head's own, unablated ones (with the upstream layers' ablations in place); position t
           itself is included. Needs no dataset of activations; it keeps the head's average message and removes
           what depends on where it looks at step t.
  uniform  the head attends uniformly to the image tokens (or to `region`'s tokens) that its query may see: its
           output is the mean of those tokens' value vectors. Query rows that see none of them (text before the
           image) are left as they were.

Ablation composes with `steer` and `capture` (a head both steered and ablated is ablated: the edit comes after
its attention); `capture` inside `ablate` records the attention pattern the heads compute, which for "uniform" is
not the uniform pattern that replaced it. Like `steer`, `ablate` is a thin layer over `gazekit.intervene`.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal, Optional

import torch

from gazekit.attention import visible_keys
from gazekit.intervene import Intervention, intervene
from gazekit.steer import Head, as_heads, resolve_target

How = Literal["mean", "zero", "uniform"]
HOWS = ("mean", "zero", "uniform")


@dataclass(frozen=True)
class AblateSpec:
    """What an ablation did, as a value saved next to results."""

    heads: tuple
    how: str
    region: Any = None

    def to_dict(self) -> dict:
        """A JSON-able dict (heads as [layer, head] pairs)."""
        d = asdict(self)
        d["heads"] = [list(h) for h in self.heads]
        if isinstance(self.region, tuple):
            d["region"] = list(self.region)
        return d


class _Ablator(Intervention):
    """The intervention behind `ablate`: rewrites the selected heads' slices of the attention output."""

    def __init__(self, heads: list[Head], how: str, region=None):
        self.by_layer: dict[int, list[int]] = {}
        for h in heads:
            hs = self.by_layer.setdefault(h.layer, [])
            if h.head not in hs:
                hs.append(h.head)
        self.how, self.region = how, region
        self._outputs: dict[int, torch.Tensor] = {}  # mean: layer -> [B, h, T, D] the sequence's head outputs
        self._positions: Optional[torch.Tensor] = None  # uniform: absolute positions of the attended tokens
        self._resolved_for = None

    def on_step(self, session):
        if self.how != "uniform" or not self.by_layer:
            return
        prep = session.require_prepared("ablate(how='uniform')")
        if self._resolved_for is not prep:
            pos = prep.image_positions if self.region is None else resolve_target(prep, self.region)
            self._positions = pos.detach().to("cpu", torch.long)
            self._resolved_for = prep

    def edit_output(self, session, layer, output, query, key, value, attention_mask):
        heads = self.by_layer.get(layer)
        if not heads:
            return
        idx = torch.tensor(heads, device=output.device)
        if self.how == "zero":
            output[:, :, idx] = 0
            return
        B, Q, Hq, D = output.shape
        K = key.shape[-2]
        T = session.total_len  # keys are right-aligned: this layer sees positions T - K .. T - 1
        vis = visible_keys(attention_mask, B, Q, K, output.device)  # [B, 1 or Hq, Q, K]
        if vis.shape[1] == Hq:
            vis = vis[:, idx]
        if self.how == "mean":
            seq = self._sequence(layer, output[:, :, idx].float().transpose(1, 2), T)  # [B, h, T, D]
            w = vis.to(torch.float32)
            mean = torch.matmul(w, seq[:, :, T - K:T]) / w.sum(-1, keepdim=True).clamp_min(1.0)
            output[:, :, idx] = mean.transpose(1, 2).to(output.dtype)
            return
        # uniform: the mean value vector over the visible tokens of the region
        ind = torch.zeros(K, dtype=torch.bool, device=output.device)
        rel = self._positions.to(output.device) - (T - K)
        ind[rel[(rel >= 0) & (rel < K)]] = True
        w = (vis & ind).to(torch.float32)  # [B, h|1, Q, K]
        n = w.sum(-1, keepdim=True)  # [B, h|1, Q, 1]
        kv = idx // (Hq // key.shape[1])  # grouped-query attention: each query head's key/value head
        u = torch.matmul(w, value[:, kv].float()) / n.clamp_min(1.0)  # [B, h, Q, D]
        old = output[:, :, idx].float().transpose(1, 2)
        new = torch.where(n > 0, u, old)  # rows that see none of the tokens keep their output
        output[:, :, idx] = new.transpose(1, 2).to(output.dtype)

    def _sequence(self, layer, new, T):
        """The selected heads' outputs over the whole sequence so far, `new` [B, h, Q, D] appended at T - Q."""
        B, _, Q, _ = new.shape
        past = T - Q
        prev = self._outputs.get(layer)
        if past == 0 or prev is None:
            if past:
                raise RuntimeError("ablate(how='mean') missed the start of this sequence (the forward continues a KV "
                                   "cache filled before ablate() opened): open ablate() before the prompt's forward")
            seq = new
        else:
            if prev.shape[0] != B:
                raise RuntimeError(f"ablate(how='mean') follows one sequence per batch row, but this forward has "
                                   f"{B} rows where the sequence so far had {prev.shape[0]} (beam search or a "
                                   "copied KV cache): use how='zero' or 'uniform', or generate greedily")
            if prev.shape[2] < past:
                raise RuntimeError("ablate(how='mean') missed part of this sequence (the forward continues a KV cache "
                                   "filled before ablate() opened): open ablate() before the prompt's forward")
            seq = torch.cat([prev[:, :, :past], new], dim=2)  # a cropped cache (past < stored) drops its tail
        self._outputs[layer] = seq
        return seq


def _check_region(region):
    if region is None:
        return
    if isinstance(region, bool) or not (isinstance(region, (int, str)) or
                                        (isinstance(region, (tuple, list)) and len(region) == 4)):
        raise ValueError(f"cannot use {region!r} as an ablation region: give a 1-based panel/region number, a region "
                         "name or a box (x0, y0, x1, y1) in image pixels (or None for every image token)")
    if isinstance(region, int) and region < 1:
        raise ValueError(f"panel/region numbers are 1-based, got {region}: use 1 for the first panel")


@contextlib.contextmanager
def ablate(vlm, heads, how: How = "mean", region=None):
    """Remove `heads`' contribution for every forward inside the block; restores the model exactly on exit (also
    when an exception escapes).

    Args:
        vlm: a `gazekit.VLM`.
        heads: list of (layer, head) pairs (0-based, e.g. `scores.top(8)`), or "all".
        how: "mean" (default; the head's output replaced by the mean of its own outputs over the positions its
            query sees: the causal running mean over 0..t), "zero" (output 0) or "uniform" (attention uniform over
            the image tokens, or over `region`'s). See the module doc for the exact definitions.
        region: only with how="uniform": a 1-based panel/region number, a region name or a box (x0, y0, x1, y1)
            in image pixels, like `steer`'s targets; None: every image token.

    Yields:
        an `AblateSpec` describing the intervention."""
    if how not in HOWS:
        raise ValueError(f"how must be one of {HOWS}, got {how!r}")
    if region is not None and how != "uniform":
        raise ValueError(f"region= only applies to how='uniform' (attention spread over that region), got "
                         f"how={how!r}: drop region=, or use how='uniform'")
    _check_region(region)
    hs = as_heads(vlm, heads)
    if not hs:
        warnings.warn("ablate got no heads, so nothing is ablated: pass scores.top(k) with k >= 1, a list of "
                      "(layer, head) pairs, or 'all' (an empty list is only useful as a null control)",
                      UserWarning, stacklevel=3)
    region = tuple(region) if isinstance(region, list) else region
    ablator = _Ablator(hs, how, region)
    with intervene(vlm, ablator):
        yield AblateSpec(tuple(hs), how, region)
