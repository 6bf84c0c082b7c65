"""``airfoil run --backend xrt`` against a stand-in for XRT's ``pyxrt``: buffers with a host
and a device copy (so a missing sync loses data), a kernel whose run executes the ISA
simulator on the device copies, and the result registers of :mod:`airfoil.kernel`. The
outputs must match the ISA simulator bit for bit; faults and a missing pyxrt are one-line
errors."""

import sys
import types

import numpy as np
import pytest
import torch

from airfoil import csr as csrmap
from airfoil import isa
from airfoil import kernel as kmap
from airfoil.config import load_config
from airfoil.folder import load_folder
from airfoil.program import HEADER_SIZE, Program

from clitools import cli_fails, cli_ok


class _Bo:
    normal = 0

    def __init__(self, device, size, flags, group):
        self.host = bytearray(size)
        self.dev = bytearray(size)
        self.group = group
        device.calls.append(("bo", size, group))

    def write(self, raw, offset):
        self.host[offset:offset + len(raw)] = raw

    def sync(self, direction, size, offset):
        src, dst = (self.host, self.dev) if direction == "to" else (self.dev, self.host)
        dst[offset:offset + size] = src[offset:offset + size]

    def read(self, size, offset):
        return np.frombuffer(bytes(self.host[offset:offset + size]), dtype=np.int8)


class _Run:
    def __init__(self, state):
        self.state = state

    def wait(self):
        return self.state


class _Kernel:
    cu_access_mode = types.SimpleNamespace(exclusive="exclusive", shared="shared")

    def __init__(self, device, uuid, name, mode):
        self.device, self.regs = device, {}
        device.calls.append(("kernel", uuid, name, mode))

    def group_id(self, index):
        return index            # the bank of argument ``index``

    def __call__(self, *values):
        """The core on the device copies: the program, the channels' buffers laid end to
        end as one image (channel c's data base where its buffer starts)."""
        from sim.isa_sim import IsaSim
        config = self.device.config
        args = kmap.kernel_args(config.memory.channels)
        assert len(values) == len(args)
        named = dict(zip((a.name for a in args), values))
        for a in args:
            assert isinstance(named[a.name], _Bo) == a.is_pointer, a.name
            if a.is_pointer:
                assert named[a.name].group == args.index(a), f"{a.name} in the wrong bank"
        prog = named["program"].dev
        n = isa.INSTR_BYTES
        words = [int.from_bytes(prog[HEADER_SIZE + n * i:HEADER_SIZE + n * (i + 1)], "little")
                 for i in range(named["prog_count"])]
        bos = list(dict.fromkeys(named[f"data{c}"] for c in range(config.memory.channels)))
        starts, image = {}, bytearray()
        for bo in bos:
            starts[id(bo)] = len(image)
            image += bo.dev
        offsets = [starts[id(named[f"data{c}"])] for c in range(config.memory.channels)]
        status = csrmap.STATUS_DONE
        err_pc = 0
        try:
            stats = IsaSim(config, image, offsets).run(words)
        except Exception as e:          # a ProgramError with the core's error code
            status |= csrmap.STATUS_ERROR | e.code.value << csrmap.STATUS_ERR_CODE_SHIFT
            err_pc, stats = e.index, {"cycles": 0}
        for bo in bos:
            bo.dev[:] = image[starts[id(bo)]:starts[id(bo)] + len(bo.dev)]
        regs = {r.name: r.offset for r in kmap.status_registers(config.memory.channels)}
        self.regs = {regs["status"]: status, regs["err_pc"]: err_pc,
                     regs["cycles"]: stats["cycles"] & 0xFFFFFFFF,
                     regs["cycles"] + 4: stats["cycles"] >> 32}
        self.device.calls.append(("run", len(words)))
        return _Run("ERT_CMD_STATE_COMPLETED")

    def read_register(self, offset):
        return self.regs[offset]


