"""Command line: ``python -m gazekit discover|vqa|narration|dynamic|sweep|boxes|survey|app ...``.

Each experiment command loads a model (default: the embedded comic organism), takes gaze heads from a ranking file
(or discovers them first and writes ``ranking.json``), runs the protocol with a resumable JSONL log in ``--out`` and
writes the results table (CSV), a summary, a figure (PNG) and the config. Rerun the same command to resume after a
crash; run ``--shard i/n`` in n processes (one per GPU) and then once without ``--shard`` to merge the shards.
Under ``torchrun -m gazekit ...`` or ``accelerate launch -m gazekit ...`` the shard comes from the launcher's rank
and rank 0 merges (see `gazekit.distributed` and the README's "Running at scale").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

STRIPS_HELP = ("strips to use: 'synthetic:N:SEED' (gazekit's synthetic comics), a folder laid out as "
               "comicN/p1.png ... p6.png (optional captions.json/csv), 'hub:NAME[:SPLIT]' (a Hugging Face dataset "
               "or a local save_to_disk/parquet path, e.g. hub:baulab/openai-comic-strips:train), or "
               "'comics:ROOT:N:SEED' (N random 6-panel windows of the COMICS corpus's raw panel folders)")


def _int_field(spec: str, flag: str, value: str, what: str, usage: str, minimum: int) -> int:
    try:
        v = int(value)
    except ValueError:
        raise SystemExit(f"{flag} {spec!r}: {what} must be an integer, got {value!r}; use {usage}") from None
    if v < minimum:
        raise SystemExit(f"{flag} {spec!r}: {what} must be >= {minimum}, got {v}; use {usage}")
    return v


def check_strips_spec(spec: str, flag: str = "--strips") -> None:
    """Check a strips spec's syntax and local paths without loading anything (the CLI does this before it loads a
    model, so a typo costs seconds, not a discovery run). Raises SystemExit naming the fix."""
    if spec.startswith("synthetic:"):
        parts = spec.split(":")
        usage = "synthetic:N or synthetic:N:SEED (e.g. synthetic:100:0)"
        if len(parts) not in (2, 3):
            raise SystemExit(f"{flag} {spec!r}: use {usage}")
        _int_field(spec, flag, parts[1], "N (number of strips)", usage, 1)
        if len(parts) == 3:
            _int_field(spec, flag, parts[2], "SEED", usage, 0)
        return
    if spec.startswith("hub:"):
        if not spec[4:]:
            raise SystemExit(f"{flag} {spec!r}: use hub:NAME[:SPLIT], e.g. hub:baulab/openai-comic-strips:train")
        return  # a hub name can only be checked by fetching it
    if spec.startswith("comics:"):
        parts = spec.split(":")
        usage = "comics:ROOT:N:SEED (ROOT: the COMICS corpus's raw panel folders)"
        if len(parts) != 4:
            raise SystemExit(f"{flag} {spec!r}: use {usage}")
        if not Path(parts[1]).is_dir():
            raise SystemExit(f"{flag} {spec!r}: ROOT {parts[1]!r} is not a folder; use {usage}")
        _int_field(spec, flag, parts[2], "N (number of strips)", usage, 1)
        _int_field(spec, flag, parts[3], "SEED", usage, 0)
        return
    if not Path(spec).is_dir():
        raise SystemExit(f"{flag} {spec!r} is not a folder nor synthetic:N:SEED / hub:NAME / comics:ROOT:N:SEED")


def parse_strips(spec: str, limit: Optional[int] = None, style: str = "gazekit"):
    """Strips from a --strips spec (see STRIPS_HELP). style="reference" builds folder and COMICS strips as the
    reference code does (`Strip.from_panels(style="reference")`, COMICS windows within one interior page)."""
    check_strips_spec(spec)
    if spec.startswith("synthetic:"):
        parts = spec.split(":")
        from gazekit.comics import synthetic
        n = int(parts[1])
        return synthetic(n if limit is None else min(n, limit), seed=int(parts[2]) if len(parts) == 3 else 0)
    if spec.startswith("hub:"):
        rest = spec[4:]
        name, _, split = rest.rpartition(":") if rest.count(":") >= 1 and not Path(rest).exists() else (rest, "", "")
        from gazekit.comics import from_hub
        return from_hub(name or rest, split=split or "train", limit=limit)
    if spec.startswith("comics:"):
        parts = spec.split(":")
        if len(parts) != 4:
            raise SystemExit(f"--strips {spec!r}: use comics:ROOT:N:SEED")
        from gazekit.comics import comics_windows
        n = int(parts[2])
        return comics_windows(parts[1], n if limit is None else min(n, limit), seed=int(parts[3]), style=style)
    if Path(spec).is_dir():
        from gazekit.comics import load_folder
        return load_folder(spec, limit=limit, style=style)
    raise SystemExit(f"--strips {spec!r} is not a folder nor synthetic:N:SEED / hub:NAME / comics:ROOT:N:SEED")


def synthetic_scenes(n: int, seed: int):
    """Scenes from synthetic strips: each panel a box named by its caption (for `boxes` on the organism)."""
    from gazekit.comics import synthetic
    from gazekit.regions import Scene
    out = []
    for s in synthetic(n, seed=seed):
        sc = Scene(s.image, dict(zip(s.captions, s.panel_boxes)))
        sc.id = f"synthetic-{seed}-{len(out)}"
        out.append(sc)
    return out


def _common(p: argparse.ArgumentParser, *, strips_default: str):
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="Hugging Face model id or local folder (default: gazekit's "
                                                 "embedded comic organism)")
    g.add_argument("--quantize", choices=["4bit"], default=None, help="load NF4 4-bit weights with bitsandbytes")
    g.add_argument("--device-map", default=None, help="accelerate device map, e.g. 'auto' to spread over GPUs")
    g.add_argument("--gpus-per-process", type=int, default=1,
                   help="under torchrun/accelerate launch: GPUs each process spreads its model over with "
                        "device_map='auto' (local rank r gets GPUs r*N..r*N+N-1; default 1: one GPU per process)")
    g.add_argument("--wait-timeout", type=float, default=7 * 24 * 3600,
                   help="under torchrun/accelerate launch: seconds rank 0 waits for the other ranks' shards before "
                        "it gives up naming them (default one week)")
    g.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="weights dtype (default: bfloat16 on CUDA, float32 on CPU)")
    g = p.add_argument_group("data and output")
    g.add_argument("--strips", default=strips_default, help=STRIPS_HELP + f" (default: {strips_default})")
    g.add_argument("--limit", type=int, default=None, help="use only the first N strips")
    g.add_argument("--out", default=None, help="output folder (default: runs/<command>)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--seed", type=int, default=None,
                   help="seed for random control heads and schedules (default 0; 42 with --preset reference)")
    g.add_argument("--force", action="store_true", help="run into an --out folder that holds another configuration "
                                                        "(its logged results are kept and resumed from)")


def _steering(p: argparse.ArgumentParser, *, tokens: Optional[int], conditions: str, k=True):
    g = p.add_argument_group("steering")
    g.add_argument("--heads", default=None, help="ranking JSON from `discover` (default: OUT/ranking.json; if "
                                                 "missing, discovery runs first on --discover-strips and writes it)")
    g.add_argument("--discover-strips", default="synthetic:100:100",
                   help="strips for discovery when no ranking exists (default synthetic:100:100: the organism's "
                        "discovery split, disjoint from the evaluation strips)")
    if k:
        g.add_argument("--k", type=int, default=None, help="number of gaze heads to steer (default: the model's "
                                                         "recommended K, else 100/1152 of its heads as in the paper)")
    g.add_argument("--conditions", default=conditions,
                   help=f"comma-separated subset of unsteered,top,random,all (default {conditions})")
    g.add_argument("--mode", default="boost_suppress",
                   choices=["boost_suppress", "suppress_image", "suppress_all", "max_suppress_all"],
                   help="steering mode (default boost_suppress: +B on the target, -B on other image tokens)")
    g.add_argument("--strength", type=float, default=1e4, help="bias B (default 1e4)")
    g.add_argument("--phase", default=None, choices=["all", "decode", "prefill"],
                   help="steer during prefill and decoding (all, the paper) or only one of them (default all; "
                        "dynamic with --preset reference: decode)")
    g.add_argument("--preset", default="gazekit", choices=["gazekit", "reference"],
                   help="gazekit's protocol (default) or the reference code's: its prompts, K = 100 (the model's "
                        "recommended K where it has one), its control sampler and seed 42, decode-only dynamic "
                        "steering, the Claude judge with its prompt unless --judge is given, the baseline-copy "
                        "rule on every target (docs/reference-parity.md)")
    g.add_argument("--control-pool", default=None, choices=["below-median", "image-matched", "reference"],
                   help="pool the random control heads are drawn from (default: below-median; reference with "
                        "--preset reference); image-matched: heads that look at the image but score low, the "
                        "fairer control")
    if tokens is not None:
        g.add_argument("--max-new-tokens", type=int, default=tokens, help=f"tokens to generate (default {tokens})")
    g.add_argument("--prompt", default=None, help="override the protocol's prompt")
    g.add_argument("--batch-size", type=int, default=None,
                   help="(strip, target) rows generated per call, each steered toward its own target (default: "
                        "as many as 16384 prompt tokens allow, at most 64; 1 = one at a time; lower it if a GPU runs "
                        "out of memory; dynamic and boxes always go one at a time)")
    g.add_argument("--shard", default=None, help="run only shard i of n ('i/n', 0 <= i < n) with its own log; "
                                                 "rerun without --shard afterwards to merge all shards")


def _judge(p: argparse.ArgumentParser):
    g = p.add_argument_group("judge")
    g.add_argument("--judge", default=None, choices=["caption", "exact", "semantic", "claude", "claude-reference",
                                                     "openai"],
                   help="who decides which panel an answer describes (default: the lexical caption matcher for "
                        "strips with captions, else the offline semantic judge; 'exact' demands the answer be one "
                        "caption - use it for synthetic strips, whose captions differ by one word)")
    g.add_argument("--judge-model", default=None, help="model name for the claude/openai judges")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m gazekit` argument parser: one subcommand per job (tutorials, app, evaluate protocols, survey,
    ...)."""
    p = argparse.ArgumentParser(prog="python -m gazekit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("discover", help="rank every head by its gaze score; writes OUT/ranking.json",
                       description="Gaze scores of every head from the six panel questions on comic strips; writes "
                                   "the reference ranking JSON (list of {layer, head, score}, best first), a sidecar "
                                   "with the 6x6 matrices and a plot.")
    _common(d, strips_default="synthetic:100:100")
    d.add_argument("--preset", default="gazekit", choices=["gazekit", "reference"],
                   help="'reference': the reference code's panel questions ('1st' ... '6th') and, for folder and "
                        "COMICS strips, its strip assembly and page-bounded windows (docs/reference-parity.md)")

    v = sub.add_parser("vqa", help="VQA steering: does the answer describe the target panel?",
                       description="The paper's main experiment: the whole-strip question, each panel as target, "
                                   "15 tokens; accuracy per condition with 95% bootstrap CIs.")
    _common(v, strips_default="synthetic:500:2000")
    _steering(v, tokens=15, conditions="unsteered,top,random,all")
    _judge(v)

    n = sub.add_parser("narration", help="static narration steering with the ambiguous prompt",
                       description="Static narration: 'What is happening in this panel of the comic strip?', "
                                   "~100 tokens, one target per answer.")
    _common(n, strips_default="synthetic:500:2000")
    _steering(n, tokens=100, conditions="unsteered,top,random,all")
    _judge(n)

    dy = sub.add_parser("dynamic", help="dynamic narration along a random derangement of the panels",
                        description="The target walks along a seeded derangement of the panels while the model "
                                    "narrates panel by panel; per-segment accuracy and the Spearman correlation "
                                    "between scheduled and described panels.")
    _common(dy, strips_default="synthetic:500:2000")
    _steering(dy, tokens=None, conditions="unsteered,top,random")
    dy.add_argument("--every", default="50", help="switch target every N decode steps (default 50, the paper), or "
                                                  "'caption' to switch after each caption/sentence")
    dy.add_argument("--max-new-tokens", type=int, default=None,
                    help="tokens to generate (default 6 x --every, or 120 with --every caption)")
    _judge(dy)

    s = sub.add_parser("sweep", help="VQA accuracy against the number of heads K",
                       description="k_sweep: top-K (and size-matched random) steering for several K.")
    _common(s, strips_default="synthetic:500:2000")
    _steering(s, tokens=15, conditions="unsteered,top,random", k=False)
    s.add_argument("--ks", default=None, help="comma-separated K values (default 1,2,5,10,20,50,100,... up to half "
                                              "the heads)")
    _judge(s)

    b = sub.add_parser("boxes", help="steer toward named boxes in natural images (COCO)",
                       description="Mention rate of the boxed object's name with and without steering.")
    _common(b, strips_default="synthetic:500:2000")
    _steering(b, tokens=30, conditions="unsteered,top,random")
    b.add_argument("--coco-annotations", default=None, help="COCO instances_*.json")
    b.add_argument("--coco-images", default=None, help="folder of the annotated images")
    b.add_argument("--max-images", type=int, default=200, help="COCO images to use (default 200)")
    b.add_argument("--categories", default=None, help="comma-separated COCO category names (default: all)")
    b.add_argument("--scenes", default=None, help="instead of COCO: 'synthetic:N:SEED' synthetic strips as scenes "
                                                 "whose panels are boxes named by their captions (for the organism)")

    sv = sub.add_parser("survey", help="compare models: gaze-score distribution, top-K depth, top-K vs random steering",
                        description="For each model: discovery, its gaze-score distribution (quantiles, heads >= "
                                    "0.5), where its top-K heads sit by relative depth, and VQA steering with the "
                                    "top-K heads vs the size-matched random control and unsteered on a small "
                                    "held-out sample (95% bootstrap CIs). Resumable: rerun the same command to "
                                    "skip every model already done. Writes OUT (JSONL log), OUT's .json report and "
                                    ".png figure.")
    sv.add_argument("--models", nargs="+", default=["organism"],
                    help="models to compare: 'organism' (the embedded comic organism), other names gazekit.load "
                         "knows, Hugging Face ids or local folders (default: organism)")
    sv.add_argument("--strips", default=str(SURVEY_STRIPS),
                    help=f"discovery strips: a number N (synthetic:N:100, the organism's discovery split) or "
                         f"{STRIPS_HELP[:1].lower()}{STRIPS_HELP[1:]}; unless --eval-strips is given the last "
                         f"--n-eval of them are held out for steering (default {SURVEY_STRIPS})")
    sv.add_argument("--eval-strips", default=None,
                    help="steering strips (same forms as --strips; the first --n-eval are used; default: held out "
                         "from --strips)")
    sv.add_argument("--n-eval", type=int, default=4,
                    help="strips in the steering sample, each steered toward all six panels (default 4)")
    sv.add_argument("--k", default=None, help="heads to steer: an integer, or a share of each model's heads such as "
                                              "0.1 (default: each model's recommended K, else 100/1152 of its heads)")
    sv.add_argument("--max-new-tokens", type=int, default=15, help="tokens per steered answer (default 15)")
    sv.add_argument("--seed", type=int, default=0, help="first seed of the random control's draws (default 0)")
    sv.add_argument("--control-seeds", type=int, default=3,
                    help="draws of the size-matched random control per model (default 3)")
    sv.add_argument("--batch-size", type=int, default=None,
                    help="(strip, target) rows per generate call (default: as many as 16384 prompt tokens allow)")
    sv.add_argument("--out", default="runs/survey.jsonl",
                    help="JSONL log (default runs/survey.jsonl); the report goes beside it as .json and .png")
    sv.add_argument("--quantize", choices=["4bit"], default=None, help="load NF4 4-bit weights with bitsandbytes")
    sv.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                    help="weights dtype (default: bfloat16 on CUDA, float32 on CPU)")
    sv.add_argument("--device-map", default=None, help="accelerate device map, e.g. 'auto' to spread over GPUs")
    sv.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _judge(sv)

    from gazekit import app as steering_app  # stdlib-only at import: cheap
    ap = sub.add_parser("app", help="the local steering app: a Voilà page on 127.0.0.1 (see gazekit.app)",
                        description="Click a panel to steer the model toward it; pick K and the head condition; "
                                    "see the answer, the judge's verdict and the attention bars.")
    ap.add_argument("--model", default=None, help="Hugging Face model id or local folder (default: the embedded "
                                                  "comic organism)")
    ap.add_argument("--quantize", choices=["4bit"], default=None, help="load NF4 4-bit weights with bitsandbytes")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"], help="weights dtype")
    ap.add_argument("--device-map", default=None, help="accelerate device map, e.g. 'auto'")
    ap.add_argument("--heads", default=None, help="ranking JSON from `discover` (default: discover on "
                                                  "--discover-strips when the page opens)")
    ap.add_argument("--discover-strips", default=steering_app.DEFAULT_DISCOVER_STRIPS, help=STRIPS_HELP)
    ap.add_argument("--seed", type=int, default=steering_app.DEFAULT_STRIP_SEED,
                    help=f"the synthetic strip shown first (default {steering_app.DEFAULT_STRIP_SEED})")
    ap.add_argument("--k", type=int, default=None, help="K heads to start with (default: the model's recommended K)")
    ap.add_argument("--port", type=int, default=steering_app.DEFAULT_PORT,
                    help=f"port on 127.0.0.1 (default {steering_app.DEFAULT_PORT})")
    ap.add_argument("--no-browser", action="store_true", help="do not open a browser")
    return p


