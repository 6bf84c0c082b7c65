"""The Alveo package of a config: the Vitis RTL kernel and the files that build it.

:func:`write_package` writes into one folder:

* ``airfoil_kernel_core.v`` (the core behind XRT's control port,
  :class:`hdl.core.xrt_control.XrtControl`), its metadata ``.json`` and the buffer RAM;
* ``airfoil_kernel.v``: the kernel top with Vitis's port names (``ap_clk``, ``ap_rst_n``,
  ``s_axi_control_*``, ``m_axi_instr_*``, ``m_axi_gmem<c>_*``, ``interrupt``);
* ``kernel.xml``: ports, arguments and offsets, from :mod:`airfoil.kernel` (the table the
  adapter builds its registers from) and the metadata's port widths;
* ``package_xo.tcl``: Vivado's IP packager and ``package_xo`` make ``airfoil_kernel.xo``;
* ``connectivity.cfg``: for ``v++ --link``, each ``m_axi_gmem<c>`` on ``HBM[c]`` and the
  kernel clock;
* ``synth.tcl`` and ``airfoil_kernel.xdc``: a Vivado non-project flow of the kernel on its
  own (read, synthesis out of context, opt/place/route, utilisation and timing reports),
  with the kernel clock of the config's ``clock_mhz``.

Nothing here runs Vivado or v++; the Tcl is checked for syntax by ``tclsh`` in the tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

from airfoil import kernel as kmap
from airfoil.config import AccelConfig
from airfoil.errors import AirfoilError

__all__ = ["KERNEL", "CORE_TOP", "HBM_CHANNELS", "VENDOR", "U280_PART", "write_package", "kernel_ports",
           "kernel_xml", "top_verilog", "connectivity_cfg"]

KERNEL = kmap.KERNEL_NAME
#: The adapter's module, instantiated by the kernel top.
CORE_TOP = f"{KERNEL}_core"
#: HBM pseudo-channels of the U280 (``HBM[0]`` .. ``HBM[31]``).
HBM_CHANNELS = 32
VENDOR = "airfoil.dev"
#: The card's part, for a config that names none (``device.part``).
U280_PART = "xcu280-fsvh2892-2L-e"
_VLNV = f"{VENDOR}:kernel:{KERNEL}:1.0"


def _outer_name(inner: str) -> str:
    """The kernel top's name of an adapter port (``data3__araddr`` -> ``m_axi_gmem3_ARADDR``)."""
    if inner == "interrupt":
        return inner
    bus, sig = inner.split("__")
    if bus == "s_axi_control":
        outer = bus
    elif bus == "instr":
        outer = kmap.instr_port()
    elif bus.startswith("data") and bus[4:].isdigit():
        outer = kmap.data_port(int(bus[4:]))
    else:
        raise AirfoilError(f"{CORE_TOP}: no kernel port for {inner!r}")
    return f"{outer}_{sig.upper()}"


def kernel_ports(meta: dict) -> list[dict]:
    """The kernel top's ports: ``name``, ``dir``, ``width`` and ``inner`` (the adapter's
    port; ``None`` for the clock and reset)."""
    ports = [{"name": "ap_clk", "dir": "in", "width": 1, "inner": None},
             {"name": "ap_rst_n", "dir": "in", "width": 1, "inner": None}]
    for p in meta["ports"]:
        ports.append({"name": _outer_name(p["name"]), "dir": p["dir"], "width": p["width"],
                      "inner": p["name"]})
    return ports


def _interfaces(meta: dict) -> dict:
    """AXI interface name -> data width, ``s_axi_control`` first."""
    widths = {}
    for p in kernel_ports(meta):
        if p["name"].endswith("_RDATA"):
            widths[p["name"][:-len("_RDATA")]] = p["width"]
    return dict(sorted(widths.items(), key=lambda kv: kv[0] != "s_axi_control"))


def _direction(port: dict) -> str:
    return "input " if port["dir"] == "in" else "output"


def _range(port: dict) -> str:
    return f"[{port['width'] - 1}:0] " if port["width"] > 1 else ""


def top_verilog(meta: dict) -> str:
    """The kernel top: Vitis's port names around the adapter (active-low reset)."""
    ports = kernel_ports(meta)
    decl = ",\n".join(f"    {_direction(p)} wire {_range(p)}{p['name']}" for p in ports)
    conns = ",\n".join(f"        .{p['inner']}({p['name']})" for p in ports if p["inner"])
    return (f"// The Vitis RTL kernel {KERNEL} (written by fpga/alveo.py).\n"
            f"module {KERNEL} (\n{decl}\n);\n"
            f"    {CORE_TOP} core (\n        .clk(ap_clk),\n        .rst(~ap_rst_n),\n"
            f"{conns}\n    );\nendmodule\n")


