"""The two user-facing failures: a configuration mistake (exit 2) and a diverged run (exit 3)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user mistake in the configuration, data or checkpoint; the message is one line naming the key or file,
    the value and what is allowed."""


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or parameter; the message names the step, the value and a hint."""
