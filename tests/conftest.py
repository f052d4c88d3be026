"""Test tiers: unit/ (pure), tiny/ (random-weight configs of real HF classes), organism/ (the embedded model),
browser/ (Voila + Chromium), and the tutorials through nbval. Skips always say why."""
import os

import pytest

# notebooks that belong to tests (e.g. the Voila app of the browser test) are served, not nbval-checked
collect_ignore_glob = ["browser/*.ipynb", "**/.ipynb_checkpoints/*"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config):
    import torch

    # CPU tests are small; one thread avoids oversubscription on 2-core CI machines
    torch.set_num_threads(int(os.environ.get("GAZEKIT_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu); runs on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
