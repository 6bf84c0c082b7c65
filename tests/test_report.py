"""airfoil report: traced decode steps cut into sections, the page and its data."""

import json
from pathlib import Path

import numpy as np
import pytest

from clitools import cli_fails, cli_ok
from test_llm_cli import _random_hf, _recipe

from airfoil.config import load_config
from airfoil.folder import load_folder
from airfoil.isa import Unit
from sim.isa_sim import IsaLLM, TraceEvent
from sim.profile import (bandwidth_timeline, peak_bytes_per_cycle, profile_decode,
                         sfu_stall_cycles)

CONFIG = load_config("sim_llm")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same random 1-layer model compiled at INT4 and at INT8."""
    base = tmp_path_factory.mktemp("report")
    model = _random_hf(base / "m")
    out = {}
    for fmt in ("int4", "int8"):
        recipe = _recipe(base / f"{fmt}.yaml", [{"match": "*", "format": fmt, "group": 32}])
        out[fmt] = str(base / fmt)
        from airfoil.cli import main
        assert main(["compile", str(model), "--recipe", recipe, "--config", "sim_llm",
                     "-o", out[fmt], "--max-prompt", "4"]) == 0
    return out


def test_profile_matches_the_untraced_run(folders):
    folder = load_folder(folders["int4"], CONFIG)
    prof = profile_decode(folder, CONFIG, 20)
    llm = IsaLLM(folder, CONFIG)
    llm.position = 20
    llm.decode(0)
    plain = llm.runs[-1]
    assert prof.cycles == plain["cycles"] and prof.bytes_read == plain["bytes_read"]
    costs = prof.section_costs()
    assert [c.name for c in costs] == ["embed", "layer 0", "head"]
    for unit in ("LOAD", "MATRIX", "SFU", "STORE"):
        assert sum(c.busy[unit] for c in costs) == plain[f"busy_{unit.lower()}"]
    # The LDs' bytes; the rest are the three SYS LDREG words of the parameter block.
    assert sum(c.bytes_read for c in costs) == plain["bytes_read"] - 3 * 4
    assert prof.macs >= plain["macs"] > 0      # plus attention's products
    # The bandwidth timeline keeps every byte read.
    t, u = bandwidth_timeline(prof, CONFIG, bins=37)
    span = np.diff(np.append(t, prof.cycles)) * peak_bytes_per_cycle(CONFIG)
    assert float((u * span).sum()) == pytest.approx(prof.bytes_read - 12, rel=1e-9)
    assert 0 < u.max() <= 1.0 + 1e-9


def test_report_page(folders, tmp_path, capsys):
    out = tmp_path / "rep"
    text = cli_ok(capsys, ["report", folders["int4"], folders["int8"], "--config", "sim_llm",
                           "--position", "10", "--points", "3", "-o", str(out)])
    assert "wrote" in text and "of the roofline" in text
    data = json.loads((out / "report.json").read_text())
    f4, f8 = data["folders"]
    assert f4["position"] == f8["position"] == 10
    assert f8["bytes_read"] > f4["bytes_read"]
    assert f8["weight_bits_per_weight"] > f4["weight_bits_per_weight"] > 4
    for f in (f4, f8):
        assert 0 < f["roofline_fraction"] <= 1
        assert [p for p, _ in f["context_sweep"]][0] == 0
    page = (out / "index.html").read_text()
    for png in ("roofline.png", "context.png", "units_0.png", "bandwidth_1.png"):
        assert png in page and (out / png).read_bytes()[:4] == b"\x89PNG"
    # Written again over its own report; a foreign folder is not replaced.
    cli_ok(capsys, ["report", folders["int4"], "--points", "2", "-o", str(out)])
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    cli_fails(capsys, ["report", folders["int4"], "-o", str(foreign)], "refusing to replace")
    assert (foreign / "notes.txt").read_text() == "keep"


def test_report_errors(folders, tmp_path, capsys):
    cli_fails(capsys, ["report", folders["int4"], "--points", "1", "-o", str(tmp_path / "a")],
              "--points must be at least 2")
    cli_fails(capsys, ["report", folders["int4"], "--position", "999",
                       "-o", str(tmp_path / "b")], "outside 0..")
    assert not (tmp_path / "b").exists()


def test_size_only_folder_reports_as_its_full_twin(tmp_path, capsys):
    """A --size-only folder is timed without its image: the same sections, cycles and
    bytes as the folder compiled with weights."""
    from test_synthetic import _write_shape
    spec = _write_shape(tmp_path)
    common = ["compile", "--synthetic", spec, "--config", "sim_llm", "--seed", "5"]
    cli_ok(capsys, common + ["-o", str(tmp_path / "full")])
    cli_ok(capsys, common + ["-o", str(tmp_path / "size"), "--size-only"])
    full = load_folder(tmp_path / "full", CONFIG)
    size = load_folder(tmp_path / "size", CONFIG, size_only_ok=True)
    assert size.image is None
    a, b = profile_decode(full, CONFIG, 40), profile_decode(size, CONFIG, 40)
    assert (a.cycles, a.bytes_read, a.sections) == (b.cycles, b.bytes_read, b.sections)
    assert [(c.name, c.busy, c.bytes_read) for c in a.section_costs()] == \
        [(c.name, c.busy, c.bytes_read) for c in b.section_costs()]
    cli_ok(capsys, ["report", str(tmp_path / "size"), "--points", "2",
                    "-o", str(tmp_path / "rep")])
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["folders"][0]["cycles"] > 0


def _ev(unit, start, end):
    return TraceEvent(0, unit, start, end, end, 0, 0)


def test_sfu_stall_cycles_weighs_the_idle_channels():
    """SFU busy 0..100; one of two channels reads 50..150, the other 90..95: cycles 0..50
    count 1, 50..90 and 95..100 a half, 90..95 nothing; MATRIX and the LOADs alone count
    nothing."""
    trace = [_ev(Unit.SFU, 0, 100), _ev(Unit.LOAD, 50, 150), _ev(Unit.LOAD, 90, 95),
             _ev(Unit.MATRIX, 100, 400), _ev(Unit.LOAD, 200, 300)]
    assert sfu_stall_cycles(trace, 2) == 50 + 0.5 * 45
    assert sfu_stall_cycles(trace, 1) == 50
    assert sfu_stall_cycles(trace[2:], 2) == 0
    with pytest.raises(ValueError, match="channels must be"):
        sfu_stall_cycles(trace, 0)
