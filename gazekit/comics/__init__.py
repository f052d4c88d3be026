"""Comic strips for gazekit: the synthetic generator (loaders for real comics live in `loaders.py`)."""
from gazekit.comics.synthetic import synthetic
from gazekit.comics.loaders import comics_windows, from_hub, load_folder  # noqa: F401 (re-export)

__all__ = ["synthetic"]
