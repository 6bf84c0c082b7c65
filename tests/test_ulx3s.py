"""The ULX3S (ECP5) design: its config, the link protocol and the whole design in RTL.

The RTL case runs a compiled layer on the core with its block-RAM memory through the
UART host link, driven bit by bit as the board's USB UART would, and compares the
output with the golden bit-exactly. The place and route (`make bitstream BOARD=ulx3s`)
is ``slow``.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from airfoil import csr as csrmap
from airfoil.config import load_config
from airfoil.errors import AirfoilError, ConfigError
from airfoil.folder import OUT_DTYPES, load_folder


@pytest.fixture(scope="module")
def config():
    return load_config("ulx3s")


def test_config_fits_the_ecp5_85f(config):
    from fpga.ulx3s.system import pll_params
    assert (config.device.part, config.device.dsp, config.device.bram) == \
        ("LFE5U-85F", 156, 208)
    assert config.memory.channels == 1 and config.pe == "dsp"
    # The memory: whole 128-bit words of DP16KD (512 x 36: four side by side per 8 KiB).
    blocks = config.memory.channel_bytes // (512 * 4 * 4) * 4
    assert blocks <= config.device.bram // 2
    p = pll_params(config.clock_mhz)
    assert 25 / p["CLKI_DIV"] * p["CLKFB_DIV"] == config.clock_mhz
    assert 400 <= config.clock_mhz * p["CLKOP_DIV"] <= 800


def test_pll_and_baud_refuse_what_they_cannot_make():
    from fpga.ulx3s.system import pll_params
    from fpga.ulx3s.uart import divisor_of
    with pytest.raises(ConfigError, match="cannot make 101.3 MHz"):
        pll_params(101.3)
    assert divisor_of(100e6, 1_000_000) == 100
    with pytest.raises(ValueError, match="within 2 %"):
        divisor_of(10e6, 3_000_000)


def test_link_requests():
    from fpga.ulx3s import link
    assert link.request(link.WRITE_MEM, 0x1234, 2, b"\xaa\xbb") == \
        bytes([0x57, 0x34, 0x12, 0, 0, 2, 0, 0, 0, 0xAA, 0xBB])
    assert len(link.request(link.READ_CSR, 4)) == link.HEADER_BYTES
    assert link.reply_bytes(link.READ_MEM, 7) == 8
    assert link.reply_bytes(link.READ_CSR) == 5
    with pytest.raises(ValueError, match="payload"):
        link.request(link.WRITE_MEM, 0, 3, b"\x00")


def test_layout_refuses_what_does_not_fit():
    from fpga.ulx3s.host import layout
    assert layout(100, 10, 8192) == 4096
    with pytest.raises(AirfoilError, match="board memory has 8192"):
        layout(100, 4097, 8192)


def test_host_sequence_reports_a_status_error():
    from fpga.ulx3s import host, link
    seq = host.run_sequence(bytes(16), b"", {}, memory_bytes=1 << 16)
    req, n = next(seq)
    assert req[0] == link.WRITE_MEM and n == 1
    with pytest.raises(host.LinkError, match="status 0x01"):
        seq.send(bytes([link.STATUS_BUS_ERROR]))


def compile_small_layer(config, out_dir, *, n=24, k=128, seed=3):
    """A small INT4 layer with bias that the board memory holds."""
    from compiler.linear import compile_linear
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    b = torch.randn(n, generator=gen)
    compile_linear(w, b, config, out_dir, wformat="int4", group=32, out_format="int16",
                   seed=seed)
    return load_folder(out_dir, config)


@pytest.mark.rtl
def test_uart_link_runs_a_layer_bit_exact(config, tmp_path):
    from sim.golden import run_golden
    from sim.ulx3s_rtl import run_system
    folder = compile_small_layer(config, tmp_path / "layer")
    dt = np.dtype(OUT_DTYPES[folder.out_bits])
    out_addr = folder.manifest["output"]["addr"]
    r = run_system(config, program=folder.program.to_bytes(), image=bytes(folder.image),
                   read_back={"out": (out_addr, folder.n * dt.itemsize)}, build_dir="build")
    # The link itself.
    assert (r["core_id"] >> 16, r["core_id_status"]) == (csrmap.CORE_ID >> 16, 0)
    assert r["bad_op_status"] == 0x02
    assert r["past_end_status"] == 0x01 and r["past_end_bytes"][4:] == "0000"
    assert r["roundtrip_ok"]
    # The layer, bit-exact.
    run = r["run"]
    assert run["done"] and not run["error"], run
    assert run["retired"] == len(folder.program.words) and run["cycles"] > 0
    got = torch.from_numpy(np.frombuffer(bytes.fromhex(run["reads"]["out"]),
                                         dtype=dt).astype(np.int64))
    assert torch.equal(got, run_golden(folder))


def test_resets_leave_through_global_buffers(config):
    """On the board both resets (the system's, and the core's engine reset with the
    start's pulse, nearly every flip-flop) reach their flip-flops through a DCCA, the
    ECP5's global buffer, not through the fabric's routing; the engine reset's from a
    flip-flop (the CSR decode's logic placed far from the buffer failed to route)."""
    pytest.importorskip("amaranth_boards")
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    from fpga.ulx3s.system import Ulx3sTop
    il = ULX3S_85F_Platform().prepare(Ulx3sTop(config, sfu=False), name="top").files["top.il"]
    outputs, inputs = {}, {}
    for cell in il.split("cell \\DCCA ")[1:]:
        body = cell.split("end")[0].split()
        outputs[body[0]] = body[body.index("\\CLKO") + 1]
        inputs[body[0]] = body[body.index("\\CLKI") + 1]
    assert outputs == {"\\reset_dcca": "\\rst", "\\engine_reset_dcca": "\\engine_rst"}
    flip_flop_outputs = {cell.split("end")[0].split("connect \\Q ")[1].split()[0]
                         for cell in il.split("cell $dff ")[1:]}
    assert inputs["\\engine_reset_dcca"] in flip_flop_outputs


def test_dsp_pair_on_ecp5_is_plain_and_computes_the_same():
    """On the ECP5's 18 x 18 multipliers the lane pair takes two plain products; cycle by
    cycle it gives what the packed 27 x 18 pair gives, in both weight widths."""
    import random

    from amaranth.sim import Simulator

    from hdl.pe.dsp import DspDual, multiplier_bits

    class Ecp5:
        family = "ecp5"

    assert multiplier_bits(Ecp5()) == (18, 18) and multiplier_bits(None) == (27, 18)
    packed, plain = DspDual(), DspDual(multiplier=(18, 18))
    assert not packed.packed_on(Ecp5()) and packed.packed_on(None)
    rng = random.Random(5)
    steps = []
    for _ in range(300):
        pair = rng.random() < 0.5
        wlo, whi = (-8, 7) if pair else (-128, 127)
        steps.append((pair, rng.randrange(2), rng.random() < 0.8,
                      [rng.randint(wlo, whi) for _ in range(2)],
                      [rng.randint(-128, 127) for _ in range(2)]))
    outputs = {}
    for name, dut in (("packed", packed), ("plain", plain)):
        got = []

        async def bench(ctx, dut=dut, got=got):
            for pair, sel, en, w, a in steps + [(0, 0, 1, [0, 0], [0, 0])] * 4:
                ctx.set(dut.pair, pair)
                ctx.set(dut.sel, sel)
                ctx.set(dut.en, en)
                ctx.set(dut.w, w)
                ctx.set(dut.a, a)
                await ctx.tick()
                got.append(ctx.get(dut.y))

        sim = Simulator(dut)
        sim.add_clock(1e-6)
        sim.add_testbench(bench)
        sim.run()
        outputs[name] = got
    assert outputs["plain"] == outputs["packed"]
    assert len(set(outputs["plain"])) > 100


def test_board_backend_errors_are_one_line(config, tmp_path, capsys):
    from clitools import cli_fails
    folder = tmp_path / "layer"
    compile_small_layer(config, folder)
    cli_fails(capsys, ["run", "--backend", "board", str(folder)], "needs --port")
    cli_fails(capsys, ["run", "--backend", "board", str(folder), "--port",
                       str(tmp_path / "no-such-tty")], "cannot open serial port")
    other = tmp_path / "other"
    compile_small_layer(load_config("test"), other)
    cli_fails(capsys, ["run", "--backend", "board", str(other), "--port", "x"],
              "not a board build")


NEXTPNR_LOG = """\
Info: Device utilisation:
Info: \t          TRELLIS_IO:     3/  365     0%
Info: \t              DP16KD:   100/  208    48%
Info: \t          MULT18X18D:    40/  156    25%
Info: \t          TRELLIS_FF: 14000/83640    16%
Info: \t        TRELLIS_COMB: 30000/83640    35%
Info: Max frequency for clock '$glbnet$clk': 90.00 MHz (FAIL at 100.00 MHz)
Info: Max frequency for clock '$glbnet$clk25$TRELLIS_IO_IN': 400.00 MHz (PASS at 25.00 MHz)
Info: Max frequency for clock '$glbnet$clk': 101.50 MHz (PASS at 100.00 MHz)
"""


def test_nextpnr_log_parse_takes_the_last_figures():
    from fpga.ulx3s.flow import parse_nextpnr_log
    r = parse_nextpnr_log(NEXTPNR_LOG)
    assert r["cells"]["MULT18X18D"] == [40, 156] and r["cells"]["TRELLIS_COMB"][0] == 30000
    assert r["fmax_mhz"]["$glbnet$clk"] == 101.5
    assert r["target_mhz"]["$glbnet$clk"] == 100.0
    with pytest.raises(AirfoilError, match="no utilisation"):
        parse_nextpnr_log("Info: Program finished normally.\n")


def test_runnable_clock_is_the_fastest_the_pll_and_uart_make_within_fmax():
    from fpga.ulx3s.system import pll_clock_at_most, pll_params
    from fpga.ulx3s.uart import divisor_of
    assert pll_clock_at_most(100) == 100.0
    assert pll_clock_at_most(40.2) == 40.0
    assert pll_clock_at_most(34.5) == 34.375            # 25 x 11 / 8
    assert pll_clock_at_most(3) is None
    for fmax in (34.5, 47.3, 61.0, 99.9):
        f = pll_clock_at_most(fmax)
        assert f <= fmax and pll_params(f) and divisor_of(f * 1e6, 1_000_000)


def test_bitstream_refuses_a_clock_the_board_cannot_make(capsys, tmp_path):
    from clitools import cli_fails
    cli_fails(capsys, ["bitstream", "--board", "ulx3s", "--clock-mhz", "101.3",
                       "--build-dir", str(tmp_path)], "cannot make 101.3 MHz")
    cli_fails(capsys, ["bitstream", "--board", "ulx3s", "--clock-mhz", "3.125",
                       "--build-dir", str(tmp_path)], "baud cannot be made")
    assert not (tmp_path / "ulx3s").exists()


@pytest.mark.parametrize("clock, meets, runnable", [(100, False, 90.625), (90, True, 90.625)])
def test_report_says_whether_the_design_meets_its_clock(config, tmp_path, clock, meets,
                                                       runnable):
    """The report's core clock is the one the PLL was built for; below its Fmax the
    bitstream runs at it, else the report names the fastest clock it would run at."""
    from fpga.ulx3s.flow import write_report
    log = NEXTPNR_LOG.replace("101.50 MHz (PASS at 100.00", "90.70 MHz (FAIL at 100.00")
    if clock == 90:
        log = log.replace("at 100.00 MHz", "at 90.00 MHz").replace("FAIL", "PASS")
    (tmp_path / "top.tim").write_text(log)
    r = write_report(config, tmp_path, sfu=False, seconds=1.0, clock_mhz=clock)
    assert (r["target_mhz"], r["fmax_mhz"]) == (clock, 90.7)
    assert (r["meets_clock"], r["runnable_mhz"], r["routed"]) == (meets, runnable, True)
    placed = write_report(config, tmp_path, sfu=False, seconds=1.0, clock_mhz=clock,
                          routed=False)
    assert placed["bitstream"] is None and not placed["routed"]


def _segment(kind, frm, to, delay, net=None, sources=()):
    seg = {"type": kind, "from": {"cell": frm, "port": "Q", "loc": [1, 1]},
           "to": {"cell": to, "port": "A", "loc": [2, 2]}, "delay": delay}
    if net is not None:
        seg.update(net=net, sources=list(sources))
    return seg


def test_critical_path_of_the_core_clock():
    from fpga.ulx3s.flow import critical_path
    clk = "$glbnet$clk"
    core = [_segment("clk-to-q", "ff_a", "ff_a", 0.5),
            _segment("routing", "ff_a", "lut_b", 1.25, "engine.total[3]",
                     ["hdl/core/load.py:190", "hdl/core/load.py:190"]),
            _segment("logic", "lut_b", "lut_b", 0.25),
            _segment("routing", "lut_b", "ff_c", 1.0, "engine.code", ["hdl/core/load.py:54"]),
            _segment("setup", "ff_c", "ff_c", 0.125)]
    report = {"critical_paths": [
        {"from": "posedge $glbnet$clk25", "to": "posedge $glbnet$clk25",
         "path": [_segment("clk-to-q", "x", "x", 9.0)]},
        {"from": f"posedge {clk}", "to": f"posedge {clk}", "path": core}]}
    p = critical_path(report, clk)
    assert p == {"delay_ns": 3.12, "logic_levels": 1, "routing_ns": 2.25,
                 "start": "ff_a", "end": "ff_c", "nets": ["engine.total[3]", "engine.code"],
                 "sources": ["hdl/core/load.py:190", "hdl/core/load.py:54"]}
    assert critical_path(report, "$glbnet$other") == {}


@pytest.mark.slow
def test_ulx3s_bitstream_builds_and_fits(config, tmp_path):
    """The whole open flow without the SFU (the GEMV build, some 6 minutes here; the
    whole design's takes some 45, README "Open flow: ULX3S"): a bitstream, and a report
    within the device with the core clock's critical path."""
    from fpga.ulx3s.flow import build_bitstream
    r = build_bitstream(config, tmp_path / "ulx3s", sfu=False)
    assert (tmp_path / "ulx3s" / "top.bit").stat().st_size > 100_000
    assert 0 < r["mult18x18d"] <= 156 and 0 < r["dp16kd"] <= 208
    assert 0 < r["lut4"] <= 83640 and r["fmax_mhz"] > 0
    assert r["target_mhz"] == config.clock_mhz
    assert r["critical_path"]["delay_ns"] > 0 and r["critical_path"]["nets"]
    assert r["meets_clock"] == (r["fmax_mhz"] >= r["target_mhz"])


def test_shift_io_drives_a_part_and_shifts_its_outputs_out():
    """The timing wrapper: bits shifted in at ``si`` reach the part's inputs (the first
    bit ends in the last input's top), and ``ld`` captures its outputs, which leave at
    ``so`` top bit first."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out
    from amaranth.sim import Simulator

    from fpga.ulx3s.unit_timing import ShiftIO

    class Add(wiring.Component):
        a: In(4)
        b: In(4)
        s: Out(5)

        def elaborate(self, platform):
            m = Module()
            m.d.comb += self.s.eq(self.a + self.b)
            return m

    dut = ShiftIO(Add())
    assert ShiftIO.bits(Add()) == (8, 5)
    a, b = 11, 9
    chain = [(b >> 3 - i) & 1 for i in range(4)] + [(a >> 3 - i) & 1 for i in range(4)]
    seen = []

    async def testbench(ctx):
        for bit in chain:
            ctx.set(dut.si, bit)
            await ctx.tick()
        ctx.set(dut.ld, 1)
        await ctx.tick()
        ctx.set(dut.ld, 0)
        for _ in range(5):
            seen.append(ctx.get(dut.so))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert int("".join(map(str, seen)), 2) == a + b


def test_unit_timing_refuses_an_unknown_part(capsys):
    from fpga.ulx3s.unit_timing import main
    assert main(["softmux", "--build-dir", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("airfoil: error: no part 'softmux' (accepted: sfu, quant_token,")
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_unit_timing_places_and_routes_a_kernel(config, tmp_path):
    """The open flow on one SFU kernel in its shift wrapper (about half a minute): its
    cells, an Fmax, and a critical path through its own source lines."""
    from fpga.ulx3s.unit_timing import sfu_parts, time_part
    r = time_part(sfu_parts(config)["mul"](), tmp_path)
    assert 0 < r["mult18x18d"] <= 16 and r["lut4"] > 0 and r["fmax_mhz"] > 0
    assert any("hdl/sfu/" in src for src in r["critical_path"]["sources"])
    assert (tmp_path / "report.json").exists()


def test_board_tools_resolved_beside_python_or_refused(monkeypatch):
    """The wheels' commands are found without an activated environment; a missing one is
    one error naming it."""
    from fpga.ulx3s import flow
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    paths = flow._tool_paths()
    assert all(Path(p).is_file() for var, p in paths.items() if var != "OPENFPGALOADER")
    monkeypatch.setitem(flow.TOOLS, "NEXTPNR_ECP5", "yowasp-nextpnr-nowhere")
    with pytest.raises(AirfoilError, match="yowasp-nextpnr-nowhere not found"):
        flow._tool_paths()
