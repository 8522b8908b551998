"""``ov2 eval``: one command from a model to scores, through lmms-eval, VLMEvalKit and/or lm-eval.

    ov2 eval --model DIR --framework all --out results/          # the offline suite, all frameworks
    ov2 eval --model DIR --framework lmms_eval --suite public --tasks textvqa_val,pope,mme
    ov2 eval suite --out eval/suite                               # only write the suite's files

Writes ``results.json`` (every number each framework reported, plus the headline table),
``results.md`` (the table) and ``results.png`` (a bar chart). Everything is produced in a
staging folder beside ``--out`` and moved into place only when all runs succeeded, so a bad
model folder, an unknown task or a malformed TSV leaves nothing half-written in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from .runner import check_model_dir
from .suite import DEFAULT_SEED, TASKS, write_suite

FRAMEWORKS = ("lmms_eval", "vlmeval", "lm_eval")

# Headline metric per suite task kind: (label, lmms-eval key, lm-eval key, VLMEvalKit (column, row), scale to %).
HEADLINES = {
    "vqa": [("VQA acc", "exact_match", "vqa_accuracy", ("Overall", 0), 100)],
    "pope": [("accuracy", "pope_accuracy", "pope_accuracy", ("acc", 0), 100),
             ("F1", "pope_f1_score", "pope_f1", ("Overall", 0), 100)],
    "mme": [("perception", "mme_perception_score", "mme_perception", ("perception", 0), 1)],
    "choice": [("accuracy", "mc_accuracy", "mc_accuracy", ("Overall", 0), 100)],
}


# ---------------------------------------------------------------- one runner per framework


class FrameworkFailed(RuntimeError):
    """An evaluation framework ran but produced no (or incomplete) results; ``ov2 eval`` exits 1."""


def run_logged(cmd: list[str], env: dict) -> tuple[int, str]:
    """Run ``cmd`` with its output shown as it comes (progress bars too); return the exit code and the
    output's last 20,000 characters."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail = b""
    for chunk in iter(lambda: proc.stdout.read1(65536), b""):
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        tail = (tail + chunk)[-20000:]
    return proc.wait(), tail.decode(errors="replace")


def lmms_eval_error(log: str) -> str:
    """lmms-eval's own one-line reason ("Error during evaluation: ..."), which it logs and then exits 0."""
    lines = [line for line in log.splitlines() if "Error during evaluation:" in line]
    if not lines:
        return "its log above says why"
    reason = lines[-1].split("Error during evaluation:", 1)[1].split(". Please set `--verbosity", 1)[0].strip()
    return f"error: {reason}"


