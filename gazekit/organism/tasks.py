"""The organism's tasks, with the paper's prompts as written (the tokenizer lowercases and splits punctuation).

| task     | prompt                                   | answer                                              |
|----------|------------------------------------------|-----------------------------------------------------|
| panel    | panel_question(k), k = 1..6              | caption of panel k                                  |
| main     | VQA_QUESTION (whole strip)               | caption of the cued "main event" panel (white frame) |
| narr     | NARRATION_PROMPT (ambiguous)             | caption of panel 1                                  |
| all      | PANEL_BY_PANEL_PROMPT                    | the six captions in order, joined by " . "          |
| single   | SINGLE_PANEL_PROMPT, one tile only       | that panel's caption                                |

During training only, 0-8 random filler words go between the image and the question: without them the
prototype's layer-0 heads fetched the default panel by fixed token distance, a path the gaze heads do not control.
"""
from __future__ import annotations

import numpy as np

from gazekit.comics.synthetic import caption_of, cached_tile, sample_strip_attrs
from gazekit.organism.processor import FILLER_WORDS, SINGLE_PANEL_PROMPT
from gazekit.regions import NARRATION_PROMPT, PANEL_BY_PANEL_PROMPT, VQA_QUESTION, panel_question

TASKS = ("panel", "main", "narr", "all", "single")
DEFAULT_MIX = {"panel": 0.40, "main": 0.15, "narr": 0.15, "all": 0.15, "single": 0.15}


def panel_by_panel_answer(captions) -> str:
    """The gold panel-by-panel answer: the six captions joined by " . "."""
    return " . ".join(captions)


def default_answer(task: str, captions, main_panel: int, k: int | None = None) -> str:
    """The gold answer of a task for a strip (main_panel and k are 1-based)."""
    if task == "panel":
        return captions[k - 1]
    if task == "main":
        return captions[main_panel - 1]
    if task == "narr":
        return captions[0]
    if task == "all":
        return panel_by_panel_answer(captions)
    raise ValueError(f"unknown task {task!r}; use one of {TASKS[:-1]}")


def question(task: str, k: int | None = None) -> str:
    """The prompt of a training task ("panel" needs the 1-based panel `k`)."""
    return {"panel": lambda: panel_question(k), "main": lambda: VQA_QUESTION, "narr": lambda: NARRATION_PROMPT,
            "all": lambda: PANEL_BY_PANEL_PROMPT, "single": lambda: SINGLE_PANEL_PROMPT}[task]()


class ExampleMaker:
    """Random training examples: token ids (prompt + answer + <eos>), the prompt length, and uint8 tiles."""

    def __init__(self, processor, filler_max: int = 8):
        self.proc = processor
        self.filler_max = filler_max
        self.eos = processor.tokenizer.eos_token_id
        self._ans_cache: dict[str, list[int]] = {}

    def _answer_ids(self, text):
        if text not in self._ans_cache:
            self._ans_cache[text] = self.proc.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos]
        return self._ans_cache[text]

    def __call__(self, rng: np.random.Generator, task: str):
        attrs, cue, offsets = sample_strip_attrs(rng)
        caps = [caption_of(a) for a in attrs]
        tiles = np.stack([cached_tile(*a, i == cue, *o) for i, (a, o) in enumerate(zip(attrs, offsets))])
        if task == "single":
            k = int(rng.integers(6))
            ids = self.proc.encode_prompt(self.proc.prompt(SINGLE_PANEL_PROMPT))
            first = ids.index(self.proc.image_token_id)
            ids = ids[:first + self.proc.tokens_per_tile] + ids[first + self.proc.image_seq_length:]
            return ids, self._answer_ids(caps[k]), tiles[k:k + 1]
        k = int(rng.integers(1, 7)) if task == "panel" else None
        n_fill = int(rng.integers(self.filler_max + 1)) if self.filler_max > 0 else 0
        filler = [FILLER_WORDS[i] for i in rng.integers(len(FILLER_WORDS), size=n_fill)]
        ids = self.proc.encode_prompt(self.proc.prompt(question(task, k), filler))
        return ids, self._answer_ids(default_answer(task, caps, cue + 1, k)), tiles


def sample_task(rng: np.random.Generator, mix: dict) -> str:
    """Draw a task name from `mix` (name -> weight; weights need not sum to 1)."""
    names = list(mix)
    p = np.array([mix[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]
