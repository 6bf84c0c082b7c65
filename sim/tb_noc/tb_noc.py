"""cocotb testbench: random traffic through a flat-port network (``hdl.noc.FlatNetwork``).

Parameters come as JSON in ``$NOC_PARAMS`` (see :func:`sim.tb_noc.rtl.params`): the
metadata JSON path (ports and flit fields), the traffic pattern and schedule. The result
(counters, latency, drain, errors) goes to ``$AIRFOIL_RESULT``; any scoreboard error fails
the test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb

from sim.tb_common import drive_cycle_engine
from sim.tb_noc.traffic import Schedule, TrafficEngine

_PORTS = ("inj_valid", "inj_data", "inj_ready", "ej_valid", "ej_data", "ej_ready")


@cocotb.test()
async def traffic(dut):
    """Drive the schedule; every flit delivered once, in order, intact, drained in bound."""
    p = json.loads(os.environ["NOC_PARAMS"])
    meta = json.loads(Path(p["meta"]).read_text())
    ports = {q["name"]: q for q in meta["ports"]}
    for name in _PORTS:
        assert name in ports, f"port {name} missing from {p['meta']}"
    design = meta["params"]
    nodes = design["nodes"]
    fields = {k: tuple(v) for k, v in design["fields"].items()}
    assert ports["inj_data"]["width"] == nodes * design["flit_bits"]
    engine = TrafficEngine(nodes=nodes, fields=fields, pattern=p["pattern"], seed=p["seed"],
                           packets=p.get("packets"), max_len=p.get("max_len", 4),
                           idle=p.get("idle", 0.0), stall=p.get("stall", 0.0),
                           hotspot=p.get("hotspot", 0))
    sched = Schedule(engine, cycles=p.get("cycles"), warmup=p.get("warmup", 0),
                     diameter=design["diameter"], max_cycles=p.get("max_cycles", 200000))
    await drive_cycle_engine(dut, sched.step, observe=("inj_ready", "ej_valid", "ej_data"),
                             drive=("inj_valid", "inj_data", "ej_ready"))
    res = sched.result()
    if res["errors"]:
        res["error"] = res["errors"][0]
    with open(os.environ["AIRFOIL_RESULT"], "w") as fh:
        json.dump(res, fh)
    assert not res["errors"], res["errors"][0]
