"""Evaluation of LLaVA-NeXT and LLaVA-OneVision folders: ``ov2 llava-build --arch`` + ``ov2 llava-train`` LoRA,
then the LoRA adapter folder and its merged folder through ``ov2 eval`` (lmms-eval and lm-eval), batched anyres
generation, OneVision's multi-image prompts, lmms-eval's own ``llava_hf`` model, and the error for a folder of
another model type."""

import io
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
from PIL import Image
from transformers import LlamaForCausalLM

from ov2_plugin import Ov2VisionConfig, Ov2VisionModel, make_image_processor
from ov2_plugin.cli import main as ov2
from ov2_plugin.data.instructions import vocabulary, write_dataset
from ov2_plugin.data.scenes import make_scene
from ov2_plugin.evaluation.cli import evaluate, parse_args
from ov2_plugin.evaluation.runner import LlavaRunner, check_model_dir
from ov2_plugin.evaluation.suite import write_suite
from ov2_plugin.llava import ARCHS, build_word_tokenizer, tiny_llama_config
from ov2_plugin.llava.build import main as build_main
from ov2_plugin.llava.train import main as train_main

ANYRES = ("llava_next", "llava_onevision")
TASKS = ["ov2_pope_random", "ov2_count"]
SUITE = ["--tasks", ",".join(TASKS), "--num_scenes", "2", "--limit", "2", "--max_new_tokens", "3", "--device", "cpu"]
SCORES = {"lmms_eval": {"ov2_pope_random": "pope_accuracy", "ov2_count": "exact_match"},  # each framework's key
          "lm_eval": {"ov2_pope_random": "pope_accuracy", "ov2_count": "vqa_accuracy"}}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A 16 px tower with 8 px patches (2x2 grid + CLS a tile), a tiny Llama, the built-in instruction data."""
    root = tmp_path_factory.mktemp("anyres-eval-parts")
    torch.manual_seed(0)
    config = Ov2VisionConfig.from_preset("tiny", image_size=16, patch_size=8, num_hidden_layers=2)
    Ov2VisionModel(config).save_pretrained(root / "tower")
    make_image_processor(config).save_pretrained(root / "tower")
    tokenizer = build_word_tokenizer(vocabulary())
    tokenizer.save_pretrained(root / "lm")
    LlamaForCausalLM(tiny_llama_config(len(tokenizer))).save_pretrained(root / "lm")
    write_dataset(root / "data", "instructions", seed=0, num_scenes=2, image_size=32)
    return root


@pytest.fixture(scope="module", params=ANYRES)
def trained(request, parts, tmp_path_factory):
    """(arch, built base, LoRA output_dir): the adapter alone in output_dir, the merged model in output_dir/merged."""
    arch = request.param
    root = tmp_path_factory.mktemp(f"eval-{arch}")
    build_main(["--vision_tower", str(parts / "tower"), "--language_model", str(parts / "lm"), "--arch", arch,
                "--output_dir", str(root / "base")])
    train_main(["--model_name_or_path", str(root / "base"), "--data_path", str(parts / "data" / "instructions_0.json"),
                "--lora_enable", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0",
                "--learning_rate", "5e-2", "--max_steps", "2", "--per_device_train_batch_size", "2",
                "--merge_lora", "true", "--use_cpu", "true", "--seed", "0", "--model_max_length", "512",
                "--output_dir", str(root / "lora")])
    return arch, root / "base", root / "lora"


def _answers(out, framework: str, task: str) -> list[str]:
    if framework == "lmms_eval":
        rows = [json.loads(x) for x in next((out / "lmms_eval").rglob(f"*samples_{task}.jsonl")).read_text().splitlines()]
        return [r["filtered_resps"] if isinstance(r["filtered_resps"], str) else r["filtered_resps"][0]
                for r in sorted(rows, key=lambda r: r["doc_id"])]
    rows = [json.loads(x) for x in (out / "lm_eval" / f"samples_{task}.jsonl").read_text().splitlines()]
    return [r["prediction"] for r in sorted(rows, key=lambda r: r["doc_id"])]


def test_adapter_and_merged_folders_answer_the_suite(trained, tmp_path):
    """The adapter folder through lmms-eval (its CLI, our entry point), the merged folder through lm-eval:
    the same answers, and every score a number in its range."""
    arch, _, lora = trained
    assert not (lora / "config.json").exists() and check_model_dir(lora) == lora
    assert json.loads((lora / "merged" / "config.json").read_text())["model_type"] == arch
    ov2(["eval", "--model", str(lora), "--framework", "lmms_eval", "--batch_size", "2", *SUITE,
         "--out", str(tmp_path / "adapter")])
    evaluate(parse_args(["--model", str(lora / "merged"), "--framework", "lm_eval", "--batch_size", "2", *SUITE,
                         "--out", str(tmp_path / "merged")]))
    for out, framework in ((tmp_path / "adapter", "lmms_eval"), (tmp_path / "merged", "lm_eval")):
        raw = json.loads((out / "results.json").read_text())["raw"][framework]
        for task in TASKS:
            score = raw[task][SCORES[framework][task]]
            assert isinstance(score, float) and 0 <= score <= 1, (framework, task, score)
    for task in TASKS:
        assert _answers(tmp_path / "adapter", "lmms_eval", task) == _answers(tmp_path / "merged", "lm_eval", task)


def test_batched_anyres_answers_equal_one_by_one(trained):
    """Left-padded batches mixing image sizes (so tile counts), a text-only question and two images in one
    prompt give the next-token logits and the answers of one question at a time."""
    arch, _, lora = trained
    images = [[make_scene(1, 0).render(64)], [Image.new("RGB", (90, 30), (200, 30, 30))], [],
              [Image.new("RGB", (20, 70), (30, 30, 200))], [make_scene(1, 2).render(64), Image.new("RGB", (50, 30))]]
    questions = ["how many circles are there?", "what colour is the square?", "what colour is the sky?",
                 "what colour is the square?", "what colour are the squares?"]
    runner = LlavaRunner(lora / "merged", batch_size=8)
    image_id = runner.model.config.image_token_id
    batch = runner._inputs([runner.prompt(q, len(i)) for q, i in zip(questions, images)], images)
    counts = (batch["input_ids"] == image_id).sum(1).tolist()
    assert counts[2] == 0 and len(set(counts[:2] + counts[3:4])) == 3  # the tile count follows the image's shape
    with torch.no_grad():
        last = runner.model(**batch).logits[:, -1]
        for i, (q, ims) in enumerate(zip(questions, images)):
            alone = runner._inputs([runner.prompt(q, len(ims))], [ims])
            torch.testing.assert_close(runner.model(**alone).logits[0, -1], last[i], rtol=1e-4, atol=1e-4)
    batched = runner.generate(questions, images, max_new_tokens=4)
    runner.batch_size = 1
    assert batched == runner.generate(questions, images, max_new_tokens=4)
    if arch == "llava_onevision":  # several images: one square tile each (grid^2 + CLS - CLS + newline = 5)
        assert counts[4] == 2 * 5 and batch["batch_num_images"].tolist() == [1, 1, 1, 2]
    else:  # LLaVA-NeXT tiles every image as if alone
        assert counts[4] > 2 * 5


def test_a_folder_of_another_model_type_names_the_accepted_ones(trained, tmp_path, capsys):
    _, base, _ = trained
    other = tmp_path / "qwen"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    accepted = ", ".join(ARCHS)
    with pytest.raises(ValueError, match=re.escape(f"'qwen2_vl' model, not a LLaVA ({', '.join(map(repr, ARCHS))}")):
        check_model_dir(other)
    assert ov2(["eval", "--model", str(other), "--out", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "llava_onevision" in err and "ov2 llava-build --arch" in err and not (tmp_path / "results").exists()
    adapter = tmp_path / "adapter"  # a LoRA adapter over something that is not a LLaVA
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(other)}))
    with pytest.raises(ValueError, match=re.escape(f"adapters load over HF LLaVA folders only ({accepted})")):
        check_model_dir(adapter)
    assert check_model_dir(base) == base


@pytest.mark.parametrize("trained", ["llava_onevision"], indirect=True)  # llava_hf maps llava_next alike
def test_lmms_eval_llava_hf_loads_a_onevision_folder_through_our_entry_point(trained, tmp_path):
    """lmms-eval's own ``llava_hf`` model, in a fresh process that never imports ov2_plugin itself: building the
    model registry loads our entry point, which registers the tower, so ``AutoConfig`` reads the folder. Its
    ``device_map`` default ("") fails on transformers 5, so ``device_map=cpu`` is passed. It asks the same prompt
    (the folder's chat template) as ov2_llava; it forces ``eos_token_id`` to ``</s>`` and ignores ``until``, so
    its answer runs on past OneVision's ``<|im_end|>``: ours is its prefix."""
    _, _, lora = trained
    write_suite(tmp_path / "suite", num_scenes=2, tasks=["ov2_pope_random"])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "llava_hf", "--model_args",
           f"pretrained={lora / 'merged'},device_map=cpu", "--device", "cpu", "--tasks", "ov2_pope_random",
           "--include_path", str(tmp_path / "suite" / "lmms_eval"), "--limit", "2", "--batch_size", "1",
           "--gen_kwargs", "max_new_tokens=3", "--output_path", str(out), "--log_samples"]
    log = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, check=True)
    found = sorted(out.rglob("*_results.json"))
    assert found, log.stdout[-3000:] + log.stderr[-3000:]
    accuracy = json.loads(found[-1].read_text())["results"]["ov2_pope_random"]["pope_accuracy,none"]
    assert 0 <= accuracy <= 1
    rows = sorted((json.loads(x) for x in next(out.rglob("*samples_ov2_pope_random.jsonl")).read_text().splitlines()),
                  key=lambda r: r["doc_id"])
    docs = pd.read_parquet(tmp_path / "suite" / "data" / "ov2_pope_random.parquet").head(2)
    images = [[Image.open(io.BytesIO(d["image"]["bytes"]))] for d in docs.to_dict("records")]
    ours = LlavaRunner(lora / "merged").generate(list(docs["question"]), images, max_new_tokens=3)
    for answer, row in zip(ours, rows):
        assert row["filtered_resps"].strip().startswith(answer), (answer, row["filtered_resps"])
