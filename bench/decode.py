"""Figures of the decode unit's unpacker (``airfoil bench --only decode``).

* ``bits_per_weight_<fmt>``: bytes of the image the real packer emits for a 4096 x 4096
  tensor (group 128, the U280 board's geometry and 32 channels; scales, headers and
  padding included) x 8 / 4096**2.
* ``decode_unpacker_words_per_cycle_<fmt>``: words accepted per cycle by the standalone
  unpacker in RTL (Verilator), one channel of the U280 board (256-bit words, 32 lanes,
  2 rows per record) streaming a 64 x 4096 tensor (group 128) with no backpressure: words
  / cycles from the first accepted word to the last. Raw evidence beside it: ``_cycles``,
  ``_shape``, ``_config_hash``.

The end-to-end ``decode_weight_port_utilization_<fmt>``, with the memory model's latency
and the chains consuming the beats, is measured by :mod:`bench.stream`.
"""

from __future__ import annotations


from airfoil.config import load_config
from sim.measure.decode import FORMATS, image_bits_per_weight, unpacker_words_per_cycle

__all__ = ["FIGURES", "figures"]


def figures(args, log) -> dict:
    """The decode figures (see the module docstring)."""
    build_dir = getattr(args, "build_dir", "build")
    cfg = load_config("u280")
    out = {}
    for fmt in FORMATS:
        bpw = image_bits_per_weight(cfg, fmt)
        out[f"bits_per_weight_{fmt}"] = bpw
        out[f"bits_per_weight_{fmt}_shape"] = "4096x4096 g128, u280 (32 channels x 2 rows)"
        log(f"bits_per_weight_{fmt} = {bpw:.4f}")
    for fmt in list(FORMATS) + ["mixed"]:
        r = unpacker_words_per_cycle(cfg, fmt, rows=2 * 32, k=4096, build_dir=build_dir)
        name = f"decode_unpacker_words_per_cycle_{fmt}"
        out[name] = r["words_per_cycle"]
        out[f"{name}_cycles"] = r["cycles"]
        out[f"{name}_shape"] = r["shape"]
        out[f"{name}_config_hash"] = cfg.config_hash
        log(f"{name} = {r['words_per_cycle']:.4f} ({r['words']} words / {r['cycles']} cycles)")
    return out
