"""environment.yml must agree with pyproject.toml; the checker must catch planted errors."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ci"))
import check_environment_yml as chk  # noqa: E402


def test_repo_environment_matches_pyproject():
    assert chk.check(str(ROOT / "environment.yml"), str(ROOT / "pyproject.toml")) == []


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s.replace("  - seaborn>=0.13\n", ""), "seaborn"),                      # core dep missing
    (lambda s: s.replace("python=3.11", "python=3.9"), "requires-python"),             # python pin outside
    (lambda s: s.replace("  - pip:\n", "  - leftpad>=1\n  - pip:\n"), "leftpad"),       # unknown dep
    (lambda s: s.replace("transformers>=5.0,<6", "transformers>=4.40"), "transformers"),  # bound outside
])
def test_checker_catches_planted_errors(tmp_path, edit, expected):
    env = tmp_path / "environment.yml"
    env.write_text(edit((ROOT / "environment.yml").read_text()))
    errors = chk.check(str(env), str(ROOT / "pyproject.toml"))
    assert errors and any(expected in e for e in errors), errors
