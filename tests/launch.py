"""Launching the package's entry points in child processes, as the distributed, resume and data tests do:
a free port, the environment every launched run gets, the ``torchrun`` prefix and the child process itself.

A plain module beside the tests (imported as ``from launch import ...``, like ``convert_fixtures``), not a
fixture: the launch helpers of each test file take their own arguments and call these.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (``--master_port``, ``--rdzv-endpoint``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(**extra: str) -> dict[str, str]:
    """This process's environment for a launched run: one thread per process (two ranks share the CPU),
    the Hugging Face Hub offline and no tokenizer threads; ``extra`` on top."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def deepspeed_cpu_env(out: Path) -> dict[str, str]:
    """DeepSpeed on the CPU, for the run writing to ``out``.

    DeepSpeed compiles its shared-memory comm op on first use (~20 s of CPU). The build goes to the test's
    own folder (beside ``out``): a build dir shared between runs keeps a stale lock file when a run is
    killed mid-build, and every later run then waits on it forever.
    """
    return {"DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(out.parent / "torch-extensions")}


def torchrun(nproc: int, *flags: str) -> list[str]:
    """Interpreter arguments that start ``nproc`` processes of what follows them, on a free master port."""
    return ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port()), *flags]


def run_python(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``python *args`` from the repository root to its end, its output captured as text."""
    return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def start_python(args: list[str], env: dict[str, str], stdout) -> subprocess.Popen:
    """``python *args`` started from the repository root, stderr into ``stdout`` (a file or ``subprocess.PIPE``)."""
    return subprocess.Popen(
        [sys.executable, *args], env=env, cwd=ROOT, stdout=stdout, stderr=subprocess.STDOUT, text=True
    )
