"""The parameter reference lists every key the typed config accepts, as a run sees it.

The frozen dataclasses of ``kedro_torch.pytorch.config`` decide which keys exist and
their types, so they are the source of truth; ``conf/base/parameters_*.yml`` shows
every key with the value a run uses; ``docs/reference/parameters.md`` has one row per
key: ``| `key` | type | default | meaning |``. A key added to the config without a
row, a row left behind by a removed key, a default changed in the YAML but not on the
page, or a type changed in the dataclass, each fails here, naming the key and the row
to write.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import yaml

from kedro_torch.pytorch.checks import SECTIONS
from tests.conftest import PROJECT_ROOT

PAGE = PROJECT_ROOT / "docs" / "reference" / "parameters.md"
PARAMETER_FILES = sorted((PROJECT_ROOT / "conf" / "base").glob("parameters_*.yml"))
KEY_CELL = re.compile(r"^`([A-Za-z_]\w*(?:\.\w+)+)`$")
CELL_SEPARATOR = re.compile(r"(?<!\\)\|")
CODE_SPAN = re.compile(r"`([^`]*)`")
UNREADABLE = object()


def type_name(hint: Any) -> str:
    """A field's type as the reference writes it: ``int or null``, ``one of: a, b``,
    ``list of float``, ``mapping``, ``list of {name, kwargs}``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [arg for arg in args if arg is not type(None)]
        nullable = ["null"] if len(parts) < len(args) else []
        if all(typing.get_origin(part) is Literal for part in parts):
            values = [render(value) for part in parts for value in typing.get_args(part)]
            return "one of: " + ", ".join(values + nullable)
        names = [render(typing.get_args(part)[0])
                 if typing.get_origin(part) is Literal and len(typing.get_args(part)) == 1
                 else type_name(part) for part in parts]
        return " or ".join(names + nullable)
    if origin is Literal:
        return "one of: " + ", ".join(render(value) for value in args)
    if origin is list:
        (item,) = args
        if dataclasses.is_dataclass(item):
            return "list of {" + ", ".join(f.name for f in dataclasses.fields(item)) + "}"
        return f"list of {type_name(item)}"
    if origin is dict:
        return "mapping"
    if hint is Any:
        return "any"
    return hint.__name__


def render(value: Any) -> str:
    """A YAML value in YAML's flow style, as it would be written in the YAML file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}[str(value)]
        text = repr(value)
        if "e" not in text:
            return text
        # YAML 1.1 reads 1e-05 as a string: it wants a dot and a signed exponent.
        mantissa, exponent = text.split("e")
        mantissa += "" if "." in mantissa else ".0"
        return f"{mantissa}e{int(exponent):+d}"
    if isinstance(value, list):
        return "[" + ", ".join(render(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{render(k)}: {render(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if text and yaml.safe_load(text) == text and not set(text) & set(",[]{}:#'\"|"):
        return text
    return "'" + text.replace("'", "''") + "'"


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down: 600 is not 600.0, nor 1 true."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def typed_keys() -> dict[str, Any]:
    """Every leaf key of every section, with its type hint: a field whose type is a
    dataclass is walked into; anything else (kwargs, lists, ``tuning.space``) is a key."""
    keys: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if isinstance(hint, type) and dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}{f.name}.")
            else:
                keys[f"{prefix}{f.name}"] = hint

    for section, cls in SECTIONS.items():
        walk(cls, f"{section}.")
    return keys


def yaml_sections() -> dict[str, tuple[str, Any]]:
    """Each top-level section of conf/base's parameter files: (file name, its value)."""
    sections: dict[str, tuple[str, Any]] = {}
    for path in PARAMETER_FILES:
        for section, value in (yaml.safe_load(path.read_text()) or {}).items():
            assert section not in sections, (
                f"section {section} is in both {sections[section][0]} and {path.name}")
            sections[section] = (path.name, value)
    return sections


def yaml_keys() -> dict[str, tuple[str, Any]]:
    """Every leaf key of conf/base's parameter files, flattened as :func:`typed_keys`
    flattens the dataclasses: into a mapping only where the field is a dataclass, so
    a key the config does not know comes out as a key of its own."""
    keys: dict[str, tuple[str, Any]] = {}

    def walk(values: Mapping[str, Any], cls: type | None, prefix: str, file: str) -> None:
        hints = typing.get_type_hints(cls) if cls else {}
        for name, value in values.items():
            hint = hints.get(name)
            if (isinstance(hint, type) and dataclasses.is_dataclass(hint)
                    and isinstance(value, Mapping)):
                walk(value, hint, f"{prefix}{name}.", file)
            else:
                keys[f"{prefix}{name}"] = (file, value)

    for section, (file, value) in yaml_sections().items():
        if isinstance(value, Mapping):
            walk(value, SECTIONS.get(section), f"{section}.", file)
        else:
            keys[section] = (file, value)
    return keys


