"""The paper's discovery recipe, written out plainly as the benchmark's baseline and an independent oracle.

For every panel question: one full forward with eager attention and `output_attentions=True`; from every layer's
attention tensor [batch, heads, seq, seq] keep the last query row and sum it over each panel's image tokens. This
module deliberately shares no code with gazekit's attention function (`gazekit.attention`) or recorder
(`gazekit.capture`): it reads attention the way Hugging Face returns it. Inputs and the panels' token positions
come from `vlm.prepare`, so both methods score exactly the same tokens and only the attention computation differs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from gazekit.regions import N_PANELS, panel_question


def text_attn_implementation(model) -> str:
    cfg = model.config.get_text_config()
    return str(getattr(cfg, "_attn_implementation", None) or "")


@torch.no_grad()
def reference_row(model, inputs, regions: Sequence[torch.Tensor]) -> np.ndarray:
    """One question: [n_layers, n_heads, n_regions] last-row attention mass from `output_attentions`."""
    if text_attn_implementation(model) != "eager":
        raise RuntimeError("the reference recipe needs eager attention: model.set_attn_implementation('eager')")
    out = model(**inputs, output_attentions=True, use_cache=False)
    rows = []
    for att in out.attentions:  # one [B, H, S, S] tensor per language-model layer
        last = att[0, :, -1, :]
        rows.append(torch.stack([last[:, pos].sum(-1) for pos in regions], dim=-1).double().cpu().numpy())
    return np.stack(rows)


def reference_strip_matrix(vlm, strip, questions=None) -> np.ndarray:
    """The reference recipe for one strip: six full forwards. Returns [L, H, 6 (queried), 6 (attended)]."""
    questions = questions or [panel_question(k) for k in range(1, N_PANELS + 1)]
    rows = []
    for q in questions:
        prep = vlm.prepare(strip, q)
        rows.append(reference_row(vlm.model, dict(prep), prep.regions))
    return np.stack(rows, axis=2)
