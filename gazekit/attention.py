"""The one mechanism behind capture, steering and tracking: a custom attention function.

While any gazekit intervention is active on a VLM, its *language model* runs `gazekit_sdpa` (or `gazekit_eager`
when the model was loaded with eager attention), registered with transformers' `AttentionInterface`. For each
layer that function

* adds the active steering bias to the selected heads' pre-softmax logits (through the attention mask), and
* records the last query row's attention over the image regions (cheap: O(heads x keys) per layer),

then calls the stock sdpa/eager function, so unselected heads compute exactly what they did before.
A forward pre-hook on the model counts decode steps (0 = the forward that produces the first generated token).

Interventions (`gazekit.intervene`: steerers, recorders, head edits such as `gazekit.ablate`) reach this function
through the `Session` of their model; after the stock function, interventions that edit head outputs rewrite
their heads' slices of its output.

Everything is installed when the first intervention opens and removed when the last one closes — also when an
exception escapes — restoring the previous attention implementation; a test checks the model is bit-for-bit as
before.

Precision (a deliberate choice): the bias is shifted per query row so that the largest bias a row can see is 0
(softmax is invariant to a per-row constant). Boosted target keys therefore keep their exact logits in any dtype
(in bf16 a +1e4 offset would round the within-target differences away: spacing 64), while suppressed keys get
-strength or -2*strength and vanish. In exact arithmetic this equals the paper's +B/-B recipe.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Optional

import torch

from gazekit.models import _compat

_SESSIONS: dict[int, "Session"] = {}  # id(attention module) -> session of the VLM that owns it
_LOCK = threading.RLock()
_REGISTERED = False


def _register():
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    AttentionInterface.register("gazekit_sdpa", _gazekit_sdpa)
    AttentionInterface.register("gazekit_eager", _gazekit_eager)
    AttentionMaskInterface.register("gazekit_sdpa", sdpa_mask)
    AttentionMaskInterface.register("gazekit_eager", eager_mask)
    _REGISTERED = True


def _gazekit_sdpa(module, query, key, value, attention_mask, **kwargs):
    return _forward(_compat.stock_sdpa(), module, query, key, value, attention_mask, **kwargs)


def _gazekit_eager(module, query, key, value, attention_mask, **kwargs):
    return _forward(_compat.stock_eager(module), module, query, key, value, attention_mask, **kwargs)


def _additive_mask(attention_mask, B, Q, K, dtype, device) -> torch.Tensor:
    """Any mask form transformers hands us (None = causal, bool, additive float) as an additive float mask."""
    neg = torch.finfo(dtype).min
    if attention_mask is None:
        if Q == 1:
            return torch.zeros(B, 1, Q, K, dtype=dtype, device=device)
        keep = torch.ones(Q, K, dtype=torch.bool, device=device).tril(K - Q)
        m = torch.zeros(Q, K, dtype=dtype, device=device).masked_fill(~keep, neg)
        return m[None, None].expand(B, 1, Q, K)
    m = attention_mask[..., :K]
    if m.dtype == torch.bool:
        m = torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(~m, neg)
    else:
        m = m.to(dtype)
    return m.expand(B, m.shape[1], Q, K)


def _forward(stock: Callable, module, query, key, value, attention_mask, **kwargs):
    session = _SESSIONS.get(id(module))
    if session is None:  # another model that happens to use the same implementation name
        return stock(module, query, key, value, attention_mask, **kwargs)
    layer = session.layer_of[id(module)]
    B, Hq, Q, _ = query.shape
    K = key.shape[-2]
    own_mask = attention_mask  # the layer's mask before any steering bias: what output edits see
    out = None
    if Q > 1 and stock is _compat.stock_sdpa() and kwargs.get("position_bias") is None:
        rows = session.head_keys(layer, K, query.device)
        if rows is not None:
            out = _forward_split(stock, session, layer, rows, module, query, key, value, attention_mask, **kwargs)
    if out is None:
        bias = session.bias(layer, B, Hq, Q, K, query.device)  # [B, Hq, 1, K] float32 key bias, or None
        if bias is not None:
            attention_mask = _biased_mask(attention_mask, bias, B, Q, K, query.dtype, query.device)
            kwargs.pop("is_causal", None)
        if session.recording:
            _record_last_row(session, layer, module, query, key, value, attention_mask, kwargs.get("scaling"))
        out = stock(module, query, key, value, attention_mask, **kwargs)
    if session.editors:
        session.edit(layer, out[0], query, key, value, own_mask)
    return out


def visible_keys(attention_mask, B, Q, K, device) -> torch.Tensor:
    """Which keys each query row may see under a layer's mask (None = causal, bool, or additive float), as a bool
    tensor [B, 1 or heads, Q, K] (keys right-aligned to the K the layer sees)."""
    add = _additive_mask(attention_mask, B, Q, K, torch.float32, device)
    return add > torch.finfo(torch.float32).min / 2


def _biased_mask(attention_mask, bias, B, Q, K, dtype, device) -> torch.Tensor:
    """The layer's mask plus a key bias [B, h, 1, K] -> additive mask [B, h, Q, K] in `dtype`."""
    add = _additive_mask(attention_mask, B, Q, K, torch.float32, device)
    # Shift each row by the largest bias among the keys *this layer's mask* lets it see (softmax is invariant
    # to a per-row constant): boosted keys keep exact logits in any dtype, and a row that cannot see the
    # target (e.g. outside a sliding window) is left exactly as it was.
    visible = add > torch.finfo(torch.float32).min / 2
    row_max = bias.masked_fill(~visible, float("-inf")).amax(-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    # clamp within both float32 (the arithmetic here) and `dtype`: float64's minimum overflows a float32 tensor
    floor = max(torch.finfo(dtype).min, torch.finfo(torch.float32).min)
    return (add + (bias - row_max)).clamp_min(floor).to(dtype)


def _forward_split(stock, session, layer, rows, module, query, key, value, attention_mask, **kwargs):
    """Prefill with steered heads under sdpa: every head runs the stock kernel with the model's own mask (its
    causal fast path kept, unselected heads exactly as without gazekit), then only the selected heads are
    recomputed with the biased mask and written over their outputs. Biasing a [batch, all heads, Q, K] mask instead
    made steered generation ~1.4x slower than unsteered on a mid-size Qwen2-VL (666-token prompt, 16 tokens)."""
    heads, keys = rows  # keys: [n_selected, K] float32, or [n_selected, B, K] with one target per batch row
    B, Hq, Q, D = query.shape
    K = key.shape[-2]
    per_row = keys.transpose(0, 1)[:, :, None, :] if keys.dim() == 3 else keys[None, :, None, :].expand(B, -1, 1, K)
    idx = torch.tensor(heads, device=query.device)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[1] == Hq:
        attention_mask_sel = attention_mask[:, idx]
    else:
        attention_mask_sel = attention_mask
    sel_mask = _biased_mask(attention_mask_sel, per_row, B, Q, K, query.dtype, query.device)
    if session.recording:  # the last row of every head's mask: the model's own, biased for the selected heads
        if session.query_rows is not None:
            raise RuntimeError("recording chosen query rows while steering a prefill is not supported; "
                               "capture without query_rows inside steer()")
        last = _additive_rows(attention_mask, [Q - 1], B, Q, K, torch.float32, query.device)
        last = last.expand(B, Hq, 1, K).clone()
        last[:, idx] = sel_mask[:, :, -1:, :].float()
        _record_last_row(session, layer, module, query, key, value, last, kwargs.get("scaling"))
    out = stock(module, query, key, value, attention_mask, **kwargs)
    attn = out[0]  # [B, Q, Hq, D]
    kv = idx // (Hq // key.shape[1])  # grouped-query attention: each query head's key/value head
    o = torch.nn.functional.scaled_dot_product_attention(
        query[:, idx], key[:, kv], value[:, kv], attn_mask=sel_mask, dropout_p=float(kwargs.get("dropout") or 0.0),
        scale=kwargs.get("scaling"))
    attn[:, :, idx] = o.transpose(1, 2).to(attn.dtype)
    return out


def _additive_rows(attention_mask, rows, B, Q, K, dtype, device) -> torch.Tensor:
    """`_additive_mask(...)[:, :, rows, :]` without building the other query rows: [B, 1 or H, len(rows), K]."""
    if attention_mask is None:  # causal, keys right-aligned: query row r sees keys up to K - Q + r
        r = torch.as_tensor(rows, device=device).view(-1, 1)
        keep = torch.arange(K, device=device).view(1, -1) <= (K - Q + r)
        m = torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, torch.finfo(dtype).min)
        return m[None, None].expand(B, 1, len(rows), K)
    m = attention_mask[..., :K]
    m = m.expand(m.shape[0], m.shape[1], Q, K)[:, :, rows, :]
    return _additive_mask(m, B, len(rows), K, dtype, device)


