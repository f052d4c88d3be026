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

