"""Nodes only wire: parameters to config objects, config objects to the PyTorch layer,
results to the catalog. Anything longer belongs in the layer, where scripts reuse it."""

import ast

import pytest

from tests.conftest import PROJECT_ROOT

NODE_FILES = sorted((PROJECT_ROOT / "src" / "kedro_torch" / "pipelines").glob("*/nodes.py"))
LONGEST = 25  # lines, signature and docstring included


@pytest.mark.parametrize("path", NODE_FILES, ids=lambda path: path.parent.name)
def test_no_node_function_is_longer_than_a_screenful(path):
    functions = [node for node in ast.parse(path.read_text()).body
                 if isinstance(node, ast.FunctionDef)]
    assert functions
    too_long = {f.name: f.end_lineno - f.lineno + 1 for f in functions
                if f.end_lineno - f.lineno + 1 > LONGEST}
    assert not too_long
