"""Processing elements, interchangeable behind one stream interface.

Every PE kind (``dsp``, ``bitserial``, ``lut``) can implement :func:`pe_signature`: an
operand stream of ``lanes`` weights and ``lanes`` activations per beat (``last`` ends a
dot product) in, one accumulated dot product per ``last`` beat out. A PE takes as many
cycles per beat as its kind needs; streams carry backpressure both ways.

Estimate hook: a module in ``hdl/pe/`` (or ``hdl/dsp_chain/``, ``hdl/decode_unit/``,
``hdl/noc/``) that defines ``estimate_units(config) -> dict[str, Component]`` has those
units synthesized by ``airfoil estimate``; each returned component may carry a
``macs_per_cycle`` attribute (peak MACs per cycle) for the per-DSP and per-LUT figures.
"""

from amaranth.hdl import signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["pe_operand_layout", "pe_result_layout", "pe_signature"]


def pe_operand_layout(*, lanes: int, weight_bits: int, act_bits: int = 8
                      ) -> data.StructLayout:
    """Layout of one PE operand beat: ``w[lanes]``, ``a[lanes]`` (signed) and ``last``."""
    return data.StructLayout({
        "w": data.ArrayLayout(signed(weight_bits), lanes),
        "a": data.ArrayLayout(signed(act_bits), lanes),
        "last": 1,
    })


def pe_result_layout(*, acc_bits: int) -> data.StructLayout:
    """Layout of one PE result beat: the accumulated dot product ``acc`` and ``last``."""
    return data.StructLayout({"acc": signed(acc_bits), "last": 1})


def pe_signature(*, lanes: int, weight_bits: int, act_bits: int = 8, acc_bits: int = 32
                 ) -> wiring.Signature:
    """Signature of a PE: ``i`` operand stream in, ``o`` result stream out."""
    return wiring.Signature({
        "i": In(stream.Signature(pe_operand_layout(lanes=lanes, weight_bits=weight_bits,
                                                   act_bits=act_bits))),
        "o": Out(stream.Signature(pe_result_layout(acc_bits=acc_bits))),
    })
