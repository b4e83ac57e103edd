"""The run folder: the one layer that reads and writes ``metrics.jsonl``, ``status.json``, run names, job folders and
TensorBoard event files."""
