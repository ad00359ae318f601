"""Broker-visible names derived from the settings. They are schema: a change renames topics.

Faust names a table's changelog topic ``{app_id}-{table}-changelog``; tests pin these names.
"""

from __future__ import annotations

ENTRIES_TABLE = "entries"


def changelog_topic(app_id: str, table: str = ENTRIES_TABLE) -> str:
    """The changelog topic Faust uses for ``table`` of app ``app_id``."""
    return f"{app_id}-{table}-changelog"
