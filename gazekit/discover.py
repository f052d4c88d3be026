"""Discovery: the gaze score of every head, from the six panel questions on comic strips.

For each strip and each queried panel k, the last prompt token's attention of every head is summed over each
panel's image tokens → a 6x6 matrix per head (queried x attended), averaged over strips. A head's gaze score is the
mean of that matrix's diagonal.

Fast path: the six questions share the whole image prefix; it is encoded once and the six suffixes run on copies of
its KV cache (suffixes of equal token length batched). Only last rows are read. A test checks it equals the naive
path (six full forwards).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

from gazekit.capture import _RegionRecorder, capture_prepared
from gazekit.models import _compat
from gazekit.intervene import implements, intervene
from gazekit.regions import N_PANELS, Strip, panel_question
from gazekit.models.vlm import LayoutMismatch
from gazekit.steer import Head


CONTROL_POOLS = ("below-median", "reference", "image-matched")


class ControlHeads(list):
    """Random control heads (a plain list of Head, compared as a list) with where they were drawn from:
    `.pool` names the pool ("below-median" or "reference"), `.pool_size` how many heads it held, `.cutoff` the
    score at or below which a head could be drawn, `.seed` and `.requested` (k; the reference pool may hold fewer
    heads than k, and then `len(self) < self.requested`)."""

    def __init__(self, heads, pool: str, pool_size: int, cutoff: float, seed: int, requested: int):
        super().__init__(heads)
        self.pool, self.pool_size, self.cutoff = pool, int(pool_size), float(cutoff)
        self.seed, self.requested = int(seed), int(requested)

    @property
    def description(self) -> str:
        """One line for tables: e.g. "7 of 23 heads scoring <= median (0.098), excluding the top 7; seed 0"."""
        if self.pool == "image-matched":
            return (f"{len(self)} of {self.pool_size} heads with image share >= 0.5 scoring <= {self.cutoff:.4g} "
                    f"(their median), excluding the top {self.requested}; seed {self.seed}")
        what = {"reference": "the reference's percentile rule", "below-median": "median"}.get(self.pool, "any")
        return (f"{len(self)} of {self.pool_size} heads scoring <= {self.cutoff:.4g} ({what}), excluding the top "
                f"{self.requested}; seed {self.seed}")

    def __repr__(self):
        return (f"ControlHeads({list.__repr__(self)}, pool={self.pool!r}, pool_size={self.pool_size}, "
                f"cutoff={self.cutoff:.4g}, seed={self.seed})")


@dataclass
class GazeScores:
    """Gaze scores of every head. `matrix` [L, H, 6, 6] (queried panel x attended panel, 0-based axes),
    `scores` [L, H] (mean diagonal)."""

    matrix: Optional[np.ndarray]
    scores: np.ndarray
    model_name: str = ""
    n_strips: int = 0
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, **kw) -> "GazeScores":
        """Scores from raw 6x6 attention matrices [layers, heads, asked, attended]: each head's mean diagonal (raw mass,
        not renormalised); extra keyword arguments go to the constructor."""
        scores = np.einsum("lhkk->lh", matrix) / matrix.shape[-1]
        return cls(matrix=matrix, scores=scores, **kw)

    @property
    def n_layers(self) -> int:
        """Number of language-model layers scored."""
        return self.scores.shape[0]

    @property
    def n_heads(self) -> int:
        """Attention heads per layer."""
        return self.scores.shape[1]

    def ranking(self) -> list[Head]:
        """All heads, best first (ties broken by layer, then head)."""
        L, H = self.scores.shape
        flat = self.scores.ravel()
        order = sorted(range(flat.size), key=lambda i: (-flat[i], i))
        return [Head(i // H, i % H) for i in order]

    def image_share(self) -> np.ndarray:
        """[L, H]: each head's attention on the whole image (the six panels together) from the last prompt token,
        averaged over the six panel questions: the row sums of `matrix`, averaged. 1 = all of its attention on the
        image, 0 = none (the raw gaze score can never exceed it)."""
        if self.matrix is None or not np.asarray(self.matrix).size:
            raise ValueError("these scores have no 6x6 matrices (loaded from a ranking JSON?): the image share needs "
                             "them; load the .gazekit.npz sidecar or rerun gazekit.discover")
        return np.asarray(self.matrix).sum(-1).mean(-1)

    def top(self, k: int) -> list[Head]:
        """The k heads with the highest gaze score."""
        total = self.scores.size
        if not 1 <= k <= total:
            raise ValueError(f"k must be 1..{total} (this model has {total} heads), got {k}")
        return self.ranking()[:k]

    def controls(self, k: int, pool: str = "below-median", seed: int = 0,
                 percentile: Optional[float] = None) -> ControlHeads:
        """k random control heads, size-matched to `top(k)` (never any of the top k).

        pool="below-median" (default): k heads drawn uniformly at random (``numpy.random.default_rng(seed)``)
            from the heads scoring at or below the median score, the top k excluded: a pool of about half the heads,
            so different seeds give different heads. ``percentile`` moves the cutoff (default 50). Raises where
            the pool holds fewer than 2k heads (k too large for a random, size-matched draw).
        pool="reference": the reference code's sampler exactly (its ``sample_non_gaze_heads``): the candidates are
            the heads, in (layer, head) order, outside the top k whose score is <= ``numpy.percentile(scores,
            percentile)`` (default 5; the reference's trajectory control uses 50); a ``torch.randperm`` over them
            with ``torch.Generator().manual_seed(seed)``; the first min(k, candidates) of that permutation. It
            may return FEWER than k heads (with 1,152 heads and the 5th percentile, ~57 for k = 100) and warns
            when it does.
        pool="image-matched": a control matched on image attention: the heads outside the top k that put at least
            half their attention on the image (`image_share() >= 0.5`, like the gaze heads) and, of those, the half
            with the lower gaze score (<= their median): heads that look at the image but not at the panel the
            question names. k drawn at random (``default_rng(seed)``); warns when the pool holds fewer than 2k
            heads, raises when it holds fewer than k. ``percentile`` moves the score cutoff (default 50)."""
        import warnings

        total = self.scores.size
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= total // 2:
            raise ValueError(f"k must be 1..{total // 2} for size-matched controls on {total} heads, got {k!r}")
        if pool not in CONTROL_POOLS:
            raise ValueError(f"pool must be one of {CONTROL_POOLS}, got {pool!r}")
        k = int(k)
        exclude = set(self.top(k))
        finite = self.scores[np.isfinite(self.scores)]
        L, H = self.scores.shape
        if pool == "reference":
            pct = 5.0 if percentile is None else float(percentile)
            cutoff = float(np.percentile(self.scores, pct))
            candidates = [Head(l, h) for l in range(L) for h in range(H)
                          if Head(l, h) not in exclude and float(self.scores[l, h]) <= cutoff]
            if not candidates:
                warnings.warn(f"no head outside the top {k} scores <= the {pct:g}th percentile ({cutoff:.4g}): "
                              "the reference's control is empty", stacklevel=2)
                return ControlHeads([], "reference", 0, cutoff, seed, k)
            gen = torch.Generator().manual_seed(int(seed))
            perm = torch.randperm(len(candidates), generator=gen).tolist()
            picked = [candidates[i] for i in perm[:min(k, len(candidates))]]
            if len(picked) < k:
                warnings.warn(f"the reference's control pool (heads scoring <= the {pct:g}th percentile, top {k} "
                              f"excluded) holds {len(candidates)} heads: returning {len(picked)}, not {k} "
                              "(not size-matched; pool='below-median' draws k)", stacklevel=2)
            return ControlHeads(picked, "reference", len(candidates), cutoff, seed, k)
        if pool == "image-matched":
            share = self.image_share()
            looking = [h for h in self.ranking() if h not in exclude and float(share[h]) >= 0.5]
            if not looking:
                raise ValueError(f"no head outside the top {k} puts half its attention on the image: no "
                                 "image-matched control; use pool='below-median'")
            cutoff = float(np.percentile([self.scores[h] for h in looking],
                                         50.0 if percentile is None else float(percentile)))
            candidates = [h for h in looking if float(self.scores[h]) <= cutoff]
            if len(candidates) < k:
                raise ValueError(f"only {len(candidates)} heads outside the top {k} look at the image (share >= 0.5) "
                                 f"and score <= {cutoff:.4g}: too few for {k} image-matched heads; lower k")
            if len(candidates) < 2 * k:
                warnings.warn(f"the image-matched pool holds {len(candidates)} heads, fewer than 2k = {2 * k}: the "
                              "draws overlap heavily", stacklevel=2)
            rng = np.random.default_rng(seed)
            pick = sorted(rng.choice(len(candidates), size=k, replace=False).tolist())
            return ControlHeads([candidates[i] for i in pick], "image-matched", len(candidates), cutoff, seed, k)
        cutoff = float(np.percentile(finite, 50.0 if percentile is None else float(percentile)))
        candidates = [h for h in self.ranking() if h not in exclude and float(self.scores[h]) <= cutoff]
        name = "below-median"
        if len(candidates) < 2 * k:  # k near half the heads: draw from every head outside the top k instead
            candidates = [h for h in self.ranking() if h not in exclude]
            cutoff, name = float(np.max(finite)), "outside-top-k"
            warnings.warn(f"fewer than 2k = {2 * k} heads outside the top {k} score <= the cutoff: drawing from all "
                          f"{len(candidates)} heads outside the top {k} instead", stacklevel=2)
        rng = np.random.default_rng(seed)
        pick = sorted(rng.choice(len(candidates), size=k, replace=False).tolist())
        return ControlHeads([candidates[i] for i in pick], name, len(candidates), cutoff, seed, k)

    # -- files ------------------------------------------------------------------------------------------------
    def to_reference_json(self) -> list[dict]:
        """The ranking as the paper's reference code writes it: a list of {layer, head, score}, best first."""
        return [{"layer": h.layer, "head": h.head, "score": float(self.scores[h])} for h in self.ranking()]

    def save(self, path) -> Path:
        """Write the reference ranking JSON at `path`, a sidecar `<stem>.gazekit.npz` with the matrices, the
        model's name and dimensions, and ``gaze_scores.npy`` ([L, H] float32) in the same folder — the file the
        reference's scripts 02-05 load from beside their ranking (one per folder, as there)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_reference_json(), indent=1))
        np.save(path.parent / SCORES_NPY, self.scores.astype(np.float32))
        sidecar = _sidecar(path)
        np.savez_compressed(sidecar, matrix=self.matrix if self.matrix is not None else np.zeros(0),
                            scores=self.scores, meta=json.dumps({"model_name": self.model_name,
                                                                  "n_strips": self.n_strips,
                                                                  "n_layers": self.n_layers,
                                                                  "n_heads": self.n_heads, **self.meta}))
        return path

    @classmethod
    def load(cls, path, vlm=None) -> "GazeScores":
        """Read a ranking JSON (gazekit's or the reference's bare list). With `vlm`, check its dimensions match."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no ranking file at {path}; run gazekit.discover(...).save(path) first")
        sidecar = _sidecar(path)
        if sidecar.exists():
            z = np.load(sidecar, allow_pickle=False)
            meta = json.loads(str(z["meta"]))
            matrix = z["matrix"] if z["matrix"].size else None
            out = cls(matrix=matrix, scores=z["scores"], model_name=meta.pop("model_name", ""),
                      n_strips=meta.pop("n_strips", 0), meta=meta)
        else:
            rows = json.loads(path.read_text())
            if not isinstance(rows, list) or not all({"layer", "head", "score"} <= set(r) for r in rows):
                raise ValueError(f"{path} is not a ranking file: expected a JSON list of {{layer, head, score}}")
            npy = _scores_npy(path, rows)  # the reference's [L, H] file, where it matches this ranking
            L = max(r["layer"] for r in rows) + 1 if npy is None else npy.shape[0]
            H = max(r["head"] for r in rows) + 1 if npy is None else npy.shape[1]
            # a bare list carries no dimensions: its largest (layer, head) must be this model's, and every head must
            # be ranked (padding a smaller model's file with -inf made top() return heads the file never ranked)
            if vlm is not None and ((L, H) != (vlm.n_layers, vlm.n_heads) or len(rows) != L * H):
                raise ValueError(f"{path} ranks {len(rows)} heads of a model with {L} layers x {H} heads, but {vlm.name} "
                                 f"has {vlm.n_layers} layers x {vlm.n_heads} heads ({vlm.n_layers * vlm.n_heads} "
                                 "heads): this ranking is of another model; run gazekit.discover on this model")
            scores = np.full((L, H), -np.inf)
            if npy is not None and npy.shape == scores.shape:
                scores[:] = npy
            for r in rows:
                scores[r["layer"], r["head"]] = r["score"]
            out = cls(matrix=None, scores=scores)
        if vlm is not None and (out.n_layers, out.n_heads) != (vlm.n_layers, vlm.n_heads):
            raise ValueError(f"{path} ranks a model with {out.n_layers} layers x {out.n_heads} heads, but "
                             f"{vlm.name} has {vlm.n_layers} x {vlm.n_heads}: run gazekit.discover on this model")
        return out

    def plot(self, k: Optional[int] = None):
        """Heatmap of all scores, their histogram and the best head's 6x6 matrix (`k` marks the top k); returns the
        figure."""
        from gazekit.plots import plot_gaze_scores

        return plot_gaze_scores(self, k=k)

    def __repr__(self):
        top = ", ".join(f"{h}={self.scores[h]:.2f}" for h in self.ranking()[:5])
        return f"GazeScores({self.n_layers}x{self.n_heads} heads, {self.n_strips} strips; top: {top})"


