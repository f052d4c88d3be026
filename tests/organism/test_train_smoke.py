"""Retraining smoke test: a few steps of the real recipe run, save, reload, and are reproducible."""
import numpy as np
import torch

from gazekit.organism import load_organism
from gazekit.organism.train import train


def test_few_steps_train_save_load_and_repeat(tmp_path):
    info = train(str(tmp_path / "a"), steps=3, batch=4, progress=False, log_every=1)
    assert [r["step"] for r in info["log"]] == [0, 1, 2]
    assert all(np.isfinite(r["loss"]) for r in info["log"])
    assert info["log"][0]["loss"] > 3.0  # untrained: about log(vocab size) = log(66) = 4.2
    model, proc = load_organism(str(tmp_path / "a"))
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    # seeded: a second run gives bit-identical weights
    train(str(tmp_path / "b"), steps=3, batch=4, progress=False)
    model_b, _ = load_organism(str(tmp_path / "b"))
    for (n, p), (_, q) in zip(model.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(p, q), n
