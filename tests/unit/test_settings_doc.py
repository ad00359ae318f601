"""The configuration reference in README.md is generated from the settings object and cannot go stale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from vsync_stream.cli import settings_command
from vsync_stream.settings import Settings
from vsync_stream.settings_doc import END_MARKER, START_MARKER, env_var, render_settings_table, replace_block

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_holds_exactly_the_generated_settings_table() -> None:
    text = README.read_text("utf-8")
    assert text.count(START_MARKER) == 1 and text.count(END_MARKER) == 1, "README.md lost its settings markers"
    block = text.split(START_MARKER, 1)[1].split(END_MARKER, 1)[0]
    assert block == "\n" + render_settings_table(), (
        "README.md's configuration reference differs from the settings: run "
        "`.venv/bin/python -m vsync_stream.settings_doc README.md` and commit the result")


def test_every_setting_has_one_row_with_its_env_var_and_a_meaning() -> None:
    rows = render_settings_table().splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    for row, (name, field) in zip(rows, Settings.model_fields.items(), strict=True):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        assert len(cells) == 3, row
        assert cells[0] == f"`VSYNC_{name.upper()}`"
        assert cells[1] and cells[2], f"{name}: empty default or meaning"
        # The description names the same variable the settings read (catches a renamed field).
        assert field.description and field.description.endswith(f"[env: {env_var(Settings, name)}]"), name


def test_defaults_are_shown_as_an_operator_would_type_them() -> None:
    table = render_settings_table()
    assert "| `VSYNC_PARTICIPANTS` | `12345678` |" in table  # a list, written comma-separated
    assert "| `VSYNC_ADAPTER_ENABLED` | `true` |" in table
    assert "| `VSYNC_BRIDGE_TLS_CA` | *(unset)* |" in table
    assert "| `VSYNC_API_TOKENS` | *(none)* |" in table
    assert "(one of `text`, `json`)" in table  # a Literal lists its choices


def test_replace_block_rewrites_only_between_the_markers() -> None:
    text = f"intro\n{START_MARKER}\nold\n{END_MARKER}\noutro\n"
    assert replace_block(text, "| new |\n") == f"intro\n{START_MARKER}\n| new |\n{END_MARKER}\noutro\n"
    with pytest.raises(ValueError):
        replace_block("no markers", "| new |\n")


def test_cli_prints_the_markdown_table() -> None:
    result = CliRunner().invoke(settings_command, ["--markdown"])
    assert result.exit_code == 0, result.output
    assert result.output == render_settings_table()


def test_the_worker_log_level_comes_from_the_settings_unless_given() -> None:
    from vsync_stream.cli import loglevel_from_settings

    assert loglevel_from_settings(["vs", "worker"], "warning") == ["vs", "worker", "--loglevel", "warning"]
    assert loglevel_from_settings(["vs", "worker", "-l", "info"], "warning") == ["vs", "worker", "-l", "info"]
    assert loglevel_from_settings(["vs", "verify"], "warning") == ["vs", "verify"]
