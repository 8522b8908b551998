"""A rank stuck in the distributed set-up exits after ``--ddp_timeout`` so the launcher can restart it.

The stuck set-up is played by a sleep inside the block (the real one, gloo's ``connectFullMesh`` in a
restarted group, cannot be produced on demand); the torchrun restart test covers the real launch.
"""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import sys, time
from ov2_plugin.setup_deadline import distributed_setup_deadline

def stuck_in_setup(seconds):
    time.sleep(seconds)

with distributed_setup_deadline(["--output_dir", "x", "--ddp_timeout", "{timeout}"]):
    stuck_in_setup({inside})
time.sleep({after})
print("done")
"""


def run(world_size: int, timeout: float, inside: float, after: float = 0.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(timeout=timeout, inside=inside, after=after)],
                          env={**os.environ, "WORLD_SIZE": str(world_size)}, capture_output=True, text=True,
                          timeout=120)


def test_a_rank_stuck_past_the_timeout_exits_with_its_stack():
    proc = run(world_size=2, timeout=2, inside=60)
    assert proc.returncode == 1 and "done" not in proc.stdout  # it left the block before its end
    assert "--ddp_timeout 2 s" in proc.stderr and "stuck_in_setup" in proc.stderr, proc.stderr


def test_the_deadline_ends_with_the_block_and_a_single_process_has_none():
    proc = run(world_size=2, timeout=2, inside=0, after=4)  # past the deadline, but outside the block
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr
    proc = run(world_size=1, timeout=1, inside=3)
    assert proc.returncode == 0 and "done" in proc.stdout and "ddp_timeout" not in proc.stderr, proc.stderr


def test_the_timeout_is_read_as_the_trainer_reads_it():
    from transformers import TrainingArguments

    from ov2_plugin.setup_deadline import _ddp_timeout

    assert _ddp_timeout(["--output_dir", "x", "--ddp-timeout", "7"]) == 7
    assert _ddp_timeout(["--output_dir", "x"]) == TrainingArguments(output_dir="x").ddp_timeout
