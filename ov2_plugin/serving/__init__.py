"""Serving LLaVA folders with an OpenVision 2 tower behind an OpenAI-compatible endpoint.

- ``vllm_plugin``: the ``vllm.general_plugins`` entry point; vLLM calls it in every process before it reads a
  model's config, so ``python -m vllm.entrypoints.openai.api_server --model DIR --model-impl transformers`` builds
  the tower (vLLM's native ``llava.py`` takes only CLIP, SigLIP and Pixtral towers).
- ``transformers_serve``: ``transformers serve`` started after the registration (it has no plugin hook), with
  image URLs checked before they reach the model.
- ``server``, ``client``, ``reference``: start and stop a server on 127.0.0.1, send a chat with base64 images, and
  what HF ``generate`` answers to the same prompt; used by ``tests/serving`` and ``bench/serve.py``.

Nothing here imports vLLM or the serving extras at module level: ``import ov2_plugin`` stays light.
"""