def _record_last_row(session, layer, module, query, key, value, attention_mask, scaling):
    """Record the last query row's attention — or, where a recorder asks for `query_rows` (discovery's packed
    suffixes), those rows, handed on as extra batch rows: probs [B * n_rows, Hq, K]."""
    B, Hq, Q, D = query.shape
    Hkv, K = key.shape[1], key.shape[-2]
    rep = Hq // Hkv
    if scaling is None:
        scaling = getattr(module, "scaling", D ** -0.5)
    rows = [Q - 1] if session.query_rows is None else session.query_rows
    q_rows = query[:, :, rows, :]
    add = _additive_rows(attention_mask, rows, B, Q, K, torch.float32, query.device)
    n = len(rows)
    # grouped-query attention without repeating the keys: query head h reads key head h // rep, so the chosen rows
    # of each group's `rep` query heads form one [rep * n, D] x [D, K] product
    q = q_rows.float().reshape(B, Hkv, rep * n, D)
    logits = (torch.matmul(q, key.float().transpose(-1, -2)) * scaling).reshape(B, Hq, n, K)
    probs = torch.softmax(logits + add, dim=-1)  # [B, Hq, n, K]
    probs = probs.permute(0, 2, 1, 3).reshape(B * n, Hq, K)
    vnorm = None
    if session.want_value_norms:
        vnorm = value.float().norm(dim=-1)  # [B, Hkv, K]
        vnorm = vnorm.repeat_interleave(rep, dim=1) if rep > 1 else vnorm  # [B, Hq, K]
        vnorm = vnorm.repeat_interleave(n, dim=0) if n > 1 else vnorm
    session.record(layer, probs, vnorm, K)


