"""The public intervention API: write your own steerer, recorder or head edit, and run it with `intervene`.

`steer`, `capture`, `track` and `ablate` are thin layers over this: each builds one `Intervention` and runs the
model inside `intervene(vlm, it)`. While any intervention is active, the language model runs gazekit's attention
function (`gazekit.attention`), which calls the interventions' hooks at four points of every forward:

1. `on_step(session)` before each forward of the model (the prefill, then every decode step);
2. `key_bias(session, layer, n_keys, device)` before a layer's softmax: extra pre-softmax logits for chosen heads;
3. `edit_output(session, layer, output, query, key, value, attention_mask)` after it: change chosen heads'
   attention output (softmax(QK^T)V, before the output projection) in place;
4. `record(session, layer, probs, value_norms, n_keys)`: read the last query row's attention probabilities.

An intervention implements any subset: subclass `Intervention` to inherit no-op defaults (a hook left as the
default is never called, so an unused hook costs nothing), or write any object with the hooks you need.

The `session` every hook receives describes the forward being run: `session.prepared` is the `Prepared` input this
forward belongs to — bound explicitly by `vlm.forward(prepared)` / `vlm.generate(prepared)` / `vlm.ask`, or
recognised by its own `input_ids` tensor in a raw `vlm.model(**prepared)` call, and kept through the decode steps of
that sequence (there is no "last prepared input" on the VLM). `session.step` is the decode step (0: the forward that
produces the first new token), `session.prompt_len` the prompt's length, `session.total_len` the sequence length
after this forward (keys are right-aligned: a layer that sees K keys sees positions total_len - K .. total_len - 1),
`session.generated` the token ids generated so far (row 0), `session.vlm` the model.

>>> class Zero(gazekit.Intervention):              # silence head L3.H1 while generating
...     def edit_output(self, session, layer, output, query, key, value, attention_mask):
...         if layer == 3:
...             output[:, :, 1] = 0
>>> with gazekit.intervene(vlm, Zero()):
...     vlm.ask(strip, gazekit.VQA_QUESTION)
"""
from __future__ import annotations

import contextlib
from typing import Optional, Protocol, Sequence, runtime_checkable

import torch

__all__ = ["HOOKS", "Intervention", "intervene"]

HOOKS = ("on_step", "key_bias", "edit_output", "record")


def _default(fn):
    """Mark a hook as the Protocol's no-op default: the session skips interventions that leave it as it is."""
    fn.gazekit_default_hook = True
    return fn


def implements(item, hook: str) -> bool:
    """Whether `item` takes part in `hook` (defines it, and not as `Intervention`'s no-op default)."""
    fn = getattr(item, hook, None)
    return callable(fn) and not getattr(fn, "gazekit_default_hook", False)


@runtime_checkable
class Intervention(Protocol):
    """What gazekit's attention function calls on an active intervention (see the module doc for the session).

    Every hook is optional. Subclass this class to inherit no-op defaults, or implement the hooks you need on any
    object. Hooks run under `torch.no_grad()` when the model does; they must not keep the tensors they are handed
    beyond the forward unless they mean to (a recorder copies what it keeps to the CPU)."""

    #: query rows (indices into this forward's queries) `record` wants; None: the last row only
    query_rows: Optional[Sequence[int]] = None
    #: whether `record` wants the value vectors' norms too (value-weighted attention)
    value_norms: bool = False

    @_default
    def on_step(self, session) -> None:
        """Called before every forward of the model, after `session` describes it (step, lengths, prepared input).

        Args:
            session: the active `gazekit.attention.Session` (see the module doc for its fields)."""

    @_default
    def key_bias(self, session, layer: int, n_keys: int, device: torch.device):
        """Extra pre-softmax logits for some heads of `layer`, or None for none.

        Args:
            session: the active session.
            layer: the 0-based language-model layer about to run its attention.
            n_keys: K, the keys this layer sees (right-aligned: positions total_len - K .. total_len - 1).
            device: where the returned tensor must live.

        Returns:
            None, or (heads, bias): `heads` a list of query-head indices of this layer, `bias` float32 of shape
            [K] (shared by every batch row) or [batch, K], added to those heads' logits at every query row.
            Biases of several interventions on one head add up."""
        return None

    @_default
    def edit_output(self, session, layer: int, output: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                    value: torch.Tensor, attention_mask) -> None:
        """Edit this layer's attention output in place (before the output projection `o_proj`).

        Args:
            session: the active session.
            layer: the 0-based language-model layer.
            output: [batch, queries, heads, head_dim], each head's softmax(QK^T)V; write into it.
            query: [batch, heads, queries, head_dim] (after rotary embedding).
            key: [batch, kv_heads, K, head_dim] (grouped-query attention: query head h reads kv head
                h // (heads // kv_heads)).
            value: [batch, kv_heads, K, head_dim].
            attention_mask: the layer's own mask as transformers hands it (None: causal; bool: True = visible;
                float: additive), before any steering bias; `gazekit.attention.visible_keys` turns it into
                [batch, 1 or heads, queries, K] booleans."""

    @_default
    def record(self, session, layer: int, probs: torch.Tensor, value_norms: Optional[torch.Tensor],
               n_keys: int) -> None:
        """Receive the attention probabilities of the last query row (or of `query_rows`), steering included.

        Args:
            session: the active session.
            layer: the 0-based language-model layer.
            probs: float32 [batch * rows, heads, K] (rows: 1, or len(query_rows), as extra batch rows).
            value_norms: float32 [batch * rows, heads, K] (|v| of each key for each query head) when any active
                recorder sets `value_norms = True`, else None.
            n_keys: K."""


def intervene(vlm, *interventions) -> "contextlib.AbstractContextManager":
    """Run `interventions` on every forward of `vlm` inside the block; restore the model exactly on exit.

    >>> rec = MyRecorder()
    >>> with gazekit.intervene(vlm, rec):
    ...     vlm.forward(vlm.prepare(strip, question))

    The attention implementation of the language model is switched to gazekit's while any intervention is active
    (nesting is fine: the outermost block installs, the last to close restores), also when an exception escapes.

    Args:
        vlm: a `gazekit.VLM`.
        *interventions: objects implementing some of `Intervention`'s hooks (subclasses of `Intervention`, or any
            object with at least one of `HOOKS`), attached in order.

    Yields:
        the interventions, as a tuple."""
    return vlm.intervene(*interventions)


def check_interventions(interventions) -> None:
    """Refuse objects that implement none of the hooks (almost always a class passed instead of an instance)."""
    for item in interventions:
        if isinstance(item, type):
            raise TypeError(f"intervene got the class {item.__name__}, not an instance: pass {item.__name__}(...)")
        if not any(implements(item, h) for h in HOOKS):
            raise TypeError(f"{type(item).__name__} implements none of the intervention hooks {HOOKS}: subclass "
                            "gazekit.Intervention and override at least one (see help(gazekit.Intervention))")