def kernel_xml(meta: dict, channels: int) -> str:
    """``kernel.xml``: the kernel's ports and arguments (:func:`airfoil.kernel.kernel_args`)."""
    span = 1 << kmap.CONTROL_ADDR_BITS
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<root versionMajor="1" versionMinor="6">',
             f'  <kernel name="{KERNEL}" language="ip_c" vlnv="{_VLNV}" attributes="" '
             'preferredWorkGroupSizeMultiple="0" workGroupSize="1" interrupt="true" '
             'hwControlProtocol="ap_ctrl_hs">',
             "    <ports>"]
    for name, width in _interfaces(meta).items():
        if name == "s_axi_control":
            lines.append(f'      <port name="{name}" mode="slave" range="{span:#x}" '
                         f'dataWidth="{width}" portType="addressable" base="0x0"/>')
        else:
            lines.append(f'      <port name="{name}" mode="master" '
                         f'range="0xFFFFFFFFFFFFFFFF" dataWidth="{width}" '
                         f'portType="addressable" base="0x0"/>')
    lines += ["    </ports>", "    <args>"]
    for i, a in enumerate(kmap.kernel_args(channels)):
        port = a.port or "s_axi_control"
        kind = "void*" if a.is_pointer else "uint"
        lines.append(f'      <arg name={quoteattr(a.name)} addressQualifier='
                     f'"{1 if a.is_pointer else 0}" id="{i}" port="{port}" '
                     f'size="{a.size:#x}" offset="{a.offset:#x}" type="{kind}" '
                     f'hostOffset="0x0" hostSize="{a.size:#x}"/>')
    lines += ["    </args>", "  </kernel>", "</root>", ""]
    return "\n".join(lines)


def connectivity_cfg(config: AccelConfig) -> str:
    """The ``v++ --link`` configuration: one kernel, each data port on its HBM
    pseudo-channel, the program on ``HBM[0]``, the kernel clock."""
    nch = config.memory.channels
    inst = f"{KERNEL}_1"
    lines = [f"# v++ --link --config connectivity.cfg (config {config.name}, written by "
             "fpga/alveo.py)", "[connectivity]", f"nk={KERNEL}:1:{inst}",
             f"sp={inst}.{kmap.instr_port()}:HBM[0]"]
    lines += [f"sp={inst}.{kmap.data_port(c)}:HBM[{c}]" for c in range(nch)]
    lines += ["", "[clock]", f"freqHz={round(config.clock_mhz * 1e6)}:{inst}.ap_clk", ""]
    return "\n".join(lines)


def _tcl_list(paths) -> str:
    return "[list " + " ".join("{" + str(p) + "}" for p in paths) + "]"


def package_xo_tcl(meta: dict, sources: list[str], channels: int) -> str:
    """Vivado batch script: package the kernel's Verilog as an IP with its register map and
    bus interfaces, then ``package_xo`` it with ``kernel.xml``."""
    regs = [("CTRL", kmap.AP_CTRL, 4, None), ("GIER", kmap.GIE, 4, None),
            ("IP_IER", kmap.IER, 4, None), ("IP_ISR", kmap.ISR, 4, None)]
    regs += [(a.name, a.offset, a.size, a.port) for a in kmap.kernel_args(channels)]
    lines = [f"# vivado -mode batch -source package_xo.tcl: {KERNEL}.xo (written by "
             "fpga/alveo.py)",
             "set here [file dirname [file normalize [info script]]]",
             "cd $here",
             "create_project -force kernel_pack ./kernel_pack",
             f"add_files -norecurse {_tcl_list(sources)}",
             f"set_property top {KERNEL} [current_fileset]",
             "update_compile_order -fileset sources_1",
             f"ipx::package_project -root_dir ./ip -vendor {VENDOR} -library kernel "
             "-taxonomy /KernelIP -import_files -set_current false",
             "ipx::unload_core ./ip/component.xml",
             "ipx::edit_ip_in_project -upgrade true -name tmp_edit_project "
             "-directory ./tmp_edit_project ./ip/component.xml",
             "set core [ipx::current_core]",
             "set_property sdx_kernel true $core",
             "set_property sdx_kernel_type rtl $core",
             "set_property ipi_drc {ignore_freq_hz true} $core",
             "ipx::infer_bus_interfaces xilinx.com:interface:aximm_rtl:1.0 $core"]
    for name in _interfaces(meta):
        lines.append(f"ipx::associate_bus_interfaces -busif {name} -clock ap_clk $core")
    lines += ["ipx::associate_bus_interfaces -clock ap_clk -reset ap_rst_n $core",
              "set mem_map [ipx::add_memory_map -quiet s_axi_control $core]",
              "set block [ipx::add_address_block -quiet reg0 $mem_map]",
              f"set_property range {1 << kmap.CONTROL_ADDR_BITS:#x} $block"]
    for name, off, size, port in regs:
        lines += [f"set reg [ipx::add_register -quiet {name} $block]",
                  f"set_property address_offset {off:#05x} $reg",
                  f"set_property size {8 * size} $reg"]
        if port:
            lines += ["set param [ipx::add_register_parameter -quiet ASSOCIATED_BUSIF $reg]",
                      f"set_property value {port} $param"]
    lines += ["set_property slave_memory_map_ref s_axi_control "
              "[ipx::get_bus_interfaces -of_objects $core s_axi_control]",
              "ipx::create_xgui_files $core",
              "ipx::update_checksums $core",
              "ipx::check_integrity -kernel $core",
              "ipx::save_core $core",
              "close_project -delete",
              f"package_xo -force -xo_path ./{KERNEL}.xo -kernel_name {KERNEL} "
              "-ip_directory ./ip -kernel_xml ./kernel.xml", ""]
    return "\n".join(lines)


