"""LLaVA-NeXT and LLaVA-OneVision with an OpenVision 2 tower: anyres token counts at the released geometries,
training (stage 1 -> LoRA -> reload -> generate), several images per record, and the one-line errors."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from ov2_plugin import Ov2VisionConfig, Ov2VisionModel, make_image_processor
from ov2_plugin.data.instructions import vocabulary
from ov2_plugin.llava import build_llava, build_word_tokenizer, tiny_llama_config
from ov2_plugin.llava.build import main as build_main
from ov2_plugin.llava.data import ConversationCollator, LlavaConversations, dummy_image_inputs
from ov2_plugin.llava.train import main as train_main

# The released geometries, cut in width and depth only: So400M/14-384 (27x27 grid + CLS), L/14-336 (24x24 + CLS).
GEOMETRIES = {"So400M/14-384": (14, 384, 27), "L/14-336": (14, 336, 24)}
ASPECTS = {"wide": (1000, 240), "tall": (240, 1000), "square": (500, 500), "tiny": (20, 30), "very large": (3000, 2000)}
ANYRES = ("llava_next", "llava_onevision")


def small_tower(name: str) -> Ov2VisionModel:
    patch, size, _ = GEOMETRIES[name]
    torch.manual_seed(0)
    return Ov2VisionModel(Ov2VisionConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                                          num_attention_heads=2, patch_size=patch, image_size=size))


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(vocabulary())


def ask(processor, image, question="what colour are the circles?"):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=image, text=text, return_tensors="pt")


# llava_next_video refuses the odd 27x27 grid (test_next_video_refuses_odd_grids_and_counts_even_ones)
CASES = [(g, a) for g in GEOMETRIES for a in ("llava", *ANYRES, "llava_next_video")
         if not (a == "llava_next_video" and g == "So400M/14-384")]


@pytest.mark.parametrize("geometry,arch", CASES)
def test_image_tokens_equal_the_features_for_every_aspect_ratio(geometry, arch, tokenizer):
    model, processor = build_llava(small_tower(geometry), tiny_llama_config(len(tokenizer) + 4), tokenizer=tokenizer,
                                   arch=arch)
    grid = GEOMETRIES[geometry][2]
    assert processor.image_processor.size["height"] == GEOMETRIES[geometry][1]
    if arch != "llava":  # the tiles are the tower's size
        assert all(h % GEOMETRIES[geometry][1] == 0 and w % GEOMETRIES[geometry][1] == 0
                   for h, w in model.config.image_grid_pinpoints)
    counts = set()
    for size in ASPECTS.values():
        inputs = ask(processor, Image.new("RGB", size, (200, 40, 40)))
        tokens = int((inputs.input_ids == model.config.image_token_id).sum())
        image_inputs = {k: inputs[k] for k in ("pixel_values", "image_sizes") if k in inputs}
        with torch.no_grad():
            features = model.model.get_image_features(**image_inputs).pooler_output
            model(**inputs)  # HF checks placeholders against features too
        n_features = sum(f.shape[0] for f in features) if isinstance(features, (list, tuple)) else features.shape[0] * features.shape[1]
        assert tokens == n_features, (arch, size)
        assert tokens >= grid * grid
        counts.add(tokens)
    assert (len(counts) == 1) == (arch == "llava")  # only anyres depends on the image's shape


def test_processor_and_model_match_the_tower_and_the_release_preprocessing(tokenizer):
    tower = small_tower("So400M/14-384")
    model, processor = build_llava(tower, tiny_llama_config(len(tokenizer) + 4), tokenizer=tokenizer,
                                   arch="llava_onevision")
    ip = processor.image_processor
    assert list(ip.image_mean) == [0.485, 0.456, 0.406] and list(ip.image_std) == [0.229, 0.224, 0.225]
    assert ip.resample == 2  # bilinear, as the release; not OpenAI CLIP's mean/std and bicubic
    assert processor.num_image_tokens == 27 * 27 + 1 and processor.vision_feature_select_strategy == "default"
    assert model.config.vision_feature_select_strategy == "default" and model.config.vision_feature_layer == -2
    assert model.config.vision_aspect_ratio == "anyres_max_9" and len(model.config.image_grid_pinpoints) == 36
    assert [384, 2304] in model.config.image_grid_pinpoints
    text = processor.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in model.generation_config.eos_token_id
    # multi-image prompts: one square tile each, padded with the image mean (OneVision's own rule)
    inputs = processor(images=[[Image.new("RGB", (600, 200)), Image.new("RGB", (200, 200))]],
                       text=["<image><image> which is wider?"], return_tensors="pt")
    assert inputs.pixel_values.shape[:2] == (2, 1)
    assert int((inputs.input_ids == model.config.image_token_id).sum()) == 2 * (27 * 27 + 1)
    model(**inputs)


def test_next_video_refuses_odd_grids_and_counts_even_ones(tokenizer):
    lm = tiny_llama_config(len(tokenizer) + 4)
    with pytest.raises(ValueError, match="counts 182 video tokens a frame while the model's AvgPool2d\\(2\\) makes 169"):
        build_llava(small_tower("So400M/14-384"), lm, tokenizer=tokenizer, arch="llava_next_video")
    model, processor = build_llava(small_tower("L/14-336"), lm, tokenizer=tokenizer, arch="llava_next_video")
    frames = torch.randint(0, 255, (4, 3, 200, 300), dtype=torch.uint8)  # 4 frames of a 300x200 video
    inputs = processor(text=["USER: <video>\nwhat happens? ASSISTANT:"], videos=[frames], return_tensors="pt")
    tokens = int((inputs.input_ids == model.config.video_token_id).sum())
    assert tokens == 4 * 12 * 12  # 24x24 patches pooled 2x2
    with torch.no_grad():
        model(**inputs)  # HF checks video placeholders against features


def test_bad_options_each_give_one_line_with_the_fix(tmp_path, tokenizer):
    tower = small_tower("L/14-336")
    lm = tiny_llama_config(len(tokenizer) + 4)
    with pytest.raises(ValueError, match="not a multiple of the tower's image size 336"):
        build_llava(tower, lm, tokenizer=tokenizer, arch="llava_next", image_grid_pinpoints=[[336, 700]])
    with pytest.raises(ValueError, match="Unknown --arch 'llava_neXt'.*llava_onevision"):
        build_llava(tower, lm, tokenizer=tokenizer, arch="llava_neXt")
    with pytest.raises(ValueError, match="keeps the OpenVision 2 tower's CLS token.*use 'default'"):
        build_llava(tower, lm, tokenizer=tokenizer, arch="llava_onevision", vision_feature_select_strategy="full")
    with pytest.raises(ValueError, match="resizes to 224 px but the tower's image_size is 336"):
        build_llava(tower, lm, tokenizer=tokenizer, arch="llava_next",
                    image_processor=make_image_processor(tower.config, 224))


def test_a_flash_attention_flag_runs_the_tower_on_sdpa(tmp_path, tokenizer):
    model, processor = build_llava(small_tower("L/14-336"), tiny_llama_config(len(tokenizer) + 4),
                                   tokenizer=tokenizer, arch="llava_onevision")
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(
        tmp_path, attn_implementation={"text_config": "sdpa", "vision_config": "flash_attention_2"})
    assert reloaded.model.vision_tower.config._attn_implementation == "sdpa"
    model.model.vision_tower.save_pretrained(tmp_path / "tower")
    tower = Ov2VisionModel.from_pretrained(tmp_path / "tower", attn_implementation="flash_attention_2")
    assert tower.config._attn_implementation == "sdpa"
    inputs = ask(processor, Image.new("RGB", (700, 300)))
    with torch.no_grad():  # the same features whatever was asked for
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)


def write_records(folder, records):
    (folder / "data.json").write_text(json.dumps(records))
    return folder / "data.json"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Images of several aspect ratios and records: captions, questions, text-only, two images in one record."""
    root = tmp_path_factory.mktemp("anyres-data")
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    sizes = [(60, 20), (20, 60), (40, 40), (90, 30)]
    captions, questions = [], []
    for i, (name, rgb) in enumerate(list(colours.items()) * 2):
        w, h = sizes[i % len(sizes)]
        Image.new("RGB", (w, h), rgb).save(root / f"{i}.png")
        captions.append({"id": f"c{i}", "image": f"{i}.png",
                         "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": f"a {name} square."}]})
        questions.append({"id": f"q{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nwhat colour is the square?"}, {"from": "gpt", "value": name}]})
    questions.append({"id": "text", "conversations": [{"from": "human", "value": "what colour is the sky?"},
                                                       {"from": "gpt", "value": "blue"}]})
    questions.append({"id": "two", "image": ["0.png", "1.png"], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nwhat colour is the first square?"}, {"from": "gpt", "value": "red"}]})
    (root / "captions.json").write_text(json.dumps(captions))
    (root / "questions.json").write_text(json.dumps(questions))
    return root


@pytest.fixture(scope="module")
def parts_anyres(tmp_path_factory, tokenizer):
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("anyres-parts")
    torch.manual_seed(0)
    config = Ov2VisionConfig.from_preset("tiny", image_size=16, patch_size=8, num_hidden_layers=2)
    Ov2VisionModel(config).save_pretrained(root / "tower")
    make_image_processor(config).save_pretrained(root / "tower")
    tokenizer.save_pretrained(root / "lm")
    LlamaForCausalLM(tiny_llama_config(len(tokenizer))).save_pretrained(root / "lm")
    return root


TRAIN = ["--per_device_train_batch_size", "2", "--max_steps", "3", "--learning_rate", "1e-3", "--seed", "0",
         "--model_max_length", "512", "--use_cpu", "true"]


@pytest.mark.parametrize("arch", ANYRES)
def test_stage1_lora_save_reload_generate(arch, parts_anyres, scenes, tmp_path):
    stage1 = tmp_path / "stage1"
    train_main(["--vision_tower", str(parts_anyres / "tower"), "--language_model", str(parts_anyres / "lm"),
                "--arch", arch, "--version", "plain", "--tune_mm_mlp_adapter", "true",
                "--data_path", str(scenes / "captions.json"), "--output_dir", str(stage1), *TRAIN])
    assert json.loads((stage1 / "config.json").read_text())["model_type"] == arch
    lora = tmp_path / "lora"
    metrics = train_main(["--model_name_or_path", str(stage1), "--lora_enable", "true", "--lora_r", "4",
                          "--lora_alpha", "8", "--merge_lora", "true", "--data_path", str(scenes / "questions.json"),
                          "--output_dir", str(lora), *TRAIN])
    report = json.loads((lora / "report.json").read_text())
    expected = {"llava_next": 1, "llava_onevision": 0}[arch]  # two images in one record: OneVision only
    assert report["bad_samples"]["by_reason"].get("multiple_images", 0) == expected
    assert metrics["samples"] == 6 + 1 + (1 - expected)  # image questions, text-only, two images
    assert (lora / "adapter_config.json").is_file()

    import ov2_plugin  # noqa: F401

    model = AutoModelForImageTextToText.from_pretrained(lora / "merged").eval()
    processor = AutoProcessor.from_pretrained(lora / "merged")
    assert type(model).__name__.lower().startswith(arch.replace("_", ""))
    inputs = ask(processor, Image.open(scenes / "0.png"), "what colour is the square?")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs.input_ids.shape[1]

    with pytest.raises(ValueError, match="drop --arch"):
        train_main(["--model_name_or_path", str(stage1), "--arch", "llava", "--data_path",
                    str(scenes / "questions.json"), "--output_dir", str(tmp_path / "x"), *TRAIN])


def test_onevision_batches_of_tiles_text_and_two_images_train(parts_anyres, scenes):
    model, processor = build_llava(parts_anyres / "tower", parts_anyres / "lm", arch="llava_onevision")
    dataset = LlavaConversations(scenes / "questions.json", scenes, processor, arch="llava_onevision")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    samples = [dataset[0], dataset[1], dataset[len(dataset) - 2], dataset[len(dataset) - 1]]  # wide, tall, text, two
    assert samples[3]["pixel_values"].shape[0] == 2 and "pixel_values" not in samples[2]
    collate = ConversationCollator(processor.tokenizer.pad_token_id, image_id, batch_num_images=True)
    batch = collate(samples)
    batch.pop("bad_samples")
    assert batch["batch_num_images"].tolist() == [1, 1, 2] and batch["image_sizes"].shape == (4, 2)
    model.train()
    out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0

    text_only = collate([samples[2]])
    dummy = ConversationCollator(processor.tokenizer.pad_token_id, image_id, dummy=dummy_image_inputs(dataset),
                                 batch_num_images=True)([samples[2]])
    for b in (text_only, dummy):
        b.pop("bad_samples")
    assert "pixel_values" not in text_only and dummy["pixel_values"].dim() == 5
    model.zero_grad()
    loss = model(**dummy).loss
    torch.testing.assert_close(loss, model(**text_only).loss, rtol=1e-5, atol=1e-6)


def test_llava_build_cli_writes_a_folder_any_auto_class_loads(parts_anyres, tmp_path, capsys):
    import ov2_plugin  # noqa: F401

    build_main(["--vision_tower", str(parts_anyres / "tower"), "--language_model", str(parts_anyres / "lm"),
                "--output_dir", str(tmp_path / "next"), "--arch", "llava_next", "--image_grid_pinpoints", "16x32,32x16"])
    assert "anyres over 2 pinpoints" in capsys.readouterr().out
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "next")
    processor = AutoProcessor.from_pretrained(tmp_path / "next")
    assert model.config.image_grid_pinpoints == [[16, 32], [32, 16]]
    assert processor.image_processor.image_grid_pinpoints == [[16, 32], [32, 16]]
    assert processor.num_additional_image_tokens == 1 and processor.patch_size == 8
