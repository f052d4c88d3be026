"""The command line: --help for every command, strip specs, and small runs on the scripted fake VLM."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fakes import FakeVLM, fake_scores, install_fake_steer  # noqa: E402

from gazekit import cli  # noqa: E402

COMMANDS = ["discover", "vqa", "narration", "dynamic", "sweep", "boxes"]


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "gazekit", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for c in COMMANDS:
        assert c in out.stdout


def test_every_option_is_documented():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in COMMANDS:
        p = sub.choices[name]
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 10, f"{name} {action.option_strings} lacks help"
        text = p.format_help()
        assert "--model" in text and "--out" in text
        if name != "discover":
            for opt in ("--heads", "--shard", "--quantize", "--device-map"):
                assert opt in text


def test_parse_strips(tmp_path):
    s = cli.parse_strips("synthetic:3:7")
    assert len(s) == 3 and s[0].captions
    assert len(cli.parse_strips("synthetic:5:7", limit=2)) == 2
    from PIL import Image
    d = tmp_path / "comic1"
    d.mkdir()
    for k in range(1, 7):
        Image.new("RGB", (30, 30), (k * 30, 0, 0)).save(d / f"p{k}.png")
    assert cli.parse_strips(str(tmp_path))[0].id == "comic1"
    with pytest.raises(SystemExit, match="not a folder"):
        cli.parse_strips(str(tmp_path / "nope"))


@pytest.fixture
def fake_cli(monkeypatch, tmp_path):
    install_fake_steer(monkeypatch)
    vlm = FakeVLM()
    monkeypatch.setattr(cli, "_load_vlm", lambda a: vlm)
    ranking = tmp_path / "ranking.json"
    fake_scores(vlm).save(ranking)
    return vlm, ranking


def test_vqa_run_resume_and_shards(fake_cli, tmp_path, capsys):
    vlm, ranking = fake_cli
    out = tmp_path / "vqa"
    base = ["vqa", "--strips", "synthetic:3:0", "--heads", str(ranking), "--out", str(out), "--no-progress"]
    assert cli.main(base) == 0
    table = pd.read_csv(out / "vqa.csv")
    assert len(table) == 3 * 6 * (3 + 3)  # unsteered, top, all + the random control's 3 seeds
    summary = pd.read_csv(out / "vqa_summary.csv").set_index("condition")
    assert summary.loc["top", "accuracy"] == 1.0 and summary.loc["all", "accuracy"] == 0.0
    for f in ("vqa.png", "vqa_by_panel.csv", "vqa_config.json", "run.jsonl"):
        assert (out / f).exists(), f
    assert "| top (K=4) | 18 | 100.0%" in capsys.readouterr().out
    calls = vlm.calls
    assert cli.main(base) == 0 and vlm.calls == calls  # resumed: nothing regenerated

    sh = tmp_path / "sharded"
    sbase = ["vqa", "--strips", "synthetic:3:0", "--heads", str(ranking), "--out", str(sh), "--no-progress"]
    for i in range(2):
        assert cli.main(sbase + ["--shard", f"{i}/2"]) == 0
        assert (sh / f"run.shard-{i}-of-2.jsonl").exists() and (sh / f"vqa.shard-{i}-of-2.csv").exists()
    calls = vlm.calls
    assert cli.main(sbase) == 0 and vlm.calls == calls  # the merge generates nothing
    merged = pd.read_csv(sh / "vqa.csv")
    cols = ["condition", "strip", "target", "answer", "hit"]
    key = ["condition", "strip", "target"]
    assert merged[cols].sort_values(key).reset_index(drop=True).equals(
        table[cols].sort_values(key).reset_index(drop=True))


def test_other_commands_run(fake_cli, tmp_path):
    vlm, ranking = fake_cli
    common = ["--strips", "synthetic:2:0", "--heads", str(ranking), "--no-progress"]
    assert cli.main(["dynamic", "--every", "caption", "--out", str(tmp_path / "d")] + common) == 0
    d = pd.read_csv(tmp_path / "d" / "dynamic.csv")
    assert d[d.condition == "top"]["hit"].all() and len(d) == 2 * (2 + 3) * 6
    assert cli.main(["sweep", "--ks", "1,2", "--out", str(tmp_path / "s")] + common) == 0
    s = pd.read_csv(tmp_path / "s" / "sweep_summary.csv")
    assert sorted(s[s.condition == "top"]["k"]) == [1, 2]
    assert cli.main(["narration", "--conditions", "unsteered,top", "--out", str(tmp_path / "n")] + common) == 0
    n = pd.read_csv(tmp_path / "n" / "narration_summary.csv").set_index("condition")
    assert n.loc["top", "accuracy"] == 1.0
    assert cli.main(["boxes", "--scenes", "synthetic:2:0", "--out", str(tmp_path / "b"), "--heads", str(ranking),
                     "--no-progress"]) == 0
    b = pd.read_csv(tmp_path / "b" / "boxes_summary.csv").set_index("condition")
    assert b.loc["top", "accuracy"] == 1.0
    assert cli.main(["vqa", "--conditions", "random", "--control-pool", "reference", "--out", str(tmp_path / "r")]
                    + common) == 0
    r = pd.read_csv(tmp_path / "r" / "vqa.csv")
    assert set(r["pool"]) == {"reference"}  # --control-pool reaches the sampler (the default pool is below-median)
    with pytest.raises(SystemExit, match="coco"):
        cli.main(["boxes", "--out", str(tmp_path / "b2"), "--heads", str(ranking), "--no-progress"])
    with pytest.raises(SystemExit, match="discover"):
        cli.main(["vqa", "--heads", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")] + common[:2])


# -- issue 26: validate before loading a model; an output folder remembers its configuration ------------------------
@pytest.mark.parametrize("argv, message", [
    (["vqa", "--strips", "synthetic:abc:0"], r"N \(number of strips\) must be an integer.*synthetic:N:SEED"),
    (["vqa", "--strips", "synthetic:0:0"], r"must be >= 1"),
    (["vqa", "--strips", "no/such/folder"], "is not a folder nor synthetic"),
    (["vqa", "--strips", "comics:/no/root:5:0"], "ROOT '/no/root' is not a folder"),
    (["vqa", "--discover-strips", "synthetic:1:2:3"], "--discover-strips.*use synthetic:N"),
    (["vqa", "--conditions", "top,best"], "subset of unsteered,top,random,all"),
    (["vqa", "--strength", "nan"], "--strength must be a finite number >= 0"),
    (["vqa", "--strength", "-1"], "--strength must be a finite number >= 0"),
    (["vqa", "--k", "0"], "--k must be >= 1"),
    (["vqa", "--limit", "0"], "--limit must be >= 1"),
    (["vqa", "--shard", "2/2"], r"--shard '2/2'.*use i/n"),
    (["vqa", "--heads", "/no/ranking.json"], "run `python -m gazekit discover"),
    (["vqa", "--judge-model", "x"], "--judge-model only applies"),
    (["dynamic", "--every", "0"], "--every '0'.*or 'caption'"),
    (["sweep", "--ks", "1,x"], "--ks '1,x'.*integers >= 1"),
    (["boxes"], "boxes needs --coco-annotations"),
    (["boxes", "--scenes", "coco:3"], "--scenes 'coco:3'"),
])
def test_cli_validates_before_loading_a_model(monkeypatch, tmp_path, argv, message):
    def no_model(a):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "_load_vlm", no_model)
    with pytest.raises(SystemExit, match=message):
        cli.main(argv + ["--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()  # nothing created either


def test_output_folder_refuses_another_configuration(fake_cli, tmp_path):
    vlm, ranking = fake_cli
    out = tmp_path / "vqa"
    base = ["vqa", "--strips", "synthetic:2:0", "--heads", str(ranking), "--out", str(out), "--no-progress"]
    assert cli.main(base) == 0
    assert json.loads((out / cli.CONFIG_FILE).read_text())["strips"] == "synthetic:2:0"
    rows = len(pd.read_csv(out / "vqa.csv"))
    other = base[:2] + ["synthetic:2:7"] + base[3:]
    with pytest.raises(SystemExit, match=r"another configuration \(--strips: 'synthetic:2:0' -> 'synthetic:2:7'\).*"
                                         r"another --out, or --force"):
        cli.main(other)
    assert len(pd.read_csv(out / "vqa.csv")) == rows  # nothing appended
    assert cli.main(base + ["--batch-size", "1"]) == 0  # not part of the configuration: same results
    assert cli.main(other + ["--force"]) == 0
    assert json.loads((out / cli.CONFIG_FILE).read_text())["strips"] == "synthetic:2:7"


# -- issue 28: python -m gazekit survey ------------------------------------------------------------------------------
@pytest.fixture
def fake_survey(monkeypatch):
    """The survey's seams faked: loading by name (FakeVLM), discovery (FakeVLM has no transformer), steering."""
    import importlib
    install_fake_steer(monkeypatch)
    loaded = []

    def load(name, kwargs):
        loaded.append((name, kwargs))
        vlm = FakeVLM()
        vlm.name = f"fake:{name}"
        return vlm

    monkeypatch.setattr(importlib.import_module("gazekit.evaluate.survey"), "_load", load)
    monkeypatch.setattr(importlib.import_module("gazekit.discover"), "discover",
                        lambda vlm, strips, progress=True: fake_scores(vlm))
    return loaded


