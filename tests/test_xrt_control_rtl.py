"""The Vitis kernel adapter under Verilator and cocotb, driven as XRT drives a kernel: the
arguments and ap_start run a program bit-exact against the golden and raise ap_done and
the interrupt; a faulting program ends in ap_done with ERROR in the status register."""

import numpy as np
import pytest
import torch

from airfoil import isa
from airfoil import kernel as kmap
from airfoil.config import load_config
from airfoil.folder import OUT_DTYPES, load_folder
from airfoil.program import Program

pytestmark = pytest.mark.rtl(group="xrt_control")

ILLEGAL_PC = 3


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from compiler.linear import compile_linear
    from fpga.alveo import write_package
    from sim.rtl import RtlCase
    from sim.xrt_rtl import run_kernel

    config = load_config("test")
    tmp = tmp_path_factory.mktemp("xrt")
    paths = write_package(config, tmp / "kernel")
    gen = torch.Generator().manual_seed(5)
    compile_linear(torch.randn(21, 96, generator=gen), torch.randn(21, generator=gen),
                   config, tmp / "linear", wformat="int4", group=32, out_format="int16",
                   seed=1)
    folder = load_folder(tmp / "linear", config)
    words = list(folder.program.words)
    words[ILLEGAL_PC] = 0xF
    nbytes = folder.n * folder.out_bits // 8
    cases = [RtlCase(program=p.to_bytes(), image=bytes(folder.image), seed=s,
                     read_back={"out": (folder.manifest["output"]["addr"], nbytes)},
                     max_cycles=200_000)
             for s, p in ((1, folder.program), (2, Program(words, folder.program.config_hash)))]
    out = run_kernel(verilog=[paths["core"], paths["ram"]], meta=paths["meta"],
                     config=config, cases=cases, build_root="build/sim")
    return {"ok": out[0], "illegal": out[1], "folder": folder}


def test_run_matches_golden_and_raises_ap_done(results):
    from sim.golden import run_golden
    r, folder = results["ok"], results["folder"]
    assert r["idle_ap_ctrl"] & kmap.AP_IDLE
    assert not r["busy_ap_ctrl"] & kmap.AP_IDLE
    assert r["ap_ctrl"] & kmap.AP_DONE and r["ap_ctrl"] & kmap.AP_IDLE
    assert not r["ap_ctrl"] & kmap.AP_START
    assert not r["ap_ctrl_after"] & kmap.AP_DONE, "ap_done must clear on read"
    assert r["done"] and not r["error"] and r["cycles"] > 0
    assert r["interrupt"] == 1 and r["isr"] & 1 and r["interrupt_cleared"]
    assert not r["protocol_errors"]
    dt = np.dtype(OUT_DTYPES[folder.out_bits])
    got = torch.from_numpy(np.frombuffer(r["reads"]["out"], dtype=dt).astype(np.int64))
    assert torch.equal(got, run_golden(folder))


def test_illegal_instruction_ends_with_error_status(results):
    r = results["illegal"]
    assert r["ap_ctrl"] & kmap.AP_DONE
    assert r["done"] and r["error"]
    assert isa.ErrorCode(r["err_code"]) == isa.ErrorCode.ILLEGAL_OPCODE
    assert r["err_pc"] == ILLEGAL_PC
