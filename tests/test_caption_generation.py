"""``ov2 caption``'s defaults: a model ``ov2 pretrain`` writes cannot loop a word to the length limit; a
converted release decodes as the authors' caption demo does (greedy, 64 new tokens); flags win."""

from __future__ import annotations

import json

import pytest
import torch
from launch import launch_env
from PIL import Image

from ov2_plugin import Ov2Config, Ov2ForCaptioning
from ov2_plugin.caption import LOOP_STOP, caption_images, save_generation_defaults
from ov2_plugin.caption import main as caption_main
from ov2_plugin.image_processing import make_image_processor
from ov2_plugin.tokenization import build_caption_tokenizer


def repeated_ngram(ids: list[int], n: int) -> bool:
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.fixture
def looping_model_folder(tmp_path):
    """A random tiny captioner (it repeats one token greedily) saved as ``ov2 pretrain`` saves its output."""
    torch.manual_seed(0)
    model = Ov2ForCaptioning(Ov2Config.from_preset("tiny", image_size=32, decoder_num_hidden_layers=2)).eval()
    model.save_pretrained(tmp_path / "model")
    make_image_processor(model.config.vision_config).save_pretrained(tmp_path / "model")
    save_generation_defaults(model, tmp_path / "model")
    return model, tmp_path / "model"


def test_the_saved_defaults_stop_a_looping_model_and_leave_the_model_in_memory_alone(looping_model_folder):
    model, folder = looping_model_folder
    pixels = torch.randn(2, 3, 32, 32)
    plain = model.generate(pixels, max_new_tokens=32)
    assert any(repeated_ngram(row.tolist(), 4) for row in plain), "the random model no longer loops: pick another seed"
    assert model.generation_config.no_repeat_ngram_size is None  # the run's own evaluation decodes as before
    saved = json.loads((folder / "generation_config.json").read_text())
    assert saved["no_repeat_ngram_size"] == LOOP_STOP["no_repeat_ngram_size"] and saved["max_new_tokens"] == 64
    loaded = Ov2ForCaptioning.from_pretrained(folder).eval()
    for row in loaded.generate(pixels, max_new_tokens=32):
        assert not repeated_ngram(row.tolist(), 4)


def test_no_training_caption_repeats_a_4_gram_so_the_default_never_blocks_one():
    from ov2_plugin.data.reading import make_reading_scene
    from ov2_plugin.data.scenes import make_scene

    tok = build_caption_tokenizer()
    captions = [make_scene(0, i).caption for i in range(2000)] + [make_reading_scene(0, i).caption for i in range(2000)]
    ids = [tok(c, add_special_tokens=False).input_ids for c in captions]
    assert not any(repeated_ngram(i, LOOP_STOP["no_repeat_ngram_size"]) for i in ids)
    assert any(repeated_ngram(i, 3) for i in ids)  # 3 would block some ("... on the right ... on the right")


def test_ov2_caption_flags_override_the_saved_defaults(looping_model_folder, tmp_path, capsys):
    model, folder = looping_model_folder
    image = tmp_path / "noise.png"
    Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(image)
    [off] = caption_main([str(image), "--model", str(folder), "--max_new_tokens", "24", "--no_repeat_ngram_size", "0"])
    [plain] = caption_images(model, [Image.open(image).convert("RGB")], 24)  # the model's greedy, no n-gram limit
    assert off == plain
    [default] = caption_main([str(image), "--model", str(folder), "--max_new_tokens", "24"])
    [limited] = caption_images(model, [Image.open(image).convert("RGB")], 24, **LOOP_STOP)
    assert default == limited


def test_a_converted_release_decodes_as_the_authors_caption_demo(tmp_path):
    """The demo (``caption.py`` of UCSC-VLAA/OpenVision, read in the mirror Stars1233/OpenVision): ``--max_len``
    default 64, ``OpenVision2TextDecoder.generate`` takes the argmax at each step until EOS; no beams, no
    sampling, no repetition control."""
    from convert_fixtures import (
        ReferenceCaptionDecoder,
        build_open_clip_tower,
        decoder_release_config,
        release_vision_cfg,
        tower_state,
        write_decoder_release,
        write_release,
    )

    from ov2_plugin.convert import convert_release

    cfg = release_vision_cfg("tiny", 32)
    folder = write_release(tmp_path / "release", cfg, tower_state(build_open_clip_tower(cfg, embed_dim=96)), embed_dim=96)
    dec = dict(width=96, depth=1, num_heads=3, mlp_dim=384, vocab_size=32000)
    write_decoder_release(folder, ReferenceCaptionDecoder(**dec, vision_width=cfg["width"]).eval(),
                          decoder_release_config(**dec, vision_width=cfg["width"]))
    convert_release(folder, tmp_path / "converted")
    saved = json.loads((tmp_path / "converted" / "generation_config.json").read_text())
    assert saved.get("max_new_tokens") == 64
    assert saved.get("num_beams", 1) == 1 and not saved.get("do_sample", False)
    assert "no_repeat_ngram_size" not in saved and saved.get("repetition_penalty", 1.0) == 1.0


def test_ov2_pretrain_saves_the_loop_stop_with_its_model(tmp_path):
    import subprocess
    import sys

    env = launch_env()
    run = subprocess.run([sys.executable, "-m", "ov2_plugin.pretrain", "--output_dir", str(tmp_path), "--image_size", "32",
                          "--max_steps", "1", "--per_device_train_batch_size", "4", "--train_samples", "8",
                          "--eval_samples", "0", "--use_cpu", "true", "--save_steps", "100", "--dataloader_num_workers", "0"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["no_repeat_ngram_size"] == LOOP_STOP["no_repeat_ngram_size"] and saved["max_new_tokens"] == 64
