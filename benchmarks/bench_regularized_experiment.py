"""Wall time of ``ufm-train experiment=regularized`` against its 20-job form, as whole commands, timed alternately.

``experiment=regularized`` trains λ = λ_W = λ_H ∈ {0.01, …, 0.3} (10 values) for the mean squared error and the
cross-entropy, C = 4, N = 5, p = 8, 10 000 plain descent steps. Before issue 24 every (loss, λ) was a Hydra job of
its own, each drawing its report (``figures/collapse.png``), and the sweep drew the per-key sweep figures: 20 jobs.
Now each loss is one job whose replica groups are the ten λ (``decay`` is a list that both decays interpolate) and
the sweep draws only its summary, HPARAMS and ``figures/regularization.png`` when it ends (``report.lazy``).

The baseline command reproduces the 20-job form with today's code: ``decay=0.01,…,0.3`` sweeps λ as jobs and
``report.lazy=false`` draws every job's report and the sweep figures. Both run as subprocesses (Python start-up and
imports included, one CPU thread each), alternately, ``--repeats`` times; prints each best wall time and the ratio
(target ≤ 0.2).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UFM_TRAIN = Path(sys.executable).parent / "ufm-train"
DECAYS = "0.01,0.02,0.04,0.06,0.08,0.1,0.12,0.14,0.2,0.3"
"""The λ of ``conf/experiment/regularized.yaml``, as a sweep of jobs."""
TARGET = 0.2
COMMANDS = {
    "20 jobs (one per loss and λ)": ["experiment=regularized", f"decay={DECAYS}", "report.lazy=false"],
    "2 jobs (the λ as replica groups)": ["experiment=regularized"],
}


def wall_time(arguments: list[str]) -> float:
    """Seconds of ``ufm-train arguments`` into a fresh sweep folder (a failure raises with its stderr)."""
    with tempfile.TemporaryDirectory() as folder:
        environment = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        command = [str(UFM_TRAIN), *arguments, f"hydra.sweep.dir={folder}/sweep", "callbacks.progress.refresh_rate=0"]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=folder)
        elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)} failed: {result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    """Time both commands alternately and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, arguments in COMMANDS.items():
            times[name].append(wall_time(arguments))
    baseline, batched = (min(values) for values in times.values())
    for name, values in times.items():
        print(f"{name}: best {min(values):.1f} s of {', '.join(f'{value:.1f}' for value in values)}")
    verdict = "meets" if batched / baseline <= TARGET else "misses"
    print(f"ratio {batched / baseline:.3f} (target <= {TARGET}: {verdict})")


if __name__ == "__main__":
    main()
