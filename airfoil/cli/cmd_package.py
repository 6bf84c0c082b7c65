"""``airfoil package``: write the Alveo kernel package of a config (see :mod:`fpga.alveo`)."""

from __future__ import annotations

from airfoil.config import load_config


def register(sub):
    p = sub.add_parser("package", help="write the Vitis RTL kernel of a config (Verilog, "
                       "kernel.xml, package_xo.tcl, connectivity.cfg, Vivado flow)")
    p.add_argument("--config", default="u280", help="built-in config name or YAML path "
                   "(default: u280)")
    p.add_argument("-o", "--output", default=None,
                   help="output folder (default: build/<config>_kernel)")
    p.set_defaults(func=run)


def run(args) -> int:
    from fpga.alveo import write_package

    config = load_config(args.config)
    paths = write_package(config, args.output or f"build/{config.name}_kernel")
    for key in ("top", "core", "ram", "kernel_xml", "package_xo", "connectivity", "synth",
                "xdc"):
        print(paths[key])
    return 0
