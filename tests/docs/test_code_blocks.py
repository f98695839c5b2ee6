"""Every shell or Python block in the docs is run by a test, or says why it is not."""

from __future__ import annotations

import re

from tests.conftest import PROJECT_ROOT
from tests.docs.blocks import RUNNABLE, blocks

TESTS = PROJECT_ROOT / "tests"


def _runnable():
    return [found for found in blocks() if found.language in RUNNABLE]


def test_every_shell_and_python_block_is_run_or_says_why_not():
    unmarked = [found.where() for found in _runnable() if found.marker is None]
    assert not unmarked, ("blocks with neither <!-- test: ID --> nor <!-- not run: REASON --> "
                          f"above them: {unmarked}")
    silent = [found.where() for found in _runnable()
              if found.marker == "not run" and len(found.value) < 10]
    assert not silent, f"'not run' needs a reason a reader understands: {silent}"


def test_every_block_marked_for_a_test_is_run_by_one():
    sources = "\n".join(path.read_text() for path in TESTS.rglob("*.py")
                        if path.parent.name != "docs" or path.name != "blocks.py")
    used = set(re.findall(r"""\bblock\(\s*["']([\w.-]+)["']""", sources))
    marked = [found for found in _runnable() if found.marker == "test"]
    ids = [found.value for found in marked]
    assert len(ids) == len(set(ids)), f"a test ID marks two blocks: {sorted(ids)}"
    orphans = [f"{found.where()} ({found.value})" for found in marked if found.value not in used]
    assert not orphans, f"blocks marked for a test that no test runs: {orphans}"
    assert used <= set(ids), f"tests ask for blocks no page marks: {sorted(used - set(ids))}"
