"""``airfoil estimate``: the unit registry, the table, and errors for bad input."""

import json

import pytest
from amaranth.lib import wiring

from airfoil.cli import main
from airfoil.cli.cmd_estimate import _silence, discover
from airfoil.config import load_config


def test_registry_finds_the_dsp_units():
    units = discover(load_config("test"))
    for name in ("dsp_dot2_int4", "dsp_pe_int4", "dsp_pe_int8", "sparse_chain_int4",
                 "sparse_chain_int8"):
        assert name in units
        assert isinstance(units[name], wiring.Component)
    assert units["sparse_chain_int4"].lanes == 8
    assert units["sparse_chain_int4"].macs_per_cycle == 8
    _silence(units.values())


def test_estimate_one_unit(tmp_path, capsys):
    out = tmp_path / "est.json"
    rc = main(["estimate", "--config", "test", "--family", "xcup", "--only", "dsp_dot2_int4",
               "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["unit"], r["family"]) for r in rows] == [("dsp_dot2_int4", "xcup")]
    assert rows[0]["dsp"] == 1 and rows[0]["macs_per_dsp"] == 2.0
    assert rows[0]["macs_per_klut"] == pytest.approx(2000 / rows[0]["lut"])  # same numbers
    text = capsys.readouterr().out
    assert "dsp_dot2_int4" in text and "MAC/cycle/DSP" in text


@pytest.mark.slow
def test_estimate_sparse_chain_both_families(tmp_path):
    out = tmp_path / "est.json"
    rc = main(["estimate", "--config", "test", "--only", "sparse_chain_int4",
               "--json", str(out)])
    assert rc == 0
    rows = {r["family"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["xcup"]["dsp"] == 4          # 8 INT4 lanes, two per DSP48E2
    assert rows["xcup"]["macs_per_dsp"] == 2.0
    assert rows["xc7"]["dsp"] >= 4


def test_estimate_bad_input(tmp_path, capsys):
    assert main(["estimate", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["estimate", "--config", "test", "--only", "no_such_unit"]) == 2
    err = capsys.readouterr().err
    assert "unknown unit 'no_such_unit'" in err and "sparse_chain_int4" in err
