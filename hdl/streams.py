"""Stream payload layouts shared by the core and the units that plug into it.

Three datapath edges of the matrix unit are streams (``amaranth.lib.stream``) with these
payloads, so that a later decode unit, sparse chain or NoC can replace one side:

* operand stream (memory side -> chains): one step of ``chains x lanes`` weights, already
  unpacked to signed 8-bit, the ``lanes`` INT8 activations broadcast to every chain, and
  the flags ``group_last`` (this step ends a quantization group) and ``batch_last``
  (it ends the batch of ``chains`` rows);
* scale stream (memory side -> rescaler): one group's scales per chain as exact fixed
  point ``m * 2**k`` (:func:`airfoil.formats.fp16_fixed`: ``m`` signed, a negative FP16
  scale negates it), plus ``bad`` when an FP16 value was infinite or NaN;
* psum stream (chains -> rescaler): one group's exact partial sums per chain and
  ``batch_last``;
* init stream (memory side -> rescaler): a batch's starting accumulators.
"""

from __future__ import annotations

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from airfoil.formats import ACC_BITS, FP16_K_MIN, FP16_K_MAX

__all__ = ["WEIGHT_BITS", "ACT_BITS", "SCALE_M_BITS", "SCALE_M_SHAPE", "SCALE_K_SHAPE", "psum_bits",
           "operand_layout", "scale_layout", "psum_layout", "init_layout"]

#: Width of an unpacked weight on the operand stream (INT2..INT8 sign-extended).
WEIGHT_BITS = 8
#: Width of an activation.
ACT_BITS = 8
#: Significand of an FP16 scale with its hidden bit.
SCALE_M_BITS = 11
#: Shape of the signed significand ``m`` of a scale (the FP16 sign applied).
SCALE_M_SHAPE = signed(SCALE_M_BITS + 1)
#: Shape of the exponent ``k`` of a scale (``FP16_K_MIN..FP16_K_MAX``).
SCALE_K_SHAPE = signed(max(FP16_K_MIN.bit_length(), FP16_K_MAX.bit_length()) + 1)


def psum_bits(group: int) -> int:
    """Width of an exact signed group partial sum of ``group`` INT8 x INT8 products."""
    if not isinstance(group, int) or group < 1:
        raise ValueError(f"Group size must be a positive integer, not {group!r}")
    # |w * x| <= 2**14 (both -128..127); a sum of g products needs log2(g) more bits.
    return 15 + (group - 1).bit_length() + 1


def operand_layout(chains: int, lanes: int) -> data.StructLayout:
    """Payload of the operand stream for ``chains`` x ``lanes``."""
    return data.StructLayout({
        "w": data.ArrayLayout(data.ArrayLayout(signed(WEIGHT_BITS), lanes), chains),
        "x": data.ArrayLayout(signed(ACT_BITS), lanes),
        "group_last": 1,
        "batch_last": 1,
        "wide": 1,          # the weights are INT8 (wider than a packed pair's 4 bits)
    })


def scale_layout(chains: int) -> data.StructLayout:
    """Payload of the scale stream: per chain ``m`` (signed, 12 bits) and ``k``, and
    ``bad``."""
    return data.StructLayout({
        "m": data.ArrayLayout(SCALE_M_SHAPE, chains),
        "k": data.ArrayLayout(SCALE_K_SHAPE, chains),
        "bad": 1,
    })


def psum_layout(chains: int, group_max: int) -> data.StructLayout:
    """Payload of the psum stream for groups of at most ``group_max`` weights."""
    return data.StructLayout({
        "psum": data.ArrayLayout(signed(psum_bits(group_max)), chains),
        "batch_last": 1,
    })


def init_layout(chains: int) -> data.StructLayout:
    """Payload of the init stream: a batch's starting accumulators, one per chain.

    That is the batch's bias (``acc_init = 1``) or the accumulators a previous K-chunk
    left (``acc_init = 0``).
    """
    return data.StructLayout({"init": data.ArrayLayout(signed(ACC_BITS), chains)})