def _fake_pyxrt(config):
    mod = types.ModuleType("pyxrt")
    calls = []

    class device:
        def __init__(self, index):
            self.calls, self.config = calls, config
            calls.append(("device", index))

        def load_xclbin(self, path):
            calls.append(("xclbin", path))
            return "uuid"

    mod.device, mod.kernel, mod.bo = device, _Kernel, _Bo
    mod.xclBOSyncDirection = types.SimpleNamespace(XCL_BO_SYNC_BO_TO_DEVICE="to",
                                                   XCL_BO_SYNC_BO_FROM_DEVICE="from")
    mod.calls = calls
    return mod


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from compiler.linear import compile_linear
    tmp = tmp_path_factory.mktemp("xrt_host")
    out = {}
    for name, stream in (("test", False), ("test_mc", True)):
        config = load_config(name)
        gen = torch.Generator().manual_seed(7)
        compile_linear(torch.randn(24, 256, generator=gen), torch.randn(24, generator=gen),
                       config, tmp / name, wformat="int4", group=32, stream=stream)
        out[name] = (config, load_folder(tmp / name, config))
    return out


@pytest.mark.parametrize("name", ["test", "test_mc"])
def test_xrt_run_matches_isa(folders, name, capsys, monkeypatch, tmp_path):
    from sim.isa_sim import run_isa
    config, folder = folders[name]
    fake = _fake_pyxrt(config)
    monkeypatch.setitem(sys.modules, "pyxrt", fake)
    save = tmp_path / "y.npy"
    out = cli_ok(capsys, ["run", str(folder.path), "--backend", "xrt", "--xclbin", "k.xclbin",
                          "--config", name, "--save", str(save)])
    want, stats = run_isa(folder, config)
    assert torch.equal(torch.from_numpy(np.load(save)), want)
    assert f"cycles {stats['cycles']}" in out
    assert ("xclbin", "k.xclbin") in fake.calls
    assert ("kernel", "uuid", kmap.KERNEL_NAME, "exclusive") in fake.calls
    assert ("run", len(folder.program.words)) in fake.calls
    if name == "test_mc":
        assert len(set(folder.channel_offsets)) == config.memory.channels
        assert sum(1 for c in fake.calls if c[0] == "bo") == 1 + config.memory.channels


def test_xrt_fault_is_one_line_error(folders, capsys, monkeypatch, tmp_path):
    config, folder = folders["test"]
    bad = tmp_path / "bad"
    import shutil
    shutil.copytree(folder.path, bad)
    words = list(folder.program.words)
    words[2] = 0xF
    (bad / "program.afp").write_bytes(Program(words, folder.program.config_hash).to_bytes())
    monkeypatch.setitem(sys.modules, "pyxrt", _fake_pyxrt(config))
    cli_fails(capsys, ["run", str(bad), "--backend", "xrt", "--xclbin", "k.xclbin",
                       "--config", "test"],
              f"{isa.ErrorCode.ILLEGAL_OPCODE.name} at instruction 2")


def test_xrt_without_pyxrt_is_one_line_error(folders, capsys, monkeypatch):
    _, folder = folders["test"]
    monkeypatch.setitem(sys.modules, "pyxrt", None)      # import pyxrt raises ImportError
    cli_fails(capsys, ["run", str(folder.path), "--backend", "xrt", "--xclbin", "k.xclbin",
                       "--config", "test"], "needs XRT's Python module 'pyxrt'")


def test_xrt_without_xclbin_is_one_line_error(folders, capsys):
    _, folder = folders["test"]
    cli_fails(capsys, ["run", str(folder.path), "--backend", "xrt", "--config", "test"],
              "needs --xclbin")


def test_channel_regions():
    from airfoil.cli.backend_xrt import channel_regions
    assert channel_regions([0, 100, 300], 400) == [(0, 100), (100, 300), (300, 400)]
    assert channel_regions([0, 0], 50) == [(0, 50), (0, 50)]
