"""``ov2 eval`` on bad input: one clear line, exit code 2, and nothing written to the results folder."""

import json

from ov2_plugin.cli import main


def _fake_llava(tmp_path):
    """Passes the folder check (the checks under test run before any weights are read)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llava"}))
    return model


def _nothing_written(tmp_path, out):
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")]  # no staging left


def test_missing_model_dir(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["eval", "--model", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ov2 eval: error:" in err and "does not exist" in err and "llava-build" in err
    _nothing_written(tmp_path, out)


def test_folder_that_is_not_llava(tmp_path, capsys):
    model = tmp_path / "captioner"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "openvision2"}))
    assert main(["eval", "--model", str(model), "--out", str(tmp_path / "results")]) == 2
    assert "not a LLaVA" in capsys.readouterr().err
    _nothing_written(tmp_path, tmp_path / "results")


def test_unknown_task(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["eval", "--model", str(_fake_llava(tmp_path)), "--out", str(out), "--tasks", "ov2_pope_random,textvqa"]) == 2
    err = capsys.readouterr().err
    assert "Unknown task(s) ['textvqa']" in err and "ov2_pope_random" in err and "--suite public" in err
    _nothing_written(tmp_path, out)


def test_existing_results_are_not_overwritten(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.json").write_text("{}")
    assert main(["eval", "--model", str(_fake_llava(tmp_path)), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "{}"


def test_tsv_without_required_columns(tmp_path, capsys, monkeypatch):
    lmu = tmp_path / "LMUData"
    lmu.mkdir()
    (lmu / "MyBench.tsv").write_text("index\tquestion\n0\twhat colour?\n")
    monkeypatch.setenv("LMUData", str(lmu))
    out = tmp_path / "results"
    args = ["eval", "--model", str(_fake_llava(tmp_path)), "--out", str(out), "--framework", "vlmeval",
            "--suite", "public", "--tasks", "MyBench"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "MyBench.tsv lacks the column(s) ['answer', 'image']" in err
    _nothing_written(tmp_path, out)
