"""Accelerator configuration: one frozen dataclass, loaded from YAML and validated.

Everything the hardware, the compiler and the simulators need to agree on is here or is
derived from here as a property. Every build output is named by :attr:`AccelConfig.name`
and stamped with :attr:`AccelConfig.config_hash`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path



from hdl.pe import kinds as _pe_kinds

from . import format_registry as _registry
from .errors import ConfigError
from .isa import ATT_PV_MAX_HEAD_DIM, INSTR_BITS, TOPK_MAX, SfuFunc
from .resources import package_path
from .yamlfile import read_yaml

__all__ = [
    "MemoryConfig", "BufferConfig", "DeviceConfig", "LimitsConfig", "AccelConfig",
    "load_config", "PE_KINDS",
    "TILE_FORMATS_OF_PE",
    "WEIGHT_FORMATS", "STREAM_ONLY_FORMATS", "weight_formats", "stream_only_formats",
    "SPARSITY_PATTERNS", "GROUP_SIZES", "BUILTIN_CONFIGS",
    "builtin_config_path", "k_split_batches",
]

#: PE kinds (:mod:`hdl.pe.kinds`, the one registry of their formats and cycles).
PE_KINDS = _pe_kinds.PE_KINDS
#: Weight formats of the MATRIX unit's WGT tiles each PE kind computes exactly (every
#: other format is streamed through the decode unit).
TILE_FORMATS_OF_PE = {k.name: k.tile_formats for k in _pe_kinds.KINDS.values()}
def weight_formats() -> tuple:
    """Weight formats a configuration may enable: the configurable formats of
    :mod:`airfoil.format_registry` (registered now)."""
    return tuple(f.name for f in _registry.all_formats() if f.configurable)


def stream_only_formats() -> tuple:
    """Formats only the decode unit reads (streamed weights, no PE kind computes their
    WGT tiles): listing one builds it. Those not :attr:`~airfoil.format_registry.
    FormatSpec.always_decoded` (the BitMoD formats ``int6`` and FP4/FP3) are decoded only
    when listed; INT2/INT3/INT4/INT8 and OVP4 records always are."""
    return tuple(f.name for f in _registry.all_formats()
                 if f.configurable and f.streamed and not f.tile_pe_kinds)


def _base_stream_formats() -> tuple:
    """Record formats of streamed weights every decode unit reads."""
    return tuple(f.name for f in _registry.all_formats() if f.always_decoded and f.streamed)


#: :func:`weight_formats` and :func:`stream_only_formats` of the built-in formats.
WEIGHT_FORMATS = weight_formats()
STREAM_ONLY_FORMATS = stream_only_formats()
SPARSITY_PATTERNS = ("dense", "1:4", "2:4", "2:8", "4:16", "8:16", "block")
GROUP_SIZES = (32, 64, 128)

_CONFIG_DIR = package_path("fpga", "boards")
#: Configurations shipped with the project, by name (``fpga/boards/<name>.yaml``).
BUILTIN_CONFIGS = {p.stem: p for p in sorted(_CONFIG_DIR.glob("*.yaml"))}


def builtin_config_path(name: str) -> Path:
    """Return the YAML path of a built-in configuration name."""
    try:
        return BUILTIN_CONFIGS[name]
    except KeyError:
        raise ConfigError(f"unknown built-in config {name!r} (accepted: "
                          f"{', '.join(sorted(BUILTIN_CONFIGS))}, or a path to a .yaml file)")


def _is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


@dataclass(frozen=True)
class MemoryConfig:
    """Off-chip memory as the accelerator sees it: AXI4 ports, one per channel.

    Parameters
    ----------
    channels : int
        Memory channels (HBM pseudo-channels or DDR controllers), one AXI4 port each.
    word_bits : int
        Data width of one port in bits (a power of two, 64..1024).
    read_latency : int
        Cycles from a read address handshake to the first data beat, in the memory model
        of every backend.
    outstanding : int
        Read bursts a port may have in flight.
    max_burst : int
        Longest AXI4 burst in beats (1..256).
    channel_bytes : int
        Capacity of one channel in bytes.
    channel_gbps : float
        Bandwidth of one channel in GB/s (10^9 bytes per second) as the memory delivers it;
        0 means the port's own rate (``word_bytes`` per kernel clock). Every bandwidth
        figure divides by :meth:`AccelConfig.channel_bytes_per_cycle`, which derives from it.
    channel_latency : tuple of int
        Read latency of each channel, overriding ``read_latency`` (empty: every channel has
        ``read_latency``); the memory model of every backend honours it per channel.
    channel_outstanding : tuple of int
        Read bursts in flight on each channel's port, overriding ``outstanding`` (empty:
        every port has ``outstanding``; the instruction port always has it); the core's
        readers and the memory model of every backend honour it per channel.

    Addressing: every channel has a base address of its own (``DATA_BASE`` registers of
    :mod:`airfoil.csr`, one pair per channel); an ``LD``/``ST`` on channel ``c`` reaches
    byte ``base[c] + dram_addr``. A compiled folder says where each channel's memory starts
    in its image (``channel_offsets`` of the manifest, :mod:`airfoil.folder`).
    """

    channels: int
    word_bits: int
    read_latency: int
    outstanding: int
    max_burst: int = 16
    write_latency: int = 4
    channel_bytes: int = 1 << 28
    channel_gbps: float = 0.0
    channel_latency: tuple = ()
    channel_outstanding: tuple = ()

    def validate(self, where: str) -> None:
        if not 1 <= self.channels <= 64:
            raise ConfigError(f"{where}memory.channels must be 1..64, not {self.channels}")
        if not (_is_pow2(self.word_bits) and 64 <= self.word_bits <= 1024):
            raise ConfigError(f"{where}memory.word_bits must be a power of two in 64..1024, "
                              f"not {self.word_bits}")
        if not 1 <= self.read_latency <= 1024:
            raise ConfigError(f"{where}memory.read_latency must be 1..1024 cycles, "
                              f"not {self.read_latency}")
        if not 1 <= self.outstanding <= 64:
            raise ConfigError(f"{where}memory.outstanding must be 1..64, not {self.outstanding}")
        if not 1 <= self.max_burst <= 256:
            raise ConfigError(f"{where}memory.max_burst must be 1..256 beats, "
                              f"not {self.max_burst}")
        if not 0 <= self.write_latency <= 1024:
            raise ConfigError(f"{where}memory.write_latency must be 0..1024 cycles, "
                              f"not {self.write_latency}")
        if not (_is_pow2(self.channel_bytes) and self.channel_bytes >= 1 << 16):
            raise ConfigError(f"{where}memory.channel_bytes must be a power of two >= 65536, "
                              f"not {self.channel_bytes}")
        if not 0.0 <= self.channel_gbps <= 1000.0:
            raise ConfigError(f"{where}memory.channel_gbps must be 0..1000 GB/s (0: the port's "
                              f"rate), not {self.channel_gbps}")
        if self.channel_latency and len(self.channel_latency) != self.channels:
            raise ConfigError(f"{where}memory.channel_latency must list one latency per channel "
                              f"({self.channels}), not {len(self.channel_latency)}")
        for lat in self.channel_latency:
            if isinstance(lat, bool) or not isinstance(lat, int) or not 1 <= lat <= 1024:
                raise ConfigError(f"{where}memory.channel_latency entries must be 1..1024 "
                                  f"cycles, not {lat!r}")
        if self.channel_outstanding and len(self.channel_outstanding) != self.channels:
            raise ConfigError(f"{where}memory.channel_outstanding must list one count per "
                              f"channel ({self.channels}), not {len(self.channel_outstanding)}")
        for n in self.channel_outstanding:
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 64:
                raise ConfigError(f"{where}memory.channel_outstanding entries must be 1..64, "
                                  f"not {n!r}")

    def latency_of(self, channel: int) -> int:
        """Read latency of ``channel`` in cycles."""
        return self.channel_latency[channel] if self.channel_latency else self.read_latency

    def outstanding_of(self, channel: int) -> int:
        """Read bursts ``channel``'s port may have in flight."""
        return (self.channel_outstanding[channel] if self.channel_outstanding
                else self.outstanding)

    def uniform(self, channels: int | None = None) -> "MemoryConfig":
        """This memory with ``channels`` channels (default: as many), every one with
        ``read_latency`` and ``outstanding``."""
        return dataclasses.replace(self, channels=channels or self.channels,
                                   channel_latency=(), channel_outstanding=())

    @property
    def word_bytes(self) -> int:
        """Bytes in one data beat of a port."""
        return self.word_bits // 8

    @property
    def instr_bits(self) -> int:
        """Data width of the instruction port: a data port's width, at most one
        instruction (:data:`airfoil.isa.INSTR_BITS`), as a beat never spans two."""
        return min(self.word_bits, INSTR_BITS)


