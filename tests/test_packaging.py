"""The wheel carries what the tool reads at run time: board configs, recipes, the shipped
model, design spaces, the Verilator waivers, the testbenches and the bench producers; and
they are found (through importlib.resources) from an installed copy outside the checkout.

The wheel is built from a copy of the sources (``pip wheel --no-deps``, no build
isolation: the environment's setuptools); every non-Python file inside a package folder
must be in it.
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Top-level packages of the distribution (pyproject's ``packages.find``).
PACKAGES = ("airfoil", "bench", "compiler", "explore", "fpga", "hdl", "sim")
_SKIP = shutil.ignore_patterns(".git", ".venv", "build", "__pycache__", "*.egg-info",
                               ".pytest_cache", "sim_build")

#: Run in the installed copy: every shipped file is found inside it.
_PROBE = """
import sys
from pathlib import Path
root = Path(sys.argv[1]).resolve()
from airfoil.config import BUILTIN_CONFIGS, load_config
from airfoil.models import BUILTIN_MODELS
from compiler.llm_recipe import LINEAR_DEFAULT_RECIPE as DEFAULT_RECIPE
from compiler.llm_recipe import load_llm_recipe as load_recipe
from compiler.llm_recipe import LLM_DEFAULT_RECIPE
from explore.space import load_space
import airfoil, bench, sim.rtl, sim.core_harness, sim.tb_decode.rtl, sim.measure.noc
paths = [*BUILTIN_CONFIGS.values(), *BUILTIN_MODELS.values(), DEFAULT_RECIPE,
         LLM_DEFAULT_RECIPE, *sim.core_harness.MEMORY_SOURCES, sim.tb_decode.rtl.TB_DIR,
         sim.measure.noc._TB_DIR, Path(airfoil.__file__), Path(bench.__file__)]
outside = [str(p) for p in paths if root not in Path(p).resolve().parents]
assert not outside, outside
assert "u280" in BUILTIN_CONFIGS and "tiny-llama" in BUILTIN_MODELS
load_config("u280"); load_recipe(DEFAULT_RECIPE); load_space("tiny_speed")
assert (BUILTIN_MODELS["tiny-llama"] / "model.safetensors").is_file()
assert sorted(bench.areas())
print("ok")
"""


def shipped_data() -> set[str]:
    """Non-Python files inside the package folders, relative to the repository."""
    out = set()
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*"):
            if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts:
                out.add(f.relative_to(ROOT).as_posix())
    return out


def test_wheel_ships_and_finds_its_data(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=_SKIP)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", ".", "-w", str(tmp_path / "dist")], cwd=src, check=True)
    wheel, = (tmp_path / "dist").glob("airfoil-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = shipped_data()
    assert {"fpga/boards/u280.yaml", "compiler/recipes/llm_default.yaml",
            "airfoil/models/tiny-llama/model.safetensors", "hdl/core/airfoil_core.vlt",
            "sim/tb/axi_mem.sv", "sim/tb/axi_mem_dpi.cpp",
            "sim/tb_axi_mem/axi_mem_ports_tb.sv", "explore/spaces/tiny_speed.yaml"} <= data
    assert not data - names, f"missing from the wheel: {sorted(data - names)}"
    assert {f"{p}/__init__.py" for p in PACKAGES} <= names

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = subprocess.run([sys.executable, "-c", _PROBE, str(site)], cwd=elsewhere,
                           env={**os.environ, "PYTHONPATH": str(site)},
                           capture_output=True, text=True)
    assert probe.returncode == 0 and probe.stdout.strip() == "ok", probe.stderr[-2000:]
