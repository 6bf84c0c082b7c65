"""NoC figures for ``airfoil bench``, measured in RTL simulation (Verilator via cocotb).

Figures (each with ``_cycles``, ``_shape`` and ``_config_hash`` evidence):

* ``noc_mesh4x4_uniform_saturation``: accepted flits per node per cycle, uniform random
  unicast traffic, every source always offering (saturation), sinks always ready,
  4x4 XY mesh; counted over a window after a warm-up.
* ``noc_xbar16_uniform_saturation``: the same on a 16-port crossbar.
* ``noc_mesh4x4_zero_load_latency_cycles``: mean cycles from the inject handshake to the
  eject handshake of single-flit packets sent one at a time between random pairs.
* ``noc_broadcast_cycles_per_vector``: cycles from the first inject handshake to the last
  eject handshake while node 0 of the 4x4 mesh broadcasts a 4096-element INT8 vector to
  all 16 nodes (one chain tile each) as one-flit multicast packets; the ideal is one flit
  per cycle, ``noc_broadcast_ideal_cycles``.

Flit payload: 256 bits, the U280 configuration's memory word (one HBM port's beat per flit,
so a channel fills one link at full rate, and 32 INT8 activations per flit).
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path

from airfoil.noc_map import field_slices

__all__ = ["figures", "network_verilog", "run_rtl", "saturation", "zero_load_latency",
           "broadcast_vector", "network_estimate", "PAYLOAD_BITS"]

#: Flit payload of the benches: the U280 memory word (fpga/boards/u280.yaml word_bits).
PAYLOAD_BITS = 256
_TB_DIR = Path(__file__).resolve().parents[2] / "sim" / "tb_noc"


def _network(topology: str, rows: int, cols: int, payload_bits: int, depth: int):
    from hdl.noc import Crossbar, Mesh
    if topology == "mesh":
        return Mesh(rows=rows, cols=cols, payload_bits=payload_bits, depth=depth)
    if topology == "crossbar":
        return Crossbar(ports=rows * cols, payload_bits=payload_bits, depth=depth)
    raise ValueError(f"topology must be mesh or crossbar, not {topology!r}")


def param_string(topology: str, rows: int, cols: int, payload_bits: int, depth: int) -> str:
    """Return the string that names a network (and, hashed, its ``_config_hash``)."""
    if topology == "crossbar":
        return f"crossbar {rows * cols}-port payload={payload_bits} depth={depth}"
    return f"{topology} {rows}x{cols} payload={payload_bits} depth={depth} routing=xy"


@functools.lru_cache(maxsize=None)
def network_verilog(topology: str, rows: int, cols: int, *, payload_bits: int = PAYLOAD_BITS,
                    depth: int = 4, out_root="build/noc") -> tuple[Path, Path]:
    """Write the flat-port Verilog and metadata of a network; return their paths.

    Elaborated once per process (the simulator build is keyed by the file's content, so
    an unchanged design is not rebuilt).
    """
    from hdl.build import write_verilog
    from hdl.noc import FlatNetwork
    name = f"noc_{topology}_{rows}x{cols}_p{payload_bits}_d{depth}"
    out = Path(out_root) / name
    net = _network(topology, rows, cols, payload_bits, depth)
    diameter = (rows - 1) + (cols - 1) if topology == "mesh" else 0
    params = {"nodes": net.nodes, "fields": field_slices(net.layout),
              "flit_bits": net.layout.size, "diameter": diameter,
              "params": param_string(topology, rows, cols, payload_bits, depth)}
    return write_verilog(FlatNetwork(net), name, out, params=params)


def run_rtl(verilog, seed: int, **traffic) -> dict:
    """Run the cocotb traffic testbench on a network's Verilog; return its result dict."""
    import json
    import os

    from sim.cocotb_runner import run_cocotb
    v, j = verilog
    params = {"meta": str(Path(j).resolve()), "seed": seed, **traffic}
    return run_cocotb(sources=[v], top=Path(v).stem, test_module="tb_noc", test_dir=_TB_DIR,
                      seed=seed, env={"NOC_PARAMS": json.dumps(params),
                                      "PYTHONPATH": os.pathsep.join(
                                          [str(_TB_DIR.parents[1]),
                                           os.environ.get("PYTHONPATH", "")])})


def saturation(topology: str, rows: int, cols: int, *, cycles: int, warmup: int,
               seed: int = 1, max_len: int = 1, payload_bits: int = PAYLOAD_BITS,
               depth: int = 4) -> dict:
    """Measure accepted flits per node per cycle with every source saturated."""
    res = run_rtl(network_verilog(topology, rows, cols, payload_bits=payload_bits,
                                  depth=depth), seed, pattern="uniform", packets=None,
                  cycles=cycles, warmup=warmup, max_len=max_len)
    nodes = rows * cols
    window = cycles - warmup
    return {"value": res["window_ejected"] / (nodes * window), "accepted": res["window_ejected"],
            "nodes": nodes, "window": window, "cycles": res["cycles"], "result": res}


def zero_load_latency(rows: int, cols: int, *, packets: int, seed: int = 1,
                      payload_bits: int = PAYLOAD_BITS, depth: int = 4) -> dict:
    """Mean inject-to-eject latency of lone single-flit packets on a mesh."""
    res = run_rtl(network_verilog("mesh", rows, cols, payload_bits=payload_bits, depth=depth),
                  seed, pattern="zero_load", packets=packets)
    return {"value": res["latency_mean"], "cycles": res["cycles"], "result": res}