#: Bank counts of :class:`BufferConfig`, left out of the hashes when 1 (the default).
_BANK_KEYS = ("wgt_banks", "kv_banks")


@dataclass(frozen=True)
class BufferConfig:
    """Sizes of the on-chip buffers in bytes (each a power of two), and the WGT buffer's
    banks.

    ``wgt_banks``: the WGT buffer is built of this many banks, each with a write port of
    its own (a power of two dividing the memory words of a WGT row; 1: one write port the
    LOAD unit's channels share). Bank ``b`` holds words ``b * L .. b * L + L - 1`` of
    every row (``L`` the row's words over the banks) and is one contiguous range of the
    addresses LD and ST name (:mod:`airfoil.wgt_banks`), so the LDs of a weight tile on
    different channels, each into its own bank, write in the same cycle.

    ``kv_banks``: the KV buffer is built of this many banks (a power of two; 1: one bank,
    today's buffer), each ``kv_bytes / kv_banks`` bytes with a write port of its own and
    one contiguous range of LD/ST addresses; bank ``b`` holds the key/value records of the
    keys ``l`` with ``l % kv_banks == b`` (:mod:`airfoil.kv_banks`), so ``ATT_QK`` and
    ``ATT_PV`` take ``kv_banks`` keys per record word, and the LDs of a pass, one per bank
    on different channels, write in the same cycle.
    """

    act_bytes: int
    weight_bytes: int
    out_bytes: int
    kv_bytes: int = 1 << 12
    aux_bytes: int = 1 << 12
    wgt_banks: int = 1
    kv_banks: int = 1

    def validate(self, where: str) -> None:
        for name in _BANK_KEYS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not _is_pow2(v):
                raise ConfigError(f"{where}buffers.{name} must be a power of two, not {v!r}")
        for f in dataclasses.fields(self):
            if f.name in _BANK_KEYS:
                continue
            v = getattr(self, f.name)
            if not (_is_pow2(v) and 256 <= v <= 1 << 24):
                raise ConfigError(f"{where}buffers.{f.name} must be a power of two in "
                                  f"256..16777216 bytes, not {v}")


