"""Version- and platform-specific workarounds for the libraries gazekit stands on, kept in one place."""
from __future__ import annotations

import logging

# bitsandbytes >= 0.49, on CPUs with AVX512-BF16, tries at import to fetch an optional fused 4-bit GEMM from the
# `kernels` package (a hub download) and logs a WARNING when it cannot: "Failed to load CPU gemm_4bit_forward from
# kernels-community: No module named 'kernels' ...". It then uses its own CPU kernels, so 4-bit results are the
# same; only speed differs. Offline (and for every tutorial user) that warning is noise that reads like an error.
_BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
_BNB_CPU_MESSAGE = "Failed to load CPU gemm_4bit_forward"


class _DropOptionalKernelWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_BNB_CPU_MESSAGE)


def quiet_bitsandbytes_cpu_kernel_warning() -> None:
    """Drop bitsandbytes' warning about the optional `kernels-community` CPU kernel (see above); every other
    bitsandbytes message still shows. Call before bitsandbytes is first imported; calling twice is harmless."""
    logger = logging.getLogger(_BNB_CPU_LOGGER)
    if not any(isinstance(f, _DropOptionalKernelWarning) for f in logger.filters):
        logger.addFilter(_DropOptionalKernelWarning())
