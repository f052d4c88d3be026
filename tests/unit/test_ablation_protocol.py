"""`gazekit.evaluate.ablation` on a scripted fake VLM: conditions, K, seeded size-matched controls, bootstrap CIs
and resume (the real ablation's numbers are checked against an oracle in tests/tiny/test_ablate.py)."""
import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeVLM, fake_scores  # noqa: E402

from gazekit.evaluate import ablation, bootstrap_ci  # noqa: E402
from gazekit.evaluate import head_ablation  # noqa: E402
from gazekit.regions import panel_question  # noqa: E402


class AblatableFake(FakeVLM):
    """Answers each panel question with that panel's caption, unless two or more of its gaze heads are ablated:
    then it answers with the caption of panel 1 (a wrong answer for panels 2-6)."""

    def __init__(self):
        super().__init__()
        self.ablated = None
        self.plain = 0  # answers generated without ablation

    def ask(self, item, prompt, max_new_tokens=20, **kw):
        self.calls += 1
        self.plain += self.ablated is None
        k = [panel_question(p) for p in range(1, 7)].index(prompt) + 1
        if self.ablated is not None and len(self.gaze_heads & self.ablated) >= 2:
            k = 1
        return item.captions[k - 1]


@pytest.fixture
def fake(monkeypatch):
    vlm = AblatableFake()
    seen = []

    @contextlib.contextmanager
    def fake_ablate(v, heads, *, how, region):
        assert v.ablated is None, "ablation contexts must not leak"
        seen.append((how, region, tuple(map(tuple, heads))))
        v.ablated = {tuple(h) for h in heads}
        try:
            yield
        finally:
            v.ablated = None

    monkeypatch.setattr(head_ablation, "_ablate", fake_ablate)
    return vlm, fake_scores(vlm), seen


@pytest.fixture(scope="module")
def strips():
    from gazekit.comics import synthetic
    return synthetic(5, seed=3)


def test_conditions_accuracy_and_cis(fake, strips):
    vlm, scores, seen = fake
    res = ablation(vlm, strips, scores, how="zero", n_random=2, judge="exact", progress=False)
    s = res.summary().set_index("condition")
    assert set(s.index) == {"unablated", "top", "random"}
    assert s.loc["unablated", "accuracy"] == 1.0 and s.loc["unablated", "n"] == 30
    # top-4 ablated: every panel but the first is answered with panel 1's caption
    assert s.loc["top", "accuracy"] == pytest.approx(5 / 30)
    assert s.loc["random", "accuracy"] == 1.0 and s.loc["random", "n"] == 60  # two draws pooled
    top = res.table[res.table["condition"] == "top"]["hit"].astype(float)
    ci = bootstrap_ci(top.to_numpy(), seed=0)
    assert (s.loc["top", "ci_low"], s.loc["top", "ci_high"]) == (ci.low, ci.high)
    assert ci.low < ci.mean < ci.high
    by = res.by_panel()
    assert by[(by["condition"] == "top") & (by["target"] == 1)]["accuracy"].item() == 1.0
    # K = the model's default, size-matched random heads drawn with seeds 0 and 1, none of them a top head
    assert res.config["k"] == vlm.recommended_k and sorted(res.controls["k4"]["seeds"]) == [0, 1]
    top_heads = set(map(tuple, scores.top(4)))
    rand = [h for how, region, h in seen if set(h) != top_heads]
    assert len(rand) >= 2 and all(len(h) == 4 and not set(h) & top_heads for h in rand)
    assert {how for how, _, _ in seen} == {"zero"}
    assert "ablation (zero)" in res.plot().get_title()


def test_resume_reruns_nothing(fake, strips, tmp_path):
    vlm, scores, seen = fake
    log = tmp_path / "ablation.jsonl"
    first = ablation(vlm, strips, scores, n_random=1, judge="exact", log=log, progress=False)
    calls = vlm.calls
    again = ablation(vlm, strips, scores, n_random=1, judge="exact", log=log, progress=False)
    assert vlm.calls == calls  # every generation and verdict came from the log
    assert first.table["hit"].tolist() == again.table["hit"].tolist()
    # another `how` reuses the unablated answers from the log and generates only the ablated ones
    plain = vlm.plain
    third = ablation(vlm, strips, scores, how="uniform", n_random=1, judge="exact", log=log, progress=False)
    assert vlm.plain == plain and vlm.calls > calls
    assert set(third.table[third.table["condition"] != "unablated"]["how"]) == {"uniform"}


def test_bad_input(fake, strips):
    vlm, scores, _ = fake
    with pytest.raises(ValueError, match="how must be one of"):
        ablation(vlm, strips, scores, how="random", progress=False)
    with pytest.raises(ValueError, match="n_random must be"):
        ablation(vlm, strips, scores, n_random=0, progress=False)
    with pytest.raises(ValueError, match="discover"):
        ablation(vlm, strips, None, progress=False)
    with pytest.raises(ValueError, match="unknown condition"):
        ablation(vlm, strips, scores, conditions=("top", "all"), progress=False)
    assert np.isfinite(ablation(vlm, strips[:1], None, conditions=("unablated",), progress=False)
                       .summary()["accuracy"]).all()
