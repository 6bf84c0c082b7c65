"""``airfoil noc``: show the network a configuration maps to, and its resource estimate."""

from __future__ import annotations

from ..config import load_config
from ..noc_map import TOPOLOGIES, plan_for_config
from .argtypes import int_in


def register(sub):
    p = sub.add_parser("noc", help="show the NoC a config maps to (and estimate its cost)")
    p.add_argument("--config", default="u280", help="built-in config name or YAML path")
    p.add_argument("--topology", default="mesh", choices=TOPOLOGIES)
    p.add_argument("--depth", type=int_in(1, 1024), default=4,
                   help="router input buffer depth (flits)")
    p.add_argument("--estimate", action="store_true",
                   help="synthesize one router with Yosys (xcup) and scale by router count")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = load_config(args.config)
    plan = plan_for_config(cfg, topology=args.topology, depth=args.depth)
    print(f"config {cfg.name} ({cfg.config_hash}): {plan.params()}, {plan.routers} router(s), "
          f"{plan.used_nodes} of {plan.nodes} nodes used, flit {plan.flit_bits} bits")
    print(f"  SFU / activation buffer at node {plan.sfu_node}")
    for c, chains in enumerate(plan.channel_chains):
        print(f"  channel {c:2d} at node {plan.channel_node[c]:2d} feeds chains "
              f"{', '.join(map(str, chains))}")
    if args.estimate:
        from sim.measure.noc import network_estimate
        est = network_estimate(plan)
        r = est["router"]
        print(f"one router ({est['router_kind']}): {r['lut']} LUT, {r['lutram']} LUTRAM "
              f"cells, {r['ff']} FF, {r['bram']} BRAM, {r['dsp']} DSP")
        print(f"network: {plan.routers} x router = {est['lut']} LUT, {est['lutram']} LUTRAM "
              f"cells, {est['ff']} FF")
    return 0
