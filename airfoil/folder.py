"""The compiler's output folder, read the same way by every backend.

A folder holds ``manifest.json`` (format :data:`FOLDER_FORMAT`, ``airfoil-folder/5``),
``program.afp`` and ``weights.bin`` (the data memory image, exactly as the hardware reads
it). Each memory channel reads and writes its own memory from a base address of its own (the
``DATA_BASE`` registers of :mod:`airfoil.csr`); ``channel_offsets`` in the manifest (one
byte offset per channel, all 0 when absent: every channel sees the whole image) says where
each channel's memory starts in the image, so an ``LD``/``ST`` on channel ``c`` at
``dram_addr`` reaches image byte ``channel_offsets[c] + dram_addr``. Channel 0's memory
starts at byte 0: the input and output addresses of a layer, and ``SYS LDREG`` (which
reads through channel 0), are image addresses.

:func:`load_folder` checks a folder and returns a :class:`Folder`; the golden
model, the ISA simulator and the RTL runner all place their input and read their output
through its helpers, so they agree on addresses and encodings.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import torch

from .config import AccelConfig, load_config
from .errors import AirfoilError, ConfigError
from .program import Program
from .textfile import read_bounded, read_text

#: The linear layers of a decoder layer, by role, in execution order.
LINEAR_ROLES = ("q", "k", "v", "o", "gate", "up", "down")

__all__ = ["parameter_block", "FOLDER_FORMAT", "MANIFEST", "Folder", "load_folder",
           "OUT_DTYPES", "LLM_KIND", "read_llm_model", "channel_offsets", "linear_roles",
           "LINEAR_ROLES", "weight_bits_per_weight"]


def parameter_block(pos: int, tokens: int, kv_banks: int = 1) -> bytes:
    """The 16 bytes of an LLM folder's parameter block (layout ``params``) that a run's
    ``SYS LDREG`` read: int32 ``pos``, ``tokens``, the length ``pos + tokens`` and its key
    groups ``ceil(length / kv_banks)`` (read on a banked KV buffer, ``buffers.kv_banks``)."""
    n = pos + tokens
    return struct.pack("<4i", pos, tokens, n, -(-n // kv_banks))


def linear_roles(shape: dict) -> tuple[str, ...]:
    """The linear roles of a decoder layer of model ``shape`` (HF config fields): all of
    q, k, v, o, gate, up, down, without ``gate`` in an ungated MLP (``mlp`` other than
    ``silu_gated``: GPT-2, OPT)."""
    gated = shape.get("mlp", "silu_gated") == "silu_gated"
    return tuple(r for r in LINEAR_ROLES if r != "gate" or gated)

def encoder(shape: dict) -> bool:
    """Whether model ``shape`` (HF config fields) is an encoder (BERT: its output is the
    last layer's hidden states, no logits)."""
    return bool(shape.get("encoder", False))


def output_width(shape: dict) -> int:
    """Values per token the device writes to the output rows (``layout.logits``): the
    logits of a decoder (``vocab_size``), the hidden states of an encoder
    (``hidden_size``)."""
    return shape["hidden_size"] if encoder(shape) else shape["vocab_size"]

def llm_phases(shape: dict) -> tuple[str, ...]:
    """The programs of an LLM folder: ``prefill`` and ``decode``; an encoder's sentence
    runs as one prefill, so it has no ``decode``."""
    return ("prefill",) if encoder(shape) else ("prefill", "decode")

#: Version of the folder layout; 2: record headers carry a 6-bit tag (the packed weight
#: stream of :mod:`airfoil.packing`), so folders of version 1 are refused; 4: an LLM's
#: embedding table is INT8 records with a scale per row (``embed_row`` bytes a row, the
#: SFU's ``DEQUANT_ROW`` operands; ``model.embed_group`` nonzero: INT4 records with a
#: scale per that many values), not int32 rows, and the programs choose the next token
#: (``TOPK_SAMPLE``) from the sampling block the host writes at ``sampling`` into ``next``;
#: 5: a single layer's manifest lists its layer as an LLM's lists its linear layers,
#: ``model.linears`` (name -> entry, the single layer's named ``linear``; ``streamed``
#: true or false in every entry).
FOLDER_FORMAT = "airfoil-folder/5"
#: ``manifest["kind"]`` of a whole-LLM folder (absent: a single linear layer).
LLM_KIND = "llm"
_LLM_KEYS = ("format", "kind", "isa_version", "config", "config_hash", "programs", "image",
             "image_bytes", "model", "phases")
MANIFEST = "manifest.json"
#: Little-endian numpy dtype of an output element by its width in bits.
OUT_DTYPES = {8: "<i1", 16: "<i2", 32: "<i4"}

_MANIFEST_KEYS = ("format", "isa_version", "config", "config_hash", "program", "image",
                  "image_bytes", "input", "output", "model")


def weight_bits_per_weight(manifest: dict) -> float:
    """Bits per weight of an LLM folder's linear layers: the bytes of their tiles and
    streams in the image (scales and sparsity metadata included) x 8 / their weights."""
    count = manifest["linear_weights"]
    return 8 * sum(manifest["weight_bytes"].values()) / count if count else 0.0


class Folder:
    """A loaded output folder.

    Parameters
    ----------
    manifest : dict
        The parsed ``manifest.json``.
    image : bytearray or None
        The contents of ``weights.bin`` (``None`` for a ``--size-only`` folder loaded
        with ``size_only_ok``).
    program : Program or None
        The program; ``None`` reads ``program.afp`` from ``path`` on first use.
    config : AccelConfig or None
        The configuration the folder was checked against, if one was given.
    path : Path or None
        Where the folder lives (needed when ``program`` is ``None``).

    Members
    -------
    manifest, image, config, path
        As given.
    program : Program
        The instruction stream (read lazily, so a backend that never executes it, such
        as the golden model, never touches ``program.afp``).
    """

    def __init__(self, manifest: dict, image: bytearray, program: Program | None = None, *,
                 config: AccelConfig | None = None, path: Path | None = None):
        self.manifest = manifest
        self.image = image
        self.config = config
        self.path = Path(path) if path is not None else None
        self._program = program

    @property
    def channel_offsets(self) -> list:
        """Where each memory channel's memory starts in the image (see the module
        docstring); all 0 when the manifest names none."""
        return channel_offsets(self.manifest, self.resolve_config().memory.channels)

    @property
    def kind(self) -> str:
        """``"llm"`` for a whole decoder LLM, ``"linear"`` for a single layer."""
        return self.manifest.get("kind", "linear")

    def phase_program(self, phase: str) -> Program:
        """The program of one phase of an LLM folder (``prefill`` or ``decode``)."""
        progs = self.manifest.get("programs", {})
        if phase not in progs:
            raise AirfoilError(f"{self.path}: no {phase!r} program (has: "
                               f"{', '.join(progs) or 'none'})")
        cache = self.__dict__.setdefault("_phase_programs", {})
        if phase not in cache:
            cache[phase] = self._read_program(progs[phase])
        return cache[phase]

    def _read_program(self, name) -> Program:
        if self.path is None:
            raise AirfoilError("folder has no program and no path to read it from")
        prog_path = self.path / name
        try:
            raw = prog_path.read_bytes()
        except OSError:
            raise AirfoilError(f"{self.path}: program file {name!r} is missing or "
                               f"unreadable") from None
        expect = self.config.config_hash_bytes if self.config is not None else None
        return Program.from_bytes(raw, source=str(prog_path), expect_hash=expect)

    @property
    def program(self) -> Program:
        if self._program is None:
            if self.path is None:
                raise AirfoilError("folder has no program and no path to read it from")
            prog_path = self.path / self.manifest["program"]
            try:
                raw = prog_path.read_bytes()
            except OSError:
                raise AirfoilError(f"{self.path}: program file {self.manifest['program']!r} "
                                   f"is missing or unreadable") from None
            expect = self.config.config_hash_bytes if self.config is not None else None
            self._program = Program.from_bytes(raw, source=str(prog_path), expect_hash=expect)
        return self._program

    # -- shapes --------------------------------------------------------------------------

    @property
    def k(self) -> int:
        """Input vector length."""
        return int(self.manifest["input"]["shape"][0])

    @property
    def n(self) -> int:
        """Output vector length."""
        return int(self.manifest["output"]["shape"][0])

    @property
    def out_bits(self) -> int:
        return int(self.manifest["output"]["bits"])

    def resolve_config(self) -> AccelConfig:
        """Return the configuration: the one given at load, else the built-in named in
        the manifest (checked against its hash)."""
        if self.config is not None:
            return self.config
        name = self.manifest["config"]
        try:
            cfg = load_config(name)
        except ConfigError:
            raise AirfoilError(f"folder was compiled for config {name!r}, which is not "
                               f"built in; give the config it was compiled with") from None
        if cfg.config_hash != self.manifest["config_hash"]:
            raise AirfoilError(f"folder was compiled for config hash "
                               f"{self.manifest['config_hash']}, but built-in {name!r} has "
                               f"hash {cfg.config_hash}; give the config it was compiled with")
        return cfg

    # -- input and output ----------------------------------------------------------------

    def read_input(self, image) -> torch.Tensor:
        """Return the INT8 input vector stored in ``image`` (int64, shape ``(K,)``)."""
        a = self.manifest["input"]["addr"]
        raw = bytes(image[a:a + self.k])
        if len(raw) != self.k:
            raise AirfoilError("input region lies beyond the end of the image")
        return torch.from_numpy(np.frombuffer(raw, dtype=np.int8).astype(np.int64))

    def default_input(self) -> torch.Tensor:
        """Return the input vector stored in the folder's image (int64, shape ``(K,)``)."""
        return self.read_input(self.image)

    def image_with_input(self, x_q=None) -> bytearray:
        """Return a copy of the image with the INT8 vector ``x_q`` at the input address.

        ``x_q`` is any integer sequence of length K in -128..127 (``None``: the stored
        default input, i.e. a plain copy).
        """
        img = bytearray(self.image)
        if x_q is None:
            return img
        x = torch.as_tensor(np.asarray(x_q))
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise AirfoilError(f"input vector must hold integers, not {x.dtype}")
        x = x.to(torch.int64).reshape(-1)
        if tuple(x.shape) != (self.k,):
            raise AirfoilError(f"input vector has {x.numel()} values, the layer takes "
                               f"K={self.k}")
        if x.numel() and (int(x.min()) < -128 or int(x.max()) > 127):
            raise AirfoilError(f"input vector values {int(x.min())}..{int(x.max())} are "
                               f"outside INT8 -128..127")
        a = self.manifest["input"]["addr"]
        img[a:a + self.k] = x.numpy().astype(np.int8).tobytes()
        return img

    def read_output(self, image) -> torch.Tensor:
        """Return the output vector stored in ``image`` (int64, shape ``(N,)``)."""
        a = self.manifest["output"]["addr"]
        dt = np.dtype(OUT_DTYPES[self.out_bits])
        raw = bytes(image[a:a + self.n * dt.itemsize])
        if len(raw) != self.n * dt.itemsize:
            raise AirfoilError("output region lies beyond the end of the image")
        return torch.from_numpy(np.frombuffer(raw, dtype=dt).astype(np.int64))


def channel_offsets(manifest: dict, channels: int) -> list:
    """The manifest's ``channel_offsets``: one non-negative int per channel (all 0 when
    absent); :class:`AirfoilError` when it does not name one per channel."""
    offs = manifest.get("channel_offsets")
    if offs is None:
        return [0] * channels
    if not isinstance(offs, list) or len(offs) != channels or not all(
            isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offs) or \
            offs[0] != 0:
        raise AirfoilError(f"manifest channel_offsets {offs!r} must list {channels} "
                           f"non-negative byte offsets, one per memory channel, the first 0")
    return list(offs)


def _fail(path, what) -> AirfoilError:
    return AirfoilError(f"{path}: {what}")


def _check_manifest(m, where) -> None:
    if not isinstance(m, dict):
        raise _fail(where, "manifest.json is not a JSON object")
    if m.get("format") != FOLDER_FORMAT:
        raise _fail(where, f"manifest format {m.get('format')!r} is not {FOLDER_FORMAT!r} "
                           f"(a folder of another version: compile it again)")
    for key in ("image", "image_bytes"):
        if key not in m:
            raise _fail(where, f"manifest.json lacks key {key!r}")
    image, nbytes = m["image"], m["image_bytes"]
    if not (isinstance(image, str) and image and "/" not in image and "\\" not in image
            and image not in (".", "..")):
        raise _fail(where, f"manifest image {image!r} is not a file name in the folder")
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 0 < nbytes <= 1 << 40:
        raise _fail(where, f"manifest image_bytes {nbytes!r} is not a size in 1 .. 2**40")
    if m.get("kind") == LLM_KIND:
        for key in _LLM_KEYS:
            if key not in m:
                raise _fail(where, f"manifest.json lacks key {key!r}")
        _check_llm_model(m["model"], nbytes, where)
        try:
            for phase in llm_phases(m["model"]["shape"]):
                str(m["programs"][phase])
        except (KeyError, TypeError, ValueError):
            raise _fail(where, "manifest.json programs entries are malformed") from None
        return
    for key in _MANIFEST_KEYS:
        if key not in m:
            raise _fail(where, f"manifest.json lacks key {key!r}")
    _check_fields(m, _LINEAR_SCHEMA, "", nbytes, where)
    if m["output"]["bits"] not in OUT_DTYPES:
        raise _fail(where, f"output bits {m['output']['bits']!r} is not 8, 16 or 32")
    for side in ("input", "output"):
        if len(m[side]["shape"]) != 1:
            raise _fail(where, f"manifest {side}.shape {m[side]['shape']!r} is not [length]")
    for name, layer in m["model"]["linears"].items():
        at = f"model.linears.{name}."
        _check_fields(layer, _LAYER, at, nbytes, where)
        tile = _STREAM_TILE if layer["streamed"] else _WGT_TILE
        for j, t in enumerate(layer["tiles"]):
            _check_fields(t, tile, f"{at}tiles[{j}].", nbytes, where)
            for c, st in enumerate(t.get("streams", ())):
                _check_fields(st, _STREAM, f"{at}tiles[{j}].streams[{c}].", nbytes, where)


# -- manifest field checks: each field's test and what it accepts ------------------------------

def _int_in(lo, hi):
    return (lambda v, top: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi,
            f"an integer in {lo} .. {hi}")


_ADDR = (lambda v, top: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top,
         "an address in the image")
_SIZE = (lambda v, top: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= top,
         "a size within the image")
_COUNT = _int_in(1, 1 << 24)
_SCALE = (lambda v, top: isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v) and v > 0, "a positive finite number")
_TEXT = (lambda v, top: isinstance(v, str) and 0 < len(v) <= 256, "a name")
_FLAG = (lambda v, top: isinstance(v, bool), "true or false")
_SHAPE = (lambda v, top: isinstance(v, list) and all(_COUNT[0](x, top) for x in v),
          "a list of lengths")
