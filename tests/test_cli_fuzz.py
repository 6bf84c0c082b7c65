"""Input fuzzing of the CLI with hypothesis: board YAML, recipes, model ``config.json``,
manifests and program files, each mutated from a valid file (values replaced by odd ones,
keys deleted, bytes flipped, inserted or cut).

Every run must either succeed (status 0) or print exactly one line ``airfoil: error: ...``
with status 2; any other exception is a defect that hypothesis shrinks and reports. A
failed ``compile`` must leave no output folder behind. ``make test`` runs
:data:`EXAMPLES` cases per input kind (seeded, so the same cases every run); set
``AIRFOIL_FUZZ_EXAMPLES`` for a longer search.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from airfoil.cli import main
from airfoil.config import builtin_config_path
from compiler.recipe import DEFAULT_RECIPE
from llmtools import random_llama

#: Cases per input kind in the default run.
EXAMPLES = int(os.environ.get("AIRFOIL_FUZZ_EXAMPLES", "50"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

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
def _mutated(draw, base):
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
def _damaged(draw, raw: bytes):
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


def _one_line_or_ok(capsys, argv, out: Path | None = None) -> int:
    """Run the CLI; status 0, or one ``airfoil: error:`` line with status 2. A failed
    compile leaves no ``out``."""
    rc = main(argv)
    cap = capsys.readouterr()
    if rc != 0:
        lines = cap.err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("airfoil: error: "), \
            (rc, cap.err)
        if out is not None:
            assert not out.exists(), f"a failed compile left {out}"
    return rc


def _yaml(obj) -> bytes:
    return yaml.safe_dump(obj, allow_unicode=True).encode()


def _compile_with(tmp_path, capsys, name: str, raw: bytes, option: str):
    """Write ``raw`` as ``name`` and compile the built-in layer with it as ``option``."""
    path = tmp_path / name
    path.write_bytes(raw)
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    config = [] if option == "--config" else ["--config", "test"]
    _one_line_or_ok(capsys, ["compile", *config, option, str(path), "-o", str(out)], out)


# -- board configs and recipes ---------------------------------------------------------------

BOARD = yaml.safe_load(builtin_config_path("test").read_text())
RECIPE = yaml.safe_load(DEFAULT_RECIPE.read_text())


@FUZZ
@given(board=_mutated(BOARD))
def test_fuzz_board_yaml(tmp_path, capsys, board):
    _compile_with(tmp_path, capsys, "board.yaml", _yaml(board), "--config")


@FUZZ
@given(recipe=_mutated(RECIPE))
def test_fuzz_recipe_yaml(tmp_path, capsys, recipe):
    _compile_with(tmp_path, capsys, "recipe.yaml", _yaml(recipe), "--recipe")


@FUZZ
@given(raw=_damaged(builtin_config_path("test").read_bytes()))
def test_fuzz_board_yaml_bytes(tmp_path, capsys, raw):
    _compile_with(tmp_path, capsys, "board.yaml", raw, "--config")


# -- compiled folders: manifests and programs ------------------------------------------------

@pytest.fixture(scope="module")
def linear_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "linear"
    assert main(["compile", "--config", "test", "-o", str(out)]) == 0
    return out


@pytest.fixture
def folder_copy(linear_folder, tmp_path):
    dst = tmp_path / "f"
    shutil.copytree(linear_folder, dst)
    return dst


@FUZZ
@given(data=st.data())
def test_fuzz_manifest(linear_folder, folder_copy, capsys, data):
    base = json.loads((linear_folder / "manifest.json").read_text())
    (folder_copy / "manifest.json").write_text(json.dumps(data.draw(_mutated(base))))
    _one_line_or_ok(capsys, ["run", "--backend", "isa", str(folder_copy)])


@FUZZ
@given(data=st.data())
def test_fuzz_program_bytes(linear_folder, folder_copy, capsys, data):
    raw = (linear_folder / "program.afp").read_bytes()
    (folder_copy / "program.afp").write_bytes(data.draw(_damaged(raw)))
    for argv in (["run", "--backend", "isa", str(folder_copy)], ["disasm", str(folder_copy)]):
        _one_line_or_ok(capsys, argv)


# -- model folders -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz_model") / "m"
    m = random_llama(heads=2, kv=1, hd=16, vocab=24, inter=32, layers=1, max_pos=16)
    path.mkdir()
    save_file({k: v.clone().contiguous() for k, v in m.hf_state_dict().items()},
              str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(m.shape.to_hf()))
    recipe = path.parent / "r.yaml"
    recipe.write_text(yaml.safe_dump({"weights": [{"match": "*", "format": "int8",
                                                   "group": 32}]}))
    return path, recipe


@FUZZ
@given(data=st.data())
def test_fuzz_model_config(model_folder, tmp_path, capsys, data):
    model, recipe = model_folder
    base = json.loads((model / "config.json").read_text())
    work = tmp_path / "m"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(model, work)
    (work / "config.json").write_text(json.dumps(data.draw(_mutated(base))))
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    _one_line_or_ok(capsys, ["compile", str(work), "--recipe", str(recipe), "--config",
                             "sim_llm", "-o", str(out), "--max-prompt", "4"], out)
