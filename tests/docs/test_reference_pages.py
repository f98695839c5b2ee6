"""The reference pages that list the catalog and the pipelines name what exists:
every entry of conf/base/catalog.yml and every node of every pipeline, with the
node's real inputs and outputs, and nothing that is gone."""

from __future__ import annotations

import importlib
import re

import pytest
import yaml

from tests.conftest import PROJECT_ROOT
from tests.docs.blocks import DOCS

PIPELINES = ("training", "tuning", "inference", "export")
CODE = re.compile(r"`([^`]+)`")


def _rows(page: str, section: str | None = None) -> list[list[str]]:
    """The cells of each table row under a ``## `section` `` heading (or anywhere)."""
    text = (DOCS / page).read_text()
    if section is not None:
        text = re.split(rf"^## `{section}`$", text, flags=re.M)[1].split("\n## ", 1)[0]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines()
            if line.startswith("| `")]


def test_the_catalog_page_lists_every_entry_and_only_those():
    catalog = yaml.safe_load((PROJECT_ROOT / "conf/base/catalog.yml").read_text())
    entries = {name: spec for name, spec in catalog.items() if not name.startswith("_")}
    rows = {CODE.match(row[0]).group(1): row for row in _rows("reference/catalog.md")
            if len(row) == 6}
    assert set(rows) == set(entries), (
        f"missing from docs/reference/catalog.md: {sorted(set(entries) - set(rows))}; "
        f"listed there but not in catalog.yml: {sorted(set(rows) - set(entries))}")
    for name, spec in entries.items():
        path = (spec.get("filepath") or spec.get("path") or "").replace(
            "${globals:runs_folder}", "data")  # conf/base/globals.yml's
        if path.startswith("data/"):
            assert f"`{path}`" in rows[name][2], f"{name}: the page should say {path}"
        assert (rows[name][3] == "yes") == bool(spec.get("versioned")), (
            f"{name}: versioned is {bool(spec.get('versioned'))} in catalog.yml")


@pytest.mark.parametrize("name", PIPELINES)
def test_the_pipelines_page_lists_each_node_with_its_inputs_and_outputs(name):
    pipeline = importlib.import_module(f"kedro_torch.pipelines.{name}").create_pipeline()
    actual = {node.name: (node.inputs, node.outputs) for node in pipeline.nodes}
    listed = {CODE.match(row[0]).group(1): (CODE.findall(row[1]), CODE.findall(row[2]))
              for row in _rows("reference/pipelines.md", name)}
    assert set(listed) == set(actual), (
        f"pipeline {name}: nodes {sorted(actual)}, docs/reference/pipelines.md lists "
        f"{sorted(listed)}")
    for node, (inputs, outputs) in actual.items():
        assert sorted(listed[node][0]) == sorted(inputs), f"{name}.{node} inputs: {inputs}"
        assert sorted(listed[node][1]) == sorted(outputs), f"{name}.{node} outputs: {outputs}"
