"""Shared fixtures of the unit tier."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fakes import FakeVLM, fake_scores, install_fake_steer  # noqa: E402


@pytest.fixture
def fake(monkeypatch):
    """A scripted fake VLM with protocols' steering seam replaced, and gaze scores for it."""
    install_fake_steer(monkeypatch)
    vlm = FakeVLM()
    return vlm, fake_scores(vlm)
