"""Train the gazekit organism from scratch.

    python -m gazekit.organism.train [--out DIR] [--steps N] [--threads T] [--seed S] [--batch B]
    python -m gazekit.organism.train --freeze-vision [--vision-init random|DIR] ...   # frozen-encoder experiment
    python -m gazekit.organism.train --family qwen2_vl --out DIR ...                  # the Qwen-class organism

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


FAMILIES = ("llava", "qwen2_vl")
# the Qwen-class organism's recipe differs in its length only: 4,500 steps keep its training under 30 min on one
# core of this project's 2-core machine (about 0.35 s a step at depth 0)
FAMILY_RECIPE = {"llava": {}, "qwen2_vl": {"steps": 4500}}


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
    return {"input_ids": ids, "attention_mask": att, "labels": lab, "pixel_values": pix}


def _vision_tower(model):
    inner = model.model
    return inner.vision_tower if hasattr(inner, "vision_tower") else inner.visual


def init_and_freeze_vision(model, vision_init: str = "random") -> dict:
    """Freeze the organism's vision tower (the frozen-encoder experiment): only projector + language model train.

    Args:
        model: a freshly built organism (`build_model`).
        vision_init: "random" (keep the tower at its seeded random initialisation) or a folder of organism weights
            whose vision tower is copied in first (same tower architecture).

    Returns:
        a JSON-able note of what was done (recorded in training_info.json)."""
    tower = _vision_tower(model)
    if vision_init != "random":
        from gazekit.organism import load_organism
        src, _ = load_organism(vision_init)
        try:
            tower.load_state_dict(_vision_tower(src).state_dict())
        except RuntimeError as e:
            raise ValueError(f"the vision tower in {vision_init} does not fit this architecture ({e}); build the "
                             "organism with the same v_* / patch settings as the weights it copies") from e
    for p in tower.parameters():
        p.requires_grad_(False)
    tower.eval()  # no dropout in the CLIP tower, but a frozen part stays in eval mode whatever its config says
    return {"frozen": "vision_tower", "vision_init": vision_init,
            "frozen_params": sum(p.numel() for p in tower.parameters())}


def train(out: str, steps: int | None = None, threads: int | None = None, seed: int | None = None,
          batch: int | None = None, arch: dict | None = None, mix: dict | None = None, progress: bool = True,
          log_every: int = 100, device: str = "cpu", freeze_vision: bool = False,
          vision_init: str = "random", family: str = "llava", max_pixels: int | None = None) -> dict:
    """Train and save an organism into `out`; returns the training info dict.

    Args:
        out: output folder (created).
        steps, threads, seed, batch: override the recipe's values (None: `RECIPE`'s).
        arch: overrides of `DEFAULT_ARCH`; mix: task mix (default `DEFAULT_MIX`).
        progress: show a progress bar; log_every: loss log interval (steps).
        device: "cpu" (the shipped recipe, bit-identical reruns) or e.g. "cuda" for exploring variants quickly.
        freeze_vision: train only the projector and the language model, the vision tower frozen (the paper's
            frozen-encoder families: does a gaze circuit still form?).
        vision_init: with `freeze_vision`, "random" (the tower's seeded random init) or a folder of organism
            weights whose tower is copied in and frozen.
        family: "llava" (the shipped organism: one tile per panel) or "qwen2_vl" (the Qwen-class organism: the
            strip as one image, `gazekit.organism.qwen`).
        max_pixels: qwen2_vl only: the processor's token budget (default `qwen.MAX_PIXELS`: 24 image tokens)."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from gazekit.organism.tasks import DEFAULT_MIX, sample_task

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    cfg = dict(RECIPE, **FAMILY_RECIPE.get(family, {}))
    for k, v in (("steps", steps), ("threads", threads), ("seed", seed), ("batch", batch)):
        if v is not None:
            cfg[k] = v
    if device != "cpu":
        cfg["device"] = device
    cfg["family"] = family
    cfg["mix"] = dict(mix or DEFAULT_MIX)
    torch.set_num_threads(cfg["threads"])
    if family == "llava":
        from gazekit.organism.model import DEFAULT_ARCH, build_model
        from gazekit.organism.processor import ComicTileProcessor
        from gazekit.organism.tasks import ExampleMaker
        cfg["arch"] = dict(DEFAULT_ARCH, **(arch or {}))
        proc = ComicTileProcessor(patch_size=cfg["arch"]["patch"])
        model = build_model(proc, cfg["arch"], seed=cfg["seed"])
        maker = ExampleMaker(proc, filler_max=cfg["filler_max"])
        collate = _collate
    else:
        from gazekit.organism import qwen
        cfg["arch"] = dict(qwen.DEFAULT_QWEN_ARCH, **(arch or {}))
        cfg["max_pixels"] = int(max_pixels or qwen.MAX_PIXELS)
        proc = qwen.QwenComicProcessor(max_pixels=cfg["max_pixels"])
        model = qwen.build_qwen_model(proc, cfg["arch"], seed=cfg["seed"])
        maker = qwen.QwenExampleMaker(proc, filler_max=cfg["filler_max"])
        collate = qwen.qwen_collate
    if vision_init != "random" and not freeze_vision:
        raise ValueError("vision_init is only used with freeze_vision=True")
    model.train()
    if freeze_vision:
        cfg["freeze"] = init_and_freeze_vision(model, vision_init)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    # training strips come from a seed sequence with its own spawn key, so they never coincide with
    # gazekit.comics.synthetic(n, seed) streams used for validation and test
    rng = np.random.default_rng(np.random.SeedSequence(cfg["seed"], spawn_key=(7,)))
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
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
        batch = collate(exs, proc)
        t_data += time.time() - td
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg["grad_clip"])
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
    info = {"recipe": cfg, "n_params": n_params, "n_trainable": sum(p.numel() for p in trainable),
            "train_seconds": round(seconds, 1),
            "data_seconds": round(t_data, 1), "torch": torch.__version__,
            "transformers": __import__("transformers").__version__, "log": log}
    with open(os.path.join(out, "training_info.json"), "w") as fh:
        json.dump(info, fh, indent=1)
    meta_path = os.path.join(out, "gazekit_meta.json")
    if not os.path.exists(meta_path):  # recommended_k is filled in by gazekit.organism.choose_k
        with open(meta_path, "w") as fh:
            json.dump({"family": "organism" if family == "llava" else "organism-qwen (qwen2_vl)",
                       "default_task_panel": {"vqa": "main_panel (white frame)", "narration": 1}}, fh, indent=1)
    return info


