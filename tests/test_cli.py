"""The CLI: compile / run / disasm / demo, and a one-line error for every bad input."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from airfoil.cli import main
from clitools import cli_fails, cli_ok
from airfoil.config import builtin_config_path
from airfoil.isa import INSTR_BITS, ISA_VERSION, Opcode
from airfoil.program import HEADER_SIZE, Program, read_program

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--n", "37", "--k", "192", "--group", "32"]




@pytest.fixture
def folder(tmp_path, capsys):
    out = tmp_path / "lin"
    cli_ok(capsys, ["compile", "--config", "test", "-o", str(out)] + SMALL)
    return out


def _checksum(text):
    return text.split("checksum ")[1].split()[0]


def test_compile_run_disasm(folder, capsys):
    assert sorted(p.name for p in folder.iterdir()) == \
        ["manifest.json", "program.afp", "program.s", "weights.bin"]
    torch_out = cli_ok(capsys, ["run", "--backend", "torch", str(folder), "--config", "test"])
    isa_out = cli_ok(capsys, ["run", "--backend", "isa", str(folder), "--config", "test"])
    assert "37 outputs int8" in torch_out and "cycles " in isa_out
    assert _checksum(torch_out) == _checksum(isa_out)
    dis = cli_ok(capsys, ["disasm", str(folder)])
    n = len(read_program(folder / "program.afp"))
    body = [ln for ln in dis.splitlines() if not ln.startswith(";")]
    assert len(body) == n
    assert "MV" in dis and "wait=LOAD" in dis and body[-1].split()[1] == "SYS"
    assert cli_ok(capsys, ["disasm", str(folder / "program.afp"), "--config", "test"]) == dis


def test_run_with_input_files(folder, tmp_path, capsys):
    x = np.arange(192, dtype=np.int64) % 255 - 127
    np.save(tmp_path / "x.npy", x)
    a = cli_ok(capsys, ["run", "--backend", "isa", str(folder), "--input", str(tmp_path / "x.npy"),
                     "--save", str(tmp_path / "y.npy")])
    b = cli_ok(capsys, ["run", "--backend", "torch", str(folder), "--input",
                     str(tmp_path / "x.npy")])
    assert _checksum(a) == _checksum(b)
    assert np.load(tmp_path / "y.npy").shape == (37,)
    np.save(tmp_path / "xf.npy", np.linspace(-1, 1, 192))
    cli_ok(capsys, ["run", "--backend", "isa", str(folder), "--input", str(tmp_path / "xf.npy")])
    np.save(tmp_path / "short.npy", np.zeros(5, dtype=np.int8))
    cli_fails(capsys, ["run", str(folder), "--input", str(tmp_path / "short.npy")], "K=192")


def test_layer_files(tmp_path, capsys):
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(21, 96, generator=g), torch.randn(21, generator=g)
    np.savez(tmp_path / "l.npz", weight=w.numpy(), bias=b.numpy())
    torch.save({"fc.weight": w, "fc.bias": b}, tmp_path / "l.pt")
    sums = []
    for f in ("l.npz", "l.pt"):
        out = tmp_path / f.replace(".", "_")
        cli_ok(capsys, ["compile", "--layer", str(tmp_path / f), "--group", "32", "-o", str(out)])
        sums.append(_checksum(cli_ok(capsys, ["run", str(out), "--backend", "isa"])))
    assert sums[0] == sums[1]
    np.savez(tmp_path / "bad.npz", w=w.numpy())
    cli_fails(capsys, ["compile", "--layer", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "x")],
           "exactly one 'weight'")
    cli_fails(capsys, ["compile", "--layer", str(tmp_path / "l.txt"), "-o", str(tmp_path / "x")],
           "not found")


def test_demo(tmp_path, capsys):
    out = cli_ok(capsys, ["demo", "--config", "test", "-o", str(tmp_path / "demo"), "--no-rtl"])
    assert "all backends agree bit for bit" in out
    assert "isa" in out and "torch" in out
    assert "LLM: torch, isa generate the same tokens" in out     # tiny LLM


def test_rtl_backend_missing_is_one_line(folder, capsys, monkeypatch):
    from airfoil.cli import cmd_run

    real = cmd_run.importlib.import_module

    def missing(name, *args):
        if name.endswith(".backend_rtl"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *args)
    monkeypatch.setattr(cmd_run.importlib, "import_module", missing)
    cli_fails(capsys, ["run", "--backend", "rtl", str(folder)], "rtl backend is not available")
    out = cli_ok(capsys, ["demo", "-o", str(folder.parent / "demo"), "--no-llm"])
    assert "rtl skipped" in out and "all backends agree bit for bit" in out


# -- bad input: one line, exit status 2, no half-written folder ----------------------------

def _config_file(tmp_path, mutate):
    data = yaml.safe_load(builtin_config_path("test").read_text())
    mutate(data)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(lanez=8), "unknown field 'lanez'"),
    (lambda d: d["memory"].update(burst=4), "unknown field 'memory.burst'"),
    (lambda d: d.update(chains="four"), "field 'chains' must be int"),
    (lambda d: d["buffers"].update(act_bytes=1.5), "field 'buffers.act_bytes' must be int"),
])
def test_bad_config(tmp_path, capsys, mutate, message):
    cfg = _config_file(tmp_path, mutate)
    cli_fails(capsys, ["compile", "--config", cfg, "-o", str(tmp_path / "o")] + SMALL, message)
    assert not (tmp_path / "o").exists()


def test_k_not_multiple_of_group_is_padded(tmp_path, capsys):
    """K = 100 with groups of 32: the weights are padded with zero columns to 128, the
    input with zeros; golden and ISA simulator agree on the layer of 100 inputs."""
    out = cli_ok(capsys, ["compile", "-o", str(tmp_path / "o"), "--n", "8", "--k", "100",
                          "--group", "32"])
    assert "linear 8 x 100 (K padded to 128) int4 g32" in out
    sums = [cli_ok(capsys, ["run", "--backend", b, str(tmp_path / "o")]).split("checksum ")[1]
            .split()[0] for b in ("torch", "isa")]
    assert sums[0] == sums[1]


def test_bad_recipe(tmp_path, capsys):
    r = tmp_path / "r.yaml"
    r.write_text("weights:\n  - {match: '*', format: int4, groupsize: 32}\n")
    cli_fails(capsys, ["compile", "--recipe", str(r), "-o", str(tmp_path / "o")] + SMALL,
           "weights[0].groupsize is not a known key")
    r.write_text("weights:\n  - {match: '*', format: int4, group: big}\n")
    cli_fails(capsys, ["compile", "--recipe", str(r), "-o", str(tmp_path / "o")],
           "weights[0].group must be a positive integer, not 'big'")
    r.write_text("wformat: int4\n")
    cli_fails(capsys, ["compile", "--recipe", str(r), "-o", str(tmp_path / "o")],
           "unknown section 'wformat'")
    assert not (tmp_path / "o").exists()


def _damage(folder, fn):
    p = folder / "program.afp"
    raw = bytearray(p.read_bytes())
    fn(raw)
    p.write_bytes(bytes(raw))


def _bad_opcode(raw):
    prog = Program.from_bytes(bytes(raw))
    words = list(prog.words)
    words[3] = (words[3] & ~0xF) | 0xF
    raw[:] = Program(words, prog.config_hash).to_bytes()      # valid CRC, bad opcode


def _reserved_bit(raw):
    prog = Program.from_bytes(bytes(raw))
    words = list(prog.words)
    words[0] |= 1 << (INSTR_BITS - 1)                         # beyond every body's fields
    raw[:] = Program(words, prog.config_hash).to_bytes()


@pytest.mark.parametrize("damage, message", [
    (lambda r: r.__setitem__(slice(0, 4), b"ELF\x7f"), "bad magic"),
    (lambda r: r.__setitem__(HEADER_SIZE + 40, r[HEADER_SIZE + 40] ^ 0x10), "checksum"),
    (lambda r: r.__setitem__(4, ISA_VERSION + 1), f"ISA version {ISA_VERSION + 1}"),
    (_bad_opcode, "unknown opcode 15"),
    (_reserved_bit, "reserved bit 255 is set"),
    (lambda r: r.__setitem__(26, 1), "reserved header bytes 24..31 are not zero"),
])
@pytest.mark.parametrize("command", ["run", "disasm"])
def test_bad_program(folder, capsys, damage, message, command):
    _damage(folder, damage)
    argv = ["run", "--backend", "isa", str(folder), "--config", "test"] if command == "run" \
        else ["disasm", str(folder)]
    cli_fails(capsys, argv, message)


def test_bad_opcode_survives_header_checks(folder, capsys):
    _damage(folder, _bad_opcode)
    prog = read_program(folder / "program.afp")          # header and CRC are fine
    assert prog.words[3] & 0xF == 0xF and 0xF not in {o.value for o in Opcode}
    cli_fails(capsys, ["run", "--backend", "isa", str(folder)], "ILLEGAL_OPCODE")


def test_program_for_another_config(folder, capsys):
    for backend in ("isa", "torch"):
        cli_fails(capsys, ["run", "--backend", backend, str(folder), "--config", "u280"],
               "recompile for this config")
    cli_fails(capsys, ["disasm", str(folder), "--config", "u280"], "compiled for config hash")


def test_argument_errors_are_one_line(capsys):
    cli_fails(capsys, [], "the following arguments are required: COMMAND")
    cli_fails(capsys, ["frob"], "invalid choice: 'frob'")
    cli_fails(capsys, ["compile"], "compile: the following arguments are required: -o")
    cli_fails(capsys, ["run", "x", "--backend", "fpga"], "run: argument --backend")
    assert main(["--help"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["compile", "-o", "o", "--n", "1000000000"], "--n: 1000000000 is outside 1 .. 65535"),
    (["compile", "-o", "o", "--seed", "1" * 20], "--seed: 11111111111111111111 is outside"),
    (["run", "x", "--seed", "-1"], "--seed: -1 is outside 0 .. "),
    (["compile", "-o", "o", "--k", "2e3"], "--k: '2e3' is not an integer"),
    (["compile", "-o", "o", "--n", "65535", "--k", "65535"],
     "built-in layer of --n 65535 x --k 65535 weights is over the 134217728 accepted"),
])
def test_numbers_out_of_range_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    cli_fails(capsys, argv, message)
    assert not (tmp_path / "o").exists()


def test_output_paths_the_system_refuses(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    cli_fails(capsys, ["compile", "-o", str(tmp_path / "file" / "sub")], str(tmp_path / "file"))
    cli_fails(capsys, ["compile", "-o", str(tmp_path / ("x" * 300))], "File name too long")


@pytest.mark.parametrize("text, message", [
    (b"name: \xff\xfe\n", "is not UTF-8 text (byte 6)"),
    (b"a: &a [1, 2]\nb: &b [*a, *a]\nc: [*b, *b]\n", "aliases (*name) are not accepted"),
    (b"name: [unclosed\n", "not valid YAML at line 2"),
])
def test_unreadable_config_and_recipe_files(tmp_path, capsys, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(text)
    cli_fails(capsys, ["compile", "--config", str(bad), "-o", str(tmp_path / "o")] + SMALL,
              message)
    cli_fails(capsys, ["compile", "--recipe", str(bad), "-o", str(tmp_path / "o")] + SMALL,
              message)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("image"), "lacks key 'image'"),
    (lambda m: m.update(image=None), "manifest image None is not a file name"),
    (lambda m: m.update(image="/dev/zero"), "is not a file name in the folder"),
    (lambda m: m.update(image_bytes="8"), "image_bytes '8' is not a size"),
    (lambda m: m.update(image_bytes=m["image_bytes"] - 1), "is larger than"),
    (lambda m: m.update(image_bytes=m["image_bytes"] + 1), "truncated or stale"),
])
def test_bad_manifest_image(folder, capsys, change, message):
    import json
    mf = folder / "manifest.json"
    m = json.loads(mf.read_text())
    change(m)
    mf.write_text(json.dumps(m))
    cli_fails(capsys, ["run", "--backend", "isa", str(folder)], message)


def test_manifest_not_utf8(folder, capsys):
    (folder / "manifest.json").write_bytes(b'{"format": "\xff"}')
    cli_fails(capsys, ["run", "--backend", "isa", str(folder)], "is not UTF-8 text")


def test_missing_folder(tmp_path, capsys):
    cli_fails(capsys, ["run", str(tmp_path / "nope")], "not found")
    cli_fails(capsys, ["disasm", str(tmp_path / "nope")], "not found")


def test_subprocess_entry_point_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "airfoil", "compile", "-o", str(tmp_path / "o"),
                        "--n", "8", "--k", "100", "--group", "48"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "airfoil: error: group size 48 is not built into config 'test' (accepted: 32, 64, "
        "128)"]
    assert not (tmp_path / "o").exists()
