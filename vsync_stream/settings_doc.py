"""The configuration reference, generated from :class:`~vsync_stream.settings.Settings`.

``vsync-stream settings --markdown`` prints it; README.md holds the same table between the markers
below, and a unit test (``tests/unit/test_settings_doc.py``) fails when the two differ, so the
README cannot go stale. To refresh the README after changing a setting::

    .venv/bin/python -m vsync_stream.settings_doc README.md
"""

from __future__ import annotations

import re
import sys
import typing
from pathlib import Path

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from vsync_stream.settings import Settings

__all__ = ["END_MARKER", "START_MARKER", "env_var", "render_settings_table", "replace_block"]

START_MARKER = "<!-- settings:start -->"
END_MARKER = "<!-- settings:end -->"
_ENV_SUFFIX = re.compile(r"\s*\[env: (?P<env>[A-Z0-9_]+)\]\s*$")


def env_var(settings_cls: type[BaseSettings], name: str) -> str:
    """The environment variable of field ``name``: the class's ``env_prefix`` + the name in upper case."""
    return f"{settings_cls.model_config.get('env_prefix', '')}{name}".upper()


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):  # a code default is no secret; a configured value is never shown
        value = value.get_secret_value()
    if value is None:
        return "*(unset)*"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | tuple):
        if not value:
            return "*(none)*"
        value = ",".join(str(v.get_secret_value() if isinstance(v, SecretStr) else v) for v in value)
    text = str(value)
    return f"`{text}`" if text else "*(empty)*"


def _meaning(field: FieldInfo) -> str:
    text = _ENV_SUFFIX.sub("", field.description or "").strip()
    if typing.get_origin(field.annotation) is typing.Literal:
        choices = ", ".join(f"`{choice}`" for choice in typing.get_args(field.annotation))
        text = f"{text} (one of {choices})"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_settings_table(settings_cls: type[BaseSettings] = Settings) -> str:
    """Every setting of ``settings_cls`` as a Markdown table, in declaration order.

    Returns:
        The table (``| variable | default | meaning |``), one row per field, ending with a newline.
    """
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in settings_cls.model_fields.items():
        row = (f"`{env_var(settings_cls, name)}`", _default(field), _meaning(field))
        lines.append("| " + " | ".join(_cell(cell) for cell in row) + " |")
    return "\n".join(lines) + "\n"


def replace_block(text: str, table: str) -> str:
    """``text`` with the part between :data:`START_MARKER` and :data:`END_MARKER` replaced by ``table``.

    Raises:
        ValueError: the markers are missing, repeated or out of order.
    """
    if text.count(START_MARKER) != 1 or text.count(END_MARKER) != 1:
        raise ValueError(f"expected one {START_MARKER} and one {END_MARKER}")
    head, rest = text.split(START_MARKER)
    _old, tail = rest.split(END_MARKER)
    return f"{head}{START_MARKER}\n{table}{END_MARKER}{tail}"


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m vsync_stream.settings_doc README.md", file=sys.stderr)
        return 2
    path = Path(argv[0])
    text = path.read_text("utf-8")
    updated = replace_block(text, render_settings_table())
    if updated != text:
        path.write_text(updated, "utf-8")
        print(f"{path}: configuration reference updated")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
