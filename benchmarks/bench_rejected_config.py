"""Issue 22: a rejected config answers fast and leaves nothing: ``ufm-train model.init_scale=-1`` against
``python -c "import hydra"``, both as fresh processes, timed alternately in the same run.

Prints the best time of each over ``--repeats`` pairs, their ratio (target <= 4; a minimal Hydra app that rejects its
config costs about 2x), the median of the pairs' ratios, and checks on the way that the rejection exits 2 with one
line, leaves no run folder in its working folder, and imports neither torch nor Lightning (``python -X importtime``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UFM_TRAIN = Path(sys.executable).parent / "ufm-train"
REJECTED = [str(UFM_TRAIN), "model.init_scale=-1"]
BASELINE = [sys.executable, "-c", "import hydra"]


def wall_time(command: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Seconds one process of ``command`` takes, and its result."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start, result


def heavy_imports(cwd: Path) -> list[str]:
    """Which of torch and Lightning the rejected command imports (``python -X importtime``)."""
    command = [sys.executable, "-X", "importtime", "-c", "from ufm_torch.cli.train import main; main()", *REJECTED[1:]]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    modules = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")}
    return [name for name in ("torch", "lightning") if name in modules]


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7, help="pairs of processes, alternating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cwd = Path(folder)
        rejected, baseline, ratios = [], [], []
        for _ in range(args.repeats):
            seconds, result = wall_time(REJECTED, cwd)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2 and len(lines) == 1, result.stderr
            rejected.append(seconds)
            baseline.append(wall_time(BASELINE, cwd)[0])
            ratios.append(rejected[-1] / baseline[-1])
        left = sorted(path.relative_to(cwd).as_posix() for path in cwd.rglob("*"))
        imported = heavy_imports(cwd)
    print(f"ufm-train model.init_scale=-1: {min(rejected) * 1e3:7.0f} ms (best of {args.repeats}); {lines[0]}")
    print(f'python -c "import hydra":     {min(baseline) * 1e3:7.0f} ms')
    print(
        f"ratio {min(rejected) / min(baseline):.2f} (best times), {statistics.median(ratios):.2f} (median of pairs); "
        "target <= 4"
    )
    print(f"left in the working folder: {left or 'nothing'}; imports torch or Lightning: {imported or 'neither'}")


if __name__ == "__main__":
    main()
