"""The ``ov2`` command's errors: one line naming the problem and the fix, never a traceback."""

import subprocess
import sys

import pytest
import torch

from ov2_plugin import Ov2ForCaptioning, build_caption_tokenizer
from ov2_plugin.cli import main
from ov2_plugin.data.scenes import make_scene


@pytest.fixture
def captioner_dir(tiny_model, tmp_path):
    out = tmp_path / "captioner"
    tiny_model.save_pretrained(out)
    return out


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()[-1]  # last line: earlier ones are save progress bars
    return code, err


def test_missing_image(capsys, captioner_dir):
    code, err = run_cli(capsys, "caption", "nope.png", "--model", str(captioner_dir))
    assert code == 2 and err == "ov2 caption: error: Image 'nope.png' does not exist; check the path."


def test_unreadable_image(capsys, captioner_dir, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    code, err = run_cli(capsys, "caption", str(bad), "--model", str(captioner_dir))
    assert code == 2 and "cannot be read" in err and "corrupt or not an image" in err


def test_checkpoint_of_another_model_type(capsys, tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    img = tmp_path / "scene.png"
    make_scene(0, 0).render(32).save(img)
    code, err = run_cli(capsys, "caption", str(img), "--model", str(tmp_path))
    assert code == 2 and "holds a 'bert' checkpoint, not an OpenVision 2 captioner" in err and "ov2 pretrain" in err


def test_missing_model_dir(capsys, tmp_path):
    img = tmp_path / "scene.png"
    make_scene(0, 0).render(32).save(img)
    code, err = run_cli(capsys, "caption", str(img), "--model", str(tmp_path / "none"))
    assert code == 2 and "does not exist" in err and "output_dir of 'ov2 pretrain'" in err


def test_unknown_preset(capsys, tmp_path):
    code, err = run_cli(capsys, "pretrain", "--preset", "L/16", "--output_dir", str(tmp_path), "--max_steps", "1")
    assert code == 2 and "Unknown model preset 'L/16'; choose one of: tiny, S/16" in err


def test_pretraining_at_384_px_with_patch_14_keeps_729_tokens(capsys, tmp_path):
    """So400M/14's release geometry (384 px, patch 14: a floor grid of 27 x 27), width cut down."""
    code, _ = run_cli(capsys, "pretrain", "--preset", "So400M/14-384", "--config_overrides",
                      "hidden_size=64,num_hidden_layers=1,intermediate_size=128,num_attention_heads=2,decoder_hidden_size=64,"
                      "decoder_num_hidden_layers=1,decoder_intermediate_size=128,decoder_num_attention_heads=2",
                      "--output_dir", str(tmp_path), "--max_steps", "2", "--per_device_train_batch_size", "2",
                      "--eval_samples", "0", "--save_steps", "100", "--dataloader_num_workers", "0")
    assert code == 0
    model = Ov2ForCaptioning.from_pretrained(tmp_path).eval()
    assert model.config.vision_config.image_size == 384
    assert model.vision_model(torch.zeros(1, 3, 384, 384)).last_hidden_state.shape[1] == 1 + 729


def test_unknown_command_lists_the_commands(capsys):
    code = main(["fly"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ov2: error: unknown command 'fly'") and "  pretrain  " in err


def test_pretrain_then_caption_end_to_end(tmp_path):
    """Two real processes of the installed console script: a short run, then captions from its folder."""
    out = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "ov2_plugin.cli", "pretrain", "--preset", "tiny", "--image_size", "32",
         "--output_dir", str(out), "--max_steps", "3", "--logging_steps", "1", "--per_device_train_batch_size", "4",
         "--train_samples", "12", "--eval_samples", "8", "--use_cpu", "true", "--disable_tqdm", "true",
         "--dataloader_num_workers", "0"],
        check=True, capture_output=True,
    )
    for name in ("model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json", "report.json", "loss.png"):
        assert (out / name).is_file(), name
    img = tmp_path / "scene.png"
    make_scene(1, 0).render(64).save(img)
    result = subprocess.run(
        [sys.executable, "-m", "ov2_plugin.cli", "caption", str(img), "--model", str(out), "--max_new_tokens", "5"],
        check=True, capture_output=True, text=True,
    )
    path, caption = result.stdout.strip().split("\t")
    assert path == str(img)
    assert len(build_caption_tokenizer()(caption).input_ids) <= 5 + 2


def test_every_command_resolves_to_a_function():
    import importlib

    from ov2_plugin.cli import COMMANDS

    for name, (module, func, _) in COMMANDS.items():
        assert callable(getattr(importlib.import_module(module), func)), name