SURVEY_STRIPS = 24
SURVEY_DISCOVERY_SEED = 100  # the organism's discovery split


def _survey_strips_spec(spec: str, flag: str) -> str:
    """A bare number N means synthetic:N:100 (the organism's discovery split); anything else is a strips spec."""
    spec = str(spec).strip()
    if spec.isdigit():
        if int(spec) < 1:
            raise SystemExit(f"{flag} {spec}: give at least 1 strip")
        return f"synthetic:{int(spec)}:{SURVEY_DISCOVERY_SEED}"
    check_strips_spec(spec, flag)
    return spec


def _survey_k(value):
    if value is None:
        return None
    try:
        k = int(value)
    except ValueError:
        try:
            k = float(value)
        except ValueError:
            raise SystemExit(f"--k {value!r}: use an integer >= 1 or a share of the heads in (0, 1), e.g. 0.1") \
                from None
        if not 0 < k < 1:
            raise SystemExit(f"--k {value!r}: a share of the heads must lie in (0, 1), e.g. 0.1")
        return k
    if k < 1:
        raise SystemExit(f"--k must be >= 1, got {k}")
    return k


def _run_survey(a) -> int:
    """`python -m gazekit survey`: check everything, then `gazekit.survey` with a JSONL log at --out (models are
    loaded one at a time, and not at all where the log already holds their result)."""
    strips_spec = _survey_strips_spec(a.strips, "--strips")
    eval_spec = _survey_strips_spec(a.eval_strips, "--eval-strips") if a.eval_strips else None
    k = _survey_k(a.k)
    for flag, v in (("--n-eval", a.n_eval), ("--max-new-tokens", a.max_new_tokens), ("--batch-size", a.batch_size),
                    ("--control-seeds", a.control_seeds)):
        if v is not None and v < 1:
            raise SystemExit(f"{flag} must be >= 1, got {v}")
    if getattr(a, "judge_model", None) and a.judge not in ("claude", "openai"):
        raise SystemExit("--judge-model only applies to --judge claude or --judge openai")
    out = Path(a.out)
    if out.is_dir():
        raise SystemExit(f"--out {out} is a folder; give the log's file name, e.g. {out / 'survey.jsonl'}")
    strips = parse_strips(strips_spec)
    evals = parse_strips(eval_spec) if eval_spec else None
    if evals is None and len(strips) <= a.n_eval:
        raise SystemExit(f"--strips {a.strips} gives {len(strips)} strips: too few to hold out --n-eval {a.n_eval} "
                         f"for steering; give more (e.g. --strips {a.n_eval + 20}) or --eval-strips")
    import gazekit
    load_kwargs = {key: v for key, v in (("quantize", a.quantize), ("dtype", a.dtype), ("device_map", a.device_map))
                   if v is not None}
    report = gazekit.survey(list(a.models), strips, k=k, n_eval=a.n_eval, eval_strips=evals, judge=_judge_obj(a),
                            max_new_tokens=a.max_new_tokens, seed=a.seed, control_seeds=a.control_seeds,
                            progress=not a.no_progress, out=out, batch_size=a.batch_size, load_kwargs=load_kwargs)
    json_path = report.save(out.with_suffix(".json"))
    png = out.with_suffix(".png")
    try:
        import matplotlib.pyplot as plt
        fig = report.plot()
        fig.savefig(png, bbox_inches="tight", dpi=120)
        plt.close(fig)
    except Exception as e:  # noqa: BLE001 — a plotting problem must not lose the report
        print(f"(plot skipped: {e})", file=sys.stderr)
    print(report.to_markdown())
    print("wrote " + ", ".join(str(p) for p in (out, json_path, png) if p.exists()))
    return 0


