"""On-chip buffer RAM: a Verilog module instantiated from Amaranth.

The core's buffers are large (the U280 config's WGT buffer is 8 Mbit); Amaranth 0.5 writes
a memory's whole initial contents into RTLIL and Verilog, which took minutes and
megabytes per buffer. The buffers therefore instantiate ``airfoil_ram``
(:data:`RAM_VERILOG`, written next to the core's Verilog): one write port with per-slice
enables and up to two synchronous read ports, no reset and no initial contents, read
before write on the same address, as Amaranth's non-transparent ``read_port()`` and as
the FPGA block RAMs it maps to.
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Instance, Module, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import Out
from amaranth.utils import ceil_log2

__all__ = ["Ram", "RAM_MODULE", "RAM_VERILOG"]

RAM_MODULE = "airfoil_ram"

RAM_VERILOG = """\
// Simple dual-port RAM of the Airfoil core (hdl/core/ram.py): one write port with
// GRAN-bit slice enables, two synchronous read ports with enables, read before write.
module airfoil_ram #(
    parameter integer WIDTH = 32,
    parameter integer DEPTH = 16,
    parameter integer ABITS = 4,
    parameter integer GRAN = 32
) (
    input  wire                    clk,
    input  wire [ABITS-1:0]        waddr,
    input  wire [WIDTH-1:0]        wdata,
    input  wire [WIDTH/GRAN-1:0]   wen,
    input  wire [ABITS-1:0]        raddr0,
    input  wire                    ren0,
    output reg  [WIDTH-1:0]        rdata0,
    input  wire [ABITS-1:0]        raddr1,
    input  wire                    ren1,
    output reg  [WIDTH-1:0]        rdata1
);
    reg [WIDTH-1:0] mem [0:DEPTH-1];
    genvar s;
    generate
        for (s = 0; s < WIDTH / GRAN; s = s + 1) begin : slice
            always @(posedge clk) begin
                if (wen[s]) mem[waddr][s * GRAN +: GRAN] <= wdata[s * GRAN +: GRAN];
            end
        end
    endgenerate
    always @(posedge clk) begin
        if (ren0) rdata0 <= mem[raddr0];
        if (ren1) rdata1 <= mem[raddr1];
    end
endmodule
"""


class Ram(wiring.Component):
    """A buffer RAM of ``depth`` rows of ``width`` bits.

    Parameters
    ----------
    width : int
        Row width in bits.
    depth : int
        Rows (a power of two).
    granularity : int
        Bits per write enable (divides ``width``).
    read_ports : int
        1 or 2.

    Members
    -------
    wr : Out(memory.WritePort.Signature(...))
    rd0, rd1 : Out(memory.ReadPort.Signature(...))
        The ports as a :class:`amaranth.lib.memory.Memory` presents them, so a unit
        connects to either with ``wiring.connect``.
    """

    def __init__(self, *, width: int, depth: int, granularity: int | None = None,
                 read_ports: int = 1):
        explicit = granularity is not None
        granularity = width if granularity is None else granularity
        if width < 1 or depth < 2 or depth & (depth - 1):
            raise ValueError(f"RAM needs a positive width and a power-of-two depth >= 2, "
                             f"not width={width!r}, depth={depth!r}")
        if granularity < 1 or width % granularity:
            raise ValueError(f"RAM write granularity must divide the width {width}, "
                             f"not {granularity!r}")
        if read_ports not in (1, 2):
            raise ValueError(f"RAM read ports must be 1 or 2, not {read_ports!r}")
        self._width, self._depth, self._gran = width, depth, granularity
        self._nread = read_ports
        abits = ceil_log2(depth)
        self._sig_gran = None if granularity == width and not explicit else granularity
        members = {
            "wr": Out(memory.WritePort.Signature(addr_width=abits, shape=width,
                                                 granularity=self._sig_gran)),
        }
        for i in range(read_ports):
            members[f"rd{i}"] = Out(memory.ReadPort.Signature(addr_width=abits, shape=width))
        super().__init__(members)

    @property
    def latency(self) -> int:
        """Cycles from a read address (with its enable) to its data."""
        return 1

    def elaborate(self, platform):
        m = Module()
        abits = ceil_log2(self._depth)
        rd1 = getattr(self, "rd1", None)
        ports = dict(
            p_WIDTH=self._width, p_DEPTH=self._depth, p_ABITS=abits, p_GRAN=self._gran,
            i_clk=ClockSignal(), i_waddr=self.wr.addr, i_wdata=self.wr.data,
            i_wen=self.wr.en, i_raddr0=self.rd0.addr, i_ren0=self.rd0.en,
            o_rdata0=self.rd0.data,
        )
        if rd1 is not None:
            ports.update(i_raddr1=rd1.addr, i_ren1=rd1.en, o_rdata1=rd1.data)
        else:
            spare = Signal(self._width)     # a second read port nobody uses
            ports.update(i_raddr1=0, i_ren1=0, o_rdata1=spare)
        m.submodules.ram = Instance(RAM_MODULE, **ports)
        return m
