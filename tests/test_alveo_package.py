"""``airfoil package``: the Vitis kernel's files agree with each other, with the adapter's
register map (:mod:`airfoil.kernel`) and with the config; the Tcl parses under ``tclsh``
(Vivado's commands stubbed) and the kernel top lints under Verilator."""

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from airfoil import kernel as kmap
from airfoil.config import load_config

from clitools import cli_fails, cli_ok

pytestmark = pytest.mark.rtl(group="alveo_package")

#: Runs a Tcl script with every unknown command (Vivado's) recorded and ignored.
_TCL_STUB = """
set ::called {}
proc unknown {args} { lappend ::called [lindex $args 0]; return "" }
source [lindex $argv 0]
puts [join $::called "\\n"]
"""


@pytest.fixture(scope="module", params=["test", "test x2"])
def package(request, tmp_path_factory):
    """The package of config ``test`` (through the CLI) and of its variant with two
    memory channels."""
    out = tmp_path_factory.mktemp("pkg")
    if request.param == "test":
        from airfoil.cli import main
        assert main(["package", "--config", "test", "-o", str(out)]) == 0
        return load_config("test"), out
    from fpga.alveo import write_package
    from sim.random_regression import channel_variant
    config = channel_variant("test", 2)
    write_package(config, out)
    return config, out


def _verilog_ports(text: str, module: str) -> dict:
    """Port name -> (direction, width) of ``module`` in ANSI-style Verilog."""
    body = text.split(f"module {module} (", 1)[1].split(");", 1)[0]
    ports = {}
    for m in re.finditer(r"(input|output)\s+wire\s+(?:\[(\d+):0\]\s+)?(\w+)", body):
        ports[m.group(3)] = (m.group(1), int(m.group(2) or 0) + 1)
    return ports


def test_kernel_xml_matches_the_top_and_the_register_map(package):
    config, out = package
    root = ET.parse(out / "kernel.xml").getroot()
    k = root.find("kernel")
    assert k.get("name") == kmap.KERNEL_NAME and k.get("hwControlProtocol") == "ap_ctrl_hs"
    ports = {p.get("name"): p for p in k.find("ports")}
    top = _verilog_ports((out / f"{kmap.KERNEL_NAME}.v").read_text(), kmap.KERNEL_NAME)
    nch = config.memory.channels
    want = {"s_axi_control", kmap.instr_port(), *(kmap.data_port(c) for c in range(nch))}
    assert set(ports) == want
    for name, p in ports.items():
        assert top[f"{name}_RDATA"][1] == int(p.get("dataWidth")), name
        assert (f"{name}_ARADDR" in top) and (f"{name}_RVALID" in top)
    assert top[f"{kmap.data_port(0)}_RDATA"][1] == config.memory.word_bits
    assert {"ap_clk", "ap_rst_n", "interrupt"} <= set(top)
    ctl_span = int(ports["s_axi_control"].get("range"), 16)
    args = k.find("args")
    table = kmap.kernel_args(nch)
    assert [a.get("name") for a in args] == [a.name for a in table]
    for xml_arg, arg in zip(args, table):
        assert int(xml_arg.get("offset"), 16) == arg.offset
        assert int(xml_arg.get("size"), 16) == arg.size
        assert xml_arg.get("port") == (arg.port or "s_axi_control")
        assert xml_arg.get("port") in ports
    spans = sorted((r.offset, r.offset + r.size) for r in (*table,
                                                           *kmap.status_registers(nch)))
    assert spans[0][0] == 0x10 and spans[-1][1] <= ctl_span
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "registers overlap"


def test_connectivity_puts_each_port_on_its_hbm_channel(package):
    config, out = package
    text = (out / "connectivity.cfg").read_text()
    sp = re.findall(r"^sp=\w+\.(\w+):HBM\[(\d+)\]$", text, re.M)
    assert dict(sp)[kmap.instr_port()] == "0"
    assert [(p, int(n)) for p, n in sp if p != kmap.instr_port()] == \
        [(kmap.data_port(c), c) for c in range(config.memory.channels)]
    assert f"freqHz={round(config.clock_mhz * 1e6)}:" in text


def test_u280_connectivity_spans_the_32_pseudo_channels():
    from fpga.alveo import connectivity_cfg
    text = connectivity_cfg(load_config("u280"))
    assert [int(n) for n in re.findall(r"m_axi_gmem\d+:HBM\[(\d+)\]", text)] == list(range(32))
    assert "freqHz=225000000:" in text


def test_xdc_has_the_config_clock(package):
    config, out = package
    m = re.search(r"create_clock -period ([\d.]+) -name ap_clk \[get_ports ap_clk\]",
                  (out / f"{kmap.KERNEL_NAME}.xdc").read_text())
    assert m and abs(float(m.group(1)) - 1000 / config.clock_mhz) < 1e-3


def _tcl(script, tmp_path):
    tclsh = shutil.which("tclsh")
    if tclsh is None:
        pytest.skip("tclsh not installed (Debian package tcl)")
    stub = tmp_path / "stub.tcl"
    stub.write_text(_TCL_STUB)
    return subprocess.run([tclsh, str(stub), str(script)], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("script,commands", [
    ("synth.tcl", ["read_verilog", "read_xdc", "synth_design", "opt_design", "place_design",
                   "route_design", "report_utilization", "report_timing_summary"]),
    ("package_xo.tcl", ["create_project", "ipx::package_project", "ipx::add_register",
                        "ipx::associate_bus_interfaces", "package_xo"])])
def test_tcl_parses_and_runs_the_flow(package, tmp_path, script, commands):
    _, out = package
    work = tmp_path / "pkg"
    shutil.copytree(out, work)
    proc = _tcl(work / script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    called = proc.stdout.split()
    assert [c for c in commands if c not in called] == []


def test_tcl_check_catches_a_syntax_error(tmp_path):
    bad = tmp_path / "bad.tcl"
    bad.write_text("synth_design -top x\nset a [list {b\n")
    assert _tcl(bad, tmp_path).returncode != 0


def test_kernel_top_lints_with_the_adapter(package, tmp_path):
    _, out = package
    # -Wall on the kernel top only (the generated core's style is `airfoil lint`'s, with
    # its own waivers): every port connects, at its width. Vitis names the port
    # 'interrupt', a C++ word.
    vlt = tmp_path / "kernel.vlt"
    vlt.write_text('`verilator_config\nlint_off -file "*airfoil_kernel_core.v"\n'
                   'lint_off -file "*airfoil_ram.v"\n'
                   'lint_off -rule SYMRSVDWORD -file "*airfoil_kernel.v"\n')
    proc = subprocess.run(["verilator", "--lint-only", "-Wall", "--top-module",
                           kmap.KERNEL_NAME, str(vlt), f"{kmap.KERNEL_NAME}.v",
                           f"{kmap.KERNEL_NAME}_core.v", "airfoil_ram.v"], cwd=out,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_package_of_an_unknown_config_is_one_line_error(capsys, tmp_path):
    cli_fails(capsys, ["package", "--config", "no_such_board", "-o", str(tmp_path)],
              "no_such_board")
