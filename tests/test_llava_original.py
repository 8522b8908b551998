"""OpenVision 2 inside the original LLaVA code (llava-torch), run for real: model, loader, trainer."""

import json
import os
import subprocess
import sys
import types

import pytest
import torch

pytest.importorskip("llava.model.language_model.llava_llama", reason="llava-torch is installed by `make setup`")

from ov2_plugin import Ov2VisionConfig, Ov2VisionModel, make_image_processor  # noqa: E402
from ov2_plugin.data.scenes import make_scene  # noqa: E402
from ov2_plugin.llava.original import Ov2VisionTower, install  # noqa: E402
from ov2_plugin.llava.tiny import build_word_tokenizer, tiny_llama_config  # noqa: E402

IMAGE = -200  # LLaVA's IMAGE_TOKEN_INDEX
WORDS = "one two three red green blue yellow purple orange circle square triangle diamond and".split()


@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ov2-tower")
    torch.manual_seed(0)
    config = Ov2VisionConfig.from_preset("tiny", image_size=32, num_hidden_layers=2)
    Ov2VisionModel(config).save_pretrained(path)
    make_image_processor(config).save_pretrained(path)
    return path


def tiny_llava(tower_dir, select_layer=-2):
    install()
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

    torch.manual_seed(0)
    vocab = len(build_word_tokenizer(WORDS))
    model = LlavaLlamaForCausalLM(LlavaConfig(**tiny_llama_config(vocab).to_dict(), mm_use_im_patch_token=False))
    args = types.SimpleNamespace(
        vision_tower=f"ov2:{tower_dir}",
        mm_vision_select_layer=select_layer,
        mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=None,
        mm_patch_merge_type="flat",
        mm_projector_type="mlp2x_gelu",
    )
    model.get_model().initialize_vision_modules(args)
    return model


def pixels(tower, n=1):
    imgs = [make_scene(0, i).render(32) for i in range(n)]
    return tower.image_processor.preprocess(imgs, return_tensors="pt")["pixel_values"]


def greedy(model, ids, images, steps):
    """Reference decode without generate() or a cache: argmax of a full forward each step."""
    out = []
    with torch.no_grad():
        for _ in range(steps):
            token = model(input_ids=ids, images=images, use_cache=False).logits[0, -1].argmax()
            out.append(int(token))
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
    return out


def test_llava_llama_builds_ov2_tower_and_trains_and_generates(tower_dir):
    model = tiny_llava(tower_dir)
    tower = model.get_vision_tower()
    assert isinstance(tower, Ov2VisionTower) and isinstance(tower.vision_tower, Ov2VisionModel)
    assert model.config.mm_hidden_size == 192 and tower.num_patches == 16
    assert not any(p.requires_grad for p in tower.parameters())  # frozen, as CLIPVisionTower

    images = pixels(tower, 2)
    ids = torch.tensor([[1, 5, IMAGE, 7, 8, 9], [1, 6, IMAGE, 9, 8, 7]])
    out = model(input_ids=ids, images=images, labels=ids.clamp(min=0))
    assert out.logits.shape == (2, 6 - 1 + 16, model.config.vocab_size)  # the image token became 16 patch features
    out.loss.backward()
    assert model.get_model().mm_projector[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tower.parameters())

    prompt = torch.tensor([[1, 5, IMAGE, 7]])
    generated = model.generate(prompt, images=images[:1], max_new_tokens=6, do_sample=False)
    assert generated[0].tolist() == greedy(model, prompt, images[:1], 6)


def test_unfrozen_ov2_tower_receives_gradients(tower_dir):
    model = tiny_llava(tower_dir, select_layer=-1)
    tower = model.get_vision_tower()
    tower.requires_grad_(True)
    out = model(input_ids=torch.tensor([[1, IMAGE, 7, 8]]), images=pixels(tower), labels=torch.tensor([[1, 0, 7, 8]]))
    out.loss.backward()
    assert tower.vision_tower.layers[-1].mlp.fc2.weight.grad.abs().sum() > 0


def test_hook_routes_other_towers_to_llava(tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    install()
    install()  # idempotent
    import llava.model.llava_arch as arch
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

    CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    ).save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(tmp_path)
    args = types.SimpleNamespace(mm_vision_tower=str(tmp_path), mm_vision_select_layer=-2)
    assert type(arch.build_vision_tower(args)) is CLIPVisionTower
    with pytest.raises(ValueError, match="Unknown vision tower"):
        arch.build_vision_tower(types.SimpleNamespace(mm_vision_tower="no-such-tower", mm_vision_select_layer=-2))


