"""The wheel carries what the tool reads at run time: board configs, recipes, the shipped
model, the Verilator waivers and the testbenches; and they are found from an installed
copy outside the checkout (no path walks up to a repository)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

NEEDED = ["fpga/boards/u280.yaml", "fpga/boards/test.yaml", "compiler/recipes/llm_default.yaml",
          "compiler/recipes/linear_default.yaml", "airfoil/models/tiny-llama/config.json",
          "airfoil/models/tiny-llama/model.safetensors",
          "airfoil/models/tiny-llama/tokenizer.json", "hdl/core/airfoil_core.vlt",
          "sim/tb/core_tb.py", "sim/tb/axi_mem.sv", "sim/tb/axi_mem_dpi.cpp",
          "sim/tb_axi_mem/axi_mem_ports_tb.sv"]


def test_wheel_ships_and_finds_its_data(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", "sim_build", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(src)], check=True,
                   capture_output=True)
    wheel = next((tmp_path / "dist").glob("airfoil-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [n for n in NEEDED if n not in names]
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import airfoil, sys; from airfoil.config import BUILTIN_CONFIGS, load_config;"
             "from airfoil.models import BUILTIN_MODELS; from compiler.recipe import "
             "DEFAULT_RECIPE; from compiler.llm_recipe import LLM_DEFAULT_RECIPE;"
             "print(airfoil.__file__); print(sorted(BUILTIN_CONFIGS));"
             "print(load_config('u280').name, sorted(BUILTIN_MODELS),"
             "DEFAULT_RECIPE.is_file(), LLM_DEFAULT_RECIPE.is_file())")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(site)}).stdout.splitlines()
    assert out[0].startswith(str(site))
    assert "u280" in out[1] and "test_decode" in out[1]
    assert out[2] == "u280 ['tiny-llama'] True True"
