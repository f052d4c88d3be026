"""The paper's experiments as protocols, with judges, confidence intervals and resumable runs.

>>> res = gazekit.evaluate.vqa(vlm, strips, scores, log="runs/vqa.jsonl")
>>> res.summary(); res.plot(); res.save("runs/vqa")
>>> gazekit.evaluate.ablation(vlm, strips, scores, how="mean")   # top-K vs K random heads ablated
"""
from gazekit.evaluate.head_ablation import ABLATION_CONDITIONS, ablation
from gazekit.evaluate.protocols import (CONDITIONS, PRESETS, Results, Schedule, boxes, default_k, default_ks, dynamic,
                                        k_sweep, mentions, narration, reference_spearman, vqa)
from gazekit.evaluate.runlog import RunLog, in_shard, parse_shard, resume_key
from gazekit.evaluate.stats import CI, bootstrap_ci, spearman
from gazekit.evaluate.survey import SurveyReport, survey

__all__ = ["ABLATION_CONDITIONS", "CI", "CONDITIONS", "PRESETS", "Results", "RunLog", "Schedule", "SurveyReport",
           "ablation", "bootstrap_ci", "boxes", "default_k", "default_ks", "dynamic", "in_shard", "k_sweep", "mentions",
           "narration", "parse_shard", "reference_spearman", "resume_key", "spearman", "survey", "vqa"]
