"""The test tiers: ``make test-unit`` (``-m "not integration and not slow"``) starts no peer.

Collected the way ``make`` runs pytest, in a process of its own, over files that need no
model (so the collection itself stays quick): an integration module, and a storage module
that runs on SQLite (unit) and on PostgreSQL (a real server: integration).
"""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import MODULE_SECONDS, SLOW_TESTS
from tests.peers import REPO

FILES = ["tests/integration/test_completion_flow.py", "tests/integration/test_durability.py",
         "tests/storage/test_db.py"]


def test_unit_tier_leaves_out_integration_tests_by_path_and_by_the_peers_they_start():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-m", "not integration and not slow", *FILES],
        cwd=REPO, capture_output=True, text=True, timeout=50)

    assert result.returncode == 0, result.stdout + result.stderr
    unit = [line for line in result.stdout.splitlines() if "::" in line]
    assert unit and all(i.startswith("tests/storage/test_db.py::") for i in unit)
    assert not [i for i in unit if "[postgresql]" in i]
    sqlite = [i for i in unit if "[sqlite]" in i]
    assert sqlite
    # Deselected: all of tests/integration, and test_db's PostgreSQL half.
    counts = re.search(r"(\d+)/(\d+) tests collected \((\d+) deselected\)", result.stdout)
    assert counts, result.stdout
    selected, total, deselected = map(int, counts.groups())
    assert (selected, selected + deselected) == (len(unit), total)
    assert deselected > len(sqlite)


def test_every_test_named_slow_still_exists():
    """A renamed test would silently fall back into the quick tier."""
    for name in SLOW_TESTS:
        path, function = name.split("::")
        assert f"def {function}(" in (REPO / path).read_text(), f"{name} is gone"


def test_every_module_timed_for_the_schedule_still_exists():
    """A renamed module would silently lose its early start (tests/conftest.py)."""
    for module in MODULE_SECONDS:
        assert (REPO / module).is_file(), f"{module} is gone"


def test_the_longest_modules_are_collected_first_each_in_its_own_order():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/test_markers.py", "tests/integration/test_viewer.py",
         "tests/integration/test_receive.py"],
        cwd=REPO, capture_output=True, text=True, timeout=50)

    assert result.returncode == 0, result.stdout + result.stderr
    order = [line for line in result.stdout.splitlines() if "::" in line]
    modules = list(dict.fromkeys(line.split("::")[0] for line in order))
    assert modules == ["tests/integration/test_receive.py", "tests/integration/test_viewer.py",
                       "tests/test_markers.py"]
    in_file = re.findall(r"^def (test_\w+)\(", (REPO / "tests/test_markers.py").read_text(),
                         re.MULTILINE)
    assert [line.split("::")[1] for line in order if "test_markers" in line] == in_file