def _load_vlm(a):
    import gazekit
    return gazekit.load(a.model, quantize=a.quantize, device_map=a.device_map, dtype=a.dtype)


def _scores(a, vlm, out: Path):
    from gazekit import GazeScores, discover
    path = Path(a.heads) if a.heads else out / "ranking.json"
    if path.exists():
        return GazeScores.load(path, vlm=vlm)
    if a.heads:
        raise SystemExit(f"--heads {path} does not exist; run `python -m gazekit discover --out DIR` first")
    print(f"no ranking at {path}: discovering gaze heads on {a.discover_strips} first", file=sys.stderr)
    ref = getattr(a, "preset", "gazekit") == "reference"
    scores = discover(vlm, parse_strips(a.discover_strips, style="reference" if ref else "gazekit"),
                      progress=not a.no_progress, questions=_questions(a))
    if a.shard is None:  # one writer: shards must not race on ranking.json (they all compute the same one)
        scores.save(path)
    return scores


def _questions(a):
    """The six panel questions of the preset (None: discover's default)."""
    if getattr(a, "preset", "gazekit") != "reference":
        return None
    from gazekit.regions import N_PANELS, panel_question
    return [panel_question(k, style="reference") for k in range(1, N_PANELS + 1)]


def _judge_obj(a):
    preset = getattr(a, "preset", "gazekit")
    if a.judge_model and (a.judge in ("claude", "claude-reference", "openai")
                          or (a.judge is None and preset == "reference")):
        from gazekit.judges import ClaudeJudge, OpenAIJudge
        if a.judge == "openai":
            return OpenAIJudge(model=a.judge_model)
        ref = a.judge == "claude-reference" or (a.judge is None and preset == "reference")
        return ClaudeJudge(model=a.judge_model, style="reference" if ref else "gazekit")
    return a.judge