def run_lmms_eval(model: Path, tasks: list[str], include: Path | None, out: Path, args) -> dict:
    """lmms-eval's own CLI in a subprocess (its progress bar shows); returns its results dict.

    lmms-eval catches any error of a run (a model that does not load, a task that fails), logs it
    and exits 0 without results: a missing results file, or for the built-in suite a task missing
    from it, is a failure here."""
    model_args = f"pretrained={model},conv_template={args.conv_template}"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "ov2_llava", "--model_args", model_args,
           "--tasks", ",".join(tasks), "--batch_size", str(args.batch_size), "--output_path", str(out), "--log_samples"]
    cmd += ["--device", args.device] if args.device else []
    cmd += ["--include_path", str(include)] if include else []
    cmd += ["--limit", str(args.limit)] if args.limit else []
    cmd += ["--gen_kwargs", f"max_new_tokens={args.max_new_tokens}"] if args.max_new_tokens else []
    code, log = run_logged(cmd, {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")})
    found = sorted(out.rglob("*_results.json"))
    if code != 0 or not found:
        raise FrameworkFailed(f"lmms-eval failed (exit {code}, no results written; {lmms_eval_error(log)}).")
    results = json.loads(found[-1].read_text())["results"]
    missing = [t for t in tasks if include and t not in results]
    if missing:
        raise FrameworkFailed(f"lmms-eval wrote no results for {missing}; {lmms_eval_error(log)}.")
    return {t: {k.split(",")[0]: v for k, v in r.items() if isinstance(v, int | float) and "stderr" not in k}
            for t, r in results.items()}


def run_lm_eval(model: Path, tasks: list[str], include: Path | None, out: Path, args) -> dict:
    """lm-eval's public API ``simple_evaluate`` with our registered ``ov2_llava`` model; the
    per-question answers go to ``out/samples_<task>.jsonl``."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from . import lm_eval_model  # noqa: F401  (registers ov2_llava)

    manager = TaskManager(include_path=str(include) if include else None)
    model_args = f"pretrained={model},batch_size={args.batch_size},conv_template={args.conv_template}"
    model_args += f",device={args.device}" if args.device else ""
    result = lm_eval.simple_evaluate(model="ov2_llava", model_args=model_args, tasks=tasks, task_manager=manager,
                                     limit=args.limit, log_samples=True,
                                     gen_kwargs=f"max_gen_toks={args.max_new_tokens}" if args.max_new_tokens else None)
    out.mkdir(parents=True, exist_ok=True)
    for task, samples in result.get("samples", {}).items():
        lines = [json.dumps({"doc_id": x["doc_id"], "prediction": x["filtered_resps"][0]}) for x in samples]
        (out / f"samples_{task}.jsonl").write_text("\n".join(lines) + "\n")
    return {t: {k.split(",")[0]: v for k, v in r.items() if isinstance(v, int | float) and "stderr" not in k}
            for t, r in result["results"].items()}


def run_vlmeval(model: Path, datasets: list[str], lmu_data: Path | None, work: Path, args) -> dict:
    """VLMEvalKit's ``infer_data_job`` + ``dataset.evaluate(judge='exact_matching')`` per dataset."""
    if lmu_data:
        os.environ["LMUData"] = str(lmu_data)
    from .vlmeval_model import Ov2LlavaVLM, evaluate, make_dataset

    built = {name: make_dataset(name) for name in datasets}  # bad names / TSVs fail before the model loads
    vlm = Ov2LlavaVLM(model_path=str(model), device=args.device or "cpu", max_new_tokens=args.max_new_tokens or 16,
                      conv_template=args.conv_template)
    return {name: evaluate(vlm, ds, work)["score"] for name, ds in built.items()}


# ---------------------------------------------------------------- the table


def headline_rows(raw: dict, tasks: list[str]) -> list[dict]:
    """Rows ``{task, metric, <framework>: value}`` comparable across frameworks (percent, MME raw)."""
    rows = []
    for task in tasks:
        for label, lmms_key, lm_key, (col, row), scale in HEADLINES[TASKS[task][0]]:
            entry = {"task": task, "metric": label}
            if task in raw.get("lmms_eval", {}):
                entry["lmms_eval"] = raw["lmms_eval"][task][lmms_key] * scale
            if task in raw.get("lm_eval", {}):
                entry["lm_eval"] = raw["lm_eval"][task][lm_key] * scale
            tsv = TASKS[task][1]
            if tsv in raw.get("vlmeval", {}):
                value = raw["vlmeval"][tsv][col][row]
                entry["vlmeval"] = value * (100 if TASKS[task][0] == "choice" else 1)
            rows.append(entry)
    return rows


def markdown(rows: list[dict], frameworks: list[str]) -> str:
    lines = ["| task | metric | " + " | ".join(frameworks) + " |", "|---|---|" + "---:|" * len(frameworks)]
    for r in rows:
        cells = [f"{r[f]:.2f}" if f in r else "-" for f in frameworks]
        lines.append(f"| {r['task']} | {r['metric']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], frameworks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['task']}\n{r['metric']}" for r in rows]
    width = 0.8 / max(1, len(frameworks))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    for i, f in enumerate(frameworks):
        xs = [j + i * width for j in range(len(rows))]
        ax.bar(xs, [r.get(f, 0) for r in rows], width, label=f)
    ax.set_xticks([j + width * (len(frameworks) - 1) / 2 for j in range(len(rows))], labels, rotation=60, fontsize=7)
    ax.set_ylabel("score (%; MME: points)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ov2 eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help="LLaVA folder with an OpenVision 2 tower: HF LLaVA, LLaVA-NeXT or LLaVA-OneVision (ov2 llava-build "
                        "--arch), a LoRA adapter folder of ov2 llava-train, or original LLaVA's")
    p.add_argument("--framework", default="all", choices=[*FRAMEWORKS, "all"])
    p.add_argument("--suite", default="builtin", choices=["builtin", "public"],
                   help="builtin: the offline scene suite; public: official task names passed to the framework")
    p.add_argument("--tasks", default="", help="comma-separated; builtin default: every suite task")
    p.add_argument("--out", required=True, help="results folder (created; must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--num_scenes", type=int, default=20)
    p.add_argument("--limit", type=int, default=None, help="at most this many questions per task (smoke runs)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=None, help="answer length cap for every framework (default: the task's)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--conv_template", default="vicuna_v1",
                   help="original-LLaVA checkpoints only: the llava conv_templates key they were trained with")
    return p.parse_args(argv)


def _check_inputs(args) -> tuple[Path, list[str], list[str], Path]:
    model = check_model_dir(args.model).resolve()
    frameworks = list(FRAMEWORKS) if args.framework == "all" else [args.framework]
    tasks = [t for t in args.tasks.split(",") if t]
    if args.suite == "builtin":
        tasks = tasks or list(TASKS)
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown} in the built-in suite; choose from {', '.join(TASKS)} "
                             "(or pass --suite public for official benchmark names).")
    elif not tasks:
        raise ValueError("--suite public needs --tasks (e.g. textvqa_val,pope,mme for lmms-eval; MME,POPE for VLMEvalKit).")
    elif len(frameworks) > 1:
        raise ValueError("--suite public takes one --framework: the frameworks name the public benchmarks differently.")
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"Results folder {str(out)!r} is not empty; pass --overwrite or choose another --out.")
    return model, frameworks, tasks, out


def _check_public_tasks(framework: str, tasks: list[str]) -> None:
    """Unknown official names fail here, before any model is loaded."""
    if framework == "lmms_eval":
        from lmms_eval.tasks import TaskManager as LmmsTasks

        known = set(LmmsTasks().all_tasks)
    elif framework == "lm_eval":
        from lm_eval.tasks import TaskManager as LmTasks

        known = set(LmTasks().all_tasks)
    else:
        return  # VLMEvalKit's make_dataset raises for a name it does not know
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ValueError(f"{framework} has no task(s) {unknown}; list them with its --tasks list option.")


def evaluate(args: argparse.Namespace) -> dict:
    model, frameworks, tasks, out = _check_inputs(args)
    if args.suite == "public":
        _check_public_tasks(frameworks[0], tasks)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        raw, suite = {}, None
        if args.suite == "builtin":
            suite = write_suite(stage / "suite", args.seed, args.num_scenes, tasks=tasks)
        builtin = args.suite == "builtin"
        for fw in tqdm(frameworks, desc="ov2 eval", unit="framework"):
            if fw == "lmms_eval":
                raw[fw] = run_lmms_eval(model, tasks, stage / "suite" / "lmms_eval" if builtin else None, stage / fw, args)
            elif fw == "lm_eval":
                raw[fw] = run_lm_eval(model, tasks, stage / "suite" / "lm_eval" if builtin else None, stage / fw, args)
            else:
                names = [TASKS[t][1] for t in tasks] if builtin else tasks
                raw[fw] = run_vlmeval(model, names, stage / "suite" / "vlmeval" if builtin else None, stage / fw, args)
        rows = headline_rows(raw, tasks) if builtin else []
        result = {"model": str(model), "suite": args.suite, "suite_manifest": suite, "frameworks": frameworks,
                  "limit": args.limit, "table": rows, "raw": raw}
        (stage / "results.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
        table = markdown(rows, frameworks) if rows else _raw_markdown(raw)
        (stage / "results.md").write_text(f"# ov2 eval: {model.name}\n\n{table}")
        if rows:
            chart(rows, frameworks, stage / "results.png")
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return result


def _raw_markdown(raw: dict) -> str:
    lines = ["| framework | task | metric | value |", "|---|---|---|---:|"]
    for fw, tasks in raw.items():
        for task, metrics in tasks.items():
            for k, v in (metrics.items() if isinstance(metrics, dict) else ()):
                value = v[0] if isinstance(v, list) and v else v
                if isinstance(value, int | float):
                    lines.append(f"| {fw} | {task} | {k} | {value:.4g} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["suite"]:  # ov2 eval suite --out DIR: only write the benchmark files
        from .suite import main as suite_main

        return suite_main(argv[1:])
    args = parse_args(argv)
    try:
        result = evaluate(args)
    except FrameworkFailed as err:  # the framework's own log is above; one line says what failed
        print(f"ov2 eval: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out}/results.json, results.md" + (", results.png" if result["table"] else ""))


if __name__ == "__main__":
    main()
