"""The README's configuration reference matches the config structs, key for key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec

from batchd.config import FileConfig, decode_file_config

README = Path(__file__).resolve().parent.parent / "README.md"


def reference() -> dict[str, Any]:
    text = README.read_text()
    block = text.split("<!-- config-reference", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    data: dict[str, Any] = tomllib.loads(block)
    return data


def test_every_documented_default_is_the_real_default() -> None:
    """Each section of the README block decodes to exactly FileConfig's defaults."""
    doc = reference()
    decoded = decode_file_config(doc, "README.md")
    defaults = FileConfig()
    for section in (
        "runner",
        "spool",
        "retry",
        "breaker",
        "classify",
        "limits",
        "verify",
        "worktree",
        "slurm",
        "hooks",
    ):
        assert msgspec.to_builtins(getattr(decoded, section)) == msgspec.to_builtins(
            getattr(defaults, section)
        ), section


def test_every_key_is_documented() -> None:
    """No config key is missing from the README, and none is invented."""
    doc = reference()
    real = msgspec.to_builtins(FileConfig(), builtin_types=None)
    # [runners.NAME] has no default entry: the block shows it as a commented example.
    struct_keys = {f for f in FileConfig.__struct_fields__} - {"runners"}
    assert set(doc) == struct_keys
    assert "# [runners.NAME]" in README.read_text()
    for section, value in real.items():
        if isinstance(value, dict) and section != "runners":
            assert set(doc[section]) == set(value), section


def test_example_config_is_valid() -> None:
    """examples/config.toml loads without an error."""
    from batchd.config import load_config

    path = README.parent / "examples" / "config.toml"
    cfg = load_config({"BATCHD_CONFIG": str(path), "HOME": "/home/someone"})
    assert cfg.runner.output_format == "claude-json"