_LIST = (lambda v, top: isinstance(v, list) and 0 < len(v) <= 1 << 20, "a non-empty list")
_NAMED = (lambda v, top: isinstance(v, dict) and 0 < len(v) <= 1 << 20,
          "a non-empty object (name -> entry)")


def _optional(check):
    return (lambda v, top, _c=check[0]: v is _ABSENT or _c(v, top), check[1])


_ABSENT = object()
#: Linear-layer manifest: key -> check, or a nested schema for an object.
_LINEAR_SCHEMA = {
    "config": _TEXT, "config_hash": _TEXT, "program": _TEXT, "isa_version": _int_in(0, 255),
    "input": {"addr": _ADDR, "shape": _SHAPE, "scale": _SCALE},
    "output": {"addr": _ADDR, "shape": _SHAPE, "scale": _SCALE, "bits": _int_in(8, 32)},
    "model": {"linears": _NAMED},
}
_LAYER = {"n": _COUNT, "k": _COUNT, "k_in": _optional(_COUNT), "wformat": _TEXT,
          "streamed": _FLAG, "group": _COUNT, "k0": _int_in(-(1 << 31), (1 << 31) - 1),
          "req_m": _int_in(0, (1 << 32) - 1), "req_s": _int_in(0, 255),
          "out_bits": _int_in(8, 32), "bias": _FLAG, "tiles": _LIST,
          "bias_wformat": _optional(_TEXT)}
