"""Input fuzzing of the CLI with hypothesis: each input kind mutated from a valid file.

Kinds (:data:`KINDS`): board YAML with fields replaced or deleted, and with raw bytes
flipped, inserted or cut; recipes; a compiled folder's manifest and program file; a model
folder's ``config.json``. Each case runs the CLI in-process and is classified:

* ``ok``: status 0; ``one_line``: status 2 and exactly one ``airfoil: error: ...`` line
  on stderr (and a failed ``compile`` left no output folder);
* ``non_one_line``: anything else (a traceback, another status, several lines, a
  half-written output folder): a defect;
* ``silently_accepted``: status 0 on an input known to be bad: a program file whose bytes
  changed (the CRC and header must refuse it), or a text file that is no longer UTF-8.

:func:`fuzz` runs one kind for a number of cases, seeded (``derandomize``: the same
cases every run), and returns the counts and the failing cases.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import shutil
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

__all__ = ["KINDS", "fuzz"]

KINDS = ("board_yaml", "recipe_yaml", "board_yaml_bytes", "manifest", "program_bytes",
         "model_config")

#: Values a mutated field may take: wrong types, edge numbers, non-finite floats.
ODD = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from([0, -1, 1, 2, 3, 7, 2 ** 31, 2 ** 32 - 1, 2 ** 63, -(2 ** 63), 10 ** 30]),
    st.integers(min_value=-(2 ** 40), max_value=2 ** 40),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 0.5, 1e-300]),
    st.text(max_size=12),
    st.lists(st.integers(min_value=-3, max_value=300), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(min_value=-1, max_value=9), max_size=2))


def _paths(obj, prefix=()):
    """Every path to a value inside nested dicts and lists."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated(draw, base):
    """``base`` (a dict) with one to three fields replaced or deleted."""
    obj = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(obj))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(ODD)
    return obj


