"""The GPU benchmark runs on any machine: without a GPU it trains a tiny model through
the same loaders and loop, and says that it measured no GPU figure."""

import os
import re
import shlex
import subprocess
import sys

from tests.conftest import PROJECT_ROOT
from tests.docs.blocks import block


def smoke_command() -> list[str]:
    """The command docs/performance.md prints, with this interpreter for .venv's."""
    python, *arguments = shlex.split(block("gpu-benchmark-smoke"), comments=True)
    assert python == ".venv/bin/python" and "--smoke" in arguments
    return [sys.executable, *arguments]


def test_the_smoke_version_trains_end_to_end_and_claims_no_gpu_figure(tmp_path):
    run = subprocess.run(
        [*smoke_command(), "--precision", "bf16", "--channels-last", "false",
         "--normalize-on", "loader", "device", "--data-dir", str(tmp_path)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        env=os.environ | {"PYTHONPATH": str(PROJECT_ROOT / "src")},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("No GPU figure was measured")
    assert run.stdout.rstrip().endswith("the figures above are not comparable with the anchor.")
    assert "goal:" not in run.stdout
    rounds = re.findall(r"round 1: bf16 cl=off compile=off batch=8 norm=(\S+): compute (\d+) "
                        r"images/s, end to end (\d+) images/s, data wait (\d+)%", run.stdout)
    assert sorted(where for where, *_ in rounds) == ["device", "loader"]
    assert all(int(compute) > 0 and int(end_to_end) > 0 for _, compute, end_to_end, _ in rounds)
    assert all(0 <= int(wait) <= 100 for *_, wait in rounds)
    assert len(list(tmp_path.rglob("*.jpg"))) == 48  # the folder it generated and read
