"""The README and docs/ stay true: their commands are run by a test or say why not, and
their links lead somewhere.

A fenced block is a command when it is marked ``sh``/``bash``/``console``/``shell`` or its
first line that is not a comment starts as a command does (``cxr-node``, ``make``, ``curl``,
...). The nearest non-blank line above its fence must be one of

    <!-- tested by tests/PATH.py[::test_name] [what it runs] -->
    <!-- not run by tests: REASON -->

A "tested by" test must exist, and it must name each command of the block: the subcommand
of every ``cxr-node`` line (``"backup"``) and every other program (``storescu``). So a block
cannot borrow a test that runs something else, and ``make`` lines, which no test runs,
belong in a block that says why not.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from config.settings import Settings

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
DOCUMENTS = [README, *sorted(DOCS.glob("*.md"))]
SHELL_LANGUAGES = frozenset({"sh", "bash", "console", "shell"})
COMMAND_STARTS = ("cxr-node", "make", ".venv/", "python", "docker", "curl", "storescu",
                  "echoscu", "storescp", "torchrun", "echo ", "sudo", "git ", "$ ", "openssl",
                  "bash ", "npm ", "CXR_NODE_")
TESTED = re.compile(r"<!-- tested by (tests/[\w/.-]+\.py)(?:::(\w+))?(?: [^>]*)? -->")
NOT_RUN = re.compile(r"<!-- not run by tests: \S[^>]* -->")
# Programs a test need not name: the shell's own words, and what feeds a command its input.
SHELL_WORDS = frozenset({"echo", "cd", "export", "cat", "printf", "sudo"})
SEPARATORS = frozenset({"|", "||", "&&", ";", "&"})
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FRONT_PAGE_MAX_LINES = 200
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced code block: where its fence is, its language, its lines, what is above it."""

    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    body: list[str]
    above: str  # the nearest non-blank line before the fence, stripped

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def is_command(self) -> bool:
        if self.language in SHELL_LANGUAGES:
            return True
        first = next((line.strip() for line in self.body
                      if line.strip() and not line.strip().startswith("#")), "")
        return first.startswith(COMMAND_STARTS)


def blocks(text: str, path: Path = README) -> list[Block]:
    """Every fenced block of a Markdown text, fences inside list items included."""
    lines = text.split("\n")
    found = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence = opening.group(2)
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        above = next((line.strip() for line in reversed(lines[:index]) if line.strip()), "")
        found.append(Block(path, index + 1, opening.group(3).lower(), lines[index + 1:end],
                           above))
        index = end + 1
    return found


def without_fences(text: str) -> str:
    """The text with fenced blocks blanked, line numbers kept (a ``# comment`` in a block
    is no heading, a ``[x](y)`` there no link)."""
    lines = text.split("\n")
    for block in blocks(text):
        for number in range(block.line - 1, block.line + len(block.body) + 1):
            if number < len(lines):
                lines[number] = ""
    return "\n".join(lines)


def without_code(text: str) -> str:
    """The text without fenced blocks and code spans."""
    return _CODE_SPAN.sub("", without_fences(text))


