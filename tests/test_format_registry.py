"""The format registry (airfoil/format_registry.py): every format table derives from it,
and a format registered in one place flows through the recipe checks, the compiler, the
packer, the golden model, the ISA simulator and the RTL unpacker, bit-exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from airfoil import bitmod, format_registry as fr
from airfoil.config import load_config
from airfoil.errors import CompileError, ConfigError
from airfoil.folder import FOLDER_FORMAT, load_folder
from airfoil.formats import FORMAT_BITS, FORMAT_BY_NAME
from airfoil.isa import WeightFormat
from airfoil.packing import (TAG_BITS, TAG_BY_NAME, RecordTag, StreamGeometry,
                             core_stream_geometry, decode_weights, encode_weights,
                             pack_records, parse_stream, read_records, record_tag)
from compiler.linear import compile_linear
from compiler.llm_recipe import parse_llm_recipe
from hdl.decode_unit.unpacker import Unpacker
from hdl.pe.kinds import KINDS, kinds_running, tag_value_bits
from sim.golden import run_golden
from sim.isa_sim import run_isa
from sim.tb_decode.amsim import run_amaranth
from sim.tb_decode.engine import StreamEngine
from sim.tb_decode.stimulus import make_case, random_records

#: A 3-bit codebook format, asymmetric (7 is there, -7 is not), on a tag above the old
#: 4-bit tag field.
TOY = fr.FormatSpec("toy3", 3, "codebook", codebook=(0, 1, 2, 7, -1, -2, -3, -5), tag=40)


@pytest.fixture
def toy():
    """The toy format, registered for one test."""
    with fr.registered(TOY) as spec:
        yield spec


# -- the registry and what derives from it ------------------------------------------------

def test_enums_and_tables_derive_from_the_registry():
    for spec in fr.all_formats():
        assert fr.by_name(spec.name) is spec
        if spec.streamed:
            assert fr.by_tag(spec.tag) is spec
            assert TAG_BITS[RecordTag[spec.enum_name]] == spec.code_bits
            assert all(TAG_BY_NAME[n] is RecordTag(spec.tag) for n in spec.names)
        if spec.tile:
            wf = WeightFormat(spec.isa_code)
            assert fr.by_isa_code(wf) is spec and FORMAT_BITS[wf] == spec.code_bits
            assert FORMAT_BY_NAME[spec.name] is wf
        if spec.bitmod_code is not None:
            f = bitmod.BitModFormat(spec.bitmod_code)
            assert bitmod.values(f) == spec.values() and bitmod.code_bits(f) == spec.code_bits
    assert {t.value for t in RecordTag} == {0} | {s.tag for s in fr.streamed_formats()}
    assert RecordTag.as_shape().width == fr.TAG_FIELD_BITS == 6
    assert WeightFormat.STREAM.value == fr.ISA_STREAM_CODE
    for kind in KINDS.values():
        assert kind.tile_formats == tuple(s.name for s in fr.tile_formats()
                                          if kind.name in s.tile_pe_kinds)
    assert tag_value_bits("fp4_ea_p") == fr.by_name("fp4_ea_p").value_bits == 6
    assert tag_value_bits("ovp") == 8
    assert tag_value_bits("uint4z") == 5                      # codes 0..15 minus 0..15
    assert kinds_running("uint4z") == ("dsp", "bitserial")
    assert kinds_running("int8") == ("dsp", "bitserial")      # 8-bit values: not lut
    assert kinds_running("fp3_er_p") == ("dsp", "bitserial", "lut")


def test_numbering_is_unchanged():
    """The codes of the built-in formats are those of the ISA and of older streams."""
    assert {f.name: f.value for f in WeightFormat} == {
        "INT4": 0, "INT8": 1, "INT2": 2, "INT3": 3, "STREAM": 4}
    assert [t.name for t in RecordTag] == [
        "PAD", "INT2", "INT3", "INT4", "INT8", "OVP4", "INT6", "FP4_ER_P", "FP4_ER_N",
        "FP4_EA_P", "FP4_EA_N", "FP3_ER_P", "FP3_ER_N", "FP3_EA_P", "FP3_EA_N", "UINT4Z"]
    assert [t.value for t in RecordTag] == list(range(16))
    assert [f.value for f in bitmod.BitModFormat] == list(range(13))
    assert bitmod.values("fp4_er_n")[8] == -10 and bitmod.values("fp3_ea_p")[4] == 6


def test_registration_refuses_clashes_and_cleans_up(toy):
    with pytest.raises(ValueError, match="tag already taken by toy3"):
        fr.register(fr.FormatSpec("other", 3, tag=40))
    with pytest.raises(ValueError, match="name already taken by int4"):
        fr.register(fr.FormatSpec("int4", 4, tag=41))
    with pytest.raises(ValueError, match="codebook of 3-bit codes has 8 entries"):
        fr.FormatSpec("bad", 3, "codebook", codebook=(0, 1), tag=42)
    with pytest.raises(ValueError, match="tag must be in 1..63"):
        fr.FormatSpec("bad", 3, tag=64)
    with pytest.raises(ValueError, match="built-in"):
        fr.unregister(fr.by_name("int4"))
    assert fr.by_tag(40) is toy


def test_toy_is_gone_after_the_block():
    with fr.registered(TOY):
        assert fr.find_by_name("toy3") is TOY
    assert fr.find_by_name("toy3") is None
    with pytest.raises(KeyError):
        fr.by_tag(40)
    with pytest.raises(CompileError, match="unknown packed weight format 'toy3'"):
        record_tag("toy3")


def test_spec_encode_decode_quantize(toy):
    vals = np.array(toy.codebook)
    codes = toy.encode(vals)
    assert codes.tolist() == [0, 1, 2, 3, -4, -3, -2, -1]       # signed 3-bit
    assert toy.decode(codes).tolist() == vals.tolist()
    assert toy.decode(codes & 7).tolist() == vals.tolist()
    with pytest.raises(CompileError, match="weight 3 is not a TOY3 value"):
        toy.encode([3])
    # nearest value of w / scale; ties go to the lower value
    w = np.array([[0.0, 0.4, 0.5, 1.5, 4.5, 100.0, -2.5, -4.0, -100.0]])
    assert toy.quantize(w, np.array([1.0])).tolist() == [[0, 0, 0, 1, 2, 7, -3, -5, -5]]
    assert toy.value_bits == 4 and kinds_running(toy) == ("dsp", "bitserial", "lut")
    int3 = fr.by_name("int3")
    assert int3.quantize(np.array([[3.6, -3.6, 0.5]]), np.array([1.0])).tolist() == \
        [[3, -3, 0]]


# -- one registration, every consumer ----------------------------------------------------

def test_toy_packs_and_reads_back(toy):
    g = StreamGeometry(word_bits=128, lanes=8, rows=4)
    rng = np.random.default_rng(3)
    recs = random_records(g, rng, 12, tags=["toy3", "int4", "fp3_er_p"], sparsity=(0, 2))
    assert any(rc.tag.value == 40 for rc in recs)
    raw = pack_records(g, recs)
    back = parse_stream(g, raw)
    assert [(a.tag.value, a.group, a.nm) for a in back] == \
        [(r.tag.value, r.group, r.nm) for r in recs]
    assert all(np.array_equal(a.q, r.q) for a, r in zip(back, recs))
    # The header: the 6-bit tag first, then the group code at bits 6..7.
    first = int.from_bytes(raw[:2], "little")
    assert first & 63 == recs[0].tag.value
    assert (first >> 6) & 3 == {32: 0, 64: 1, 128: 2}[recs[0].group]
    assert encode_weights(40, [7, -5]).tolist() == [3, -1]
    assert decode_weights(40, [3, -1]).tolist() == [7, -5]


def test_toy_through_the_rtl_unpacker(toy):
    """The unpacker elaborated with the toy format decodes it from its codebook table,
    beat for beat as the reference reader; without it, the record is malformed."""
    g = StreamGeometry(word_bits=128, lanes=8, rows=4)
    rng = np.random.default_rng(11)
    tags = ["toy3", "fp3_ea_n", "int3", "int4"]
    recs = random_records(g, rng, 10, tags=tags, sparsity=(0, 0, 1, 2))
    assert sum(rc.tag.value == 40 for rc in recs) >= 2
    words, beats = make_case(g, [recs])
    res = run_amaranth(Unpacker(geometry=g, tags=tags),
                       StreamEngine(words, beats, seed=1, idle=0.2, stall=0.2,
                                    max_cycles=20 * len(words) + 1000))
    assert res["errors"] == [] and res["error_flag"] == 0
    toy_only = [rc for rc in recs if rc.tag.value == 40][:1]
    words, beats = make_case(g, [toy_only])
    res = run_amaranth(Unpacker(geometry=g, tags=["int4"]),
                       StreamEngine(words, [], seed=0, max_cycles=20 * len(words) + 200))
    assert res["error_flag"] == 1


def test_toy_compiles_and_the_backends_agree(toy, tmp_path):
    """A config listing the toy format accepts it (recipe and compiler); the compiled
    folder's records carry its tag and values; golden == ISA simulator, bit-exactly."""
    base = load_config("test_decode")
    with pytest.raises(CompileError, match="'toy3' is not built in config"):
        compile_linear(torch.zeros(8, 64), None, base, tmp_path / "no", wformat="toy3",
                       group=32, stream=True)
    cfg = dataclasses.replace(base, weight_formats=base.weight_formats + ("toy3",))
    assert "toy3" in cfg.stream_formats and cfg.decode_unit
    recipe = parse_llm_recipe({"weights": [{"match": "*", "format": "toy3", "group": 32}]})
    n, k = 2 * cfg.chains + 3, 96
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(5))
    manifest = compile_linear(w, None, cfg, tmp_path / "f", seed=5, recipe=recipe)
    assert manifest["format"] == FOLDER_FORMAT
    folder = load_folder(tmp_path / "f", cfg)
    gold = run_golden(folder)
    res, _ = run_isa(folder, cfg)
    assert torch.equal(res, gold)
    x = torch.randint(-128, 128, (k,), generator=torch.Generator().manual_seed(6))
    assert torch.equal(run_isa(folder, cfg, x)[0], run_golden(folder, x))
    # The stream holds toy records only, with the toy's values.
    geom = core_stream_geometry(cfg)
    image = (tmp_path / "f" / "weights.bin").read_bytes()
    seen = set()
    layer = manifest["model"]["linears"]["linear"]
    assert layer["formats"] == {"toy3": layer["formats"]["toy3"]}
    for tile in layer["tiles"]:
        for st in tile["streams"]:
            off = manifest["channel_offsets"][st["channel"]] + st["addr"]
            recs, _ = read_records(geom, image[off:off + st["nbytes"]])
            for rc in recs:
                assert rc.tag.value == 40
                seen |= set(np.unique(rc.q).tolist())
    assert seen <= set(toy.codebook) and {7, -5} & seen


