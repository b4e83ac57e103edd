"""``ufm-train --help`` (Hydra's help template in ``conf/hydra/default.yaml``): every config group with its options,
main keys that exist, and examples that compose and pass the config checks."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import compose_train, ufm_train_main
from ufm_torch import conf
from ufm_torch.cli.validation import validate_config

CONFIG_DIR = Path(conf.__file__).parent


@pytest.fixture(scope="module")
def help_text() -> str:
    """What ``ufm-train --help`` prints (exit 0)."""
    output = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(output):
        assert ufm_train_main(monkeypatch, "--help") == 0
    return output.getvalue()


def section(text: str, title: str) -> list[str]:
    """The non-empty lines under ``== title ==`` up to the next section or blank line."""
    lines = text.split(f"== {title} ==\n", 1)[1].splitlines()
    return [line for line in lines[: next((i for i, line in enumerate(lines) if not line.strip()), len(lines))]]


def test_help_lists_every_config_group_with_every_option(help_text: str) -> None:
    groups = sorted(path.name for path in CONFIG_DIR.iterdir() if path.is_dir() and path.name not in ("hydra",)
                    and not path.name.startswith("_"))  # fmt: skip
    listed = dict(line.split(": ", 1) for line in section(help_text, "Config groups (group=option)"))
    assert sorted(listed) == groups
    for group in groups:
        options = sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))
        assert listed[group].split(", ") == options, group


def test_every_main_key_the_help_names_exists_in_the_config(help_text: str) -> None:
    cfg = compose_train()
    named = [word for line in section(help_text, "Main keys (key=value)") for word in line.split()
             if re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", word) and (word in cfg or "." in word)]  # fmt: skip
    assert len(named) >= 20
    missing = [key for key in named if OmegaConf.select(cfg, key, default="<missing>") == "<missing>"]
    assert not missing


def test_every_example_composes_and_passes_the_checks(help_text: str) -> None:
    examples = [line.strip() for line in section(help_text, "Examples")]
    assert len(examples) >= 6
    for example in examples:
        command = re.split(r"\s{2,}", example)[0]  # the text after two spaces explains the example
        words = [word for word in shlex.split(command)[1:] if word != "-m" and "<" not in word and ">" not in word]
        # a sweep's first value of each comma-separated list (lists in brackets are one value)
        overrides = [re.sub(r"=([^\[,]+),.*", r"=\1", word) for word in words if not word.startswith("ckpt_path=")]
        validate_config(compose_train(*overrides))