_WGT_TILE = {"row0": _int_in(0, 1 << 24), "rows": _COUNT, "addr": _ADDR, "nbytes": _SIZE,
             "col0": _optional(_int_in(0, 1 << 24)), "cols": _optional(_COUNT)}
_STREAM_TILE = {"row0": _int_in(0, 1 << 24), "rows": _COUNT, "streams": _LIST,
                "bias_addr": _optional(_ADDR), "bias_nbytes": _optional(_SIZE)}
_STREAM = {"channel": _int_in(0, 1023), "addr": _ADDR, "nbytes": _SIZE}


def _check_fields(obj, schema: dict, prefix: str, top: int, where) -> None:
    """Check ``obj`` against ``schema`` (nested objects recursively); the first field that
    fails names what it accepts."""
    if not isinstance(obj, dict):
        raise _fail(where, f"manifest {prefix.rstrip('.') or 'entry'} is not an object")
    for key, check in schema.items():
        v = obj.get(key, _ABSENT)
        if isinstance(check, dict):
            _check_fields(v, check, f"{prefix}{key}.", top, where)
            continue
        if v is _ABSENT and not check[0](v, top):
            raise _fail(where, f"manifest.json lacks key {prefix + key!r}")
        if not check[0](v, top):
            raise _fail(where, f"manifest {prefix}{key} is {v!r}, not {check[1]}")


