"""Fixtures shared by the test suite, and how pytest-xdist shares the tests out; the helpers live in
:mod:`tests.helpers`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import REPO, UFM_TRAIN, run_ufm_train  # noqa: F401  (the names test modules import from here)


@pytest.fixture
def short_run_overrides(tmp_path: Path) -> list[str]:
    """Overrides for a fast run whose folder is ``tmp_path/run``."""
    return [f"hydra.run.dir={tmp_path / 'run'}", "trainer.max_steps=40", "callbacks.progress.refresh_rate=0"]


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under ``-n`` (``--dist load``): each test class to one worker, every other test to whichever worker is free.

    A class groups the tests that read one expensive run through a class-scoped fixture (a sweep, the reduced paper
    run); spread over two workers, the run would be made twice. xdist's own ``--dist loadgroup`` would do this with
    ``xdist_group`` marks, but pytest-xdist 3.8 rewrites ``item._nodeid``, which pytest 9 no longer reads, so its
    groups are silently ignored.
    """
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerPerClass(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module, *rest = nodeid.split("::")
            return f"{module}::{rest[0]}" if len(rest) > 1 else nodeid

    return OneWorkerPerClass(config, log)
