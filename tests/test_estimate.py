"""``airfoil estimate``: the unit registry, the table, and errors for bad input."""

import dataclasses
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


# -- the device section of a config ------------------------------------------------------

from pathlib import Path  # noqa: E402

from airfoil.config import DeviceConfig, builtin_config_path  # noqa: E402
from airfoil.errors import ConfigError  # noqa: E402

SMALL_DEVICE = ("device:\n  part: xczu3eg-sbva484-1-e\n  dsp: 360\n  lut: 70560\n"
                "  ff: 141120\n  bram: 216\n")


def _config_with(tmp_path, extra: str, base: str = "test", name: str = "c.yaml") -> Path:
    """``base`` (without its dsp_budget: a device sets the DSP ceiling) plus ``extra``."""
    p = tmp_path / name
    text = builtin_config_path(base).read_text()
    p.write_text("".join(line for line in text.splitlines(keepends=True)
                         if not line.startswith("dsp_budget:")) + extra)
    return p


def test_device_section_loads(tmp_path):
    u = load_config("u280")
    assert u.device == DeviceConfig(part="xcu280-fsvh2892-2L-e", dsp=9024, lut=1303680,
                                    ff=2607360, bram=2016, uram=960)
    assert u.dsp_ceiling == 9024
    assert u.to_dict()["device"]["uram"] == 960
    t = load_config("test")
    assert t.device is None and t.dsp_ceiling == t.dsp_budget == 64
    assert load_config(_config_with(tmp_path, SMALL_DEVICE)).dsp_ceiling == 360
    assert load_config("u280_slice").device is None


def test_device_does_not_change_the_config_hash(tmp_path):
    c = load_config(_config_with(tmp_path, SMALL_DEVICE))
    assert c.device.uram == 0 and c.device.bram == 216
    # dsp_budget is in the hash (the file above has none), the device is not.
    assert c.config_hash == dataclasses.replace(load_config("test"), dsp_budget=0).config_hash
    assert load_config(_config_with(tmp_path, "device: null\n")).device is None


@pytest.mark.parametrize("extra, words", [
    (SMALL_DEVICE.replace("lut: 70560", "lut: -1"), "device.lut must be an integer"),
    (SMALL_DEVICE.replace("dsp: 360", "dsp: many"), "field 'device.dsp' must be int"),
    (SMALL_DEVICE.replace("bram: 216", "bram: 21.5"), "field 'device.bram' must be int"),
    (SMALL_DEVICE.replace("part: xczu3eg-sbva484-1-e", "part: 'xc zu3'"), "device.part"),
    (SMALL_DEVICE + "  brams: 3\n", "unknown field 'device.brams'"),
    (SMALL_DEVICE.replace("  bram: 216\n", ""), "missing field 'device.bram'"),
    ("device: 9024\n", "device must be a mapping"),
    (SMALL_DEVICE + "dsp_budget: 64\n", "dsp_budget (64) contradicts device.dsp (360)"),
])
def test_device_bad_values(tmp_path, extra, words):
    with pytest.raises(ConfigError) as e:
        load_config(_config_with(tmp_path, extra))
    msg = str(e.value)
    assert words in msg and "\n" not in msg


