"""The docs' code blocks, for the tests that run them.

Every shell or Python block in ``docs/`` is preceded by one of two markers, on the
nearest non-blank line above its fence:

- ``<!-- test: ID -->``: a test runs it, taking its text from :func:`block` with that ID;
- ``<!-- not run: REASON -->``: it cannot run here (a GPU, a cluster, the network, a
  server left running), and the reason says which.

HTML comments are not rendered, so readers see only the block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs"
RUNNABLE = {"bash", "sh", "shell", "console", "python", "py", "pycon"}
MARKER = re.compile(r"<!--\s*(test|not run):\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, from 1
    language: str
    code: str
    marker: str | None  # "test" or "not run"
    value: str | None  # the test ID or the reason

    def where(self) -> str:
        return f"{self.page.relative_to(PROJECT_ROOT)}:{self.line}"


def _parse(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, language = fence.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith("```"):
            end += 1
        code = "\n".join(line[len(indent):] for line in lines[i + 1:end]) + "\n"
        above = next((line for line in reversed(lines[:i]) if line.strip()), "")
        marker = MARKER.search(above)
        found.append(Block(page, i + 1, language.lower(), code,
                           marker.group(1) if marker else None,
                           marker.group(2) if marker else None))
        i = end + 1
    return found


def blocks() -> list[Block]:
    """Every fenced block of every page under docs/."""
    return [found for page in sorted(DOCS.rglob("*.md")) for found in _parse(page)]


def block(test_id: str) -> str:
    """The code of the one block marked ``<!-- test: test_id -->``."""
    marked = [found for found in blocks() if found.marker == "test" and found.value == test_id]
    assert len(marked) == 1, f"{len(marked)} blocks marked 'test: {test_id}' in docs/"
    return marked[0].code
