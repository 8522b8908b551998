"""`ov2 compare`: equal counted FLOPs per objective, every tower evaluated alike, and a killed
comparison continues from the last finished unit (micro recipe: seconds per unit)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ov2_plugin.experiments.objectives import claim_output_dir, main, plan
from ov2_plugin.experiments.recipes import load_comparison_recipe


def _wait_for(path, proc, timeout=300):
    start = time.time()
    while not path.is_file():
        if proc.poll() is not None:
            raise AssertionError(f"the comparison ended (exit {proc.returncode}) before writing {path}")
        if time.time() - start > timeout:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.2)


def test_killed_comparison_resumes_from_the_last_finished_unit(tmp_path):
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "ov2_plugin.experiments.objectives", "--recipe", "micro", "--output_dir", str(out),
           "--objectives", "caption", "clip"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = out / "seed0" / "caption" / "pretrain.json"
    try:
        _wait_for(first, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    recipe = load_comparison_recipe("micro")
    recipe["objectives"] = ["caption", "clip"]
    records = [record for _, record, _ in plan(recipe, [0], out)]
    done = {p: p.stat().st_mtime_ns for p in records if p.is_file()}
    assert first in done and not (out / "compare.json").exists()
    log = []
    import ov2_plugin.experiments.objectives as objectives

    real_print = print
    objectives.print = lambda *a, **k: log.append(" ".join(map(str, a)))  # the progress lines
    try:
        result = main(["--recipe", "micro", "--output_dir", str(out), "--objectives", "caption", "clip"])
    finally:
        objectives.print = real_print
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # finished units were not redone
    assert sum("already done" in line for line in log) == len(done)
    assert {"caption", "clip", "random"} == set(result["summary"])  # the untrained tower's probes: the floor
    assert set(result["runs"]["seed0"]["random"]) == {"probe"} and "random tower (untrained)" in (out / "compare.md").read_text()
    for name in ("compare.json", "compare.md", "compare.png"):
        assert (out / name).stat().st_size > 0
    runs = result["runs"]["seed0"]
    assert "retrieval" in runs["clip"] and "retrieval" not in runs["caption"]  # no text tower in OpenVision 2
    for o in ("caption", "clip"):
        assert set(runs[o]["probe"]["patch"]) >= {"reading_seen", "reading_unseen", "count", "colour", "position", "presence"}
        assert set(runs[o]["llava"]["per_task"]) >= {"letter_seen", "letter_unseen", "count"}
    # equal cost: each objective spends the budget to within one of its own steps
    flops = result["flops"]
    for o, steps in flops["steps"].items():
        assert abs(steps * flops["step_flops"][o] - flops["budget_flops"]) <= flops["step_flops"][o]
        assert runs[o]["pretrain"]["steps"] == steps
    assert flops["step_flops"]["clip"] < flops["step_flops"]["caption"] and flops["steps"]["clip"] > flops["steps"]["caption"]
    assert "OpenVision 2" in (out / "compare.md").read_text()


def test_a_folder_holds_one_recipe(tmp_path):
    claim_output_dir(tmp_path / "a", load_comparison_recipe("micro"))
    claim_output_dir(tmp_path / "a", load_comparison_recipe("micro"))  # the same again: fine (more seeds later)
    with pytest.raises(ValueError, match="another recipe"):
        claim_output_dir(tmp_path / "a", load_comparison_recipe("cpu"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        claim_output_dir(tmp_path / "b", load_comparison_recipe("micro"))
    with pytest.raises(FileNotFoundError, match="micro"):
        load_comparison_recipe("nope")


def test_counted_flops_follow_the_objective():
    from ov2_plugin.experiments.objectives import count_flops

    recipe = load_comparison_recipe("micro")
    flops = count_flops(recipe)["step_flops"]
    assert flops["openvision"] > flops["caption"] > flops["clip"] > 0  # all tokens + text tower > dropped tokens > no decoder
    recipe["pretrain"]["unmasked_tuning"] = 0.0
    assert count_flops(recipe)["step_flops"]["caption"] < flops["caption"]  # the unmasked finish costs more
    json.dumps(flops)


def test_llava_runs_only_for_the_chosen_seeds(tmp_path):
    from ov2_plugin.experiments.report import _cell

    recipe = load_comparison_recipe("micro")
    labels = [label for label, _, _ in plan(recipe, [0, 1, 2], tmp_path, llava_seeds=[0])]
    assert sum(label.endswith(": LLaVA") for label in labels) == len(recipe["objectives"])
    assert all(label.startswith("seed 0") for label in labels if label.endswith((": LLaVA", ": language model")))
    assert sum(label.endswith(": probes") for label in labels) == 3 * (len(recipe["objectives"]) + 1)  # + the random tower
    assert len(plan(recipe, [0, 1, 2], tmp_path)) - len(labels) == 2 * (1 + len(recipe["objectives"]))
    assert _cell({"mean": 0.5, "std": 0.0, "n": 1}, seeds=3) == "0.500 (n=1)"
    assert _cell({"mean": 0.5, "std": 0.1, "n": 3}, seeds=3) == "0.500 ± 0.100"


def test_every_recipe_resumes_by_the_same_units(tmp_path):
    """The kill-and-resume test above runs ``micro``; what it proves holds for any recipe because the units,
    their records and their order come from the objectives and seeds alone (``cpu-reading`` here)."""
    units = lambda name: [(label, path) for label, path, _ in plan(load_comparison_recipe(name), [0, 1], tmp_path)]  # noqa: E731
    assert units("cpu-reading") == units("micro") == units("cpu")
