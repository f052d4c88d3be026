"""The Qwen-class organism's VQA steering at K beyond the 15% bound (information, not the card's protocol): K = 7, 9,
11, 13 on 50 validation strips synthetic(50, seed=1000), ranking from synthetic(100, seed=100), one below-median
random draw, exact judge, non-default pairs. Writes organism_qwen_k_beyond_bound.json.

    python gazekit/organism/eval/qwen_k_beyond_bound.py
"""
import json, os, torch, gazekit, gazekit.evaluate as ev
from gazekit.comics import synthetic
torch.set_num_threads(1)
vlm = gazekit.load("organism-qwen")
scores = gazekit.discover(vlm, synthetic(100, seed=100), progress=False)
val = synthetic(50, seed=1000)
out = {}
for k in (7, 9, 11, 13):
    r = ev.vqa(vlm, val, scores, k=k, judge="exact", max_new_tokens=6, control_seeds=1, seed=0, progress=False)
    out[k] = {"top": r.accuracy("top", nondefault=True), "random": r.accuracy("random", nondefault=True)}
    print(k, out[k], flush=True)
json.dump(out, open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "organism_qwen_k_beyond_bound.json"), "w"),
          indent=1)
