"""The runbook (docs/operations.md) stays true to the code.

Every audit event type the code writes has a row in the runbook's audit table, and every row
is one the code writes; the same for the readiness checks; every `cxr-node <command>` the
runbook names exists; every setting it names is a key of the settings model. The event
types are read from the source the way a person would grep them: the literal passed as
``event_type`` to ``audit.record`` (or to a helper that passes it on); a call whose event
type cannot be read that way fails here, so a new one cannot slip past the runbook.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from config.settings import Settings
from node.cli import _parser
from node.scheduler import TASKS
from training.tracking import ALERT_EVENT_TYPE

REPO = Path(__file__).resolve().parent.parent
RUNBOOK = REPO / "docs" / "operations.md"
SOURCES = [path for package in ("node", "storage", "training")
           for path in sorted((REPO / package).rglob("*.py"))]
# The one event type built from parts: `{scheduled|requested}-{task}` (node/scheduler.py).
PARAMETER_VALUES = {"task": set(TASKS)}
MODULE_CONSTANTS = {"ALERT_EVENT_TYPE": ALERT_EVENT_TYPE}


def marked_table(name: str) -> list[str]:
    """First-column code values of the table between ``<!-- name -->`` and ``<!-- /name -->``."""
    text = RUNBOOK.read_text()
    body = text.split(f"<!-- {name} -->", 1)[1].split(f"<!-- /{name} -->", 1)[0]
    return [match.group(1) for match in re.finditer(r"^\| `([^`]+)`", body, re.MULTILINE)]


def _strings(node: ast.AST, assignments: dict[str, ast.AST], where: str,
             index: int | None = None) -> set[str]:
    """The strings ``node`` can be, reading constants, conditionals, tuples and f-strings."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return (_strings(node.body, assignments, where, index)
                | _strings(node.orelse, assignments, where, index))
    if isinstance(node, ast.Tuple) and index is not None:
        return _strings(node.elts[index], assignments, where)
    if isinstance(node, ast.JoinedStr):
        values = [{""}]
        for part in node.values:
            if isinstance(part, ast.FormattedValue):
                values.append(_strings(part.value, assignments, where))
            else:
                values.append(_strings(part, assignments, where))
        combined = {""}
        for options in values:
            combined = {head + tail for head in combined for tail in options}
        return combined
    if isinstance(node, ast.Name | ast.Attribute):
        name = node.id if isinstance(node, ast.Name) else node.attr
        if name == "event_type":
            return set()  # a parameter: its values are collected at the callers
        if name in MODULE_CONSTANTS:
            return {MODULE_CONSTANTS[name]}
        if name in PARAMETER_VALUES:
            return PARAMETER_VALUES[name]
        if name in assignments:
            target, position = assignments[name]
            rest = {k: v for k, v in assignments.items() if k != name}  # no self-reference
            return _strings(target, rest, where, position)
    raise AssertionError(f"{where}: cannot tell which event types {ast.unparse(node)} can be; "
                         "pass a literal (or teach tests/test_operations_doc.py)")


def _outside_functions(tree: ast.Module) -> Iterator[ast.AST]:
    """The module's own statements and what they contain, not its functions' bodies."""
    for statement in tree.body:
        if not isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield from ast.walk(statement)


def _local_assignments(scope: ast.AST) -> dict[str, tuple[ast.AST, int | None]]:
    found = {}
    nodes = _outside_functions(scope) if isinstance(scope, ast.Module) else ast.walk(scope)
    for node in nodes:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                found[target.id] = (node.value, None)
            elif isinstance(target, ast.Tuple):
                for position, element in enumerate(target.elts):
                    if isinstance(element, ast.Name):
                        found[element.id] = (node.value, position)
    return found


