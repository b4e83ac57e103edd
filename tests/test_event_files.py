"""A resumed run's TensorBoard files drop what a killed run wrote after the checkpoint, whatever the reader."""

from __future__ import annotations

import os
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.summary_pb2 import Summary

from ufm_torch.run_folder.event_files import truncate_event_file, truncate_tree
from ufm_torch.run_folder.tensorboard import RunWriter


def write_run(log_dir: Path, steps: range) -> Path:
    """A run whose scalar ``collapse/nc1`` is ``step / 10`` at each step; returns its file."""
    writer = RunWriter(log_dir)
    for step in steps:
        writer.add_summary(Summary(value=[Summary.Value(tag="collapse/nc1", simple_value=step / 10)]), step)
    writer.close()
    return writer.path


def scalar_steps(log_dir: Path) -> list[int]:
    """Steps of ``collapse/nc1`` as TensorBoard reads them, without its own purging of orphaned steps."""
    accumulator = EventAccumulator(str(log_dir), purge_orphaned_data=False)
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars("collapse/nc1")]


def test_steps_after_the_resumed_one_and_a_cut_record_are_dropped(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run", range(0, 50, 5))
    path.write_bytes(path.read_bytes()[:-9])
    assert truncate_event_file(path, last_step=25)
    assert scalar_steps(tmp_path / "run") == [0, 5, 10, 15, 20, 25]
    assert not truncate_event_file(path, last_step=25), "a clean file is left as it is"


def test_a_resumed_tree_shows_each_step_once(tmp_path: Path) -> None:
    """The killed process wrote 0…45 after a checkpoint at 20; the resumed one writes 25…45 again."""
    killed = write_run(tmp_path / "tb" / "eps=0.1" / "rep=0", range(0, 50, 5))
    os.rename(killed, killed.with_name(killed.name.replace(f".{os.getpid()}.", ".1.")))
    changed = truncate_tree(tmp_path / "tb", last_step=20)
    assert len(changed) == 1
    write_run(tmp_path / "tb" / "eps=0.1" / "rep=0", range(25, 50, 5))
    assert scalar_steps(tmp_path / "tb" / "eps=0.1" / "rep=0") == list(range(0, 50, 5))


def test_files_of_this_process_are_never_rewritten(tmp_path: Path) -> None:
    write_run(tmp_path / "tb", range(0, 50, 5))
    assert truncate_tree(tmp_path / "tb", last_step=20) == []
    assert truncate_tree(tmp_path / "missing", last_step=20) == []
