"""README and the model card show the organism's tables as the evaluation wrote them (no hand-typed numbers):
every table row of the generated Markdown files appears verbatim in the documents that cite it."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EVAL = ROOT / "gazekit" / "organism" / "eval"


def _rows(path: Path) -> list[str]:
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("| ") and "---" not in ln]


@pytest.mark.parametrize("generated, documents", [
    ("protocols.md", ["README.md", "gazekit/organism/MODEL_CARD.md"]),
    ("organism_eval.md", ["gazekit/organism/MODEL_CARD.md"]),
])
def test_generated_tables_appear_verbatim(generated, documents):
    rows = _rows(EVAL / generated)
    assert len(rows) >= 10
    for doc in documents:
        text = (ROOT / doc).read_text(encoding="utf-8")
        missing = [r for r in rows if r not in text]
        assert not missing, f"{doc} lacks rows of {generated} (rerun the evaluation and paste its table): {missing[:2]}"