def broadcast_vector(topology: str, rows: int, cols: int, *, elements: int = 4096,
                     payload_bits: int = PAYLOAD_BITS, depth: int = 4, seed: int = 1) -> dict:
    """Cycles to broadcast an INT8 vector from node 0 to every node, one-flit packets."""
    flits = math.ceil(elements * 8 / payload_bits)
    res = run_rtl(network_verilog(topology, rows, cols, payload_bits=payload_bits,
                                  depth=depth), seed, pattern="bcast_vector", packets=flits)
    span = res["last_eject"] - res["first_inject"] + 1
    return {"value": span, "flits": flits, "copies": res["ejected"], "cycles": res["cycles"],
            "result": res}


def network_estimate(plan, family: str = "xcup") -> dict:
    """Synthesize one router of a :class:`~airfoil.noc_map.NocPlan` with Yosys and scale it.

    The mesh router is the one at the SFU node (an interior node, all five ports used);
    the network's cost is router count x that router's cost (edge routers are smaller, so
    this is an upper estimate; links are wires).
    """
    from hdl.estimate import component_stats
    from hdl.noc import Router

    from airfoil.noc_map import crossbar_reach, mesh_reach
    if plan.topology == "mesh":
        reach, kind = mesh_reach(plan.rows, plan.cols, plan.sfu_node), "mesh 5-port"
    else:
        reach, kind = crossbar_reach(plan.nodes), f"crossbar {plan.nodes}-port"
    r = Router(reach=reach, nodes=plan.nodes, payload_bits=plan.payload_bits,
               depth=plan.depth)
    stats = component_stats(r, "noc_router", family)
    cells = stats.pop("cells", {})
    # input buffers map to distributed RAM (LUTRAM) cells, which stat lists apart from LUTs
    stats["lutram"] = sum(n for c, n in cells.items() if c.startswith("RAM"))
    return {"router": stats, "router_kind": kind, "routers": plan.routers,
            **{k: plan.routers * stats[k] for k in ("lut", "lutram", "ff", "bram", "dsp")}}


def _hash(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:16]


def figures(args, log) -> dict:
    """Measure the NoC figures in Verilator (about a minute of builds and runs)."""
    out = {}
    for key, topo, r, c in (("noc_mesh4x4_uniform_saturation", "mesh", 4, 4),
                            ("noc_xbar16_uniform_saturation", "crossbar", 4, 4)):
        s = saturation(topo, r, c, cycles=2500, warmup=500)
        ps = param_string(topo, r, c, PAYLOAD_BITS, 4)
        log(f"{key}: {s['value']:.3f} ({s['accepted']} flits / {s['nodes']} nodes / "
            f"{s['window']} cycles)")
        out.update({key: s["value"], f"{key}_cycles": s["window"],
                    f"{key}_accepted_flits": s["accepted"],
                    f"{key}_shape": f"{s['nodes']} nodes, 1-flit packets, uniform, window "
                                    f"{s['window']} cycles after 500 warm-up",
                    f"{key}_config_hash": _hash(ps), f"{key}_params": ps})
    z = zero_load_latency(4, 4, packets=40)
    ps = param_string("mesh", 4, 4, PAYLOAD_BITS, 4)
    key = "noc_mesh4x4_zero_load_latency_cycles"
    log(f"{key}: {z['value']:.3f}")
    out.update({key: z["value"], f"{key}_cycles": z["cycles"],
                f"{key}_shape": f"{z['result']['ejected']} lone 1-flit packets, "
                                f"uniform random pairs",
                f"{key}_config_hash": _hash(ps), f"{key}_params": ps})
    b = broadcast_vector("mesh", 4, 4)
    key = "noc_broadcast_cycles_per_vector"
    log(f"{key}: {b['value']} (ideal {b['flits']})")
    out.update({key: b["value"], f"{key}_cycles": b["cycles"],
                "noc_broadcast_ideal_cycles": b["flits"],
                f"{key}_shape": f"4096 x INT8 -> 16 nodes of a 4x4 mesh, {b['flits']} one-flit "
                                f"multicast packets, {b['copies']} copies delivered",
                f"{key}_config_hash": _hash(ps), f"{key}_params": ps})
    from airfoil.config import load_config
    from airfoil.noc_map import NocPlan, plan_for_config
    for key, plan in (
            ("noc_router_mesh4x4", NocPlan("mesh", 4, 4, PAYLOAD_BITS, 4, (), (), (), 5)),
            ("noc_router_xbar16", NocPlan("crossbar", 1, 16, PAYLOAD_BITS, 4, (), (), (), 0)),
            ("noc_u280", plan_for_config(load_config("u280")))):
        est = network_estimate(plan)
        log(f"{key}: router {est['router']}, x{est['routers']}")
        out.update({f"{key}_router_lut": est["router"]["lut"],
                    f"{key}_router_ff": est["router"]["ff"],
                    f"{key}_router_lutram": est["router"]["lutram"],
                    f"{key}_lutram": est["lutram"],
                    f"{key}_routers": est["routers"], f"{key}_lut": est["lut"],
                    f"{key}_ff": est["ff"], f"{key}_params": plan.params()})
    return out