SCORES_NPY = "gaze_scores.npy"  # the reference's name: its scripts load ranking_path.parent / "gaze_scores.npy"


def _scores_npy(path: Path, rows: list) -> Optional[np.ndarray]:
    """The [L, H] scores from gaze_scores.npy beside a ranking JSON, if there is one that belongs to it (every
    listed head's score equal at float32 precision); else None."""
    npy = path.parent / SCORES_NPY
    if not npy.exists():
        return None
    arr = np.load(npy, allow_pickle=False)
    if arr.ndim != 2 or not rows:
        return None
    for r in rows:
        l, h = int(r["layer"]), int(r["head"])
        if l >= arr.shape[0] or h >= arr.shape[1] or np.float32(r["score"]) != np.float32(arr[l, h]):
            return None
    return arr.astype(np.float64)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.stem + ".gazekit.npz")


def discover(vlm, strips: Sequence[Strip], *, progress: bool = True, fast: bool = True, questions=None,
             batch_tokens: int = 1024) -> GazeScores:
    """Gaze scores from comic strips (the paper's six panel questions per strip).

    fast: the shared-prefix path (`strips_matrix_fast`), else six full forwards per strip. batch_tokens: strips
    with one token layout (e.g. the organism's) run several to a forward, up to this many tokens per forward
    (one strip at a time where one strip's packed prompt is longer, as on real models with ~1000 image tokens).
    Peak memory grows with it; batch_tokens=0 runs one strip at a time."""
    strips = list(strips)
    if not strips:
        raise ValueError("discover needs at least one strip, e.g. gazekit.comics.synthetic(20, seed=0)")
    for i, s in enumerate(strips):
        if not isinstance(s, Strip):
            raise TypeError(f"strip {i} is a {type(s).__name__}; build strips with gazekit.Strip.from_panels")
    if batch_tokens < 0:
        raise ValueError(f"batch_tokens must be >= 0 (0: one strip per forward), got {batch_tokens}")
    questions = questions or [panel_question(k) for k in range(1, N_PANELS + 1)]
    from tqdm.auto import tqdm

    total = np.zeros((vlm.n_layers, vlm.n_heads, N_PANELS, N_PANELS))
    use_fast = fast and vlm.adapter.supports_prefix_cache
    per_forward = 1  # strips per forward; set from the first strip's packed length
    done = 0
    with tqdm(total=len(strips), desc="discover", unit="strip", disable=not progress) as bar:
        while done < len(strips):
            if not use_fast:
                total += strip_matrix(vlm, strips[done], questions)
                chunk = 1
            else:
                chunk = min(per_forward, len(strips) - done)
                try:
                    got, row_tokens = _strips_matrix_fast(vlm, strips[done:done + chunk], questions)
                except LayoutMismatch:  # strips of different token layouts (sizes): one at a time from here on
                    got, row_tokens = _strips_matrix_fast(vlm, strips[done:done + 1], questions)
                    chunk = per_forward = 1
                    batch_tokens = 0
                total += got.sum(0)
                if done == 0 and batch_tokens:
                    per_forward = max(1, batch_tokens // max(row_tokens, 1))
            done += chunk
            bar.update(chunk)
    return GazeScores.from_matrix(total / len(strips), model_name=vlm.name, n_strips=len(strips),
                                  meta={"strips_per_forward": per_forward if use_fast else 0})


@torch.no_grad()
def strip_matrix(vlm, strip: Strip, questions) -> np.ndarray:
    """Naive path: one full forward per question. Returns [L, H, 6 (queried), 6 (attended)]."""
    rows = []
    for q in questions:
        prep = vlm.prepare(strip, q)
        rows.append(capture_prepared(vlm, prep)[:, 0])  # [L, H, R]
    return np.stack(rows, axis=2)


def strip_matrix_fast(vlm, strip: Strip, questions, mode: Optional[str] = None) -> np.ndarray:
    """`strips_matrix_fast` for one strip: [L, H, 6 (queried), 6 (attended)]."""
    return strips_matrix_fast(vlm, [strip], questions, mode)[0]


def strips_matrix_fast(vlm, strips: Sequence[Strip], questions, mode: Optional[str] = None) -> np.ndarray:
    """Shared-prefix path for strips of one token layout (run as one batch): prepare each image once and encode
    the six prompts' common prefix (the image) once. Returns [strips, L, H, 6 (queried), 6 (attended)], equal to
    `strip_matrix` (six full forwards) for each strip. Raises `LayoutMismatch` for strips of different layouts.

    mode (None: the first the model allows, in this order):
      "single": one forward of the prefix followed by the six question suffixes packed in the same row, each
          masked (4-D mask) to see the prefix and its own tokens and positioned as in its own prompt; the rows
          read are each suffix's last token. Needs 1-D positions and a causal prompt (`supports_packed_prompt`).
      "packed": the prefix once into a KV cache, then the six suffixes packed in one row on it (Qwen's M-RoPE:
          the prefix's positions come from the model). No copy of the cache.
      "batched": the six suffixes as a batch on six copies of the cache (sliding-window layers, which a 4-D mask
          cannot express next to full ones, and a steered prefill; "sequential" instead when an output edit such
          as `gazekit.ablate` is active too).
      "sequential": one suffix at a time on the one cache, cropped back after each (least memory, slowest).
    Measured on the organism (one strip, 53-token prompts, 1 CPU thread): single 11 ms, packed and batched 13,
    sequential 31; six full forwards 26 ms with sdpa, 37 ms with the reference's eager attention."""
    return _strips_matrix_fast(vlm, strips, questions, mode)[0]


@dataclass
class SharedPrefix:
    """The panel questions of a batch of strips, split where they stop sharing tokens: what every discovery mode
    runs on. `first` holds the strips with question 1 (images processed once); question q's prompt is the common
    prefix (`common` tokens: the image and what precedes it) followed by `suffixes[q]` ([strips, S_q] ids).
    `packed` [strips, S] sets the suffixes side by side (suffix q at `starts[q]:ends[q]`), `positions` [S] gives
    each packed token its position in its own prompt, `joined` the other per-token inputs (masks, token types) for
    prefix + packed suffixes, `preps[q]` question q's own inputs."""

    first: Any
    preps: list
    common: int
    suffixes: list
    starts: np.ndarray
    ends: np.ndarray
    packed: torch.Tensor
    positions: torch.Tensor
    joined: dict
    shares_image: bool = True  # False: the questions differ before the image ends (use `strip_matrix`)

    @property
    def n_strips(self) -> int:
        """Number of strips in the batch."""
        return int(self.packed.shape[0])

    @property
    def n_questions(self) -> int:
        """Number of panel questions (one suffix each)."""
        return len(self.suffixes)

    @property
    def regions(self) -> list:
        """The image regions (token positions per panel), shared by every question's prompt."""
        return self.first.regions

    @property
    def prompt_len(self) -> int:
        """Question 1's prompt length (inputs of this length along dim 1 are per-token)."""
        return int(self.first.prompt_len)

    @property
    def row_tokens(self) -> int:
        """Tokens in one strip's row when the prefix and every suffix run together."""
        return self.common + int(self.packed.shape[1])

    def per_token(self, v) -> bool:
        """Whether input `v` has one entry per prompt token ([batch, tokens]: ids, masks, token types)."""
        return _token_aligned(v, self.prompt_len)


def shared_prefix(vlm, strips, questions) -> SharedPrefix:
    """Prepare `strips` (one token layout) with every question and split the prompts at their common prefix.

    Args:
        vlm: a `gazekit.VLM`; strips: `Strip`s of one token layout; questions: the prompts (six panel questions).

    Returns:
        the `SharedPrefix`; its `shares_image` is False when the questions differ before the image ends (nothing
        worth sharing: use `strip_matrix`).

    Raises:
        LayoutMismatch: the strips do not share one token layout."""
    B = len(strips)
    first = vlm.prepare_batch(strips, [questions[0]] * B)
    preps = [first]
    # the other questions need only their token ids: don't process the images again
    for q, p in zip(questions[1:], vlm.adapter.question_inputs(first, questions[1:])):
        if p is None:
            p = vlm.prepare_batch(strips, [q] * B)
            p = {k: v for k, v in p.items() if _token_aligned(v, p.prompt_len)}
        preps.append(p)
    ids = [p["input_ids"] for p in preps]  # [B, L_q] each
    n = min(x.shape[1] for x in ids)
    same = (torch.stack([x[:, :n] for x in ids]) == ids[0][:, :n]).all(0).all(0)  # [n]: shared by every question
    common = n if bool(same.all()) else int((~same).nonzero()[0])
    shares_image = common > int(max(r.max() for r in first.regions)) and common < n
    suffixes = [x[:, common:] for x in ids]
    lengths = np.array([x.shape[1] for x in suffixes])
    ends = np.cumsum(lengths)
    # per-token inputs other than the ids (masks, token types): the shared prefix, then every suffix's own
    joined = {k: torch.cat([first[k][:, :common]] + [p[k][:, common:] for p in preps], dim=1)
              for k in first if k != "input_ids" and _token_aligned(first[k], ids[0].shape[1])}
    return SharedPrefix(first=first, preps=preps, common=common, suffixes=suffixes, starts=ends - lengths, ends=ends,
                        packed=torch.cat(suffixes, dim=1),
                        positions=torch.cat([torch.arange(common, common + int(n_q)) for n_q in lengths]),
                        joined=joined, shares_image=shares_image)


DISCOVERY_MODES = ("single", "packed", "batched", "sequential")


def choose_mode(vlm, sp: SharedPrefix, mode: Optional[str] = None) -> str:
    """The discovery mode for `sp` (None: the first the model and the active interventions allow), checked."""
    steering = any(implements(i, "key_bias") for i in vlm.interventions)
    # output edits (gazekit.ablate) keep per-sequence state that a copied, re-batched cache would not match
    editing = any(implements(i, "edit_output") for i in vlm.interventions)
    window = _shortest_window(vlm.model)
    fits = window >= sp.row_tokens  # every layer sees the whole packed row
    if mode is None:
        if steering or not fits:
            mode = "sequential" if editing and fits else "batched"
        else:
            mode = "single" if vlm.adapter.supports_packed_prompt else "packed"
    if mode not in DISCOVERY_MODES:
        raise ValueError(f"mode must be 'single', 'packed', 'batched' or 'sequential', got {mode!r}")
    if mode == "single" and not vlm.adapter.supports_packed_prompt:
        raise ValueError(f"mode='single' is not available for {vlm.family} (see Adapter.supports_packed_prompt); "
                         "use mode='packed'")
    if mode != "batched" and not fits:
        raise ValueError(f"mode={mode!r} needs every attention layer to see the whole prompt (this model has a "
                         f"{window}-key sliding window); use mode='batched'")
    return mode


def _record(vlm, sp: SharedPrefix, inputs: dict, query_rows=None) -> np.ndarray:
    """One forward of `inputs` (bound to `sp.first`: an active steer resolves its target there), recording every
    layer's attention of the last row (or `query_rows`) over the regions: [L, rows, H, R]."""
    rec = _RegionRecorder(vlm, sp.regions, query_rows=query_rows)
    with intervene(vlm, rec):
        vlm.forward(sp.first, inputs, **_compat.logits_to_keep(vlm.model))  # logits never read: skip most
    step = max(rec.raw)
    return torch.stack([rec.raw[step][l] for l in range(vlm.n_layers)]).numpy()


def _unpack(sp: SharedPrefix, got: np.ndarray) -> np.ndarray:
    """[L, B * Q, H, R] with row b * Q + q -> [B, L, H, Q, R]."""
    return got.reshape(got.shape[0], sp.n_strips, sp.n_questions, *got.shape[2:]).transpose(1, 0, 3, 2, 4)


def _mode_single(vlm, sp: SharedPrefix) -> np.ndarray:
    """One forward: the prefix and every suffix in one row, each suffix masked to see the prefix and itself."""
    dev = sp.packed.device
    inputs = {k: v for k, v in sp.first.items() if not sp.per_token(v)}  # pixel values etc.
    inputs.update({k: v for k, v in sp.joined.items() if k != "attention_mask"})
    inputs["input_ids"] = torch.cat([sp.first["input_ids"][:, :sp.common], sp.packed], dim=1)
    inputs["position_ids"] = torch.cat([torch.arange(sp.common), sp.positions])[None].expand(sp.n_strips, -1).to(dev)
    inputs["attention_mask"] = _packed_mask(sp.common, sp.starts, sp.ends, _mask_dtype(vlm), dev, with_prefix=True)
    return _unpack(sp, _record(vlm, sp, dict(inputs, use_cache=False),
                               query_rows=[sp.common + int(e) - 1 for e in sp.ends]))


def _prefix_cache(vlm, sp: SharedPrefix):
    """The common prefix run once into a fresh KV cache."""
    from transformers import DynamicCache

    cache = DynamicCache(config=vlm.model.config.get_text_config())
    prefix = {k: (v[:, :sp.common] if sp.per_token(v) else v) for k, v in sp.first.items()}
    vlm.forward(sp.first, prefix, **{_compat.cache_kwarg(vlm.model): cache}, use_cache=True,
                **_compat.logits_to_keep(vlm.model))
    return cache


def _mode_packed(vlm, sp: SharedPrefix) -> np.ndarray:
    """The prefix into a cache, then every suffix packed in one row on it (no copy of the cache)."""
    cache = _prefix_cache(vlm, sp)
    extras = vlm.adapter.suffix_inputs(sp.joined, sp.common, sp.packed, positions=sp.positions)
    extras["attention_mask"] = _packed_mask(sp.common, sp.starts, sp.ends, _mask_dtype(vlm), sp.packed.device)
    inputs = dict(input_ids=sp.packed, **{_compat.cache_kwarg(vlm.model): cache}, use_cache=True, **extras)
    return _unpack(sp, _record(vlm, sp, inputs, query_rows=[int(e) - 1 for e in sp.ends]))


def _mode_sequential(vlm, sp: SharedPrefix) -> np.ndarray:
    """The prefix into a cache, then one suffix at a time on it, cropped back after each."""
    cache = _prefix_cache(vlm, sp)
    out = np.zeros((sp.n_strips, vlm.n_layers, vlm.n_heads, sp.n_questions, len(sp.regions)))
    for qi, x in enumerate(sp.suffixes):
        extras = vlm.adapter.suffix_inputs(sp.preps[qi], sp.common, x)
        inputs = dict(input_ids=x, **{_compat.cache_kwarg(vlm.model): cache}, use_cache=True, **extras)
        out[:, :, :, qi, :] = _record(vlm, sp, inputs).transpose(1, 0, 2, 3)
        cache.crop(-x.shape[1])
    return out


def _mode_batched(vlm, sp: SharedPrefix) -> np.ndarray:
    """The prefix into a cache, then the suffixes of each length as one batch on a copy of it."""
    cache = _prefix_cache(vlm, sp)
    B = sp.n_strips
    out = np.zeros((B, vlm.n_layers, vlm.n_heads, sp.n_questions, len(sp.regions)))
    groups: dict[int, list[int]] = {}
    for qi, x in enumerate(sp.suffixes):
        groups.setdefault(x.shape[1], []).append(qi)
    for gi, (length, members) in enumerate(groups.items()):
        m = len(members)
        # batch_repeat_interleave repeats each strip's cache row m times in place: row b * m + j = question j
        suffix = torch.stack([sp.suffixes[qi] for qi in members], dim=1).reshape(B * m, length)
        c = cache if gi == len(groups) - 1 else copy.deepcopy(cache)  # the last group may consume the prefix cache
        if m > 1:
            c.batch_repeat_interleave(m)
        # every row's suffix is text of one layout: one strip's per-token inputs, expanded to all B * m rows
        one_row = {k: (v[:1] if torch.is_tensor(v) and v.dim() == 2 else v) for k, v in sp.preps[members[0]].items()}
        extras = vlm.adapter.suffix_inputs(one_row, sp.common, suffix)
        inputs = dict(input_ids=suffix, **{_compat.cache_kwarg(vlm.model): c}, use_cache=True, **extras)
        got = _record(vlm, sp, inputs)  # [L, B * m, H, R]
        got = got.reshape(got.shape[0], B, m, *got.shape[2:])
        for j, qi in enumerate(members):
            out[:, :, :, qi, :] = got[:, :, j].transpose(1, 0, 2, 3)
    return out


_RUN_MODE = {"single": _mode_single, "packed": _mode_packed, "batched": _mode_batched,
             "sequential": _mode_sequential}


@torch.no_grad()
def _strips_matrix_fast(vlm, strips, questions, mode=None):
    """(matrices [B, L, H, 6, 6], tokens in one strip's forward row)."""
    strips = list(strips)
    sp = shared_prefix(vlm, strips, questions)
    if not sp.shares_image:
        return np.stack([strip_matrix(vlm, s, questions) for s in strips]), sp.prompt_len
    return _RUN_MODE[choose_mode(vlm, sp, mode)](vlm, sp), sp.row_tokens


def _mask_dtype(vlm):
    """sdpa takes a boolean mask (cheaper than an additive one); eager attention adds the mask to its logits."""
    impl = getattr(vlm.model.config.get_text_config(), "_attn_implementation", None)
    return vlm.dtype if impl == "eager" else torch.bool


_NO_WINDOW = 1 << 62


def _shortest_window(model) -> int:
    """The smallest number of keys any text attention layer sees (sliding windows), or _NO_WINDOW."""
    cfg = model.config.get_text_config()
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if not window or (types is not None and not any("sliding" in str(t) for t in types)):
        return _NO_WINDOW
    return int(window)


def _packed_mask(common: int, starts, ends, dtype, device, with_prefix: bool = False) -> torch.Tensor:
    """Mask for suffixes packed in one row after a `common`-token prefix (boolean, True = visible, for
    dtype=torch.bool; else additive): every suffix token sees the whole prefix and the earlier tokens of its own
    suffix, nothing of the others. [1, 1, S, common + S] for the
    suffix rows alone (the prefix is in a cache), or with_prefix [1, 1, common + S, common + S], the prefix rows
    plain causal."""
    S = int(ends[-1])
    seg = torch.zeros(S, dtype=torch.long)
    for i, (a, b) in enumerate(zip(starts, ends)):
        seg[int(a):int(b)] = i
    idx = torch.arange(S)
    own = (seg[:, None] == seg[None, :]) & (idx[None, :] <= idx[:, None])
    keep = torch.cat([torch.ones(S, common, dtype=torch.bool), own], dim=1)
    if with_prefix:
        top = torch.ones(common, common, dtype=torch.bool).tril()
        top = torch.cat([top, torch.zeros(common, S, dtype=torch.bool)], dim=1)
        keep = torch.cat([top, keep], dim=0)
    if dtype == torch.bool:
        return keep[None, None].to(device)
    mask = torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)
    return mask[None, None].to(device)


def _token_aligned(v, length: int) -> bool:
    """A per-token input ([batch, tokens]: ids, masks, token types) of a prompt `length` tokens long."""
    return torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == length


