"""Every figure a bench producer declares is defined in docs/figures.md, and vice versa.

Reads the producers' ``FIGURES`` declarations and the tables of docs/figures.md (one
section ``## `<area>` `` per producer); runs no bench.
"""

import re
import sys
from pathlib import Path

import pytest

import bench

DOC = Path(__file__).resolve().parents[1] / "docs" / "figures.md"
_SECTION = re.compile(r"^## `(\w+)`$", re.M)
_ROW = re.compile(r"^\| `([^`]+)` \| ([^|]+?) \|$", re.M)


def documented() -> dict[str, dict[str, str]]:
    """Area -> {figure name: unit} from the tables of docs/figures.md."""
    text = DOC.read_text()
    heads = list(_SECTION.finditer(text))
    out = {}
    for head, nxt in zip(heads, heads[1:] + [None]):
        body = text[head.end():nxt.start() if nxt else len(text)]
        out[head.group(1)] = {m.group(1): m.group(2) for m in _ROW.finditer(body)}
    return out


def test_every_area_has_a_section():
    assert sorted(documented()) == sorted(bench.areas())


@pytest.mark.parametrize("area", sorted(bench.areas()))
def test_declared_figures_are_the_documented_ones(area):
    declared = bench.areas()[area].FIGURES
    assert declared, f"bench/{area}.py declares no figure"
    assert declared == documented().get(area), \
        f"bench/{area}.py FIGURES and docs/figures.md section `{area}` differ"


def test_a_figure_name_is_declared_once():
    seen = {}
    for area, mod in bench.areas().items():
        for name in mod.FIGURES:
            assert name not in seen, f"{name} declared by {seen.get(name)} and {area}"
            seen[name] = area


def test_parser_sees_a_missing_definition(tmp_path, monkeypatch):
    """The check fails when a declared figure has no row (the test can fail)."""
    text = DOC.read_text().replace("| `gemv_macs_per_cycle` | MACs/cycle |\n", "")
    doc = tmp_path / "figures.md"
    doc.write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "DOC", doc)
    assert "gemv_macs_per_cycle" not in documented()["gemv"]
