"""Hugging Face LLaVA with an OpenVision 2 tower: build, LoRA training, save, reload elsewhere."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ov2_plugin.data.instructions import QUESTION_TYPES, instruction_records, vocabulary
from ov2_plugin.data.scenes import make_scene
from ov2_plugin.llava import build_llava, build_word_tokenizer
from ov2_plugin.llava.train import main as train_main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}


@pytest.mark.parametrize("layer,strategy,expected", [(-2, "default", 16), (-1, "full", 17), ([-3, -1], "default", 16)])
def test_image_token_count_matches_features(parts, layer, strategy, expected):
    model, processor = build_llava(
        parts / "tower", parts / "lm", vision_feature_layer=layer, vision_feature_select_strategy=strategy
    )
    assert model.config.image_seq_length == expected
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour are the circles?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == "USER: <image>\nwhat colour are the circles? ASSISTANT:"
    inputs = processor(images=make_scene(1, 0).render(50), text=text, return_tensors="pt")
    assert int((inputs.input_ids == model.config.image_token_index).sum()) == expected
    assert inputs.pixel_values.shape == (1, 3, 32, 32)
    out = model(**inputs)  # raises if feature and placeholder counts differ
    assert out.logits.shape[1] == inputs.input_ids.shape[1]


def test_build_rejects_bad_options_with_the_fix(parts):
    with pytest.raises(ValueError, match="mlp2x_gelu"):
        build_llava(parts / "tower", parts / "lm", projector="qformer")
    with pytest.raises(ValueError, match="-2"):
        build_llava(parts / "tower", parts / "lm", vision_feature_layer=7)
    with pytest.raises(FileNotFoundError, match="causal LM folder"):
        build_llava(parts / "tower", parts / "tower" / "nope")


def test_instruction_data_is_deterministic_and_covers_every_type():
    first, again = list(instruction_records(3, 40)), list(instruction_records(3, 40))
    assert first == again and {r["question_type"] for r in first} == set(QUESTION_TYPES)
    held_out = {r["image"] for r in instruction_records(4, 40)}
    assert not held_out & {r["image"] for r in first}
    tokenizer = build_word_tokenizer(vocabulary())
    for r in first:
        for turn in r["conversations"]:
            assert tokenizer.unk_token_id not in tokenizer(turn["value"]).input_ids, turn["value"]


GENERATE = """
import json, sys, torch
{imports}
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration
path = sys.argv[1]
model = LlavaForConditionalGeneration.from_pretrained(path).eval()
processor = AutoProcessor.from_pretrained(path)
text = processor.apply_chat_template([{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "how many circles are there?"}}]}}], add_generation_prompt=True)
inputs = processor(images=Image.open(sys.argv[2]), text=text, return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
print(json.dumps(out[0, inputs.input_ids.shape[1]:].tolist()))
"""


def generate_in_new_process(path, with_import=True):
    """Greedy tokens from a process that imports only transformers (+ ``ov2_plugin`` if asked)."""
    image = path / "probe.png"
    make_scene(1, 3).render(32).save(image)
    code = GENERATE.format(imports="import ov2_plugin" if with_import else "")
    cmd = [sys.executable, "-c", code, str(path), str(image)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)


def test_stage1_then_lora_changes_only_lora_and_projector_and_reloads_elsewhere(parts, tmp_path):
    data = parts / "data"
    common = ["--use_cpu", "true", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--seed", "0"]
    train_main(
        [
            "--vision_tower",
            f"ov2:{parts / 'tower'}",
            "--language_model",
            str(parts / "lm"),
            "--data_path",
            str(data / "captions_0.json"),
            "--version",
            "plain",
            "--tune_mm_mlp_adapter",
            "true",
            "--output_dir",
            str(tmp_path / "stage1"),
            "--max_steps",
            "2",
            "--learning_rate",
            "1e-3",
            *common,
        ]
    )
    before = load_file(tmp_path / "stage1" / "model.safetensors")
    metrics = train_main(
        [
            "--model_name_or_path",
            str(tmp_path / "stage1"),
            "--data_path",
            str(data / "instructions_0.json"),
            "--lora_enable",
            "true",
            "--lora_r",
            "8",
            "--lora_alpha",
            "16",
            "--mm_projector_lr",
            "1e-3",
            "--output_dir",
            str(tmp_path / "lora"),
            "--max_steps",
            "3",
            "--learning_rate",
            "1e-2",
            "--merge_lora",
            "true",
            *common,
        ]
    )
    assert metrics["train_loss"] > 0
    adapter = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    lora_keys = [k for k in adapter if "lora_" in k]
    assert lora_keys and all("language_model" in k for k in lora_keys)  # never the tower or the projector
    assert {k for k in adapter if "lora_" not in k} and all(
        "multi_modal_projector" in k for k in adapter if "lora_" not in k
    )
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["r"] == 8

    after = load_file(tmp_path / "lora" / "merged" / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("multi_modal_projector" in k for k in changed)
    assert any(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    for k in changed:  # merged LoRA moves only the adapted linear layers; tower, embeddings, norms, head untouched
        assert "multi_modal_projector" in k or ("language_model" in k and k.endswith("_proj.weight")), k

    # reload in fresh processes: the adapter folder (via its base) and the merged folder give the same tokens
    tokens = []
    for folder in (tmp_path / "lora", tmp_path / "lora" / "merged"):
        run = generate_in_new_process(folder)
        assert run.returncode == 0, run.stderr[-2000:]
        tokens.append(json.loads(run.stdout.strip().splitlines()[-1]))
    assert tokens[0] == tokens[1] and len(tokens[0]) >= 1

    from ov2_plugin.llava import load_llava

    model, processor = load_llava(tmp_path / "lora" / "merged")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many circles are there?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=make_scene(1, 3).render(32), text=text, return_tensors="pt")
    here = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs.input_ids.shape[1] :].tolist()
    assert here == tokens[0]


def test_same_seed_gives_the_same_adapter_whatever_ran_before(parts, tmp_path):
    """The LoRA weights are drawn after seeding, so a run repeats exactly in any process state."""
    from ov2_plugin.llava import save_llava

    save_llava(*build_llava(parts / "tower", parts / "lm"), tmp_path / "llava")
    adapters = []
    for run, draws in enumerate((1, 1000)):
        torch.rand(draws)  # leave the process's random state different before each run
        train_main(
            ["--model_name_or_path", str(tmp_path / "llava"), "--data_path", str(parts / "data" / "instructions_0.json"),
             "--lora_enable", "true", "--lora_r", "4", "--lora_alpha", "8", "--max_steps", "1", "--seed", "0",
             "--use_cpu", "true", "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / str(run))]
        )
        adapters.append(load_file(tmp_path / str(run) / "adapter_model.safetensors"))
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])


def test_reload_without_import_fails_and_folder_names_the_import(parts, tmp_path):
    from ov2_plugin.llava import save_llava

    model, processor = build_llava(parts / "tower", parts / "lm")
    save_llava(model, processor, tmp_path / "llava")
    run = generate_in_new_process(tmp_path / "llava", with_import=False)
    assert run.returncode != 0
    # transformers' own message names the unregistered type; the folder's README says what to import
    assert "openvision2_vision" in run.stderr
    assert "import ov2_plugin" in (tmp_path / "llava" / "README.md").read_text()


def test_optimizer_gives_projector_and_unfrozen_tower_their_own_learning_rates(parts, tmp_path):
    from ov2_plugin.llava.train import LlavaTrainer, LlavaTrainingArguments, set_trainable

    model, _ = build_llava(parts / "tower", parts / "lm")
    args = LlavaTrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        learning_rate=1e-4,
        mm_projector_lr=2e-5,
        unfreeze_mm_vision_tower=True,
        mm_vision_tower_lr=3e-6,
        lora_enable=True,
        lora_r=4,
    )
    model = set_trainable(model, args)
    optimizer = LlavaTrainer(model=model, args=args).create_optimizer()
    by_lr = {}
    for group in optimizer.param_groups:
        by_lr.setdefault(group["lr"], set()).update(id(p) for p in group["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert set(by_lr) == {1e-4, 2e-5, 3e-6}
    assert all("multi_modal_projector" in names[i] for i in by_lr[2e-5])
    assert all("vision_tower" in names[i] for i in by_lr[3e-6])
    assert all("lora_" in names[i] for i in by_lr[1e-4])


def test_gradient_checkpointing_trains_lora_as_without_it(parts, tmp_path):
    """The language model's embeddings are frozen under LoRA: its checkpointed blocks still get gradients."""
    from ov2_plugin.llava import save_llava

    save_llava(*build_llava(parts / "tower", parts / "lm"), tmp_path / "llava")
    adapters = {}
    for checkpointing in ("false", "true"):
        out = tmp_path / f"checkpointing-{checkpointing}"
        train_main(
            ["--model_name_or_path", str(tmp_path / "llava"), "--data_path", str(parts / "data" / "instructions_0.json"),
             "--lora_enable", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", "--max_steps", "2",
             "--learning_rate", "1e-2", "--gradient_checkpointing", checkpointing, "--seed", "0", "--use_cpu", "true",
             "--per_device_train_batch_size", "2", "--output_dir", str(out)]
        )
        adapters[checkpointing] = load_file(out / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapters["true"].items() if "lora_B" in k)  # B starts at zero: it learnt
    for key, weight in adapters["false"].items():
        torch.testing.assert_close(adapters["true"][key], weight, rtol=0, atol=1e-6, msg=key)


def test_pad_to_square_and_a_too_short_max_length(parts):
    from PIL import Image

    from ov2_plugin.llava.data import LlavaConversations, load_records, pad_to_square

    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    square = pad_to_square(wide, (1, 2, 3))
    assert square.size == (40, 40)
    assert square.getpixel((0, 0)) == (1, 2, 3) and square.getpixel((20, 20)) == (255, 0, 0)  # centred

    _, processor = build_llava(parts / "tower", parts / "lm")
    records = load_records(parts / "data" / "instructions_0.json")[:1]
    dataset = LlavaConversations(records, parts / "data", processor, max_length=64, pad_square=True)
    assert dataset[0]["pixel_values"].shape == (1, 3, 32, 32)  # [images, 3, H, W]
    with pytest.raises(ValueError, match="--model_max_length"):
        LlavaConversations(records, parts / "data", processor, max_length=8)[0]
