"""``airfoil explore``: the space file, the Pareto front, and sweeps on Dask clusters
(a local one, one named by its scheduler address, and one that loses a worker mid-sweep),
with the cache giving what a fresh run gives."""

import csv
import os
import signal

import pytest
import yaml

from airfoil.cli import main
from airfoil.config import DeviceConfig
from airfoil.errors import ConfigError
from airfoil.models import BUILTIN_MODELS
from explore.front import pareto_front
from explore.point import evaluate
from explore.space import parse_space
from explore.sweep import jobs_of, sweep

pytestmark = pytest.mark.xdist_group("dask")

MODEL = str(BUILTIN_MODELS["tiny-llama"])
SMALL = {"base": "sim_llm", "model": "tiny-llama", "resources": "none", "context": 8,
         "prompt": 4, "vary": {"chains": [4, 8], "lanes": [8, 16]}}
#: A space with an invalid point (lanes 12 does not divide the 32..128 group sizes).
WITH_INVALID = {**SMALL, "vary": {"lanes": [8, 12], "memory.channels": [1, 2],
                                  "chains": [4]}}


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "cached"} for r in rows]


def test_space_points_and_overrides():
    space = parse_space({**SMALL, "vary": {"chains": {"from": 4, "to": 12, "step": 4},
                                           "lanes": {"from": 8, "to": 32, "times": 2},
                                           "memory.channels": [1]},
                         "set": {"buffers.act_bytes": 131072}})
    pts = space.points()
    assert len(pts) == 9 and pts[0] == {"buffers.act_bytes": 131072, "chains": 4, "lanes": 8,
                                        "memory.channels": 1}
    assert [p["lanes"] for p in pts[:3]] == [8, 16, 32]
    cfg = space.config_of(pts[-1])
    assert (cfg["chains"], cfg["lanes"], cfg["buffers"]["act_bytes"]) == (12, 32, 131072)
    assert cfg["name"].startswith("sim_llm-") and cfg["name"] != space.config_of(pts[0])["name"]


@pytest.mark.parametrize("bad,msg", [
    ({"vary": {"chain": [4]}}, r"'chain' is not a config field \(accepted: .*chains"),
    ({"vary": {"memory.chanels": [1]}}, r"'memory.chanels' is not a config field"),
    ({"vary": {"lanes": {"from": 8, "to": 4, "step": 1}}}, r"need from <= to"),
    ({"vary": {"lanes": {"from": 8, "to": 16}}}, r"must be a list of values or a range"),
    ({"vary": {"lanes": []}}, r"lists no values"),
    ({"resources": "vivado"}, r"resources must be one of yosys, none"),
    ({"device": "test"}, r"config 'test' has no device section"),
    ({"colour": 1}, r"unknown key 'colour'"),
    ({"context": 0}, r"context must be a positive integer"),
])
def test_space_errors(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_space({**SMALL, **bad})
    with pytest.raises(ConfigError, match="base .* is missing"):
        parse_space({"vary": {"chains": [4]}})


def test_pareto_front_and_device_fit():
    dev = DeviceConfig(part="toy", dsp=100, lut=1000, ff=10_000, bram=10)
    res = {"ff": 1, "bram": 0, "uram": 0}
    rows = [
        {"valid": True, "tok_s_projected": 10, "dsp": 10, "lut": 100, **res},   # front
        {"valid": True, "tok_s_projected": 20, "dsp": 20, "lut": 100, **res},   # front
        {"valid": True, "tok_s_projected": 15, "dsp": 30, "lut": 200, **res},   # dominated
        {"valid": True, "tok_s_projected": 90, "dsp": 200, "lut": 100, **res},  # too big
        {"valid": True, "tok_s_projected": 20, "dsp": 20, "lut": 90, **res},    # front
        {"valid": False, "reason": "x"},
    ]
    assert pareto_front(rows, dev) == [True, False, False, False, True, False]
    assert pareto_front(rows) == [True, False, False, True, True, False]
    no_res = [{"valid": True, "tok_s_projected": t, "peak_macs_per_cycle": m}
              for t, m in ((1, 32), (2, 32), (3, 64))]
    assert pareto_front(no_res) == [False, True, True]


def test_local_sweep_cache_and_cli(tmp_path, capsys):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(WITH_INVALID))
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["explore", str(space_file), "-o", str(out), "--cache-dir", str(cache)]
    assert main(argv) == 0
    first = (out / "points.csv").read_text()
    rows = list(csv.DictReader(first.splitlines()))
    assert len(rows) == 4 and (out / "front.png").stat().st_size > 1000
    bad = [r for r in rows if r["lanes"] == "12"]
    assert all(r["valid"] == "False" and "config:" in r["reason"] for r in bad)
    good = [r for r in rows if r["valid"] == "True"]
    assert len(good) == 2 and all(float(r["tok_s_projected"]) > 0 for r in good)
    assert "4 points (2 valid, 0 from the cache)" in capsys.readouterr().out
    # A repeated sweep evaluates nothing and writes the same results.
    assert main(argv) == 0
    assert "4 points (2 valid, 4 from the cache)" in capsys.readouterr().out
    again = list(csv.DictReader((out / "points.csv").read_text().splitlines()))
    assert [{k: v for k, v in r.items() if k != "cached"} for r in again] == \
        [{k: v for k, v in r.items() if k != "cached"} for r in rows]
    # ... and the cache holds what a fresh evaluation gives.
    space = parse_space(WITH_INVALID)
    ov, job = jobs_of(space, MODEL)[0]
    fresh = evaluate(job)
    assert float(rows[0]["tok_s_projected"]) == pytest.approx(fresh["tok_s_projected"],
                                                              rel=1e-12)
    assert int(rows[0]["decode_cycles"]) == fresh["decode_cycles"]


def test_cli_errors(tmp_path, capsys):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump({**SMALL, "vary": {"lane": [8]}}))
    assert main(["explore", str(space_file), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("airfoil: error: ")
    assert "'lane' is not a config field" in err[0] and not (tmp_path / "o").exists()
    space_file.write_text(yaml.safe_dump({**SMALL, "model": str(tmp_path / "none")}))
    assert main(["explore", str(space_file), "-o", str(tmp_path / "o")]) == 2
    assert "model" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_scheduler_address_and_killed_worker(tmp_path):
    """A sweep against a running scheduler; one worker is killed after the first result,
    with points still queued on it: every point still completes, each as a fresh sweep
    on a local cluster computes it."""
    from dask.distributed import LocalCluster

    space = parse_space({**SMALL, "vary": {"chains": [4, 8], "lanes": [8, 16],
                                           "clock_mhz": [200, 250]}})
    killed = []

    def kill_one(client, row):
        if not killed:
            pids = client.run(os.getpid)
            addr = sorted(pids)[0]
            os.kill(pids[addr], signal.SIGKILL)
            killed.append(addr)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        rows = sweep(space, MODEL, tmp_path / "a", scheduler=cluster.scheduler_address,
                     on_result=kill_one)
    assert killed and len(rows) == 8 and all(r["valid"] for r in rows)
    fresh = sweep(space, MODEL, tmp_path / "b")
    assert _strip(rows) == _strip(fresh)


def test_unreachable_scheduler(tmp_path):
    from airfoil.errors import AirfoilError

    space = parse_space(SMALL)
    with pytest.raises(AirfoilError, match="cannot reach the Dask scheduler"):
        sweep(space, MODEL, tmp_path, scheduler="tcp://127.0.0.1:9")
