"""Model loading, the VLM wrapper and the family adapters."""
from gazekit.models.adapters import Adapter, UnsupportedModelError, register, supported_families
from gazekit.models.vlm import VLM, Prepared, load

__all__ = ["Adapter", "Prepared", "UnsupportedModelError", "VLM", "load", "register", "supported_families"]
