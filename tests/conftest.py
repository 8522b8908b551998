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