def main(argv=None):
    """Command line: `python -m gazekit.organism.train [--out DIR] [--steps N] ...`; trains and writes the weights."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/organism", help="output folder (default runs/organism)")
    ap.add_argument("--steps", type=int, default=None, help=f"optimiser steps (recipe: {RECIPE['steps']})")
    ap.add_argument("--threads", type=int, default=None, help=f"torch threads (recipe: {RECIPE['threads']})")
    ap.add_argument("--seed", type=int, default=None, help=f"seed (recipe: {RECIPE['seed']})")
    ap.add_argument("--batch", type=int, default=None, help=f"batch size (recipe: {RECIPE['batch']})")
    ap.add_argument("--family", default="llava", choices=FAMILIES,
                    help="llava: the shipped organism (one tile per panel); qwen2_vl: the Qwen-class organism "
                         "(the strip as one image)")
    ap.add_argument("--arch", default=None, help="JSON overrides of the family's default architecture")
    ap.add_argument("--max-pixels", type=int, default=None, help="qwen2_vl: the processor's token budget")
    ap.add_argument("--freeze-vision", action="store_true",
                    help="train only projector + language model, the vision tower frozen (frozen-encoder experiment)")
    ap.add_argument("--vision-init", default="random",
                    help="with --freeze-vision: 'random' (default) or an organism folder whose tower is copied in")
    a = ap.parse_args(argv)
    info = train(a.out, steps=a.steps, threads=a.threads, seed=a.seed, batch=a.batch, freeze_vision=a.freeze_vision,
                 vision_init=a.vision_init, family=a.family, max_pixels=a.max_pixels,
                 arch=json.loads(a.arch) if a.arch else None)
    print(f"saved to {a.out}: {info['n_params']} params, {info['train_seconds']} s "
          f"(data {info['data_seconds']} s), final loss {info['log'][-1]['loss']}")


if __name__ == "__main__":
    main()
