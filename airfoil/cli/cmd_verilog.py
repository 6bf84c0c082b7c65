"""``airfoil verilog``: write the core's Verilog, file list, metadata, lint waivers and
FuseSoC core file."""

from __future__ import annotations

from airfoil.config import load_config


def register(sub):
    p = sub.add_parser("verilog", help="elaborate the core to Verilog under build/<config>/")
    p.add_argument("--config", default="u280", help="built-in config name or YAML path "
                   "(default: u280)")
    p.add_argument("--build-dir", default="build", help="build folder (default: build)")
    p.add_argument("--force", action="store_true", help="elaborate even if up to date")
    p.set_defaults(func=run)


def run(args) -> int:
    from fpga.fusesoc import write_core_file

    from .backend_rtl import emit_core

    config = load_config(args.config)
    paths = emit_core(config, args.build_dir, force=args.force)
    for key in ("verilog", "ram", "filelist", "meta", "waivers"):
        print(paths[key])
    print(write_core_file(config, paths))
    return 0
