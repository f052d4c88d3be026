"""The organism evaluation's judge and schedule helpers (pure functions, no model)."""
from gazekit.organism.evaluate import derangements, judge_exact, split_narration

CAPS = ["red ball flies", "blue dot runs", "yellow sun swims", "black ball sleeps", "orange dot flies",
        "purple sun runs"]


def test_judge_is_exact():
    assert judge_exact("blue dot runs", CAPS) == 2
    assert judge_exact("Blue dot runs.", CAPS) == 2      # case and punctuation do not matter
    assert judge_exact("blue ball runs", CAPS) is None   # wrong object word: a miss, not a near hit
    assert judge_exact("blue dot runs runs", CAPS) is None
    assert judge_exact("", CAPS) is None


def test_split_narration():
    assert split_narration("red ball flies . blue dot runs .") == ["red ball flies", "blue dot runs"]
    assert split_narration("") == []


def test_derangements_have_no_fixed_points_and_are_seeded():
    ds = derangements(6, 20, seed=3)
    assert ds == derangements(6, 20, seed=3)
    for d in ds:
        assert sorted(d) == [1, 2, 3, 4, 5, 6]
        assert all(d[i] != i + 1 for i in range(6))
