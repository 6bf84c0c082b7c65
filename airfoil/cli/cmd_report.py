"""``airfoil report OUT [OUT ...] --config C``: an HTML page of where decode's cycles go.

Each folder (an LLM compiled for the config; several folders compare recipes) is run on
the ISA simulator with its instruction trace: a decode step at ``--position`` (default the
last position the folder holds) and a sweep over ``--points`` positions. The page
(:mod:`sim.report_page`) has the roofline with each section's operating point, busy
cycles per section and unit, the memory bandwidth used across the step, tokens/s against
context, and a table per folder; ``report.json`` beside it holds the same numbers. The
folder ``--output`` (default ``build/report``) is written all or nothing.
"""

from __future__ import annotations

from ..config import load_config
from ..errors import AirfoilError
from ..folder import encoder, load_folder


def register(sub):
    p = sub.add_parser("report", help="HTML report of compiled LLMs' decode on a config: "
                                      "roofline, cycles per layer and unit, bandwidth, "
                                      "tokens/s against context")
    p.add_argument("folders", nargs="+", metavar="OUT", help="compiled LLM folder(s)")
    p.add_argument("--config", default=None,
                   help="board configuration (default: the one the first folder names)")
    p.add_argument("--position", type=int, default=None,
                   help="decode position of the profiled step (default: the last the "
                        "folder holds)")
    p.add_argument("--points", type=int, default=8,
                   help="positions of the tokens/s sweep (default 8)")
    p.add_argument("-o", "--output", default="build/report", help="report folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from compiler.output import write_folder
    from sim.report_page import REPORT_MARKER, measure_folder, report_files

    if args.points < 2:
        raise AirfoilError(f"--points must be at least 2, not {args.points}")
    config = load_config(args.config) if args.config else \
        load_folder(args.folders[0], size_only_ok=True).resolve_config()
    reports = []
    for path in args.folders:
        folder = load_folder(path, config, size_only_ok=True)
        if folder.kind != "llm":
            raise AirfoilError(f"{path}: a report needs a compiled LLM folder, not kind "
                               f"{folder.kind!r}")
        if encoder(folder.manifest["model"]["shape"]):
            raise AirfoilError(f"{path}: holds an encoder, which has no decode step to "
                               f"profile (airfoil compile prints its sentence cycles)")
        reports.append(measure_folder(folder, config, args.position, args.points))
        r = reports[-1]
        print(f"{r.name}: decode at position {r.step.position}: {r.step.cycles:,} cycles, "
              f"{r.tokens_per_s(config):,.1f} tokens/s, {r.step.bytes_read:,} bytes read, "
              f"{r.tokens_per_s(config) / r.roofline_tokens_per_s(config):.3f} of the "
              f"roofline")
    out = write_folder(args.output, report_files(reports, config), marker=REPORT_MARKER)
    print(f"wrote {out / 'index.html'}")
    return 0
