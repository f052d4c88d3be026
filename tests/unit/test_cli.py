"""The command line: --help for every command, strip specs, and small runs on the scripted fake VLM."""
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
    with pytest.raises(SystemExit, match="coco"):
        cli.main(["boxes", "--out", str(tmp_path / "b2"), "--heads", str(ranking), "--no-progress"])
    with pytest.raises(SystemExit, match="discover"):
        cli.main(["vqa", "--heads", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")] + common[:2])
