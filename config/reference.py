"""The configuration reference (docs/configuration.md), generated so it cannot drift.

Names, types, defaults and limits come from the settings model (:mod:`config.settings`),
the words from the comments of ``config/example.yaml`` (the file `make run` starts with,
whose every key a test already requires). ``python -m config.reference`` prints the page;
a test fails when the committed page differs from what this prints.
"""

from __future__ import annotations

import enum
import re
import types
import typing
from pathlib import Path

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from config.settings import ENV_PREFIX, Settings

EXAMPLE = Path(__file__).with_name("example.yaml")
_KEY = re.compile(r"^(?P<indent>\s*)(?P<item>- )?(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<rest>.*)$")


def example_comments(text: str) -> dict[str, str]:
    """Dotted key (``dicom.tls.enabled``, list items as ``destinations[].url``) -> the
    comment lines right above it and its own trailing comment, joined."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent of the key, its dotted path)
    pending: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = _KEY.match(line)
        if not match:
            if not stripped:
                pending = []
            continue
        indent = len(match["indent"])
        if match["item"]:  # "- key:" opens a list item: its keys sit two columns in
            while stack and stack[-1][0] > indent:
                stack.pop()
            stack.append((indent + 1, f"{stack[-1][1] if stack else ''}[]"))
            indent += 2
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        path = f"{parent}.{match['key']}" if parent else match["key"]
        stack.append((indent, path))
        trailing = match["rest"].split("#", 1)[1].strip() if "#" in match["rest"] else ""
        # Comments above "- key:" describe the list item (e.g. one example destination).
        words = " ".join([*([] if match["item"] else pending), trailing]).strip()
        if words:
            comments.setdefault(path, words)
        pending = []
    return comments


def _type_name(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        inner = " or ".join(_type_name(a) for a in args)
        return f"{inner} (optional)" if type(None) in typing.get_args(annotation) else inner
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return "mapping"
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "items (the section below)"
    return {str: "text", int: "integer", float: "number", bool: "true/false",
            Path: "path"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _limits(field: FieldInfo) -> str:
    words = []
    for item in field.metadata:
        for kind, sign, name in ((Ge, ">=", "ge"), (Gt, ">", "gt"), (Le, "<=", "le"),
                                 (Lt, "<", "lt")):
            if isinstance(item, kind):
                words.append(f"{sign} {getattr(item, name)}")
        if isinstance(item, MinLen):
            words.append(f"at least {item.min_length} long")
        if isinstance(item, MaxLen):
            words.append(f"at most {item.max_length} long")
        pattern = getattr(item, "pattern", None)
        if pattern:
            words.append(f"matches `{pattern}`")
    return ", ".join(words)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if isinstance(value, BaseModel) else f"`{value!r}`" if value else "empty"
    if field.default is PydanticUndefined:
        return "required"
    if field.default is None:
        return "empty"
    value = field.default.value if isinstance(field.default, enum.Enum) else field.default
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def _model(annotation: object) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _rows(model: type[BaseModel], prefix: str, comments: dict[str, str],
          sections: list[tuple[str, type[BaseModel], bool]]) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        nested = _model(field.annotation)
        if nested is not None:
            listed = typing.get_origin(field.annotation) is list
            sections.append((f"{path}[]" if listed else path, nested, listed))
            if not listed:
                continue
        words = comments.get(path, "").replace("|", "\\|")
        rows.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | "
                    f"{_limits(field)} | {words} |")
    return rows


def reference() -> str:
    comments = example_comments(EXAMPLE.read_text())
    out = ["# Configuration reference", "",
           "<!-- Generated by `python -m config.reference` from config/settings.py and the "
           "comments of config/example.yaml; edit those, not this page "
           "(tests/config/test_reference.py). -->", "",
           "The node reads one YAML file (`cxr-node --config FILE`, or `CXR_NODE_CONFIG`); "
           "`config/example.yaml` shows every key. Any key of a section can be overridden "
           f"from the environment as `{ENV_PREFIX}<SECTION>__<KEY>` (e.g. "
           f"`{ENV_PREFIX}DICOM__PORT=11200`). A wrong value stops the process at start with "
           "one line naming the key, and exit status 2.", ""]
    pending: list[tuple[str, type[BaseModel], bool]] = []
    top = [(name, field) for name, field in Settings.model_fields.items()]
    for name, field in top:
        nested = _model(field.annotation)
        listed = typing.get_origin(field.annotation) is list
        pending.append((f"{name}[]" if listed else name, nested, listed))
    while pending:
        path, model, listed = pending.pop(0)
        found: list[tuple[str, type[BaseModel], bool]] = []
        rows = _rows(model, path, comments, found)
        doc = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
        title = path.replace("[]", "[ ]")
        out += [f"## `{title}`", ""]
        if doc:
            out += [doc + (" A list: each item has the keys below." if listed else ""), ""]
        if rows:
            out += ["| key | type | default | limits | meaning |", "|---|---|---|---|---|",
                    *rows, ""]
        pending = found + pending
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
