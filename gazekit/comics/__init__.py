"""Comic strips for gazekit: the synthetic generator (loaders for real comics live in `loaders.py`)."""
from gazekit.comics.synthetic import synthetic

__all__ = ["synthetic"]