def audit_event_types() -> set[str]:
    """Every ``event_type`` the code can write: record()'s third argument, any argument
    called ``event_type`` (or in that position of a helper whose parameter it is), and the
    defaults of such parameters."""
    trees = {path: ast.parse(path.read_text()) for path in SOURCES}
    # Helpers that take an ``event_type`` parameter: its position (after self). A method is
    # called as ``x.name(...)``, a function as ``name(...)`` or ``module.name(...)``.
    methods: dict[str, int] = {}
    functions: dict[str, int] = {"record": 2}
    for tree in trees.values():
        in_classes = {id(f) for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
                      for f in c.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [a.arg for a in node.args.args if a.arg not in ("self", "cls")]
                if "event_type" in names and node.name != "record":
                    table = methods if id(node) in in_classes else functions
                    table[node.name] = names.index("event_type")
    found: set[str] = set()
    for path, tree in trees.items():
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef | ast.Module):
                continue
            assignments = _local_assignments(function)
            if not isinstance(function, ast.Module):
                for arg, default in zip(reversed(function.args.args),
                                        reversed(function.args.defaults), strict=False):
                    if arg.arg == "event_type":
                        found |= _strings(default, assignments, str(path))
            calls = (_outside_functions(function) if isinstance(function, ast.Module)
                     else ast.walk(function))
            for call in calls:
                if not isinstance(call, ast.Call):
                    continue
                if isinstance(call.func, ast.Attribute):
                    name = call.func.attr
                    position = methods.get(name, functions.get(name))
                else:
                    name = getattr(call.func, "id", None)
                    position = functions.get(name)
                where = f"{path.relative_to(REPO)}:{call.lineno}"
                for keyword in call.keywords:
                    if keyword.arg == "event_type":
                        found |= _strings(keyword.value, assignments, where)
                if position is None or len(call.args) <= position:
                    continue
                if name == "record" and "AuditEventId" not in ast.unparse(call.args[1]):
                    continue  # another record(), not the audit trail's
                found |= _strings(call.args[position], assignments, where)
    return found


def test_every_audit_event_type_is_explained_in_the_runbook():
    written = audit_event_types()
    explained = marked_table("audit-events")

    assert len(explained) == len(set(explained)), "an event type is listed twice"
    assert sorted(written - set(explained)) == [], "written by the code, not in the runbook"
    assert sorted(set(explained) - written) == [], "in the runbook, never written"


def test_the_extraction_finds_event_types_of_each_kind():
    # A literal, a conditional, a tuple assignment, a helper's parameter and its default,
    # a module constant and an f-string: were one reading lost, the test above would pass
    # on a shorter list.
    assert {"association-accepted", "job-failed", "job-retried", "user-disabled",
            "user-enabled", "protocol-violation", "connection-closed", "node-started",
            "model-performance-alert", "scheduled-retention",
            "requested-report"} <= audit_event_types()


def test_every_readiness_check_is_explained_in_the_runbook():
    names = set()
    for path in SOURCES:
        names |= set(re.findall(r'readiness\.add\("([a-z_]+)"', path.read_text()))

    assert names == set(marked_table("readiness"))


def test_commands_and_settings_the_runbook_names_exist():
    text = RUNBOOK.read_text()
    commands = set(_parser()._subparsers._group_actions[0].choices)
    # In backticks or at the start of a command line; "cxr-node listening as" is what
    # serve prints, not a command.
    named = set(re.findall(r"(?:^|`)cxr-node (?:--config \S+ )?([a-z]+)", text, re.MULTILINE))
    assert named - commands - {"listening"} == set(), "commands the CLI does not have"
    assert {"serve", "backup", "restore", "transfers"} <= named

    sections = set(Settings.model_fields)
    for key in set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", text)):
        if key.split(".")[0] not in sections:
            continue  # a file name or a module, not a setting
        model = Settings
        for part in key.split("."):
            assert model is not None and part in model.model_fields, f"no setting {key}"
            annotation = model.model_fields[part].annotation
            model = annotation if isinstance(annotation, type) and hasattr(
                annotation, "model_fields") else None
