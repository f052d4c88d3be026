"""Tiny random-weight models shared by the tiny-tier tests; module scope, so each test module gets its own (a
test that changes a model cannot leak into another module)."""
import pytest

import gazekit
from gazekit import testing as tm


@pytest.fixture(scope="module")
def qwen():
    model, proc = tm.build("qwen2_vl")
    return gazekit.load(model, proc)


@pytest.fixture(scope="module")
def llava():
    model, proc = tm.build("llava")
    return gazekit.load(model, proc)