@dataclass(frozen=True)
class DeviceConfig:
    """Capacity of the FPGA part a configuration is built for (the whole part).

    The resource estimate (``airfoil estimate``, :mod:`airfoil.cli.cmd_estimate`) compares
    the synthesized core with these counts and says whether it fits.

    Parameters
    ----------
    part : str
        Part number (``xcu280-fsvh2892-2L-e``).
    dsp : int
        DSP slices (DSP48E2 / DSP48E1).
    lut : int
        6-input LUTs (CLB LUTs, those usable as distributed RAM included).
    ff : int
        Flip-flops.
    bram : int
        Block RAMs in 36 Kb blocks (a RAMB18 counts half a block).
    uram : int
        UltraRAM blocks (URAM288), 0 for a part without them.
    """

    part: str
    dsp: int
    lut: int
    ff: int
    bram: int
    uram: int = 0

    def validate(self, where: str) -> None:
        if not (isinstance(self.part, str) and self.part and
                self.part.replace("-", "").replace("_", "").isalnum()):
            raise ConfigError(f"{where}device.part must be a part number (letters, digits, "
                              f"'-' or '_'), not {self.part!r}")
        for name, lo in (("dsp", 0), ("lut", 1), ("ff", 1), ("bram", 0), ("uram", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= 100_000_000:
                raise ConfigError(f"{where}device.{name} must be an integer in "
                                  f"{lo}..100000000, not {v!r}")

    @property
    def resources(self) -> dict:
        """Capacity by resource: ``{"dsp", "lut", "ff", "bram", "uram"}``."""
        return {k: getattr(self, k) for k in ("dsp", "lut", "ff", "bram", "uram")}


@dataclass(frozen=True)
class LimitsConfig:
    """Hardware limits of the units that are sizes of their own (not of a buffer).

    The RTL is generated with these sizes and refuses an instruction beyond them with
    :attr:`~airfoil.isa.ErrorCode.UNSUPPORTED`; the ISA simulator reads the same numbers
    and refuses the same instructions, and the compiler emits none.

    Parameters
    ----------
    att_pv_max_head_dim : int
        Largest head dimension ``n`` of ``ATT_PV``: the lanes of the SFU's context
        accumulator (a multiple of 4 in 4..4096; default
        :data:`~airfoil.isa.ATT_PV_MAX_HEAD_DIM`).
    stream_tokens : int
        Largest ``m`` of an ``MM`` on streamed weights (``wfmt = STREAM``): the activation
        vectors the streamed engine applies each weight record to before it takes the next
        (each chain's accumulator sets in the rescaler, and the per-token requantization
        table), so a prefill reads its weights once per this many tokens (1..256; default
        16).
    topk_max : int
        Largest ``k`` of ``TOPK_SAMPLE``: the SFU's sorted candidate registers (1..
        :data:`~airfoil.isa.TOPK_MAX`; default that maximum). The sampler's area
        grows with it (64 candidates are some 18,000 LUT4 of an ECP5); a sampling block
        asking for more is MALFORMED, and the host refuses a ``--top-k`` beyond it.
    """

    att_pv_max_head_dim: int = ATT_PV_MAX_HEAD_DIM
    stream_tokens: int = 16
    topk_max: int = TOPK_MAX

    def validate(self, where: str) -> None:
        t = self.stream_tokens
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= 256:
            raise ConfigError(f"{where}limits.stream_tokens must be an integer in 1..256, "
                              f"not {t!r}")
        v = self.att_pv_max_head_dim
        if isinstance(v, bool) or not isinstance(v, int) or not 4 <= v <= 4096 or v % 4:
            raise ConfigError(f"{where}limits.att_pv_max_head_dim must be a multiple of 4 in "
                              f"4..4096, not {v!r}")
        k = self.topk_max
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= TOPK_MAX:
            raise ConfigError(f"{where}limits.topk_max must be an integer in 1..{TOPK_MAX}, "
                              f"not {k!r}")


def k_split_batches(weight_bytes: int, chains: int, group_min: int) -> int:
    """Batches of ``chains`` accumulators the MATRIX unit keeps between the K-chunks of a
    layer (its accumulator memory's depth): as many as the WGT buffer holds batches of
    ``chains`` rows of the smallest group in INT4, rounded up to a power of two, at
    least 2. A K-split instruction (``acc_init = 0`` or ``final = 0``) over more batches
    (all its vectors') is UNSUPPORTED."""
    per_batch = chains * group_min * 4 // 8
    return max(2, 1 << max(0, (weight_bytes // per_batch) - 1).bit_length())


@dataclass(frozen=True)
class AccelConfig:
    """One accelerator instance: engine shape, PE kind, formats, buffers and memory.

    Parameters
    ----------
    name : str
        Short name; build outputs go to ``build/<name>/``.
    chains : int
        Dot-product chains in the engine; each computes one output row at a time.
    lanes : int
        Lanes per chain: weight x activation products per chain per cycle.
    pe : str
        Processing-element kind, one of :data:`PE_KINDS`.
    weight_formats : tuple of str
        Weight formats this instance supports (subset of :data:`WEIGHT_FORMATS`).
    group_sizes : tuple of int
        Quantization group sizes this instance supports (subset of :data:`GROUP_SIZES`,
        each a multiple of ``lanes``).
    sparsity : tuple of str
        Sparsity patterns the chain supports (subset of :data:`SPARSITY_PATTERNS`).
    lut_group : int
        Activations per table for the ``lut`` PE (T-MAC's g).
    buffers : BufferConfig
    memory : MemoryConfig
    clock_mhz : float
        Clock target.
    dsp_budget : int
        DSP ceiling of a configuration without a ``device`` (a slice's share of a card,
        a test engine's limit; 0: none). With a device the ceiling is ``device.dsp``
        (:attr:`dsp_ceiling`), and ``dsp_budget`` must be 0 or equal to it.
    instr_queue_depth : int
        Depth of each per-unit instruction queue.
    device : DeviceConfig or None
        The FPGA part's capacity, for the resource estimate's ``fits`` verdict; None for
        a configuration that is a slice of a card or a test engine.
    limits : LimitsConfig
        Sizes of unit-internal storage that bound an instruction's fields (defaults
        when the section is left out).
    sfu_lanes : int or None
        int32 elements the SFU's ``MUL``, ``SILU`` and ``GELU`` take per cycle on
        word-aligned rows, each lane with its own product (and gate table), pairs
        ``ROPE`` rotates per two cycles, each lane with its four products, scores
        of ``SOFTMAX``'s exp and output passes per cycle, each lane with its exp
        pipeline's three products, and elements of the output pass of ``RMSNORM`` and
        ``LAYERNORM`` per cycle on chunk-aligned rows, each lane with its two products
        (multipliers a small FPGA may lack): a power of two
        dividing the buffer word's int32 count (None: that count,
        :attr:`sfu_lane_count`). Fewer lanes save area and cost cycles, never a
        program's instructions, so the field is left out of :attr:`config_hash`.
    sfu_word_bits : int or None
        Width of the SFU kernels' word passes (``ATT_QK``'s and ``ATT_PV``'s record
        streams, the ``amax`` and sum-of-squares passes, ``COPY``, ``ADD``, ``RELU``,
        ``SOFTMAX``'s max pass): a power of two from 32 to the buffer word (None: the
        buffer word, :attr:`sfu_word_width`); the SFU unit serves a narrower kernel's port
        from the lane of a buffer word its address names. Narrower kernels save area
        (half the word, half the lanes: ``ATT_QK``'s INT8 products among them) and cost
        cycles, never a program's instructions, so the field is left out of
        :attr:`config_hash`. On a banked KV buffer (``buffers.kv_banks`` > 1) it is the
        buffer word.
    sfu_funcs : tuple of str or None
        The SFU functions the core builds (names of :class:`~airfoil.isa.SfuFunc`; None:
        every one, :attr:`sfu_functions`). A function left out has no kernel: the SFU
        unit and the ISA simulator flag it UNSUPPORTED, and the compiler refuses a model
        that needs it. ``GELU`` shares ``SILU``'s kernel, ``RELU`` ``ADD``'s and
        ``LAYERNORM`` ``RMSNORM``'s: leaving out one of a pair removes its logic from the
        shared kernel (``GELU``'s table stays in the gate ROM). In :attr:`config_hash`
        when given (a program may need a function left out).
    """

    name: str
    chains: int
    lanes: int
    buffers: BufferConfig
    memory: MemoryConfig
    pe: str = "dsp"
    weight_formats: tuple = ("int4", "int8")
    group_sizes: tuple = (32, 64, 128)
    sparsity: tuple = ("dense",)
    lut_group: int = 4
    clock_mhz: float = 200.0
    dsp_budget: int = 0
    instr_queue_depth: int = 16
    description: str = ""
    device: DeviceConfig | None = None
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    sfu_lanes: int | None = None
    sfu_word_bits: int | None = None
    sfu_funcs: tuple | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field; raise :class:`ConfigError` naming the first bad one."""
        where = f"config {self.name!r}: " if isinstance(self.name, str) else "config: "
        if not isinstance(self.name, str) or not self.name.replace("_", "").replace(
                "-", "").isalnum():
            raise ConfigError(f"{where}name must be letters, digits, '-' or '_', "
                              f"not {self.name!r}")
        if not 1 <= self.chains <= 1024:
            raise ConfigError(f"{where}chains must be 1..1024, not {self.chains}")
        if not (_is_pow2(self.lanes) and 2 <= self.lanes <= 128):
            raise ConfigError(f"{where}lanes must be a power of two in 2..128, not {self.lanes}")
        if self.pe not in PE_KINDS:
            raise ConfigError(f"{where}pe must be one of {', '.join(PE_KINDS)}, not {self.pe!r}")
        if not self.weight_formats:
            raise ConfigError(f"{where}weight_formats must name at least one format")
        for wf in self.weight_formats:
            if wf not in weight_formats():
                raise ConfigError(f"{where}weight_formats: unknown format {wf!r} "
                                  f"(accepted: {', '.join(weight_formats())})")
        kind = _pe_kinds.pe_kind(self.pe)
        wide = [f for f in self.weight_formats
                if _pe_kinds.tag_value_bits(f) > kind.stream_value_bits]
        if wide:
            raise ConfigError(f"{where}weight_formats: the {self.pe} PE computes weights of at "
                              f"most {kind.stream_value_bits} bits, so {', '.join(wide)} "
                              f"cannot be built with it")
        if not self.group_sizes:
            raise ConfigError(f"{where}group_sizes must name at least one group size")
        for g in self.group_sizes:
            if g not in GROUP_SIZES:
                raise ConfigError(f"{where}group_sizes: {g} is not supported "
                                  f"(accepted: {', '.join(map(str, GROUP_SIZES))})")
            if g % self.lanes:
                raise ConfigError(f"{where}group size {g} is not a multiple of lanes "
                                  f"({self.lanes})")
        for sp in self.sparsity:
            if sp not in SPARSITY_PATTERNS:
                raise ConfigError(f"{where}sparsity: unknown pattern {sp!r} "
                                  f"(accepted: {', '.join(SPARSITY_PATTERNS)})")
        if "dense" not in self.sparsity:
            raise ConfigError(f"{where}sparsity must include 'dense'")
        nm = [sp for sp in self.sparsity if sp not in ("dense", "block")]
        if nm and not kind.nm_sparsity:
            raise ConfigError(f"{where}sparsity: the {self.pe} PE runs dense and block-skip "
                              f"weights only, not {', '.join(nm)}")
        if self.lut_group not in (2, 3, 4, 5, 6):
            raise ConfigError(f"{where}lut_group must be 2..6, not {self.lut_group}")
        if not 1.0 <= self.clock_mhz <= 1000.0:
            raise ConfigError(f"{where}clock_mhz must be 1..1000, not {self.clock_mhz}")
        if self.dsp_budget < 0:
            raise ConfigError(f"{where}dsp_budget must be >= 0, not {self.dsp_budget}")
        if self.device is not None:
            if not isinstance(self.device, DeviceConfig):
                raise ConfigError(f"{where}device must be a DeviceConfig or None, "
                                  f"not {self.device!r}")
            self.device.validate(where)
            if self.dsp_budget and self.dsp_budget != self.device.dsp:
                raise ConfigError(f"{where}dsp_budget ({self.dsp_budget}) contradicts "
                                  f"device.dsp ({self.device.dsp}): with a device, leave "
                                  f"dsp_budget out")
        if not (_is_pow2(self.instr_queue_depth) and 2 <= self.instr_queue_depth <= 1024):
            raise ConfigError(f"{where}instr_queue_depth must be a power of two in 2..1024, "
                              f"not {self.instr_queue_depth}")
        self.memory.validate(where)
        self.buffers.validate(where)
        if not isinstance(self.limits, LimitsConfig):
            raise ConfigError(f"{where}limits must be a LimitsConfig, not {self.limits!r}")
        self.limits.validate(where)
        w = self.sfu_word_bits
        if w is not None and (isinstance(w, bool) or not isinstance(w, int)
                              or not _is_pow2(w) or not 32 <= w <= self.memory.word_bits):
            raise ConfigError(f"{where}sfu_word_bits must be a power of two from 32 to "
                              f"{self.memory.word_bits} (the buffer word), not {w!r}")
        if w is not None and w != self.memory.word_bits and self.buffers.kv_banks > 1:
            raise ConfigError(f"{where}sfu_word_bits must be the buffer word "
                              f"({self.memory.word_bits}) on a banked KV buffer "
                              f"(buffers.kv_banks {self.buffers.kv_banks}), not {w}")
        word_lanes = self.sfu_word_width // 32
        v = self.sfu_lanes
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                              or not _is_pow2(v) or word_lanes % v):
            raise ConfigError(f"{where}sfu_lanes must be a power of two dividing "
                              f"{word_lanes} (the int32 of the SFU's word), not {v!r}")
        if self.sfu_funcs is not None:
            names = [f.name for f in SfuFunc]
            bad = [f for f in self.sfu_funcs if f not in names]
            if bad or not self.sfu_funcs or len(set(self.sfu_funcs)) < len(self.sfu_funcs):
                raise ConfigError(f"{where}sfu_funcs must list SFU functions once each, at "
                                  f"least one (accepted: {', '.join(names)}; leave the field "
                                  f"out for all), not {list(self.sfu_funcs)!r}")
        if self.buffers.act_bytes < max(self.group_sizes):
            raise ConfigError(f"{where}buffers.act_bytes ({self.buffers.act_bytes}) is smaller "
                              f"than the largest group size")
        row_bits = self.chains * self.lanes * 4
        if self.buffers.wgt_banks > 1 and (row_bits % self.memory.word_bits or
                                           (row_bits // self.memory.word_bits)
                                           % self.buffers.wgt_banks):
            raise ConfigError(f"{where}buffers.wgt_banks ({self.buffers.wgt_banks}) must "
                              f"divide the memory words of a WGT row (chains x lanes x 4 "
                              f"bits = {row_bits} over {self.memory.word_bits}-bit words)")
        kv_bank = self.buffers.kv_bytes // self.buffers.kv_banks
        if kv_bank < 2 * self.memory.word_bytes:
            raise ConfigError(f"{where}buffers.kv_banks ({self.buffers.kv_banks}) must leave "
                              f"each KV bank at least two memory words "
                              f"({2 * self.memory.word_bytes} bytes), not {kv_bank}")
        if self.decode_unit and self.chains % self.memory.channels:
            raise ConfigError(f"{where}chains ({self.chains}) must divide into one equal slice "
                              f"per memory channel ({self.memory.channels}) for the decode unit")
        if self.decode_unit and min(self.group_sizes) < self.memory.word_bytes:
            raise ConfigError(f"{where}group_sizes: a streamed group spans whole memory words, "
                              f"so each must be >= {self.memory.word_bytes} (the word's bytes), "
                              f"not {min(self.group_sizes)}")

    # -- derived -----------------------------------------------------------------------

    @property
    def peak_macs_per_cycle(self) -> int:
        """Peak multiply-accumulates per cycle: chains x lanes."""
        return self.chains * self.lanes

    @property
    def word_bytes(self) -> int:
        return self.memory.word_bytes

    @property
    def sfu_lane_count(self) -> int:
        """int32 elements of ``SILU``, ``GELU`` and the norms' output pass (scores of
        ``SOFTMAX``'s exp and output passes) per SFU cycle (pairs of ``ROPE`` per two):
        :attr:`sfu_lanes`, or the int32 count of the SFU's word (:attr:`sfu_word_width`)."""
        return self.sfu_word_width // 32 if self.sfu_lanes is None else self.sfu_lanes

    @property
    def sfu_functions(self) -> frozenset:
        """The :class:`~airfoil.isa.SfuFunc` the core builds: :attr:`sfu_funcs`, or every
        function."""
        if self.sfu_funcs is None:
            return frozenset(SfuFunc)
        return frozenset(SfuFunc[f] for f in self.sfu_funcs)

    @property
    def sfu_word_width(self) -> int:
        """Bits of the SFU kernels' word passes: :attr:`sfu_word_bits`, or the buffer
        word's."""
        return self.memory.word_bits if self.sfu_word_bits is None else self.sfu_word_bits

    @property
    def dsp_ceiling(self) -> int:
        """DSP slices the configuration may use: ``device.dsp`` with a device, else
        ``dsp_budget`` (0: no ceiling)."""
        return self.device.dsp if self.device is not None else self.dsp_budget

    @property
    def slices(self) -> int:
        """Slices of the streamed engine: one per memory channel, each with its own port,
        decode unit and ``slice_chains`` chains (1 without a decode unit)."""
        return self.memory.channels if self.decode_unit else 1

    @property
    def slice_chains(self) -> int:
        """Chains each slice feeds: the rows of one streamed record."""
        return self.chains // self.slices

    @property
    def k_split_batches(self) -> int:
        """Batches of ``chains`` accumulators a K-split matrix instruction may span
        (:func:`k_split_batches` of this config's WGT buffer, chains and smallest group)."""
        return k_split_batches(self.buffers.weight_bytes, self.chains, min(self.group_sizes))

    @property
    def channel_bytes_per_cycle(self) -> float:
        """Bytes one channel delivers per kernel cycle: ``channel_gbps`` at ``clock_mhz``,
        at most the port's word (the port's word when ``channel_gbps`` is 0)."""
        wb = self.memory.word_bytes
        if not self.memory.channel_gbps:
            return float(wb)
        return min(float(wb), self.memory.channel_gbps * 1e3 / self.clock_mhz)

    def to_dict(self) -> dict:
        """Return the configuration as plain data (tuples as lists), YAML/JSON ready."""
        def conv(v):
            if dataclasses.is_dataclass(v):
                return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
            if isinstance(v, tuple):
                return [conv(x) for x in v]
            return v
        return conv(self)

    @property
    def decode_unit(self) -> bool:
        """Whether the core has the decode unit (streamed weights, ``LD WSTREAM`` and
        ``MV STREAM``): built when the config lists a format or a pattern only it reads
        (one of :data:`STREAM_ONLY_FORMATS`, an N:M pattern, ``block``: block-skip records)."""
        return (any(f in stream_only_formats() for f in self.weight_formats) or
                any(p != "dense" for p in self.sparsity))

    @property
    def tile_formats(self) -> tuple:
        """Weight formats of WGT tiles (the MATRIX unit reads them without the decode
        unit): those of :attr:`weight_formats` the PE kind computes
        (:data:`TILE_FORMATS_OF_PE`)."""
        return tuple(f for f in self.weight_formats if f in TILE_FORMATS_OF_PE[self.pe])

    @property
    def signed_tile_scales(self) -> bool:
        """Whether a WGT tile's group scale may be negative on this PE kind
        (:attr:`hdl.pe.kinds.PeKind.signed_tile_scales`)."""
        return _pe_kinds.pe_kind(self.pe).signed_tile_scales

    @property
    def stream_formats(self) -> tuple:
        """Record formats the decode unit reads (names of :data:`airfoil.packing.
        TAG_BY_NAME`): INT2, INT3, INT4, INT8 and OVP4, and the BitMoD formats listed in
        :attr:`weight_formats`; empty without a decode unit."""
        if not self.decode_unit:
            return ()
        widest = _pe_kinds.pe_kind(self.pe).stream_value_bits
        base = _base_stream_formats()
        return tuple(f for f in base + tuple(
            f for f in weight_formats() if f in self.weight_formats
            and f not in base) if _pe_kinds.tag_value_bits(f) <= widest)

    @property
    def config_hash(self) -> str:
        """16 hex digits naming everything a program depends on (the name, description,
        device capacity, :attr:`sfu_lanes` and :attr:`sfu_word_bits` excluded;
        ``buffers.wgt_banks`` and ``buffers.kv_banks`` only when not the one bank of the
        default, so a program for one bank keeps its hash; :attr:`sfu_funcs` only when
        given)."""
        return self._digest(exclude=("sfu_lanes", "sfu_word_bits"))

    @property
    def hardware_hash(self) -> str:
        """16 hex digits naming everything the elaborated core depends on: the
        :attr:`config_hash` fields, :attr:`sfu_lanes` and :attr:`sfu_word_bits` (which
        change the SFU, never a program; the latter only when given). Caches of built
        cores and place-and-route reports are keyed by it."""
        return self._digest(exclude=())

    def _digest(self, exclude: tuple[str, ...]) -> str:
        d = self.to_dict()
        for key in _BANK_KEYS:
            if d["buffers"][key] == 1:
                del d["buffers"][key]
        if d["limits"]["topk_max"] == TOPK_MAX:
            del d["limits"]["topk_max"]
        for key in ("sfu_word_bits", "sfu_funcs"):
            if d[key] is None:
                del d[key]
        if "sfu_funcs" in d:                            # the set, in the ISA's order
            d["sfu_funcs"] = [f.name for f in SfuFunc if f.name in d["sfu_funcs"]]
        for key in ("name", "description", "device") + exclude:
            d.pop(key, None)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def config_hash_bytes(self) -> bytes:
        return bytes.fromhex(self.config_hash)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "AccelConfig":
        """Build and validate a configuration from plain data (as read from YAML)."""
        return _build(cls, data, source, "")

    @classmethod
    def from_yaml(cls, path) -> "AccelConfig":
        return load_config(path)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _build(cls, data, source: str, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the file'} must be a mapping, "
                          f"not {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{source}: unknown field '{prefix}{key}' (accepted: "
                              f"{', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: missing field '{prefix}{name}'")
            continue
        value = data[name]
        tp = hints[name]
        full = f"{prefix}{name}"
        args = typing.get_args(tp)
        if type(None) in args and len(args) == 2:      # an optional field (X | None)
            if value is None:
                kwargs[name] = None
                continue
            tp = next(a for a in args if a is not type(None))
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, source, full + ".")
        elif tp is tuple:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{source}: field '{full}' must be a list, not "
                                  f"{type(value).__name__} {value!r}")
            kwargs[name] = tuple(value)
        elif tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{source}: field '{full}' must be a number, not "
                                  f"{type(value).__name__} {value!r}")
            kwargs[name] = float(value)
        else:
            if isinstance(value, bool) or not isinstance(value, tp):
                raise ConfigError(f"{source}: field '{full}' must be {_type_name(tp)}, not "
                                  f"{type(value).__name__} {value!r}")
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _overlay(base: dict, over: dict) -> dict:
    """``base`` with ``over``'s fields: a mapping in both is overlaid field by field, any
    other value (a number, a list) replaced whole."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = _overlay(out[key], value)
        out[key] = value
    return out


def _config_data(path_or_name, chain=()) -> tuple[dict, Path]:
    """The fields of a config file, with those of its ``base`` (a built-in name or a path
    beside it) beneath its own: a derived config states only what differs."""
    p = Path(path_or_name)
    if not p.suffix and str(path_or_name) in BUILTIN_CONFIGS:
        p = builtin_config_path(str(path_or_name))
    if not p.is_file():
        raise ConfigError(f"config file {str(path_or_name)!r} not found (give a .yaml path or "
                          f"one of: {', '.join(sorted(BUILTIN_CONFIGS))})")
    data = read_yaml(p, "config", ConfigError)
    if not isinstance(data, dict) or "base" not in data:
        return data, p
    base = data["base"]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{p.name}: field 'base' must name a config, not {base!r}")
    if p.resolve() in chain:
        raise ConfigError(f"{p.name}: its 'base' configs form a loop")
    if not Path(base).suffix or Path(base).is_absolute():
        where = base
    else:
        where = p.parent / base
    under, _ = _config_data(where, (*chain, p.resolve()))
    return _overlay(under, {k: v for k, v in data.items() if k != "base"}), p


def load_config(path_or_name) -> AccelConfig:
    """Load a configuration from a YAML path or a built-in name (``test``, ``u280``).

    A file with a ``base`` field (a built-in name or a path relative to the file) is that
    config with the file's fields laid over it (:func:`_overlay`: mappings such as
    ``memory`` field by field, everything else replaced)."""
    data, p = _config_data(path_or_name)
    return AccelConfig.from_dict(data, source=p.name)