def test_survey_command_writes_the_report_and_resumes(fake_survey, tmp_path, capsys):
    out = tmp_path / "survey.jsonl"
    argv = ["survey", "--models", "organism", "other", "--strips", "5", "--n-eval", "1", "--judge", "exact",
            "--dtype", "float32", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    assert [n for n, _ in fake_survey] == ["organism", "other"] and fake_survey[0][1] == {"dtype": "float32"}
    report = json.loads((tmp_path / "survey.json").read_text())
    assert [m["model"] for m in report["models"]] == ["organism", "other"]
    assert report["config"]["n_discovery"] == 4 and report["config"]["n_eval"] == 1  # the last strip held out
    assert (tmp_path / "survey.png").exists() and out.exists()
    printed = capsys.readouterr().out
    assert "| organism | 32 | 4 |" in printed and "100.0% [100.0, 100.0]" in printed  # the fake's top-4 steer
    fake_survey.clear()
    assert cli.main(argv) == 0 and fake_survey == []  # resumed: no model even loaded
    assert cli.main(argv[:-3] + ["--k", "0.25", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((tmp_path / "survey.json").read_text())["models"][0]["k"] == 8  # K as a share of 32 heads


@pytest.mark.parametrize("argv, message", [
    (["--strips", "synthetic:x:0"], r"N \(number of strips\) must be an integer"),
    (["--strips", "0"], "at least 1 strip"),
    (["--strips", "3", "--n-eval", "3"], "too few to hold out --n-eval 3"),
    (["--eval-strips", "no/such/folder"], "--eval-strips 'no/such/folder' is not a folder"),
    (["--k", "x"], "--k 'x': use an integer"),
    (["--k", "1.5"], r"share of the heads must lie in \(0, 1\)"),
    (["--n-eval", "0"], "--n-eval must be >= 1"),
    (["--judge-model", "m"], "--judge-model only applies"),
])
def test_survey_command_validates_before_loading(fake_survey, tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(["survey", "--out", str(tmp_path / "s.jsonl"), "--no-progress"] + argv)
    assert fake_survey == [] and not (tmp_path / "s.jsonl").exists()


def test_survey_command_is_listed_and_documented():
    out = subprocess.run([sys.executable, "-m", "gazekit", "--help"], capture_output=True, text=True, timeout=120)
    assert "survey" in out.stdout
    sub = next(a for a in cli.build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for action in sub.choices["survey"]._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 10, f"survey {action.option_strings} lacks help"