def test_unknown_format_in_a_config_is_refused():
    base = load_config("test_decode")
    with pytest.raises(ConfigError, match="unknown format 'toy3'"):
        dataclasses.replace(base, weight_formats=base.weight_formats + ("toy3",))


def test_folder_of_the_old_stream_layout_is_refused(tmp_path):
    """Folders written before the 6-bit record tag (format version 1) are refused in one
    line that says to compile again."""
    import json

    from airfoil.errors import AirfoilError

    cfg = load_config("test")
    compile_linear(torch.randn(8, 128), None, cfg, tmp_path / "f", wformat="int4", group=128)
    path = tmp_path / "f" / "manifest.json"
    m = json.loads(path.read_text())
    assert m["format"] == FOLDER_FORMAT == "airfoil-folder/5"
    m["format"] = "airfoil-folder/1"
    path.write_text(json.dumps(m))
    with pytest.raises(AirfoilError, match=r"manifest format 'airfoil-folder/1' is not "
                                           r"'airfoil-folder/5' \(.*compile it again\)"):
        load_folder(tmp_path / "f", cfg)


def test_zero_point_format_values_codes_and_rows():
    """UINT4Z: unsigned codes minus a zero point per row; a row spans at most 15."""
    spec = fr.by_name("uint4z")
    assert spec.kind == "zero_point" and spec.zero_point_bits == 4 and spec.streamed
    assert spec.values() == tuple(range(-15, 16))
    rows = np.array([[-15, 0, -3], [0, 15, 7], [-4, 11, 0]])
    zero = spec.zero_points(rows)
    assert zero.tolist() == [15, 0, 4]
    codes = spec.encode(rows, zero[:, None])
    assert ((codes & 15) == rows + zero[:, None]).all()
    assert (spec.decode(codes, zero[:, None]) == rows).all()
    with pytest.raises(CompileError, match="a row's values span at most 15"):
        spec.encode(np.array([[-1, 15]]), np.array([[1]]))
