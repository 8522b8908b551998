"""A small OpenAI-style chat client on the standard library, for tests, the benchmark and smoke checks.

Images travel as base64 data URLs (``data:image/png;base64,...``), the form every OpenAI-compatible server takes
without reaching the network or the server's disk.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field


def image_data_url(image, fmt: str = "PNG") -> str:
    """A PIL image as a ``data:image/...;base64,`` URL."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def user_content(question: str, image_urls: list[str] = ()) -> list[dict]:
    """OpenAI chat content: the images first (as LLaVA's ``<image>\\n`` before the question), then the text."""
    return [*({"type": "image_url", "image_url": {"url": u}} for u in image_urls), {"type": "text", "text": question}]


@dataclass
class ChatReply:
    status: int  # HTTP status
    body: dict = field(default_factory=dict)  # the JSON answer (or {"error": ...} on an HTTP error)
    seconds: float = 0.0  # wall time of the whole request
    first_token_seconds: float | None = None  # time to the first streamed content (stream=True only)

    @property
    def text(self) -> str:
        return self.body["choices"][0]["message"]["content"]

    @property
    def error(self) -> str:
        err = self.body.get("error", self.body.get("detail", self.body))
        return err.get("message", str(err)) if isinstance(err, dict) else str(err)


def chat(base_url: str, model: str, content: list[dict], max_tokens: int = 8, timeout: float = 120,
         stream: bool = False, **extra) -> ChatReply:
    """POST one user turn to ``{base_url}/v1/chat/completions``, greedy (temperature 0); ``extra`` goes into the
    request body as is (e.g. vLLM's ``return_token_ids=True``, ``add_special_tokens=True``)."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream, **extra}
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if not stream:
                return ChatReply(response.status, json.loads(response.read()), time.perf_counter() - start)
            return _read_stream(response, start)
    except urllib.error.HTTPError as err:
        raw = err.read().decode(errors="replace")
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {"error": raw}
        return ChatReply(err.code, parsed if isinstance(parsed, dict) else {"error": parsed},
                         time.perf_counter() - start)


def _read_stream(response, start: float) -> ChatReply:
    """Server-sent events: the text pieces joined, and when the first non-empty piece arrived."""
    pieces, first = [], None
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[len("data:"):])
        for choice in chunk.get("choices", []):
            piece = (choice.get("delta") or {}).get("content") or ""
            if piece and first is None:
                first = time.perf_counter() - start
            pieces.append(piece)
    body = {"choices": [{"message": {"role": "assistant", "content": "".join(pieces)}}]}
    return ChatReply(response.status, body, time.perf_counter() - start, first)
