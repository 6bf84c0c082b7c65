"""The FuseSoC core file of ``airfoil verilog``: its lint target runs Verilator through
fusesoc and edalize, clean on the emitted core and failing on a lint error."""

import shutil
import subprocess
from pathlib import Path

import pytest

from airfoil.config import load_config

pytestmark = pytest.mark.rtl(group="fusesoc")


@pytest.fixture(scope="module")
def emitted(tmp_path_factory):
    from airfoil.cli.backend_rtl import emit_core
    from fpga.fusesoc import write_core_file
    config = load_config("test")
    paths = emit_core(config, tmp_path_factory.mktemp("fusesoc"))
    return config, paths, write_core_file(config, paths)


def _lint(cores_root: Path, config, cwd: Path) -> subprocess.CompletedProcess:
    from fpga.fusesoc import lint_command
    return subprocess.run(lint_command(config, cores_root), cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_core_file_names_the_emitted_files(emitted):
    import yaml
    config, paths, core = emitted
    text = core.read_text()
    assert text.startswith("CAPI=2:\n")
    doc = yaml.safe_load(text)
    files = doc["filesets"]["rtl"]["files"]
    names = [f if isinstance(f, str) else next(iter(f)) for f in files]
    assert names == [Path(p).name for p in paths["sources"]] + [paths["waivers"].name]
    assert doc["targets"]["lint"]["tools"]["verilator"]["mode"] == "lint-only"


def test_fusesoc_lint_target_is_clean(emitted, tmp_path):
    config, paths, _ = emitted
    proc = _lint(paths["dir"], config, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_fusesoc_lint_target_fails_on_a_lint_error(emitted, tmp_path):
    config, paths, _ = emitted
    bad = tmp_path / "cores"
    shutil.copytree(paths["dir"], bad)
    ram = bad / paths["ram"].name
    text = ram.read_text()
    assert text.rstrip().endswith("endmodule")
    # An unused signal in the hand-written RAM: -Wall's UNUSEDSIGNAL, not waived there.
    ram.write_text(text.rstrip()[:-len("endmodule")] +
                   "    wire [3:0] lint_probe = 4'd1;\nendmodule\n")
    proc = _lint(bad, config, tmp_path)
    assert proc.returncode != 0