def _finish(res, a, out: Path, command: str):
    from gazekit.evaluate.runlog import parse_shard
    sh = parse_shard(a.shard)
    stem = command if sh is None else f"{command}.shard-{sh[0]}-of-{sh[1]}"
    paths = res.save(out, stem=stem)
    print(res.to_markdown())
    if res.extra:
        print(json.dumps(res.extra, indent=1, default=str))
    print("wrote " + ", ".join(str(p) for p in paths.values() if Path(p).exists()))
    return res


# ------------------------------------------------------------------------------ validation before any model loads
CONDITION_NAMES = ("unsteered", "top", "random", "all")


def validate_args(a) -> None:
    """Check every argument and data spec before a model is loaded; raises SystemExit naming the fix."""
    import math

    check_strips_spec(a.strips)
    if getattr(a, "discover_strips", None) and not getattr(a, "heads", None):
        check_strips_spec(a.discover_strips, "--discover-strips")
    for flag, attr in (("--limit", "limit"), ("--k", "k"), ("--max-new-tokens", "max_new_tokens"),
                       ("--batch-size", "batch_size"), ("--max-images", "max_images")):
        v = getattr(a, attr, None)
        if v is not None and v < 1:
            raise SystemExit(f"{flag} must be >= 1, got {v}")
    if hasattr(a, "strength"):
        from gazekit.steer import MAX_STRENGTH
        if not (math.isfinite(a.strength) and 0 <= a.strength <= MAX_STRENGTH):
            raise SystemExit(f"--strength must be a finite number >= 0 and <= {MAX_STRENGTH:g}, got {a.strength}; "
                             "1e4 (the default) saturates softmax")
    if hasattr(a, "conditions"):
        conds = [c.strip() for c in a.conditions.split(",") if c.strip()]
        bad = [c for c in conds if c not in CONDITION_NAMES]
        if bad or not conds:
            raise SystemExit(f"--conditions {a.conditions!r}: use a comma-separated subset of "
                             f"{','.join(CONDITION_NAMES)}")
    if getattr(a, "heads", None) and not Path(a.heads).exists():
        raise SystemExit(f"--heads {a.heads} does not exist; run `python -m gazekit discover --out DIR` first and "
                         "pass DIR/ranking.json")
    if getattr(a, "shard", None) is not None:
        from gazekit.evaluate.runlog import parse_shard
        try:
            parse_shard(a.shard)
        except (ValueError, TypeError) as e:
            raise SystemExit(f"--shard {a.shard!r}: {e}; use i/n with 0 <= i < n, e.g. 0/4") from None
    if getattr(a, "every", None) is not None and a.every != "caption":
        try:
            every = int(a.every)
        except ValueError:
            every = 0
        if every < 1:
            raise SystemExit(f"--every {a.every!r}: use a number of decode steps >= 1, or 'caption'")
    if getattr(a, "ks", None):
        try:
            ks = [int(x) for x in a.ks.split(",")]
        except ValueError:
            ks = [0]
        if any(k < 1 for k in ks):
            raise SystemExit(f"--ks {a.ks!r}: use comma-separated integers >= 1, e.g. 1,2,5,10")
    if a.command == "boxes":
        if getattr(a, "scenes", None):
            parts = a.scenes.split(":")
            if parts[0] != "synthetic" or len(parts) not in (2, 3):
                raise SystemExit(f"--scenes {a.scenes!r}: use synthetic:N or synthetic:N:SEED")
            check_strips_spec(a.scenes, "--scenes")
        elif a.coco_annotations and a.coco_images:
            for flag, path in (("--coco-annotations", a.coco_annotations), ("--coco-images", a.coco_images)):
                if not Path(path).exists():
                    raise SystemExit(f"{flag} {path} does not exist")
        else:
            raise SystemExit("boxes needs --coco-annotations and --coco-images, or --scenes synthetic:N:SEED")
    if getattr(a, "judge_model", None) and getattr(a, "judge", None) not in ("claude", "openai"):
        raise SystemExit("--judge-model only applies to --judge claude or --judge openai")


