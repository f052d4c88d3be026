"""gazekit — find and steer the gaze heads of vision-language models (Gandikota & Bau 2026).

The pipeline, one verb per stage: `load` → `capture` → `discover` → `steer` / `track` → `gazekit.evaluate`;
`survey` compares models. `intervene` runs your own `Intervention`s (what `steer`, `capture`, `track` and
`ablate` are built on).
"""
from gazekit.ablate import HOWS, AblateSpec, ablate
from gazekit.capture import capture
from gazekit.discover import GazeScores, discover
from gazekit.intervene import Intervention, intervene
from gazekit.models import VLM, Prepared, UnsupportedModelError, load, supported_families
from gazekit import organism as _organism  # noqa: F401,I001 - registers the organism's adapter; load()'s default
from gazekit.regions import (NARRATION_PROMPT, PANEL_BY_PANEL_PROMPT, REFERENCE_DYNAMIC_PROMPT,
                             REFERENCE_TRAJECTORY_PROMPT, VQA_QUESTION, Scene, Strip, panel_question)
from gazekit.steer import MODES, Head, RowTargets, SteerSpec, steer
from gazekit.track import Trajectory, track

__version__ = "0.1.0"

__all__ = ["AblateSpec", "GazeScores", "HOWS", "Head", "Intervention", "MODES", "NARRATION_PROMPT",
           "PANEL_BY_PANEL_PROMPT", "Prepared", "REFERENCE_DYNAMIC_PROMPT", "REFERENCE_TRAJECTORY_PROMPT", "RowTargets",
           "Scene", "SteerSpec", "Strip", "Trajectory", "UnsupportedModelError", "VLM", "VQA_QUESTION", "ablate",
           "capture", "discover", "intervene", "load", "panel_question", "steer", "supported_families", "SurveyReport",
           "survey", "track"]


def __getattr__(name):
    """`gazekit.survey` / `gazekit.SurveyReport` stand on `gazekit.evaluate`: imported on first use, so that
    `import gazekit` stays the core."""
    if name in ("survey", "SurveyReport"):
        from gazekit.evaluate.survey import SurveyReport, survey
        globals().update(survey=survey, SurveyReport=SurveyReport)
        return globals()[name]
    raise AttributeError(f"module 'gazekit' has no attribute {name!r}")
