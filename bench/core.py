"""``airfoil bench`` figures of the whole U280 core's resources (area ``core``).

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``core``.
"""

from __future__ import annotations

from pathlib import Path

from airfoil.config import load_config

__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "u280_core_dsp": "DSP48E2 slices",
    "u280_core_lut": "LUTs",
    "u280_core_ff": "flip-flops",
    "u280_core_bram": "36 Kb blocks",
    "u280_core_uram": "URAM288 blocks",
    "u280_core_fits": "0 or 1",
    "u280_core_estimate_method": "whole or scaled",
}

#: The configuration measured.
CONFIG = "u280"


def figures(args, log) -> dict:
    """Estimate the U280 core (see the module docstring)."""
    from hdl.estimate import RESOURCES, core_estimate

    cfg = load_config(CONFIG)
    cache = Path(getattr(args, "build_dir", "build")) / "estimate"
    res = core_estimate(cfg, "xcup", cache_dir=cache, log=log)
    name = f"{CONFIG}_core"
    out = {f"{name}_{k}": res[k] for k in RESOURCES}
    fit = res.get("fit")
    out.update({
        f"{name}_fits": int(bool(fit and fit["fits"])),
        f"{name}_estimate_method": res["method"],
        f"{name}_config_hash": cfg.config_hash,
        f"{name}_seconds": res["seconds"],
        f"{name}_parts": res["parts"],
    })
    if fit:
        out[f"{name}_use"] = {k: round(v, 4) for k, v in fit["use"].items()}
    return out
