"""Measurements behind the ``noc`` bench figures (see docs/figures.md)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

from airfoil.noc_map import field_slices
from airfoil.resources import package_path

__all__ = ['PAYLOAD_BITS', 'param_string', 'network_verilog', 'run_rtl', 'saturation', 'zero_load_latency', 'broadcast_vector', 'network_estimate']


#: Flit payload of the benches: the U280 memory word (fpga/boards/u280.yaml word_bits).
PAYLOAD_BITS = 256


_TB_DIR = package_path("sim.tb_noc")


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