# arguments that do not change what a run computes: they may differ between reruns into one folder
_NOT_CONFIG = ("out", "no_progress", "force", "shard", "batch_size", "device_map", "gpus_per_process",
               "wait_timeout")
CONFIG_FILE = "gazekit-run.json"


def remember_config(a, out: Path) -> None:
    """The output folder remembers the configuration that wrote it (OUT/gazekit-run.json). A rerun with another
    configuration would append different results to the same logs, so it is refused unless `--force`."""
    config = {k: v for k, v in sorted(vars(a).items()) if k not in _NOT_CONFIG}
    path = out / CONFIG_FILE
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except ValueError:
            before = None
        if before is not None and before != config:
            diff = sorted(k for k in set(before) | set(config) if before.get(k) != config.get(k))
            shown = "; ".join(f"--{k.replace('_', '-')}: {before.get(k)!r} -> {config.get(k)!r}" for k in diff)
            if not a.force:
                raise SystemExit(f"{out} holds a run with another configuration ({shown}); its logs would mix "
                                 "results of both. Use another --out, or --force to run into it anyway")
            print(f"--force: running into {out} with another configuration ({shown})", file=sys.stderr)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=1, default=str))
    tmp.replace(path)  # atomic: shards started together all write the same file


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `python -m gazekit` with `argv`; returns the process exit status.

    Args:
        argv: the command line without the program name (None: sys.argv[1:]).
    """
    a = build_parser().parse_args(argv)
    if a.command == "app":  # serves a page; no run folder
        from gazekit.app import serve
        return serve(model=a.model, heads=a.heads, discover_strips=a.discover_strips, seed=a.seed, k=a.k,
                     port=a.port, open_browser=not a.no_browser, quantize=a.quantize, dtype=a.dtype,
                     device_map=a.device_map)
    if a.command == "survey":  # one JSONL file, not a run folder; loads its models itself, one at a time
        return _run_survey(a)
    validate_args(a)
    out = Path(a.out or f"runs/{a.command}")
    out.mkdir(parents=True, exist_ok=True)
    remember_config(a, out)
    launch = _from_launcher(a)
    vlm = _load_vlm(a)
    if launch is not None:
        return _run_launched(a, vlm, out, launch)
    return _run_command(a, vlm, out)


def _run_command(a, vlm, out: Path) -> int:
    if a.command == "discover":
        from gazekit import discover
        strips = parse_strips(a.strips, a.limit, style=a.preset)
        scores = discover(vlm, strips, progress=not a.no_progress, questions=_questions(a))
        path = scores.save(out / "ranking.json")
        try:
            import matplotlib.pyplot as plt
            fig = scores.plot()
            fig = getattr(fig, "figure", fig)
            fig.savefig(out / "ranking.png", bbox_inches="tight")
            plt.close(fig)
        except Exception as e:  # noqa: BLE001 — a plotting problem must not lose the ranking
            print(f"(plot skipped: {e})", file=sys.stderr)
        print(f"top heads: " + ", ".join(f"{h}={scores.scores[h]:.3f}" for h in scores.top(min(10, scores.scores.size))))
        print(f"wrote {path}")
        return 0

    from gazekit import evaluate as ev
    from gazekit.evaluate.runlog import RunLog, shard_log_paths
    conditions = tuple(c.strip() for c in a.conditions.split(",") if c.strip())
    scores = _scores(a, vlm, out) if any(c in ("top", "random") for c in conditions) else None
    log_path, others = shard_log_paths(out, a.shard)
    log = RunLog(log_path, read_also=others)
    common = dict(conditions=conditions, log=log, shard=a.shard, seed=a.seed, progress=not a.no_progress,
                  mode=a.mode, strength=a.strength, preset=a.preset, control_pool=a.control_pool)
    if a.phase is not None:  # else the protocol's (and preset's) default
        common["phase"] = a.phase
    try:
        if a.command == "boxes":
            if a.scenes:
                _, n_, seed_ = (a.scenes.split(":") + ["0"])[:3]
                scenes = synthetic_scenes(int(n_), int(seed_))
            elif a.coco_annotations and a.coco_images:
                from gazekit.scenes import from_coco
                cats = a.categories.split(",") if a.categories else None
                scenes = from_coco(a.coco_annotations, a.coco_images, categories=cats, max_images=a.max_images)
            else:
                raise SystemExit("boxes needs --coco-annotations and --coco-images, or --scenes synthetic:N:SEED")
            kw = {"prompt": a.prompt} if a.prompt else {}
            res = ev.boxes(vlm, scenes, scores, k=a.k, max_new_tokens=a.max_new_tokens, **common, **kw)
            _finish(res, a, out, "boxes")
            return 0
        strips = parse_strips(a.strips, a.limit, style=a.preset)
        judge = _judge_obj(a)
        if a.command == "vqa":
            kw = {"question": a.prompt} if a.prompt else {}
            res = ev.vqa(vlm, strips, scores, k=a.k, judge=judge, max_new_tokens=a.max_new_tokens,
                         batch_size=a.batch_size, **common, **kw)
        elif a.command == "narration":
            kw = {"prompt": a.prompt} if a.prompt else {}
            res = ev.narration(vlm, strips, scores, k=a.k, judge=judge, max_new_tokens=a.max_new_tokens,
                               batch_size=a.batch_size, **common, **kw)
        elif a.command == "dynamic":
            every = None if a.every == "caption" else int(a.every)
            kw = {"prompt": a.prompt} if a.prompt else {}
            res = ev.dynamic(vlm, strips, scores, k=a.k, every=every, judge=judge,
                             max_new_tokens=a.max_new_tokens, **common, **kw)
        elif a.command == "sweep":
            ks = [int(x) for x in a.ks.split(",")] if a.ks else None
            kw = {"question": a.prompt} if a.prompt else {}
            res = ev.k_sweep(vlm, strips, scores, ks, judge=judge, max_new_tokens=a.max_new_tokens,
                             batch_size=a.batch_size, **common, **kw)
        else:  # pragma: no cover - argparse rejects unknown commands
            raise SystemExit(f"unknown command {a.command}")
        _finish(res, a, out, "sweep" if a.command == "sweep" else a.command)
    finally:
        log.close()
    return 0


# --- under torchrun / accelerate launch (gazekit.distributed) ----------------------------------------------------

def _from_launcher(a):
    """The launcher's rank and world size (None without one); this process's GPUs are chosen here, before CUDA
    starts, and its shard set from the rank."""
    from gazekit.distributed import from_launcher, place_process
    launch = from_launcher()
    if launch is not None and getattr(a, "shard", None) is not None:
        raise SystemExit(f"--shard {a.shard} was given under a launcher that already sets the shard "
                         f"(RANK={launch.rank}, WORLD_SIZE={launch.world_size}): drop --shard")
    device_map = place_process(launch, a.gpus_per_process)
    if device_map is not None and a.device_map is None:
        a.device_map = device_map
    if launch is not None and a.command != "discover":
        a.shard = launch.shard
    return launch


def _run_launched(a, vlm, out: Path, launch) -> int:
    """One rank's part: its shard with its own log, then a barrier; rank 0 then merges every shard (the same
    command without a shard, which finds all work done in the shard logs and only aggregates)."""
    from gazekit import distributed as dist
    try:
        if a.command == "discover":
            _discover_launched(a, vlm, out, launch, a.strips, a.limit, out / "ranking.json")
            return 0
        needs_heads = any(c.strip() in ("top", "random") for c in a.conditions.split(","))
        if needs_heads and not a.heads and not (out / "ranking.json").exists():
            print(f"no ranking at {out / 'ranking.json'}: discovering gaze heads on {a.discover_strips} across "
                  f"{launch.world_size} processes first", file=sys.stderr)
            _discover_launched(a, vlm, out, launch, a.discover_strips, None, out / "ranking.json")
        _run_command(a, vlm, out)
        dist.wait_for_all(launch, a.wait_timeout, a.command)
        if launch.rank == 0:
            a.shard = None
            print(f"rank 0: merging {launch.world_size} shards", file=sys.stderr)
            _run_command(a, vlm, out)
        return 0
    finally:
        dist.finish()


def _discover_launched(a, vlm, out: Path, launch, strips_spec: str, limit, path: Path):
    """Each rank scores every world_size-th strip and writes its partial matrices; rank 0 reduces them (sum x count)
    into the one-process ranking and writes `path`; every rank leaves with the ranking on disk. A rank whose part
    is already on disk for the same strips (a rerun after a kill) reuses it."""
    from gazekit import GazeScores, discover
    from gazekit import distributed as dist
    part_path = dist.shard_ranking_path(out, launch.rank, launch.world_size)
    key = {"strips": strips_spec, "limit": limit, "shard": launch.shard, "preset": a.preset}
    part = GazeScores.load(part_path) if part_path.exists() else None
    if part is None or part.meta.get("part_of") != key:
        strips = parse_strips(strips_spec, limit, style=a.preset)[launch.rank::launch.world_size]
        if not strips:
            raise SystemExit(f"{len(parse_strips(strips_spec, limit))} strips for {launch.world_size} processes: "
                             "give at least one strip per process or start fewer")
        part = discover(vlm, strips, progress=not a.no_progress, questions=_questions(a))
        part.meta["part_of"] = key
        part.save(part_path)
    dist.wait_for_all(launch, a.wait_timeout, "discover")
    if launch.rank == 0:
        parts = [GazeScores.load(dist.shard_ranking_path(out, r, launch.world_size))
                 for r in range(launch.world_size)]
        scores = dist.merge_discovery(parts, meta={"processes": launch.world_size})
        scores.save(path)
        _plot_ranking(scores, path.with_suffix(".png"))
        print("top heads: " + ", ".join(f"{h}={scores.scores[h]:.3f}"
                                        for h in scores.top(min(10, scores.scores.size))))
        print(f"wrote {path}")
    dist.wait_for_all(launch, a.wait_timeout, "discover merge")  # the other ranks may need the ranking next


def _plot_ranking(scores, png: Path):
    try:
        import matplotlib.pyplot as plt
        fig = scores.plot()
        fig = getattr(fig, "figure", fig)
        fig.savefig(png, bbox_inches="tight")
        plt.close(fig)
    except Exception as e:  # noqa: BLE001 — a plotting problem must not lose the ranking
        print(f"(plot skipped: {e})", file=sys.stderr)
