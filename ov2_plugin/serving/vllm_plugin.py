"""The ``vllm.general_plugins`` entry point (``pyproject.toml``: ``ov2 = ov2_plugin.serving.vllm_plugin:register``).

vLLM loads every general plugin in each of its processes (API server, engine core, workers) before it parses
the model's config. Registering our config and model types with transformers' Auto classes there is all vLLM's
Transformers backend (``--model-impl transformers``) needs to build ``Llava*ForConditionalGeneration`` with an
OpenVision 2 tower; vLLM's native ``llava.py`` takes only CLIP, SigLIP and Pixtral towers.
"""

from __future__ import annotations


def register() -> None:
    """Register the OpenVision 2 model types with transformers' Auto classes; safe to call any number of times."""
    from ..registration import register as register_with_transformers

    register_with_transformers()
