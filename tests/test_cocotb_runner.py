"""The cocotb runner: shared builds, results back to Python, a waveform kept on failure."""

from pathlib import Path

import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.build import write_verilog
from sim.cocotb_runner import RtlFailure, run_cocotb

pytestmark = pytest.mark.rtl(group="cocotb_runner")


class Counter(wiring.Component):
    en: In(1)
    count: Out(8)

    def elaborate(self, platform):
        m = Module()
        with m.If(self.en):
            m.d.sync += self.count.eq(self.count + 1)
        return m


@pytest.fixture(scope="module")
def counter_v(tmp_path_factory):
    out = tmp_path_factory.mktemp("counter")
    vpath, meta = write_verilog(Counter(), "counter", out)
    assert meta.exists()
    return vpath


def _run(counter_v, tmp_path, expect, seed):
    return run_cocotb(sources=[counter_v], top="counter", test_module="tb_counter",
                      test_dir=Path(__file__).parent, seed=seed, env={"EXPECT": expect},
                      build_root=tmp_path / "sim")


def test_result_comes_back_and_build_is_reused(counter_v, tmp_path):
    assert _run(counter_v, tmp_path, 5, seed=1) == {"count": 5}
    builds = sorted(p.name for p in (tmp_path / "sim").iterdir() if p.is_dir())
    assert _run(counter_v, tmp_path, 5, seed=2) == {"count": 5}
    assert sorted(p.name for p in (tmp_path / "sim").iterdir() if p.is_dir()) == builds


def test_failure_names_seed_and_keeps_a_waveform(counter_v, tmp_path):
    with pytest.raises(RtlFailure) as e:
        _run(counter_v, tmp_path, 99, seed=7)
    msg = str(e.value)
    assert "seed 7" in msg and "waveform" in msg
    wave = Path(msg.rsplit("waveform ", 1)[1])
    assert wave.exists() and wave.suffix in (".fst", ".vcd") and wave.stat().st_size > 0


@pytest.mark.rtl(group="grouping_check")
def test_rtl_groups_reach_the_xdist_scheduler(request):
    """Tests of one Verilator model share an xdist group (conftest.py), so under
    ``--dist loadgroup`` (``make test``) they run on one worker, which builds the model
    once: the scheduler sees the group as the node id's ``@group`` suffix."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("only under pytest-xdist's --dist loadgroup")
    assert request.node.nodeid.endswith("@grouping_check")
