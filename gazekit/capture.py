"""Capture: each head's last-prompt-token attention mass over image regions, without `output_attentions`.

The attention function computes softmax(q_last . K^T * scale + mask [+ steering bias]) for the last query row only
(O(heads x keys) per layer), sums it over each region's tokens and moves [heads, regions] to the CPU. Raw mass, not
renormalised: a head that looks at text has small numbers everywhere. `capture` is a thin layer over
`gazekit.intervene` (a recorder of the regions of the prepared input it runs).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from gazekit.intervene import Intervention, intervene


class _RegionRecorder(Intervention):
    """Records, per forward step, every layer's last-row attention summed over regions: [L, B, H, R]."""

    def __init__(self, vlm, regions, value_norms: bool = False, steps: Optional[set] = None,
                 query_rows: Optional[list] = None, renormalise: bool = True):
        self.vlm = vlm
        self.query_rows = query_rows  # None: the last query row; else these rows, as extra batch rows
        self.regions = regions  # list[LongTensor] of absolute positions (the prepared input's regions)
        self.value_norms = value_norms
        self.renormalise = renormalise  # value-weighted attention rescaled to sum to 1 over keys (False: a * |v|)
        self.steps = steps
        self.raw: dict[int, dict[int, torch.Tensor]] = {}  # step -> layer -> [B, H, R]
        self.weighted: dict[int, dict[int, torch.Tensor]] = {}
        self._step = 0
        self._indicator = None  # (key, [K, R] 0/1 matrix, regions) for the current step's key layout

    def on_step(self, session):
        self._step = session.step

    def record(self, session, layer, probs, vnorm, K):
        if self.steps is not None and self._step not in self.steps:
            return
        offset = session.total_len - K  # keys are right-aligned
        raw = self._reduce(probs, offset, K)
        self.raw.setdefault(self._step, {})[layer] = raw
        if vnorm is not None:
            w = probs * vnorm
            if self.renormalise:
                w = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
            self.weighted.setdefault(self._step, {})[layer] = self._reduce(w, offset, K)

    def _reduce(self, probs, offset, K):
        """probs [..., K] summed over each region's keys -> [..., R] float64 on the CPU: one product with a 0/1
        [K, R] indicator (one kernel per layer instead of an index and a sum per region)."""
        key = (offset, K, probs.device)
        if self._indicator is None or self._indicator[0] != key:
            ind = torch.zeros(K, len(self.regions), dtype=torch.float32, device=probs.device)
            for r, pos in enumerate(self.regions):
                idx = pos.to(probs.device) - offset
                ind[idx[(idx >= 0) & (idx < K)], r] = 1.0
            self._indicator = (key, ind)
        return torch.matmul(probs.float(), self._indicator[1]).detach().to("cpu", torch.float64)  # [B, H, R]

    def stacked(self, step: int, weighted: bool = False) -> np.ndarray:
        src = (self.weighted if weighted else self.raw).get(step)
        if src is None or len(src) != self.vlm.n_layers:
            raise RuntimeError(f"no attention recorded at step {step}: did the forward run inside the context?")
        return torch.stack([src[l] for l in range(self.vlm.n_layers)]).numpy()  # [L, B, H, R]


@torch.no_grad()
def capture(vlm, image, prompt: str) -> np.ndarray:
    """Last-prompt-token attention mass per region: array [n_layers, n_heads, n_regions] (float64).

    Works inside `steer(...)` too, showing what the steered heads do. Regions follow `vlm.prepare(image, prompt)
    .regions` (panels left to right for a Strip)."""
    return capture_prepared(vlm, vlm.prepare(image, prompt))[:, 0]


@torch.no_grad()
def capture_prepared(vlm, prepared) -> np.ndarray:
    """Like `capture` for an already prepared (possibly batched) input: [n_layers, batch, n_heads, n_regions]."""
    rec = _RegionRecorder(vlm, prepared.regions, steps={0})
    with intervene(vlm, rec):
        vlm.forward(prepared, use_cache=False)
    return rec.stacked(0)
