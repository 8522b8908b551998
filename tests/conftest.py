import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


@pytest.fixture
def tiny_config():
    from ov2_plugin import Ov2Config

    return Ov2Config.from_preset("tiny", image_size=32, decoder_num_hidden_layers=2)


@pytest.fixture
def tiny_model(tiny_config):
    from ov2_plugin import Ov2ForCaptioning

    torch.manual_seed(0)
    return Ov2ForCaptioning(tiny_config)


@pytest.fixture(autouse=True)
def grad_mode_on():
    """Importing VLMEvalKit's ``vlmeval.vlm`` turns autograd off for the whole process
    (``torch.set_grad_enabled(False)`` at import); a later training test must not inherit that."""
    torch.set_grad_enabled(True)
    yield
    torch.set_grad_enabled(True)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny tower folder, a tiny Llama folder (weights + word tokenizer) and built-in data, saved once per module."""
    from transformers import LlamaForCausalLM

    from ov2_plugin import Ov2VisionConfig, Ov2VisionModel, make_image_processor
    from ov2_plugin.data.instructions import vocabulary, write_dataset
    from ov2_plugin.llava import build_word_tokenizer, tiny_llama_config

    root = tmp_path_factory.mktemp("llava-parts")
    torch.manual_seed(0)
    config = Ov2VisionConfig.from_preset("tiny", image_size=32, num_hidden_layers=2)
    Ov2VisionModel(config).save_pretrained(root / "tower")
    make_image_processor(config).save_pretrained(root / "tower")
    tokenizer = build_word_tokenizer(vocabulary())
    tokenizer.save_pretrained(root / "lm")
    LlamaForCausalLM(tiny_llama_config(len(tokenizer))).save_pretrained(root / "lm")
    write_dataset(root / "data", "instructions", seed=0, num_scenes=12, image_size=32)
    write_dataset(root / "data", "captions", seed=0, num_scenes=12, image_size=32)
    return root
