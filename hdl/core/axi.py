"""AXI4 and AXI4-Lite port signatures (flat signal names as in the AMBA specification).

Signatures are written from the manager's side; a subordinate port uses ``.flip()``.
Flattened ports are named ``<port>__<signal>`` (e.g. ``m_axi0__araddr``), which is what
the memory model and the cocotb testbenches look for.
"""

from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["axi4_signature", "axi4lite_signature", "BURST_INCR", "RESP_OKAY",
           "BOUNDARY_BYTES"]

BURST_INCR = 1
RESP_OKAY = 0
#: AXI bursts must not cross this byte boundary.
BOUNDARY_BYTES = 4096


def axi4_signature(*, addr_width: int = 64, data_width: int, read_only: bool = False
                   ) -> wiring.Signature:
    """Return the signature of an AXI4 manager port (read and write channels).

    Parameters
    ----------
    addr_width : int
        Byte-address width.
    data_width : int
        Data width in bits (a power of two, at least 8).
    read_only : bool
        Leave out the write channels (an instruction-fetch port).

    The ports carry no ID signals: every transaction uses ID 0, so responses return in
    order.
    """
    if data_width < 8 or data_width & (data_width - 1):
        raise ValueError(f"AXI data width must be a power of two >= 8, not {data_width!r}")
    if not 12 <= addr_width <= 64:
        raise ValueError(f"AXI address width must be 12..64, not {addr_width!r}")
    members = {
        "araddr": Out(addr_width), "arlen": Out(8),
        "arsize": Out(3), "arburst": Out(2), "arvalid": Out(1), "arready": In(1),
        "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
        "rvalid": In(1), "rready": Out(1),
    }
    if not read_only:
        members.update({
            "awaddr": Out(addr_width), "awlen": Out(8),
            "awsize": Out(3), "awburst": Out(2), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        })
    return wiring.Signature(members)


def axi4lite_signature(*, addr_width: int = 8) -> wiring.Signature:
    """Return the signature of a 32-bit AXI4-Lite manager port."""
    return wiring.Signature({
        "awaddr": Out(addr_width), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(32), "wstrb": Out(4), "wvalid": Out(1), "wready": In(1),
        "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        "araddr": Out(addr_width), "arvalid": Out(1), "arready": In(1),
        "rdata": In(32), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
    })
