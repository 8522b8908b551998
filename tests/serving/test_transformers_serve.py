"""``transformers serve`` (the no-vLLM path) through ``ov2_plugin.serving.transformers_serve`` on LLaVA folders
with an OpenVision 2 tower: the same chat answers as Hugging Face ``generate``, and bad images get a 400.

Runs where transformers' serving extras are installed (``.venv-serve``, ``make serve-test``); skipped elsewhere.
"""

import subprocess
import sys

import pytest

from ov2_plugin.serving.client import chat, image_data_url, user_content
from ov2_plugin.serving.reference import generate, load
from ov2_plugin.serving.server import free_port, running_server, server_env, transformers_serve_command
from ov2_plugin.serving.transformers_serve import image_url_problem


def _serve_available() -> bool:
    from transformers.utils.import_utils import is_serve_available

    return is_serve_available()


pytestmark = pytest.mark.skipif(not _serve_available(), reason="transformers[serving] is in .venv-serve only")
QUESTION = "how many circles are there?"
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def served(arch, llava_folders, tmp_path_factory):
    folder = llava_folders[arch]
    model, processor = load(folder)
    port = free_port()
    log = tmp_path_factory.mktemp(f"transformers-serve-{arch}") / "server.log"
    command = transformers_serve_command(folder, port, "--device", "cpu", "--dtype", "float32")
    with running_server(command, port, log) as base_url:
        yield base_url, str(folder), model, processor


def ask(served, images):
    base_url, name, _, _ = served
    return chat(base_url, name, user_content(QUESTION, [image_data_url(i) for i in images]), max_tokens=MAX_TOKENS)


def hf(served, images):
    """transformers serve tokenizes the chat template with the tokenizer's BOS, as the training data has it."""
    _, _, model, processor = served
    return generate(model, processor, images, QUESTION, MAX_TOKENS, add_special_tokens=True)


def test_without_the_launcher_the_folder_does_not_load(llava_folders):
    """What the launcher's registration is for: plain transformers does not know the tower's model type."""
    code = "import sys; from transformers import AutoConfig; AutoConfig.from_pretrained(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, str(llava_folders["llava"])], env=server_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "openvision2_vision" in done.stderr


def test_greedy_answer_equals_hf_generate(served, scenes):
    answers = {}
    for images in (["a"], ["b"], ["wide"], ["a", "wide"]):
        pictures = [scenes[n] for n in images]
        reply, expected = ask(served, pictures), hf(served, pictures)
        assert reply.status == 200, reply.error
        assert reply.body["usage"]["prompt_tokens"] == len(expected.prompt_ids)
        assert reply.text.strip() == expected.text.strip()
        answers["+".join(images)] = expected.logprobs
    # (no logprobs from transformers serve: the prompts' token counts and the texts are what can be compared)
    assert answers["a"] != pytest.approx(answers["b"], abs=1e-4)  # the image reaches the answer


@pytest.mark.parametrize("url,message", [
    ("data:image/png;base64,AAAA*not*base64", "not valid base64"),
    ("data:image/png;base64,aGVsbG8sIG5vdCBhbiBpbWFnZQ==", "no readable image"),
    ("/etc/hostname", "reads no local files"),
])
def test_malformed_image_gets_a_400_and_the_server_keeps_serving(served, scenes, url, message):
    base_url, name, _, _ = served
    bad = chat(base_url, name, user_content(QUESTION, [url]), max_tokens=MAX_TOKENS)
    assert bad.status == 400 and message in bad.error, (bad.status, bad.error)
    good = ask(served, [scenes["a"]])
    assert good.status == 200 and good.text.strip() == hf(served, [scenes["a"]]).text.strip()


def test_image_url_checks_accept_what_the_servers_read(scenes):
    assert image_url_problem(image_data_url(scenes["a"])) is None
    assert image_url_problem(image_data_url(scenes["a"], "JPEG")) is None
    assert image_url_problem("https://example.org/cat.png") is None  # fetched by transformers, as vLLM does
    assert "local files" in image_url_problem("file:///etc/passwd")
