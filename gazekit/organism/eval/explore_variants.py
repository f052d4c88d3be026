"""Architecture exploration behind eval/gpu_exploration.md (a script, not part of the package API).

Trains one variant with the package recipe on a GPU, then runs the organism evaluation on it:

    OMP_NUM_THREADS=2 DEV=cuda STEPS=7000 NTEST=100 python gazekit/organism/eval/explore_variants.py NAME 'SPEC' OUTDIR

SPEC is JSON with optional "arch" (e.g. {"layers": 3} or {"heads": 24, "hidden": 192, "inter": 384}), "mix" and
"seed". The table's rows were run as five (then two) such processes side by side on one H100.
"""
import json, os, sys, time, traceback
import torch
name, spec, out_dir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
device = os.environ.get("DEV", "cuda")
steps = int(os.environ.get("STEPS", "7000"))
nt = int(os.environ.get("NTEST", "100"))
log = open(f"{out_dir}/{name}.log", "w")
try:
    import gazekit
    from gazekit.organism.train import train
    from gazekit.organism import load_organism
    import gazekit.organism.evaluate as E
    t0 = time.time()
    info = train(f"/tmp/v_{name}", steps=steps, seed=spec.get("seed"), arch=spec.get("arch"), mix=spec.get("mix"), progress=False, device=device)
    print("trained", time.time() - t0, info["log"][-1], file=log, flush=True)
    model, proc = load_organism(f"/tmp/v_{name}")
    model.to(device)
    vlm = gazekit.load(model, proc)
    E.N_DISCOVER = 60
    scores = E.discovery_scores(vlm)
    ck = E.choose_k(vlm, scores, n_val=max(20, nt // 2), verbose=False)
    print("choose_k", ck, file=log, flush=True)
    vlm.recommended_k = ck["recommended_k"]
    res = E.evaluate(vlm, n_test=nt, n_track=max(5, nt // 5), n_random_sets=2, verbose=False)
    res["choose_k"] = ck; res["train_seconds"] = info["train_seconds"]; res["spec"] = spec
    res["final_loss"] = info["log"][-1]
    json.dump(res, open(f"{out_dir}/{name}.json", "w"), default=str, indent=1)
    open(f"{out_dir}/{name}.md", "w").write(E.table(res))
    print("done", time.time() - t0, file=log, flush=True)
except Exception:
    traceback.print_exc(file=log)