def page_rows() -> list[tuple[int, str, str, list[str]]]:
    """The reference's rows whose first cell is a backticked dotted key: (line, the
    section heading above it, the key, the other cells)."""
    rows, heading = [], ""
    for number, line in enumerate(PAGE.read_text().splitlines(), start=1):
        if line.startswith("## "):
            heading = line[3:].strip()
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in CELL_SEPARATOR.split(line.strip().strip("|"))]
        key = KEY_CELL.match(cells[0])
        if key:
            rows.append((number, heading, key.group(1), cells[1:]))
    return rows


def read_default(cell: str) -> Any:
    """The value a default cell writes: its code spans as YAML, one span or one per
    line (``<br>`` between them) for a long mapping; UNREADABLE for anything else."""
    spans = CODE_SPAN.findall(cell)
    if not spans or CODE_SPAN.sub("", cell).replace("<br>", "").strip():
        return UNREADABLE
    try:
        return yaml.safe_load("\n".join(spans))
    except yaml.YAMLError:
        return UNREADABLE


def expected_row(key: str) -> str:
    default = yaml_keys().get(key, (None, None))[1]
    return f"| `{key}` | {type_name(typed_keys()[key])} | `{render(default)}` | MEANING |"


def test_the_yaml_shows_every_key_of_the_typed_config():
    """conf/base is where users look up a key's value: a field it leaves out, or a key
    the dataclasses do not take (which would stop every run), is reported by name."""
    typed, shown = typed_keys(), yaml_keys()
    missing = sorted(set(typed) - set(shown))
    assert not missing, (
        "keys of the typed config that conf/base/parameters_*.yml does not show; add "
        f"each with its default: {missing}")
    unknown = {key: file for key, (file, _) in shown.items() if key not in typed}
    assert not unknown, (
        f"keys in conf/base that no field of kedro_torch.pytorch.config takes: {unknown}")
    assert set(yaml_sections()) == set(SECTIONS), (
        f"sections in conf/base {sorted(yaml_sections())}, in checks.SECTIONS {sorted(SECTIONS)}")


def test_every_key_has_exactly_one_row_and_every_row_a_key():
    typed = typed_keys()
    rows = page_rows()
    named = [key for _, _, key, _ in rows]
    missing = [key for key in typed if key not in named]
    assert not missing, (
        f"{PAGE.name} has no row for {missing}; write, under its section's table:\n"
        + "\n".join(expected_row(key) for key in missing))
    twice = sorted({key for key in named if named.count(key) > 1})
    assert not twice, f"{PAGE.name} has more than one row for {twice}: keep one"
    bogus = [f"line {number}: {key}" for number, _, key, _ in rows if key not in typed]
    assert not bogus, (
        f"{PAGE.name} has rows for keys that kedro_torch.pytorch.config does not take "
        f"(remove them, or add the field): {bogus}")
    misplaced = [f"line {number}: {key} under '## {heading}'"
                 for number, heading, key, _ in rows
                 if heading != f"`{key.split('.')[0]}`"]
    assert not misplaced, f"rows outside their section's '## `section`' heading: {misplaced}"


def test_each_row_gives_the_key_its_type_default_and_meaning():
    typed, shown = typed_keys(), yaml_keys()
    problems = []
    for number, _, key, cells in page_rows():
        if key not in typed:
            continue  # reported by the test above
        where = f"line {number}, {key}"
        if len(cells) != 3:
            problems.append(f"{where}: needs 4 cells, | key | type | default | meaning |, "
                            f"e.g. {expected_row(key)}")
            continue
        kind, default, meaning = cells
        if kind != type_name(typed[key]):
            problems.append(f"{where}: type is '{type_name(typed[key])}', the row says '{kind}'")
        if key in shown:
            value = shown[key][1]
            written = read_default(default)
            if written is UNREADABLE or not same(written, value):
                problems.append(f"{where}: default in {shown[key][0]} is {render(value)!r}; "
                                f"write `{render(value)}`, the row says {default!r}")
        if not meaning:
            problems.append(f"{where}: say what the key does in the meaning cell")
    assert not problems, "\n".join(problems)


def test_type_names_and_rendering_read_as_the_reference_writes_them():
    """The names the page must match, on the hints and values the config has."""
    assert type_name(int | None) == "int or null"
    assert type_name(list[float] | None) == "list of float or null"
    assert type_name(Literal["folder", "manifest"]) == "one of: folder, manifest"
    assert type_name(Literal["epoch", "step"] | None) == "one of: epoch, step, null"
    assert type_name(bool | Literal["auto"]) == "bool or auto"
    assert type_name(dict[str, Any]) == "mapping"
    assert type_name(typed_keys()["data.transforms.train"]) == "list of {name, kwargs}"
    assert [render(v) for v in (None, True, 3, 5.0, 1e-05, 1e20, [1, 7], {}, "a: b")] == [
        "null", "true", "3", "5.0", "1.0e-5", "1.0e+20", "[1, 7]", "{}", "'a: b'"]
    for value in (1e-05, 1e20, 0.0001, {"lr": 0.003, "name": "AdamW"}, [0.5], "auto"):
        assert same(yaml.safe_load(render(value)), value)
