"""Fixtures for the serving tests, which run in ``.venv-serve`` (``make serve-test``); in the main venv, where
neither vLLM nor transformers' serving extras are installed, every test here is skipped.

The LLaVA folders are made with ``ov2 llava-build`` from a tiny OpenVision 2 tower and a tiny random Llama with
a word tokenizer. ``OV2_BUILD_PYTHON`` names the interpreter that builds them (CI: the main venv's, so folders
written by the training stack's transformers are served by the serving stack's); by default this one.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _torchvision_works() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or a CUDA build beside a CPU torch ("torchvision::nms does not exist")
        return False
    return True


# LLaVA-OneVision's HF processor requires a video processor, and transformers' video processors require
# torchvision: served only where it works (the CUDA build of vLLM); the CPU venv has none (README "Serving").
SERVED = ("llava", "llava_next", *(("llava_onevision",) if _torchvision_works() else ()))


def pytest_generate_tests(metafunc):
    """Every test that takes ``arch`` runs once per served LLaVA family, grouped so each server starts once."""
    if "arch" in metafunc.fixturenames:
        metafunc.parametrize("arch", SERVED, scope="module")

BUILD = """
import sys, torch
from transformers import LlamaForCausalLM
from ov2_plugin import Ov2VisionConfig, Ov2VisionModel, make_image_processor
from ov2_plugin.cli import main
from ov2_plugin.data.instructions import vocabulary
from ov2_plugin.llava import build_word_tokenizer, tiny_llama_config
root = sys.argv[1]
torch.manual_seed(0)
config = Ov2VisionConfig.from_preset("tiny", image_size=32, num_hidden_layers=2)
Ov2VisionModel(config).save_pretrained(f"{root}/tower")
make_image_processor(config).save_pretrained(f"{root}/tower")
tokenizer = build_word_tokenizer(vocabulary())
tokenizer.save_pretrained(f"{root}/lm")
LlamaForCausalLM(tiny_llama_config(len(tokenizer) + 8)).save_pretrained(f"{root}/lm")
for arch in sys.argv[2:]:
    code = main(["llava-build", "--vision_tower", f"{root}/tower", "--language_model", f"{root}/lm",
                 "--output_dir", f"{root}/{arch}", "--arch", arch])
    assert code == 0, arch
"""


@pytest.fixture(scope="session")
def llava_folders(tmp_path_factory) -> dict[str, Path]:
    """arch -> a LLaVA folder written by ``ov2 llava-build`` (random weights, 32 px tower, 16 image tokens a tile)."""
    root = tmp_path_factory.mktemp("serving-llava")
    python = os.environ.get("OV2_BUILD_PYTHON") or sys.executable
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": repo, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([python, "-c", BUILD, str(root), *SERVED], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {arch: root / arch for arch in SERVED}


@pytest.fixture(scope="session")
def scenes():
    """Two built-in scenes at 48 px (the processors resize them) and a wide one for LLaVA-NeXT's tiles."""
    from ov2_plugin.data.scenes import make_scene

    return {"a": make_scene(1, 0).render(48), "b": make_scene(1, 2).render(48),
            "wide": make_scene(1, 3).render(32).resize((96, 32))}
