"""Readiness: what must hold for this process to do its work, each check with its reason.

``/readyz`` answers 200 only when every check of the process passes: the database answers,
the DICOM listener accepts (where this process runs one), the model is loaded (where this
process runs one) and free disk on the data volume is above ``dicom.min_free_disk_bytes``.
The listener is checked from inside (its socket open, its thread alive), never by
connecting to it: a bare connection would hold one of the listener's pending-connection
slots for the ACSE timeout.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text

from storage.db import Database

# A check returns None when it passes, else the reason it does not.
Check = Callable[[], str | None]


@dataclass
class Readiness:
    """The named checks of one process; :meth:`run` gives each one's verdict."""

    checks: dict[str, Check] = field(default_factory=dict)

    def add(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def run(self) -> tuple[bool, dict[str, str]]:
        """(ready, {check: "ok" or the reason}); a check that raises fails with its error."""
        verdicts = {}
        for name, check in self.checks.items():
            try:
                reason = check()
            except Exception as exc:  # noqa: BLE001 - the reason is the answer
                reason = f"{type(exc).__name__}: {exc}"
            verdicts[name] = "ok" if reason is None else reason
        return all(v == "ok" for v in verdicts.values()), verdicts


def database_check(db: Database) -> Check:
    def check() -> str | None:
        try:
            with db.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means "not answering"
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            return "the database does not answer: " + (detail[0] if detail
                                                          else type(exc).__name__)
        return None
    return check


def disk_check(data_dir: Path, floor: int) -> Check:
    def check() -> str | None:
        try:
            free = shutil.disk_usage(data_dir).free
        except OSError as exc:
            return f"free disk of {data_dir} unknown: {exc.strerror or exc}"
        if free < floor:
            return (f"free disk {free} bytes on {data_dir} is below the floor "
                    f"dicom.min_free_disk_bytes={floor}")
        return None
    return check
