"""Train the gazekit organism from scratch.

    python -m gazekit.organism.train [--out DIR] [--steps N] [--threads T] [--seed S] [--batch B]

Seeded and reproducible: one fixed thread count (default 1: on this project's busy 2-core machine, 1 thread was
faster than 2), data from a seeded generator, weights initialised under `torch.manual_seed`. Saves with
`save_pretrained` (safetensors), the processor files, `gazekit_meta.json` and `training_info.json`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

RECIPE = {
    "seed": 0, "steps": 6000, "batch": 32, "lr": 3e-3, "betas": (0.9, 0.98), "weight_decay": 0.1, "warmup": 100,
    "final_lr_frac": 0.05, "grad_clip": 1.0, "threads": 1, "filler_max": 8,
}


def _collate(examples, proc):
    import numpy as np
    import torch
    L = max(len(p) + len(a) for p, a, _ in examples)
    ids = torch.full((len(examples), L), proc.tokenizer.pad_token_id, dtype=torch.long)
    lab = torch.full((len(examples), L), -100, dtype=torch.long)
    att = torch.zeros((len(examples), L), dtype=torch.long)
    for r, (p, a, _) in enumerate(examples):  # right padding: loss only on the answer (+ <eos>)
        s = p + a
        ids[r, :len(s)] = torch.tensor(s)
        att[r, :len(s)] = 1
        lab[r, len(p):len(s)] = torch.tensor(a)
    pix = proc.normalize(np.concatenate([t for _, _, t in examples]))
    return ids, att, lab, pix


def train(out: str, steps: int | None = None, threads: int | None = None, seed: int | None = None,
          batch: int | None = None, arch: dict | None = None, mix: dict | None = None, progress: bool = True,
          log_every: int = 100, device: str = "cpu") -> dict:
    """Train and save an organism into `out`; returns the training info dict.

    `device` other than "cpu" (e.g. "cuda") is for exploring variants quickly; the shipped weights are trained on
    CPU with the recipe's thread count, where a rerun is bit-identical."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from gazekit.organism.model import DEFAULT_ARCH, build_model
    from gazekit.organism.processor import ComicTileProcessor
    from gazekit.organism.tasks import DEFAULT_MIX, ExampleMaker, sample_task

    cfg = dict(RECIPE)
    for k, v in (("steps", steps), ("threads", threads), ("seed", seed), ("batch", batch)):
        if v is not None:
            cfg[k] = v
    if device != "cpu":
        cfg["device"] = device
    cfg["arch"] = dict(DEFAULT_ARCH, **(arch or {}))
    cfg["mix"] = dict(mix or DEFAULT_MIX)
    torch.set_num_threads(cfg["threads"])
    proc = ComicTileProcessor(patch_size=cfg["arch"]["patch"])
    model = build_model(proc, cfg["arch"], seed=cfg["seed"]).to(device)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    # training strips come from a seed sequence with its own spawn key, so they never coincide with
    # gazekit.comics.synthetic(n, seed) streams used for validation and test
    rng = np.random.default_rng(np.random.SeedSequence(cfg["seed"], spawn_key=(7,)))
    maker = ExampleMaker(proc, filler_max=cfg["filler_max"])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg["lr"], betas=tuple(cfg["betas"]))
    S, W, f = cfg["steps"], cfg["warmup"], cfg["final_lr_frac"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / W) * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(s, S) / S))))
    log, t0, t_data = [], time.time(), 0.0
    bar = tqdm(range(S), desc="training organism", disable=not progress, mininterval=2.0)
    for step in bar:
        td = time.time()
        exs = [maker(rng, sample_task(rng, cfg["mix"])) for _ in range(cfg["batch"])]
        ids, att, lab, pix = _collate(exs, proc)
        t_data += time.time() - td
        loss = model(input_ids=ids.to(device), attention_mask=att.to(device), pixel_values=pix.to(device),
                     labels=lab.to(device)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        sched.step()
        if step % log_every == 0 or step == S - 1:
            lv = loss.item()
            log.append({"step": step, "loss": round(lv, 5), "seconds": round(time.time() - t0, 1)})
            bar.set_postfix(loss=f"{lv:.4f}")
    seconds = time.time() - t0
    model.eval().cpu()
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    proc.save_pretrained(out)
    info = {"recipe": cfg, "n_params": n_params, "train_seconds": round(seconds, 1),
            "data_seconds": round(t_data, 1), "torch": torch.__version__,
            "transformers": __import__("transformers").__version__, "log": log}
    with open(os.path.join(out, "training_info.json"), "w") as fh:
        json.dump(info, fh, indent=1)
    meta_path = os.path.join(out, "gazekit_meta.json")
    if not os.path.exists(meta_path):  # recommended_k is filled in by gazekit.organism.choose_k
        with open(meta_path, "w") as fh:
            json.dump({"family": "organism", "default_task_panel": {"vqa": "main_panel (white frame)",
                                                                    "narration": 1}}, fh, indent=1)
    return info


def main(argv=None):
    """Command line: `python -m gazekit.organism.train [--out DIR] [--steps N] ...`; trains and writes the weights."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/organism", help="output folder (default runs/organism)")
    ap.add_argument("--steps", type=int, default=None, help=f"optimiser steps (recipe: {RECIPE['steps']})")
    ap.add_argument("--threads", type=int, default=None, help=f"torch threads (recipe: {RECIPE['threads']})")
    ap.add_argument("--seed", type=int, default=None, help=f"seed (recipe: {RECIPE['seed']})")
    ap.add_argument("--batch", type=int, default=None, help=f"batch size (recipe: {RECIPE['batch']})")
    a = ap.parse_args(argv)
    info = train(a.out, steps=a.steps, threads=a.threads, seed=a.seed, batch=a.batch)
    print(f"saved to {a.out}: {info['n_params']} params, {info['train_seconds']} s "
          f"(data {info['data_seconds']} s), final loss {info['log'][-1]['loss']}")


if __name__ == "__main__":
    main()