def test_bad_device_on_the_command_line(tmp_path, capsys):
    bad = _config_with(tmp_path, SMALL_DEVICE.replace("ff: 141120", "ff: 0"))
    assert main(["estimate", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("airfoil: error: ") and "device.ff" in err[0]


# -- the core estimate ----------------------------------------------------------------------

from airfoil.cli.cmd_estimate import fits_line  # noqa: E402
from hdl.estimate import (channel_config, core_estimate, core_method,  # noqa: E402
                          device_fit, scale_logic)


def test_method_rule_and_channel_configs():
    assert core_method(load_config("test")) == "whole"
    assert core_method(load_config("test_mc")) == "whole"          # 3 channels
    u = load_config("u280")
    assert core_method(u) == "scaled"                                # 32 channels
    one, two = channel_config(u, 1), channel_config(u, 2)
    assert (one.memory.channels, one.chains, one.slices) == (1, u.slice_chains, 1)
    assert (two.memory.channels, two.chains, two.slices) == (2, 2 * u.slice_chains, 2)
    mc = channel_config(load_config("test_mc"), 1)
    assert mc.memory.channel_latency == () and mc.chains == 4
    # Without the decode unit the engine does not grow with the channels.
    assert channel_config(load_config("test"), 2).chains == 4


def _stub(calls):
    logic = {1: {"dsp": 200, "lut": 10000, "lutram": 400, "ff": 20000, "bram": 1.5,
                 "uram": 0, "seconds": 5.0},
             2: {"dsp": 330, "lut": 14000, "lutram": 600, "ff": 26000, "bram": 1.0,
                 "uram": 0, "seconds": 9.0}}
    ram = {(512, 1024, 256, 2): {"dsp": 0, "lut": 10, "lutram": 0, "ff": 0, "bram": 16,
                                 "uram": 0, "seconds": 1.0},
           (512, 128, 8, 1): {"dsp": 0, "lut": 0, "lutram": 64, "ff": 2, "bram": 0.5,
                              "uram": 1, "seconds": 1.0}}

    def synth(kind, arg):
        calls.append((kind, arg if kind == "ram" else (arg.memory.channels, arg.chains)))
        if kind == "logic":
            return logic[arg.memory.channels]
        if kind == "rams":
            return {(512, 1024, 256, 2): 3, (512, 128, 8, 1): 2}
        if kind == "ram":
            return ram[arg]
        raise AssertionError(kind)
    return synth


def test_scaled_arithmetic_with_stubbed_synthesis():
    u = load_config("u280")
    calls = []
    res = core_estimate(u, method="scaled", synth=_stub(calls))
    assert calls[:3] == [("logic", (1, u.slice_chains)), ("logic", (2, 2 * u.slice_chains)),
                         ("rams", (32, u.chains))]
    assert sorted(c[1] for c in calls[3:]) == [(512, 128, 8, 1), (512, 1024, 256, 2)]
    # logic(1) + 31 x max(0, logic(2) - logic(1)), plus every RAM of the full config.
    assert res["dsp"] == 200 + 31 * 130
    assert res["lut_logic"] == 10000 + 31 * 4000 + 3 * 10
    assert res["lutram"] == 400 + 31 * 200 + 2 * 64
    assert res["lut"] == res["lut_logic"] + res["lutram"]
    assert res["ff"] == 20000 + 31 * 6000 + 2 * 2
    assert res["bram"] == 1.5 + 3 * 16 + 2 * 0.5       # the BRAM drop is not extrapolated
    assert res["uram"] == 2
    assert res["method"] == "scaled" and res["channels"] == 32
    assert [p["part"] for p in res["parts"]][:2] == ["logic, 1 channel", "logic, 2 channels"]
    fit = res["fit"]
    assert fit["fits"] and fit["use"]["dsp"] == pytest.approx(res["dsp"] / 9024)
    assert scale_logic({"dsp": 5}, {"dsp": 3}, 10) == {"dsp": 5}


def test_fits_line():
    dev = DeviceConfig(part="x", dsp=100, lut=1000, ff=1000, bram=10, uram=0)
    fit = device_fit({"dsp": 50, "lut": 1400, "ff": 10, "bram": 12.5, "uram": 0}, dev)
    assert not fit["fits"] and fit["worst"] == "lut"
    assert fits_line(fit) == "fits: no (LUT 140%, BRAM36 125% of the device)"
    assert fits_line(device_fit({"dsp": 100, "lut": 1000, "ff": 0, "bram": 0, "uram": 0},
                                dev)) == "fits: yes"
    assert fits_line(device_fit({"dsp": 0, "lut": 0, "ff": 0, "bram": 0, "uram": 1},
                                dev)) == "fits: no (URAM - of the device)"


def test_core_estimate_bad_input(tmp_path, capsys):
    assert main(["estimate", "--config", "test", "--method", "guess"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["airfoil: error: --method must be whole or scaled, not 'guess'"]
    # A config the core cannot be built for: refused before any synthesis, in one line.
    narrow = _config_with(tmp_path, "", name="narrow.yaml")
    narrow.write_text(narrow.read_text().replace("lanes: 8", "lanes: 4"))
    assert main(["estimate", "--config", str(narrow), "--build-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("airfoil: error: config 'test': the RTL core")


@pytest.mark.slow
def test_whole_core_estimate_of_test(tmp_path, capsys):
    """The ``test`` core synthesized whole (a few minutes), on a small part and a tiny one."""
    fits = _config_with(tmp_path, SMALL_DEVICE, name="zu3.yaml")
    out = tmp_path / "core.json"
    assert main(["estimate", "--config", str(fits), "--build-dir", str(tmp_path),
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    res = json.loads(out.read_text())["core"][0]
    assert res["method"] == "whole" and "method: whole" in text
    assert 32 <= res["dsp"] <= 400          # 4 x 8 lanes of two engines, rescalers, SFU
    assert 5000 <= res["lut"] <= 70560 and 2000 <= res["ff"] <= 141120
    assert 5 <= res["bram"] <= 216 and res["uram"] == 0
    assert res["lut"] == res["lut_logic"] + res["lutram"]
    assert text.strip().splitlines()[-1] == "fits: yes"
    # The same core on a part too small for it: the synthesis comes from the cache.
    tiny = _config_with(tmp_path, SMALL_DEVICE.replace("lut: 70560", "lut: 10000")
                        .replace("dsp: 360", "dsp: 64"), name="tiny.yaml")
    assert main(["estimate", "--config", str(tiny), "--build-dir", str(tmp_path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("fits: no (LUT ") and "% of the device)" in last