@st.composite
def damaged(draw, raw: bytes):
    """``raw`` with a few bytes flipped, inserted or cut."""
    b = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "cut", "truncate"]))
        i = draw(st.integers(0, max(0, len(b) - 1)))
        if op == "flip" and b:
            b[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "cut" and b:
            del b[i:i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del b[i:]
    return bytes(b)


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _yaml(obj) -> bytes:
    return yaml.safe_dump(obj, allow_unicode=True).encode()


class _Run:
    """Runs the CLI in-process and tallies the outcomes of one kind."""

    def __init__(self, kind: str, main=None):
        if main is None:
            from airfoil.cli import main
        self.kind, self.main = kind, main
        self.counts = {"cases": 0, "ok": 0, "one_line": 0, "non_one_line": 0,
                       "silently_accepted": 0}
        self.failures: list[dict] = []

    def __call__(self, argv, *, out: Path | None = None, bad: bool = False,
                 what: str = "") -> None:
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                rc = self.main([str(a) for a in argv])
            except BaseException as e:      # noqa: BLE001 (a traceback is the defect)
                rc = f"{type(e).__name__}: {e}"
        lines = err.getvalue().strip().splitlines()
        self.counts["cases"] += 1
        if rc == 0:
            self.counts["ok"] += 1
            if bad:
                self.counts["silently_accepted"] += 1
                self.failures.append({"argv": list(map(str, argv)), "input": what,
                                      "why": "a known-bad input was accepted"})
            return
        one_line = (rc == 2 and len(lines) == 1 and lines[0].startswith("airfoil: error: ")
                    and (out is None or not out.exists()))
        self.counts["one_line" if one_line else "non_one_line"] += 1
        if not one_line:
            why = (f"a failed compile left {out}" if out is not None and out.exists()
                   else f"status {rc!r}, stderr {err.getvalue()[-400:]!r}")
            self.failures.append({"argv": list(map(str, argv)), "input": what, "why": why})


def _compile_with(run: _Run, work: Path, name: str, raw: bytes, option: str):
    path = work / name
    path.write_bytes(raw)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    config = [] if option == "--config" else ["--config", "test"]
    run(["compile", *config, option, path, "-o", out], out=out, bad=_not_utf8(raw),
        what=raw[:2000].decode("utf-8", "replace"))


def _linear_folder(work: Path) -> Path:
    from airfoil.cli import main
    out = work / "linear"
    if not out.exists():
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["compile", "--config", "test", "-o", str(out)]) == 0
    return out


def _model_folder(work: Path) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    from compiler.reference import random_llama
    path = work / "model"
    recipe = work / "model_recipe.yaml"
    if not path.exists():
        m = random_llama(heads=2, kv=1, hd=16, vocab=24, inter=32, layers=1, max_pos=16)
        path.mkdir(parents=True)
        save_file({k: v.clone().contiguous() for k, v in m.hf_state_dict().items()},
                  str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(m.shape.to_hf()))
        recipe.write_text(yaml.safe_dump({"weights": [{"match": "*", "format": "int8",
                                                       "group": 32}]}))
    return path, recipe


@functools.cache
def _base_yaml(which: str) -> tuple[bytes, dict]:
    """The valid file a kind mutates (``board``: the ``test`` config; ``recipe``: the
    default recipe), read once: its bytes and its parsed form."""
    from airfoil.config import builtin_config_path
    from compiler.llm_recipe import LINEAR_DEFAULT_RECIPE
    raw = (builtin_config_path("test") if which == "board" else LINEAR_DEFAULT_RECIPE).read_bytes()
    return raw, yaml.safe_load(raw)


def _case(kind: str, run: _Run, work: Path, data) -> None:
    case = work / "case"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    if kind == "board_yaml":
        board = _base_yaml("board")[1]
        _compile_with(run, case, "board.yaml", _yaml(data.draw(mutated(board))), "--config")
    elif kind == "recipe_yaml":
        recipe = _base_yaml("recipe")[1]
        _compile_with(run, case, "recipe.yaml", _yaml(data.draw(mutated(recipe))), "--recipe")
    elif kind == "board_yaml_bytes":
        raw = data.draw(damaged(_base_yaml("board")[0]))
        _compile_with(run, case, "board.yaml", raw, "--config")
    elif kind in ("manifest", "program_bytes"):
        base = _linear_folder(work)
        folder = case / "f"
        shutil.copytree(base, folder)
        if kind == "manifest":
            manifest = json.loads((base / "manifest.json").read_text())
            text = json.dumps(data.draw(mutated(manifest)))
            (folder / "manifest.json").write_text(text)
            run(["run", "--backend", "isa", folder], what=text)
        else:
            raw = (base / "program.afp").read_bytes()
            new = data.draw(damaged(raw))
            (folder / "program.afp").write_bytes(new)
            for argv in (["run", "--backend", "isa", folder], ["disasm", folder]):
                run(argv, bad=new != raw, what=new.hex())
    elif kind == "model_config":
        model, recipe = _model_folder(work)
        folder = case / "m"
        shutil.copytree(model, folder)
        config = json.loads((model / "config.json").read_text())
        text = json.dumps(data.draw(mutated(config)))
        (folder / "config.json").write_text(text)
        out = case / "out"
        run(["compile", folder, "--recipe", recipe, "--config", "sim_llm", "-o", out,
             "--max-prompt", "4"], out=out, what=text)
    else:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")


def fuzz(kind: str, examples: int, work) -> dict:
    """Run ``examples`` seeded cases of ``kind`` in ``work`` (a scratch folder).

    Returns ``{"kind", "cases", "ok", "one_line", "non_one_line", "silently_accepted",
    "failures"}``; ``failures`` lists each defect's arguments, input and reason.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    run = _Run(kind)

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def one(data):
        _case(kind, run, work, data)

    one()
    return {"kind": kind, **run.counts, "failures": run.failures}
