"""``transformers serve`` for LLaVA folders with an OpenVision 2 tower: the no-vLLM serving path.

``transformers serve`` loads ``config.architectures[0]`` from transformers and has no plugin hook, so the tower's
model type must be registered in its process first. This launcher does that, then hands its arguments to
transformers' own CLI unchanged::

    python -m ov2_plugin.serving.transformers_serve runs/llava --host 127.0.0.1 --port 8000

One addition: image URLs are checked before they reach the model. As shipped, ``transformers serve`` answers a
malformed image with an HTTP 500 and reads any image file on the server's disk whose path a client sends as the
URL; here a ``data:image/...;base64,`` URL that does not decode to an image, or anything that is neither such a
URL nor ``http(s)://``, gets a 400 that says why (vLLM's defaults: data and http(s) URLs, no local files).

It needs transformers' serving extras (``pip install "transformers[serving]"``: FastAPI, uvicorn, ...), which
``make serve-setup`` installs into ``.venv-serve``; the main venv does not carry them.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import sys

IMAGE_ITEMS = ("image_url", "input_image")  # chat completions, Responses API
CHECKED_PATHS = ("/v1/chat/completions", "/v1/responses")


def image_urls(body: dict) -> list[str]:
    """Every image URL in a chat-completions or Responses request body."""
    urls = []
    for message in body.get("messages", body.get("input", [])) if isinstance(body, dict) else []:
        content = message.get("content") if isinstance(message, dict) else None
        for item in content if isinstance(content, list) else []:
            if isinstance(item, dict) and item.get("type") in IMAGE_ITEMS:
                ref = item.get("image_url")
                urls.append(ref.get("url", "") if isinstance(ref, dict) else str(ref or ""))
    return urls


def image_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be served as an image, or None when it can."""
    if url.startswith(("http://", "https://")):
        return None
    if not url.startswith("data:image/") or ";base64," not in url:
        return (f"image_url {url[:40]!r} is neither a data:image/...;base64 URL nor an http(s) URL "
                "(this server reads no local files)")
    try:
        raw = base64.b64decode(url.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError) as err:
        return f"image_url is not valid base64 ({err})"
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
    except Exception as err:  # PIL raises many kinds for a bad file
        return f"image_url holds no readable image ({err})"
    return None


async def _check_images(request, call_next):
    """FastAPI middleware: a 400 in OpenAI's error shape for a bad image, before the model sees the request."""
    if request.method == "POST" and request.url.path in CHECKED_PATHS:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = {}  # FastAPI answers a body that is not JSON itself
        problems = [p for p in map(image_url_problem, image_urls(body)) if p]
        if problems:
            from fastapi.responses import JSONResponse

            error = {"message": problems[0], "type": "BadRequestError", "param": "image_url", "code": 400}
            return JSONResponse({"error": error}, status_code=400)
    return await call_next(request)


def _install_image_checks() -> None:
    from transformers.cli.serving import server

    if getattr(server.build_server, "_ov2_checks_images", False):
        return
    build = server.build_server

    def build_server(*args, **kwargs):
        app = build(*args, **kwargs)
        app.middleware("http")(_check_images)
        return app

    build_server._ov2_checks_images = True
    server.build_server = build_server


def main(argv: list[str] | None = None) -> None:
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        raise SystemExit(
            "transformers serve needs its serving extras: pip install 'transformers[serving]' "
            "(or use .venv-serve from `make serve-setup`)."
        )
    from ..registration import register

    register()
    _install_image_checks()
    from transformers.cli.transformers import app

    app(["serve", *(sys.argv[1:] if argv is None else argv)], prog_name="transformers")


if __name__ == "__main__":
    main()
