"""Target 4 without the noise: the instructions the collapse monitor adds to the paper experiment's training.

Wall time on these shared machines varies by ±10 points from run to run (``bench_monitor.py``), more than a change to
the monitor moves it. Instruction counts do not: each of three processes runs two warm-up trainings and then nothing
(``none``), the training without the monitor (``without``) or with it (``with``), under Valgrind's callgrind, and
the overhead is ``(I_with − I_without) / (I_without − I_none)`` (about +19% when a wall-time median says +35%:
instructions leave out cache misses, system calls and waiting for the GIL). Counts repeat within a few percent, not
exactly: the monitor's 2-second TensorBoard flush and the Lightning logger's writer thread depend on timing, so
compare two versions counted at the same time. Takes about 25 minutes (callgrind runs Python some 60 times slower);
needs ``valgrind`` on the PATH.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_monitor import PAPER
from benchmarks.common import single_thread, train_with_ufm_train

PARTS = ("none", "without", "with")


def run_part(part: str) -> None:
    """The process callgrind counts: two warm-up trainings (with and without the monitor), then ``part``."""
    single_thread()
    train_with_ufm_train(*PAPER)
    train_with_ufm_train(*PAPER, "~callbacks.collapse_monitor")
    if part != "none":
        train_with_ufm_train(*PAPER, *(["~callbacks.collapse_monitor"] if part == "without" else []))


def count_instructions(part: str, folder: Path) -> int:
    """Instructions executed by the process of ``part`` (callgrind's ``I refs``)."""
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={folder / part}.out",
        sys.executable, "-m", "benchmarks.bench_monitor_instructions", "--part", part,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"PYTHONHASHSEED": "0"})
    match = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"callgrind failed for {part}: {result.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def main() -> None:
    """Count and print the overhead (or run one part, as the child process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=PARTS, help="run one part (the process that callgrind counts)")
    part = parser.parse_args().part
    if part is not None:
        run_part(part)
        return
    if shutil.which("valgrind") is None:
        print("valgrind is not on the PATH (apt-get install valgrind): nothing counted")
        return
    with tempfile.TemporaryDirectory() as folder:
        counts = {name: count_instructions(name, Path(folder)) for name in PARTS}
    training = counts["without"] - counts["none"]
    monitor = counts["with"] - counts["without"]
    print(f"paper training without monitor: {training / 1e9:.3f} G instructions, the monitor: {monitor / 1e9:.3f} G")
    print(f"the monitor adds {monitor / training:+.1%} of the training's instructions")


if __name__ == "__main__":
    main()