def synth_tcl(sources: list[str], part: str) -> str:
    """Vivado non-project flow of the kernel on its own: synthesis out of context,
    opt/place/route, utilisation and timing reports."""
    return "\n".join([
        f"# vivado -mode batch -source synth.tcl: {KERNEL} on {part}, non-project flow "
        "(written by fpga/alveo.py)",
        "set here [file dirname [file normalize [info script]]]",
        "cd $here",
        "file mkdir reports",
        f"read_verilog {_tcl_list(sources)}",
        f"read_xdc {KERNEL}.xdc",
        f"synth_design -top {KERNEL} -part {part} -mode out_of_context",
        "report_utilization -file reports/synth_utilization.rpt",
        "opt_design",
        "place_design",
        "route_design",
        "report_utilization -file reports/utilization.rpt",
        "report_timing_summary -max_paths 10 -file reports/timing.rpt",
        "write_checkpoint -force routed.dcp", ""])


def xdc(config: AccelConfig) -> str:
    """The kernel clock constraint of the config's ``clock_mhz``."""
    period = 1000.0 / config.clock_mhz
    return (f"# {KERNEL} at {config.clock_mhz} MHz (config {config.name})\n"
            f"create_clock -period {period:.3f} -name ap_clk [get_ports ap_clk]\n")


def write_package(config: AccelConfig, out_dir) -> dict:
    """Write the Alveo package of ``config`` into ``out_dir``; return the paths by key
    (``top``, ``core``, ``ram``, ``meta``, ``kernel_xml``, ``package_xo``,
    ``connectivity``, ``synth``, ``xdc``)."""
    from hdl.build import write_verilog
    from hdl.core.ram import RAM_VERILOG
    from hdl.core.xrt_control import XrtControl

    nch = config.memory.channels
    if nch > HBM_CHANNELS:
        raise AirfoilError(f"config {config.name!r} has {nch} memory channels; the U280 "
                           f"has {HBM_CHANNELS} HBM pseudo-channels")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    core_v, meta_path = write_verilog(XrtControl(config), CORE_TOP, out,
                                      params={"config": config.name,
                                              "config_hash": config.config_hash,
                                              "channels": nch})
    meta = json.loads(meta_path.read_text())
    paths = {"core": core_v, "meta": meta_path, "ram": out / "airfoil_ram.v",
             "top": out / f"{KERNEL}.v", "kernel_xml": out / "kernel.xml",
             "package_xo": out / "package_xo.tcl", "connectivity": out / "connectivity.cfg",
             "synth": out / "synth.tcl", "xdc": out / f"{KERNEL}.xdc"}
    sources = [paths["top"].name, core_v.name, paths["ram"].name]
    texts = {"ram": RAM_VERILOG, "top": top_verilog(meta),
             "kernel_xml": kernel_xml(meta, nch),
             "package_xo": package_xo_tcl(meta, sources, nch),
             "connectivity": connectivity_cfg(config),
             "synth": synth_tcl(sources, config.device.part if config.device else U280_PART), "xdc": xdc(config)}
    for key, text in texts.items():
        paths[key].write_text(text)
    return paths