def test_load_pretrained_model_restores_ov2_tower(tower_dir, tmp_path):
    from llava.model.builder import load_pretrained_model

    model = tiny_llava(tower_dir)
    folder = tmp_path / "llava-ov2-tiny"
    model.save_pretrained(folder)
    build_word_tokenizer(WORDS).save_pretrained(folder)
    # LLaVA's loader: half precision, the tower rebuilt from its ov2: name (weights from the tower folder)
    tokenizer, loaded, image_processor, _ = load_pretrained_model(str(folder), None, "llava-ov2-tiny", device="cpu")
    assert isinstance(loaded.get_vision_tower(), Ov2VisionTower) and loaded.get_vision_tower().is_loaded
    assert loaded.dtype == torch.float16 and image_processor.crop_size["height"] == 32
    images = pixels(loaded.get_vision_tower()).half()
    prompt = torch.tensor([[1, 5, IMAGE, 7]])
    with torch.no_grad():
        expected = model.half()(input_ids=prompt, images=images).logits
        assert torch.allclose(loaded(input_ids=prompt, images=images).logits, expected, atol=1e-2)


def test_llava_train_entry_runs_stage1_with_ov2_tower(tower_dir, tmp_path):
    """LLaVA's own ``llava.train.train`` (projector pretraining, 'plain' template), our tower via ``ov2:``."""
    from transformers import LlamaForCausalLM

    tokenizer = build_word_tokenizer(WORDS + [w + "s" for w in WORDS])
    lm_dir, image_dir = tmp_path / "lm", tmp_path / "images"
    tokenizer.save_pretrained(lm_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(len(tokenizer))).save_pretrained(lm_dir)
    image_dir.mkdir()
    rows = []
    for i in range(8):
        scene = make_scene(0, i)
        scene.render(40).save(image_dir / f"{i}.png")
        rows.append(
            {
                "id": str(i),
                "image": f"{i}.png",
                "conversations": [{"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": scene.caption}],
            }
        )
    (tmp_path / "data.json").write_text(json.dumps(rows))
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "ov2_plugin.llava.original",
        "--model_name_or_path",
        str(lm_dir),
        "--version",
        "plain",
        "--data_path",
        str(tmp_path / "data.json"),
        "--image_folder",
        str(image_dir),
        "--vision_tower",
        f"ov2:{tower_dir}",
        "--mm_projector_type",
        "mlp2x_gelu",
        "--tune_mm_mlp_adapter",
        "True",
        "--mm_vision_select_layer",
        "-2",
        "--mm_use_im_start_end",
        "False",
        "--mm_use_im_patch_token",
        "False",
        "--image_aspect_ratio",
        "pad",
        "--bf16",
        "True",
        "--use_cpu",
        "True",
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "1e-3",
        "--model_max_length",
        "128",
        "--report_to",
        "none",
        "--save_strategy",
        "steps",
        "--save_steps",
        "3",
        "--logging_steps",
        "1",
        "--dataloader_num_workers",
        "0",
        "--lazy_preprocess",
        "True",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 3 and all(0 < x < 20 for x in losses)
    projector = torch.load(out / "checkpoint-3" / "mm_projector.bin")
    assert {k.split("mm_projector.")[1] for k in projector} == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert json.loads((out / "config.json").read_text())["mm_vision_tower"] == f"ov2:{tower_dir}"


