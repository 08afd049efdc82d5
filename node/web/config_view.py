"""The resolved settings as the console shows them: every key, secrets masked.

A secret is a key whose name says token, password or secret, and the password inside a
database URL. Paths to TLS keys are shown (the path is no secret; the file is).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from config.settings import Settings

MASK = "(set, hidden)"
_SECRET_KEY = re.compile(r"token|password|secret", re.IGNORECASE)


def mask_database_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return MASK  # not a URL we can parse: it may hold a password anywhere


def _masked(key: str, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _masked(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(key, v) for v in value]
    if value is None:
        return None
    if key == "database_url":
        return mask_database_url(str(value))
    if _SECRET_KEY.search(key):
        return MASK
    return value


def settings_rows(settings: Settings) -> list[tuple[str, str]]:
    """(dotted key, shown value) for every leaf of the resolved settings, secrets masked."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, list) and value and any(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            rows.append((prefix, "-" if value is None else "(none)" if value == [] else
                         ", ".join(map(str, value)) if isinstance(value, list) else str(value)))

    walk("", _masked("", settings.model_dump(mode="json")))
    return rows