def commands(block: Block) -> list[list[str]]:
    """Each command of the block as words: continuation lines joined, comments and
    pipelines split, leading ``$ ``, variable assignments and ``sudo`` left out."""
    joined, pending = [], ""
    for line in block.body:
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined.append(pending + stripped)
        pending = ""
    found = []
    for line in joined:
        lexer = shlex.shlex(line.removeprefix("$ "), posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token not in SEPARATORS:
                words.append(token)
                continue
            while words and (ASSIGNMENT.match(words[0]) or words[0] == "sudo"):
                words.pop(0)
            if words:
                found.append(words)
            words = []
    return found


def what_a_test_must_name(words: list[str]) -> str | None:
    """``"backup"`` for ``cxr-node --config F backup ...``; ``storescu`` for storescu; None
    for the shell's own words."""
    program = words[0].rsplit("/", 1)[-1]
    rest = words[1:]
    if program.startswith("python") and rest[:2] == ["-m", "node.cli"]:
        program, rest = "cxr-node", rest[2:]
    if program == "cxr-node":
        while rest[:1] == ["--config"]:
            rest = rest[2:]
        return f'"{rest[0]}"' if rest else "cxr-node"
    if program in SHELL_WORDS:
        return None
    return program


def command_blocks() -> list[Block]:
    return [block for path in DOCUMENTS for block in blocks(path.read_text(), path)
            if block.is_command]


def _ids(items: list[Block]) -> list[str]:
    return [block.where for block in items]


# -- the reader itself --------------------------------------------------------------------

def test_the_reader_tells_commands_from_other_blocks_and_finds_their_markers():
    text = "\n".join([
        "<!-- not run by tests: needs a site's PACS -->", "```sh", "# a comment", "ls", "```",
        "", "- a list item:", "", "  <!-- tested by tests/peers.py -->", "  ```",
        "  cxr-node --config x.yaml \\", "      studies --limit 3", "  ```",
        "```yaml", "dicom: {port: 1}", "```",
        "```", "{\"figures\": 1}", "```",
        "```", "# first a comment", "CXR_NODE_DICOM__PORT=1 cxr-node serve | tee log", "```"])

    found = blocks(text)

    assert [(b.line, b.language, b.is_command) for b in found] == [
        (2, "sh", True), (10, "", True), (14, "yaml", False), (17, "", False),
        (20, "", True)]
    assert found[0].above == "<!-- not run by tests: needs a site's PACS -->"
    assert found[1].above == "<!-- tested by tests/peers.py -->"
    assert commands(found[1]) == [["cxr-node", "--config", "x.yaml", "studies", "--limit",
                                   "3"]]
    assert [what_a_test_must_name(words) for words in commands(found[4])] == [
        '"serve"', "tee"]
    assert what_a_test_must_name(["echo", "$PASSWORD"]) is None
    assert what_a_test_must_name([".venv/bin/cxr-node", "demo", "--out", "d"]) == '"demo"'


def test_the_documents_hold_command_blocks_of_each_kind():
    found = command_blocks()
    assert len(found) >= 15
    assert {block.path for block in found} >= {README, DOCS / "operations.md"}
    assert any(TESTED.fullmatch(block.above) for block in found)
    assert any(NOT_RUN.fullmatch(block.above) for block in found)


# -- every command block ------------------------------------------------------------------

@pytest.mark.parametrize("block", command_blocks(), ids=_ids(command_blocks()))
def test_every_command_block_is_run_by_a_test_or_says_why_not(block):
    tested = TESTED.fullmatch(block.above)
    assert tested or NOT_RUN.fullmatch(block.above), (
        f"{block.where}: a command block needs, on the line above its fence, "
        "<!-- tested by tests/PATH.py[::test_name] ... --> or <!-- not run by tests: WHY -->; "
        f"found {block.above!r}")
    if not tested:
        return
    test_file = REPO / tested.group(1)
    assert test_file.is_file(), f"{block.where}: {tested.group(1)} does not exist"
    source = test_file.read_text()
    if tested.group(2):
        assert re.search(rf"^\s*(?:async )?def {tested.group(2)}\(", source, re.MULTILINE), \
            f"{block.where}: {tested.group(1)} has no test {tested.group(2)}"
    for words in commands(block):
        needed = what_a_test_must_name(words)
        assert needed is None or needed in source, (
            f"{block.where}: `{' '.join(words)}` is in a block {tested.group(1)} tests, but "
            f"that file never names {needed}: mark the block 'not run by tests', or split it")


# -- links --------------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in without_fences(path.read_text()).split("\n"):
        heading = _HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    return [target for target in _LINK.findall(without_code(path.read_text()))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


def test_the_slug_is_githubs():
    assert slug("QIDO-RS and WADO-RS: OHIF on the node") == "qido-rs-and-wado-rs-ohif-on-the-node"
    assert slug("DICOMweb destinations (STOW-RS out)") == "dicomweb-destinations-stow-rs-out"
    assert slug("`dicom.peers[ ]`") == "dicompeers-"


@pytest.mark.parametrize("path", DOCUMENTS, ids=[p.name for p in DOCUMENTS])
def test_relative_links_and_images_lead_to_files_and_headings_that_exist(path):
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target} (no file {destination.relative_to(REPO)})")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target} (no heading #{anchor} in {destination.name})")
    assert broken == [], f"{path.relative_to(REPO)}: broken links"


# -- the README is a front page -----------------------------------------------------------

def test_the_readme_is_a_front_page_that_links_every_page_of_the_docs():
    text = README.read_text()
    linked = {(README.parent / target.partition("#")[0]).resolve()
              for target in relative_links(README)}
    images = [target for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", without_code(text))]

    assert len(text.splitlines()) <= FRONT_PAGE_MAX_LINES
    # What a reader sees first: the results in a viewer, and the phantoms beside a real film.
    assert images == ["docs/images/ohif-named-findings.jpg",
                      "docs/images/phantom-gallery.jpg"], images
    assert sorted(p.name for p in DOCS.glob("*.md") if p.resolve() not in linked) == []
    assert "make run" in text and "make test" in text and "cxr-node demo" in text


def test_the_readmes_configuration_is_valid_settings():
    examples = [block for block in blocks(README.read_text()) if block.language == "yaml"]

    assert examples, "the README shows no configuration"
    for block in examples:
        settings = Settings.model_validate(yaml.safe_load("\n".join(block.body)))
        assert settings.dicom.peers and settings.destinations, block.where