def test_eval_adapters_answer_from_original_checkpoint(tower_dir, tmp_path):
    """An original-LLaVA folder goes through the evaluation adapters: LLaVA's loader, template, generate."""
    from ov2_plugin.evaluation.lmms_eval_model import Ov2Llava
    from ov2_plugin.evaluation.runner import OriginalLlavaRunner

    folder = tmp_path / "llava-ov2-tiny"
    tiny_llava(tower_dir).save_pretrained(folder)
    build_word_tokenizer(WORDS).save_pretrained(folder)
    runner = Ov2Llava(pretrained=str(folder), device="cpu", conv_template="vicuna_v1").runner
    assert isinstance(runner, OriginalLlavaRunner) and runner.model.dtype == torch.float32
    assert runner.prompt("red circle").startswith("A chat between") and "USER: <image>\nred circle" in runner.prompt("red circle")

    image = make_scene(0, 0).render(32)
    answer = runner.generate(["red circle"], [[image]], max_new_tokens=4)[0]
    inputs = runner._inputs(runner.prompt("red circle"), [image])
    reference = greedy(runner.model, inputs["input_ids"], inputs["images"], 4)
    eos = runner.tokenizer.eos_token_id
    reference = reference[: reference.index(eos)] if eos in reference else reference
    assert answer == runner.tokenizer.decode(reference, skip_special_tokens=True).strip()

    first = runner.tokenizer.decode(reference[:1])
    other = next(w for w in WORDS if w != first)
    logp_first, is_greedy = runner.loglikelihood("red circle", [image], " " + first)
    logp_other, other_greedy = runner.loglikelihood("red circle", [image], " " + other)
    assert is_greedy and not other_greedy and logp_other < logp_first < 0


def test_llava_train_entry_trains_text_only_records_beside_image_records(tower_dir, tmp_path):
    """LLaVA's own ``train.py``, stage 2 (``v1`` template) on a mix of image and text-only records:
    LLaVA gives a text-only sample a zero image whose features it drops; our tower goes through that."""
    from llava.conversation import conv_templates
    from transformers import LlamaForCausalLM

    from ov2_plugin.data.instructions import instruction_records, vocabulary

    system_words = "".join(c if c.isalpha() else " " for c in conv_templates["vicuna_v1"].system).split()
    tokenizer = build_word_tokenizer([*vocabulary(), *system_words])  # LLaVA pads with <unk>: no word may be unknown
    lm_dir, image_dir = tmp_path / "lm", tmp_path / "images"
    tokenizer.save_pretrained(lm_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(len(tokenizer))).save_pretrained(lm_dir)
    image_dir.mkdir()
    images = list(instruction_records(0, 2))[:6]
    for record in images:
        make_scene(0, int(record["id"].split("-")[1])).render(40).save(image_dir / f"{record['id']}.png")
        record["image"] = f"{record['id']}.png"
    text = [{"id": f"text-{i}", "conversations": [{"from": "human", "value": "what colour are the circles?"},
                                                  {"from": "gpt", "value": "red"}]} for i in range(4)]
    (tmp_path / "data.json").write_text(json.dumps([images[0], text[0], images[1], text[1], *images[2:4], text[2],
                                                    images[4], text[3], images[5]]))
    cmd = [sys.executable, "-m", "ov2_plugin.llava.original", "--model_name_or_path", str(lm_dir), "--version", "v1",
           "--data_path", str(tmp_path / "data.json"), "--image_folder", str(image_dir), "--vision_tower",
           f"ov2:{tower_dir}", "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2",
           "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "pad",
           "--use_cpu", "True", "--output_dir", str(tmp_path / "out"), "--num_train_epochs", "1",
           "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--model_max_length", "128",
           "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--dataloader_num_workers", "0",
           "--lazy_preprocess", "True"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "tokenization mismatch" not in run.stdout  # LLaVA would mask a whole sample and train nothing on it
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 3 and all(0 < x < 20 for x in losses)  # 10 records, batches of 4: every record trained


def test_text_only_row_of_a_mixed_batch_ignores_its_zero_image(tower_dir):
    """LLaVA's multimodal merge with our tower: the text-only row (no image token, a zero image in the
    batch as LLaVA's collator gives it) has the logits it has on its own, and the batch trains. LLaVA right-pads the merged rows, so the text row is at its start."""
    model = tiny_llava(tower_dir)
    ids = torch.tensor([[1, IMAGE, 5, 6, 7], [1, 8, 9, 10, 11]])
    images = torch.cat([pixels(model.get_vision_tower()), torch.zeros(1, 3, 32, 32)])
    out = model(input_ids=ids, images=images, labels=ids.clamp(min=0))
    out.loss.backward()
    projector = model.get_model().mm_projector[0].weight.grad
    assert torch.isfinite(out.loss) and projector is not None and projector.abs().sum() > 0
    with torch.no_grad():
        alone = model(input_ids=ids[1:], images=torch.zeros(1, 3, 32, 32)).logits[0]
        torch.testing.assert_close(out.logits[1, :5].detach(), alone, rtol=1e-4, atol=1e-5)