class Session:
    """Per-model state while interventions are active; what every intervention hook receives as `session`.

    Created and closed by `VLM.intervene` (`gazekit.intervene`). Fields a hook may read (see `gazekit.intervene`'s
    module doc): `vlm`, `prepared` (the `Prepared` input of the forward being run, or None when the forward was
    given no prepared input), `step` (0 = the forward producing the first new token), `prompt_len`, `total_len`
    (sequence length after this forward), `generated` (token ids generated so far, row 0), `interventions`."""

    def __init__(self, vlm):
        self.vlm = vlm
        modules = vlm.adapter.attention_modules()
        self.layer_of = {id(m): i for i, m in enumerate(modules)}
        self.interventions: list = []
        # the interventions taking part in each hook, in attach order (a hook left as the default is never called)
        self.steppers: list = []
        self.steerers: list = []
        self.editors: list = []
        self.recorders: list = []
        self.step = 0
        self.prompt_len = 0
        self.total_len = 0
        self.generated: list[int] = []
        self.prepared = None
        self._bound: list = []  # inputs bound by VLM.forward/generate, innermost last
        self._hook = None
        self._previous_impl = None

    # -- interventions -----------------------------------------------------------------------------------------------
    def attach(self, item):
        """Add an intervention; it takes part in each hook it implements (see `gazekit.intervene`)."""
        from gazekit.intervene import implements

        self.interventions.append(item)
        for hook, bucket in (("on_step", self.steppers), ("key_bias", self.steerers), ("edit_output", self.editors),
                             ("record", self.recorders)):
            if implements(item, hook):
                bucket.append(item)

    def detach(self, item):
        """Remove an intervention (by identity) from every hook it took part in."""
        for bucket in (self.interventions, self.steppers, self.steerers, self.editors, self.recorders):
            for i, x in enumerate(bucket):
                if x is item:
                    del bucket[i]
                    break

    @contextlib.contextmanager
    def bind(self, prepared):
        """Bind `prepared` to the forwards run inside the block (`VLM.forward`/`generate`)."""
        self._bound.append(prepared)
        try:
            yield
        finally:
            self._bound.pop()

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def install(self):
        """Route the language model's attention through gazekit's function (saving each config's implementation) and
        register the forward pre-hook; undone by `uninstall`, also when installing fails halfway."""
        _register()
        model = self.vlm.model
        configs = self._attention_configs()
        self._previous_impl = [(cfg, cfg._attn_implementation) for cfg in configs]
        was = configs[0]._attn_implementation or "sdpa"
        name = "gazekit_eager" if was == "eager" else "gazekit_sdpa"
        with _LOCK:
            for mid in self.layer_of:
                _SESSIONS[mid] = self
        try:
            for cfg in configs:
                _compat.set_own_attn_implementation(cfg, name)
            self._hook = model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        except BaseException:
            self.uninstall()
            raise

    def uninstall(self):
        """Restore every attention implementation and remove the pre-hook; always leaves the model as it was."""
        try:
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            for cfg, impl in self._previous_impl or ():
                _compat.set_own_attn_implementation(cfg, impl)
            self._previous_impl = None
        finally:
            self.prepared = None
            with _LOCK:
                for mid in self.layer_of:
                    if _SESSIONS.get(mid) is self:
                        del _SESSIONS[mid]

    def _attention_configs(self) -> list:
        """The config objects the language model's attention reads its implementation from (usually one: the text
        config). Setting these directly, not through `model.set_attn_implementation` (which walks every module of
        the model, ~0.6 ms per call on the 0.6M-parameter organism), touches exactly the language model's attention
        and mask creation; the vision tower keeps its own."""
        text = self.vlm.model.config.get_text_config()
        found = {id(text): text}
        for module in [self.vlm.adapter.language_model(), *self.vlm.adapter.attention_modules()]:
            cfg = getattr(module, "config", None)
            if cfg is not None and hasattr(cfg, "_attn_implementation"):
                found.setdefault(id(cfg), cfg)
        return list(found.values())

    # -- step bookkeeping (forward pre-hook on the whole model) --------------------------------------------------
    def _pre_forward(self, module, args, kwargs):
        from gazekit.models.vlm import Prepared

        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        n_new = ids.shape[1] if ids is not None else embeds.shape[1]
        past = _compat.past_length(kwargs)
        # the input this forward belongs to: bound explicitly (VLM.forward/generate), else the Prepared whose own
        # input_ids tensor this is (a raw model(**prepared) call); a decode step keeps its sequence's
        owner = Prepared.owning(ids)
        if self._bound:
            self.prepared = self._bound[-1]
        elif owner is not None:
            self.prepared = owner
        elif past == 0:
            self.prepared = None
        if past == 0:
            self.prompt_len = n_new
            self.generated = []
        elif ids is not None and n_new == 1:
            self.generated.append(int(ids[0, -1]))
        self.total_len = past + n_new
        self.step = self.total_len - self.prompt_len
        for s in self.steppers:
            s.on_step(self)
        return None

    def require_prepared(self, who: str):
        """`self.prepared`, or a clear error naming how to bind an input (for interventions that need regions)."""
        if self.prepared is None:
            raise RuntimeError(f"{who}: this forward has no prepared input to find its regions in; run the model "
                               "through vlm.ask / vlm.generate(prepared) / vlm.forward(prepared) inside the context "
                               "(a raw vlm.model(**prepared) call is recognised too; vlm.model.generate(**prepared) "
                               "copies its inputs and is not)")
        return self.prepared

    # -- what the attention function asks ------------------------------------------------------------------------
    @property
    def recording(self) -> bool:
        """Whether any active intervention records attention (the attention function then computes probabilities)."""
        return bool(self.recorders)

    @property
    def query_rows(self) -> Optional[list]:
        """Query rows (indices into this forward's queries) the recorders want; None: the last row."""
        asked = {tuple(r.query_rows) for r in self.recorders if getattr(r, "query_rows", None) is not None}
        if len(asked) > 1:
            raise RuntimeError("two active recorders ask for different query rows; run them one after the other")
        return list(asked.pop()) if asked else None

    @property
    def want_value_norms(self) -> bool:
        """Whether a recorder asked for value-vector norms (value-weighted attention)."""
        return any(getattr(r, "value_norms", False) for r in self.recorders)

    def record(self, layer, probs, vnorm, K):
        """Hand one layer's attention probabilities (and value norms, or None) to every recorder."""
        for r in self.recorders:
            r.record(self, layer, probs, vnorm, K)

    def edit(self, layer, output, query, key, value, attention_mask):
        """Let every output editor change this layer's attention output in place (before the output projection)."""
        for e in self.editors:
            e.edit_output(self, layer, output, query, key, value, attention_mask)

    def head_keys(self, layer, K, device):
        """(sorted steered heads of `layer`, their summed key bias [n, K] float32), or None."""
        acc: dict = {}
        for s in self.steerers:
            r = s.key_bias(self, layer, K, device)
            if r is not None:
                for h in r[0]:
                    acc[h] = r[1] if h not in acc else acc[h] + r[1]
        if not acc:
            return None
        heads = sorted(acc)
        rows = [acc[h] for h in heads]
        if any(r.dim() == 2 for r in rows):  # RowTargets: [batch, K] per head; broadcast the shared ones
            shape = next(r.shape for r in rows if r.dim() == 2)
            rows = [r.expand(shape) for r in rows]
        return heads, torch.stack(rows)

    def bias(self, layer, B, Hq, Q, K, device) -> Optional[torch.Tensor]:
        """Sum of the active interventions' key biases for this layer: [B, Hq, 1, K] float32 (zeros for other
        heads), or None."""
        total = None
        for s in self.steerers:
            r = s.key_bias(self, layer, K, device)
            if r is None:
                continue
            heads, keys = r
            b = torch.zeros(B, Hq, 1, K, dtype=torch.float32, device=device)
            b[:, heads] = keys if keys.dim() == 1 else keys[:, None, None, :]  # one row for all, or one per row
            total = b if total is None else total + b
        return total
