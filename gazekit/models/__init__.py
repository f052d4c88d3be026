"""Model loading, the VLM wrapper and the family adapters."""
from gazekit.models.adapters import Adapter, UnsupportedModelError, register, supported_families
from gazekit.models.vlm import VLM, Prepared, load, model_names, register_model_name

__all__ = ["Adapter", "Prepared", "UnsupportedModelError", "VLM", "load", "model_names", "register", "register_model_name", "supported_families"]
