import logging

from gazekit.models._compat import _BNB_CPU_LOGGER, quiet_bitsandbytes_cpu_kernel_warning


def test_bitsandbytes_optional_kernel_warning_is_dropped_and_others_kept(caplog):
    quiet_bitsandbytes_cpu_kernel_warning()
    quiet_bitsandbytes_cpu_kernel_warning()  # idempotent: one filter
    logger = logging.getLogger(_BNB_CPU_LOGGER)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=_BNB_CPU_LOGGER):
        # the exact format bitsandbytes 0.49 uses (backends/cpu/ops.py)
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
                       "already `pip install kernels` and the kernels >= 0.11.1", "No module named 'kernels'")
        logger.warning("some other bitsandbytes problem")
    messages = [r.getMessage() for r in caplog.records if r.name == _BNB_CPU_LOGGER]
    assert messages == ["some other bitsandbytes problem"]



def test_forward_signature_probed_once_per_class(monkeypatch):
    """Both names of the KV-cache argument, with and without logits_to_keep; inspect runs once per class."""
    import inspect

    from gazekit.models import _compat

    class New:
        def forward(self, input_ids=None, cache=None, logits_to_keep=0):
            pass

    class Old:
        def forward(self, input_ids=None, past_key_values=None):
            pass

    calls = []
    real = inspect.signature
    monkeypatch.setattr(inspect, "signature", lambda f: calls.append(f) or real(f))
    for _ in range(3):
        assert _compat.cache_kwarg(New()) == "cache" and _compat.logits_to_keep(New()) == {"logits_to_keep": 1}
        assert _compat.cache_kwarg(Old()) == "past_key_values" and _compat.logits_to_keep(Old()) == {}
    assert len(calls) == 2


def test_past_length_reads_either_cache_name():
    from gazekit.models import _compat

    class Cache:
        def get_seq_length(self):
            return 7

    assert _compat.past_length({"cache": Cache()}) == 7
    assert _compat.past_length({"past_key_values": Cache()}) == 7
    assert _compat.past_length({"past_key_values": None, "input_ids": 1}) == 0
    assert _compat.past_length({}) == 0


def test_stock_eager_is_found_per_module_class_or_refused():
    import pytest
    from transformers.models.llama import modeling_llama

    from gazekit.models import _compat

    attn = modeling_llama.LlamaAttention.__new__(modeling_llama.LlamaAttention)
    assert _compat.stock_eager(attn) is modeling_llama.eager_attention_forward
    assert _compat.stock_sdpa() is _compat.stock_sdpa()

    class NoEager:
        pass

    with pytest.raises(RuntimeError, match="use sdpa"):
        _compat.stock_eager(NoEager())
