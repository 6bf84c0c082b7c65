"""Elaborate components to Verilog with their metadata, for vendor tools and simulators.

:func:`write_verilog` writes ``<out>/<name>.v`` and ``<out>/<name>.json``; the JSON holds
the component's signature metadata (Amaranth's ``ComponentMetadata``), the flattened
port list with directions and widths, and any design parameters the caller passes. The
RTL runner in ``sim`` reads that JSON, never this package's classes. For a core, the JSON
also lists its AXI4 data ports (``data_ports``: ``data0``, ``data1``, ..., one per memory
channel, in channel order), the names a Vitis connectivity file maps to ``HBM[i]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Value
from amaranth.lib import wiring

__all__ = ["port_list", "data_ports", "write_verilog"]


def port_list(component: wiring.Component) -> list[dict]:
    """Return the Verilog ports of a component: name, direction and width."""
    ports = []
    for path, member, value in component.signature.flatten(component):
        name = "__".join(str(p) for p in path)
        ports.append({
            "name": name,
            "dir": "in" if member.flow == wiring.In else "out",
            "width": len(Value.cast(value)),
            "path": [str(p) for p in path],
        })
    return ports


def data_ports(component: wiring.Component) -> list[str]:
    """Return the names of a component's data ports ``data<i>`` in channel order."""
    found = {}
    for name in component.signature.members:
        if name.startswith("data") and name[4:].isdigit():
            found[int(name[4:])] = name
    return [found[i] for i in sorted(found)]


def write_verilog(component: wiring.Component, name: str, out_dir, *,
                  params: dict | None = None) -> tuple[Path, Path]:
    """Write ``name.v`` and ``name.json`` for ``component`` into ``out_dir``.

    Files are written under temporary names and renamed, so a failed elaboration leaves
    no half-written output.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": name,
        "top": name,
        "clock": "clk",
        "reset": "rst",
        "ports": port_list(component),
        "data_ports": data_ports(component),
        "signature": component.metadata.as_json(),
        "params": params or {},
    }
    text = verilog.convert(component, name=name, emit_src=False)
    vpath, jpath = out / f"{name}.v", out / f"{name}.json"
    for path, content in ((vpath, text), (jpath, json.dumps(meta, indent=1) + "\n")):
        # A name of this process's own: two test workers may write the same design.
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(content)
        tmp.replace(path)
    return vpath, jpath