#: Shape fields of an LLM manifest's model (positive integers).
_SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim")


def _positive(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _check_llm_model(mm, image_bytes: int, where) -> None:
    """Check an LLM manifest's ``model`` entry: the shape, the position counts and the
    image layout, each region large enough for what the programs put there (the KV
    caches hold ``max_positions`` rows, the prompt areas ``max_prompt``, a prefill chunk
    reaches at most ``prefill_positions``)."""
    from . import fixedpoint as fx
    if not isinstance(mm, dict):
        raise _fail(where, "manifest model entry is not an object")
    for key in ("shape", "max_positions", "max_prompt", "prefill_positions", "layout",
                "linears"):
        if key not in mm:
            raise _fail(where, f"manifest.json lacks key 'model.{key}'")
    shape, lay = mm["shape"], mm["layout"]
    if not isinstance(shape, dict):
        raise _fail(where, "manifest model.shape is not an object")
    for key in _SHAPE_KEYS:
        if not _positive(shape.get(key)):
            raise _fail(where, f"manifest model.shape.{key} is {shape.get(key)!r}, not a "
                               f"positive integer")
    P, T = mm["max_positions"], mm["max_prompt"]
    if not (_positive(P) and _positive(T) and T <= P):
        raise _fail(where, f"manifest max_prompt {T!r} and max_positions {P!r} must be "
                           f"positive integers, max_prompt <= max_positions")
    R = mm["prefill_positions"]
    if not (_positive(R) and T <= R <= P):
        raise _fail(where, f"manifest prefill_positions {R!r} must be an integer in "
                           f"max_prompt..max_positions ({T}..{P})")
    if not isinstance(mm["linears"], dict) or not mm["linears"]:
        raise _fail(where, "manifest model.linears is not a non-empty object")
    if not isinstance(lay, dict):
        raise _fail(where, "manifest model.layout is not an object")
    if encoder(shape):
        from .embedding import check_sentence_spec
        try:
            check_sentence_spec(mm.get("sentence_embedding"),
                                "manifest model.sentence_embedding")
        except AirfoilError as e:
            raise _fail(where, str(e)) from None
    layers = shape["num_hidden_layers"]
    table = "rope" if shape.get("positions", "rope") == "rope" else "positions"
    regions = {"params": 16, "ids": None, "sampling": None, "next": None, "logits": None,
               "embed": None, table: None,
               "norm": None, "tiles": None}
    for i in range(layers):
        for part in ("attn_norm", "mlp_norm", "kcache", "vcache"):
            regions[f"l{i}.{part}"] = None
    for key in list(regions) + ["logits_row", "rope_row", "kv_row", "embed_row"]:
        v = lay.get(key)
        if not _ADDR[0](v, image_bytes):
            raise _fail(where, f"manifest model.layout.{key} is {v!r}, not an address in "
                               f"0 .. {image_bytes}")
    group = mm.get("embed_group", 0)
    if group not in fx.EMBED_GROUPS:
        raise _fail(where, f"manifest model.embed_group is {group!r}, not one of "
                           f"{', '.join(map(str, fx.EMBED_GROUPS))}")
    record = fx.dequant_record_bytes(shape["hidden_size"], group)
    if lay["embed_row"] < record:
        raise _fail(where, f"manifest model.layout.embed_row is {lay['embed_row']}, less "
                           f"than the {record} bytes of an INT{fx.record_value_bits(group)} "
                           f"embedding record")
    need = {"ids": 4 * T, "next": 4 * T, "sampling": 16, "logits": lay["logits_row"] * T,
            "embed": lay["embed_row"] * shape["vocab_size"],
            table: lay["rope_row"] * P if table == "rope" else 4 * shape["hidden_size"] * P}
    for i in range(layers):
        need[f"l{i}.kcache"] = need[f"l{i}.vcache"] = lay["kv_row"] * P
    starts = sorted({lay[k] for k in regions} | {image_bytes})
    for key, size in need.items():
        end = next(a for a in starts if a > lay[key]) if lay[key] < image_bytes else lay[key]
        if lay[key] + size > end:
            raise _fail(where, f"manifest model.layout.{key} holds {end - lay[key]} bytes, "
                               f"less than the {size} that max_positions {P} and max_prompt "
                               f"{T} need")


def load_folder(path, config: AccelConfig | None = None, *,
                size_only_ok: bool = False) -> Folder:
    """Load and check an output folder.

    Parameters
    ----------
    path : str or Path
        The folder (``program.afp`` inside it may also be given).
    config : AccelConfig, optional
        If given, the manifest and the program must have been compiled for it.
    size_only_ok : bool
        Accept a folder compiled with ``--size-only`` (its programs and memory map, no
        image): the folder's ``image`` is then ``None``, for tools that time its programs
        without running them.

    Raises
    ------
    AirfoilError
        A file is missing or corrupt, or the folder belongs to another configuration.
    """
    p = Path(path)
    if p.is_file() and p.suffix in (".afp", ".json", ".bin"):
        p = p.parent
    if not p.is_dir():
        raise AirfoilError(f"output folder {str(path)!r} not found")
    if not (p / MANIFEST).is_file():
        raise _fail(p, f"{MANIFEST} is missing (not a compiled folder?)")
    text = read_text(p / MANIFEST, MANIFEST)
    try:
        manifest = json.loads(text)
    except ValueError as e:
        raise _fail(p, f"{MANIFEST} is not valid JSON ({e.msg} at line {e.lineno})") from None
    _check_manifest(manifest, p)
    size_only = bool(manifest.get("size_only"))
    if size_only and not size_only_ok:
        raise _fail(p, f"compiled with --size-only: it holds the programs and the memory map "
                       f"but no {manifest['image']}; compile it without --size-only to run it")
    if config is not None and manifest["config_hash"] != config.config_hash:
        raise _fail(p, f"compiled for config {manifest['config']!r} (hash "
                       f"{manifest['config_hash']}), but the given config {config.name!r} "
                       f"has hash {config.config_hash}; recompile for this config")
    if size_only:
        image = None
    elif not (p / manifest["image"]).is_file():
        raise _fail(p, f"image file {manifest['image']!r} is missing or unreadable")
    else:
        image = bytearray(read_bounded(p / manifest["image"], "image file",
                                       manifest["image_bytes"]))
    if image is not None and len(image) != manifest["image_bytes"]:
        raise _fail(p, f"{manifest['image']} has {len(image)} bytes, the manifest says "
                       f"{manifest['image_bytes']} (truncated or stale)")
    folder = Folder(manifest, image, None, config=config, path=p)
    if config is not None:
        if folder.kind == LLM_KIND:
            for phase in manifest["programs"]:
                folder.phase_program(phase)     # check every header now
        else:
            folder.program      # check the program header now: magic, version, CRC, hash
    return folder


def _read_streamed(v: dict, image, config: AccelConfig):
    """A streamed layer's :class:`~airfoil.fixedpoint.QLinear` from its record streams:
    values, scales and the format of each group as the decode unit reads them; the keep
    mask of a sparse layer is where the stored values are nonzero."""
    from . import fixedpoint as fx
    from .packing import core_stream_geometry, unpack_channels
    geom = core_stream_geometry(config)
    n, k, group = v["n"], v["k"], v["group"]
    q = torch.zeros((n, k), dtype=torch.int64)
    sc = torch.zeros((n, k // group), dtype=torch.float16)
    tags = torch.zeros((n, k // group), dtype=torch.int64)
    for t in v["tiles"]:
        r0, rows = t["row0"], t["rows"]
        streams = [bytes(image[st["addr"]:st["addr"] + st["nbytes"]]) for st in t["streams"]]
        tq, ts, tt = unpack_channels(geom, streams, rows=rows, k=k)
        q[r0:r0 + rows], sc[r0:r0 + rows] = tq, ts
        tags[r0:r0 + rows] = torch.from_numpy(np.repeat(tt, geom.rows, axis=0)[:rows])
    sparse = v["sparsity"] != "dense"
    return fx.QLinear(q, sc, group, v["bits"], formats=tags, mask=q != 0 if sparse else None,
                      sparsity=v["sparsity"], in_features=v.get("k_in"),
                      input_copies=v.get("copies", 1))


def read_llm_model(manifest: dict, image, config: AccelConfig) -> dict:
    """Read the quantized model back from an LLM folder's image (every backend's input).

    Returns the dict of :func:`compiler.passes.quantized_model` plus ``rope`` (cos, sin
    tables of ``max_positions`` rows), with ``max_position_embeddings`` set to the
    positions the folder holds.
    """
    from . import fixedpoint as fx
    from .formats import FORMAT_BY_NAME, tile_layout, unpack_tile
    from .wgt_banks import WgtBanks
    mm = manifest["model"]
    lay = mm["layout"]
    shape = dict(mm["shape"])
    shape["max_position_embeddings"] = mm["max_positions"]
    d, vocab, hd = shape["hidden_size"], shape["vocab_size"], shape["head_dim"]

    def i32(addr, count):
        return torch.from_numpy(np.frombuffer(bytes(image[addr:addr + 4 * count]),
                                              dtype="<i4").astype(np.int64))

    banks = WgtBanks.of(config)

    def lin(name):
        v = mm["linears"][name]
        if v.get("streamed"):
            return _read_streamed(v, image, config)
        q = torch.zeros((v["n"], v["k"]), dtype=torch.int64)
        sc = torch.zeros((v["n"], v["k"] // v["group"]), dtype=torch.float16)
        wf = FORMAT_BY_NAME[f"int{v['bits']}"]
        for t in v["tiles"]:
            tl = tile_layout(rows=t["rows"], k=t["cols"], group=v["group"], wfmt=wf,
                             chains=config.chains, lanes=config.lanes, bias=False,
                             align=config.word_bytes)
            tq, ts, _ = unpack_tile(tl, banks.read_tile(image, t["addr"], t["nbytes"],
                                                        config.word_bytes))
            r0, c0 = t["row0"], t["col0"]
            q[r0:r0 + t["rows"], c0:c0 + t["cols"]] = tq
            g0 = c0 // v["group"]
            sc[r0:r0 + t["rows"], g0:g0 + t["cols"] // v["group"]] = ts
        return fx.QLinear(q, sc, v["group"], v["bits"], in_features=v.get("k_in"),
                          input_copies=v.get("copies", 1))

    layers = []
    for i in range(shape["num_hidden_layers"]):
        L = {"attn_norm": i32(lay[f"l{i}.attn_norm"], d),
             "mlp_norm": i32(lay[f"l{i}.mlp_norm"], d)}
        for r in linear_roles(shape):
            L[r] = lin(f"l{i}.{r}")
        for r in shape.get("linear_biases", ()):
            L[r + "_bias"] = i32(lay[f"l{i}.{r}_bias"], mm["linears"][f"l{i}.{r}"]["n"])
        layers.append(L)
    P = mm["max_positions"]
    erow = lay["embed_row"]
    raw = np.frombuffer(bytes(image[lay["embed"]:lay["embed"] + erow * vocab]),
                        dtype=np.uint8).reshape(vocab, erow)
    embed = fx.QEmbedding.from_records(raw, d, mm.get("embed_group", 0))
    out = {"shape": shape, "embed": embed, "norm": i32(lay["norm"], d), "layers": layers}
    if not encoder(shape):
        out["lm_head"] = lin("lm_head")
    if shape.get("norm", "rms") == "layer":         # LayerNorm biases beside the gains
        out["norm_bias"] = i32(lay["norm_bias"], d)
        for i, L in enumerate(layers):
            for g in ("attn_norm", "mlp_norm"):
                L[g + "_bias"] = i32(lay[f"l{i}.{g}_bias"], d)
    if shape.get("positions", "rope") == "rope":
        raw = np.frombuffer(bytes(image[lay["rope"]:lay["rope"] + lay["rope_row"] * P]),
                            dtype=np.uint8).reshape(P, lay["rope_row"])[:, :2 * hd]
        tab = torch.from_numpy(raw.copy().view("<i2").astype(np.int64))
        out["rope"] = (tab[:, :hd // 2].contiguous(), tab[:, hd // 2:].contiguous())
    else:
        out["positions"] = i32(lay["positions"], P * d).reshape(P, d)
    return out
