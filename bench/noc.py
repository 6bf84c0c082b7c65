"""NoC figures for ``airfoil bench``, measured in RTL simulation (Verilator via cocotb).

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``noc``.
"""

from __future__ import annotations

import hashlib
from sim.measure.noc import (PAYLOAD_BITS, broadcast_vector, network_estimate, param_string,
                             saturation, zero_load_latency)


__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "noc_mesh4x4_uniform_saturation": "flits/(node x cycle)",
    "noc_xbar16_uniform_saturation": "flits/(node x cycle)",
    "noc_mesh4x4_zero_load_latency_cycles": "cycles",
    "noc_broadcast_cycles_per_vector": "cycles",
    "noc_broadcast_ideal_cycles": "cycles",
    "noc_<net>_router_lut": "LUTs",
    "noc_<net>_router_ff": "flip-flops",
    "noc_<net>_router_lutram": "LUTRAM cells",
    "noc_<net>_lut": "LUTs",
    "noc_<net>_ff": "flip-flops",
    "noc_<net>_lutram": "LUTRAM cells",
    "noc_<net>_routers": "routers",
}


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
