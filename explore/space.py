"""A design space: a base board config and the values each varied field takes.

A space file (YAML) names a base config and the fields to sweep::

    base: sim_llm                  # a shipped board config, or a path to one
    model: tiny-llama              # the model each point plans (``--model`` overrides)
    recipe: null                   # an LLM recipe file (default: the shipped one)
    device: u280                   # capacity the Pareto front must fit: a board config
                                   # with a device section, or {part, dsp, lut, ff, bram}
    context: 64                    # decode position of the tokens/s figure
    prompt: 64                     # prompt tokens of the prefill figure
    resources: yosys               # whole-core estimate per point (yosys | none)
    set:                           # fields every point overrides
      dsp_budget: 0
    vary:                          # fields swept (their cartesian product)
      chains: [4, 8, 16]
      lanes: {from: 8, to: 32, times: 2}      # 8, 16, 32
      memory.channels: {from: 1, to: 3, step: 1}
      clock_mhz: [200, 250]

Fields are dotted paths into the config (``memory.channels``, ``buffers.act_bytes``);
a path the config does not have is refused here, not at every point. A point whose
config is inconsistent (say ``chains`` not a multiple of ``memory.channels``) is kept as
an invalid point with the reason, since that is an answer too.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from airfoil.config import AccelConfig, BufferConfig, DeviceConfig, MemoryConfig, load_config
from airfoil.errors import ConfigError
from airfoil.yamlfile import read_yaml

__all__ = ["Space", "load_space", "parse_space", "RESOURCE_MODES", "SHIPPED_SPACES"]

#: Spaces shipped with the project (``explore/spaces/<name>.yaml``), by name.
SHIPPED_SPACES = {p.name[:-5]: p for p in sorted(
    (resources.files(__package__) / "spaces").iterdir()) if p.name.endswith(".yaml")}

#: How a point's resources are estimated: the whole core in Yosys, or not at all.
RESOURCE_MODES = ("yosys", "none")
_KEYS = {"base", "model", "recipe", "device", "context", "prompt", "resources", "set", "vary"}
_SECTIONS = {"memory": MemoryConfig, "buffers": BufferConfig}
_MAX_POINTS = 100_000


@dataclass(frozen=True)
class Space:
    """A parsed space: ``points()`` lists the overrides of every point."""

    base: dict
    axes: tuple                 # ((dotted field, (values...)), ...)
    fixed: tuple                # ((dotted field, value), ...)
    model: str | None
    recipe: str | None
    device: DeviceConfig | None
    context: int
    prompt: int
    resources: str

    def points(self) -> list[dict]:
        """Every combination of the axes' values, as ``{field: value}`` (fixed fields
        included), in a fixed order."""
        names = [a for a, _ in self.axes]
        out = []
        for combo in itertools.product(*(v for _, v in self.axes)):
            out.append({**dict(self.fixed), **dict(zip(names, combo))})
        return out

    def config_of(self, overrides: dict) -> dict:
        """The config (as a dict) of the point with ``overrides``, named after the base
        and a hash of the overrides."""
        data = copy.deepcopy(self.base)
        for path, value in overrides.items():
            node = data
            *parents, leaf = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        tag = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
        data["name"] = f"{self.base['name']}-{tag}"
        return data


def _field_names(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)}


def _check_path(path: str, where: str) -> None:
    parts = path.split(".") if isinstance(path, str) else []
    top = _field_names(AccelConfig) - {"name", "device", "description"}
    ok = (len(parts) == 1 and parts[0] in top and parts[0] not in _SECTIONS) or (
        len(parts) == 2 and parts[0] in _SECTIONS and parts[1] in _field_names(
            _SECTIONS[parts[0]]))
    if not ok:
        fields = sorted(top - set(_SECTIONS)) + sorted(
            f"{s}.{f}" for s, c in _SECTIONS.items() for f in _field_names(c))
        raise ConfigError(f"{where}: {path!r} is not a config field (accepted: "
                          f"{', '.join(fields)})")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _values(spec, where: str) -> tuple:
    """An axis' values: a list, or a range ``{from, to, step}`` / ``{from, to, times}``."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where} lists no values")
        return tuple(spec)
    if not isinstance(spec, dict) or set(spec) - {"from", "to", "step", "times"} or not (
            {"from", "to"} <= set(spec) and len(set(spec) & {"step", "times"}) == 1):
        raise ConfigError(f"{where} must be a list of values or a range {{from, to, step}} "
                          f"or {{from, to, times}}, not {spec!r}")
    lo, hi = spec["from"], spec["to"]
    step = spec.get("step")
    times = spec.get("times")
    if not all(_number(v) for v in (lo, hi, step or times)):
        raise ConfigError(f"{where}: from, to, step and times must be numbers, not {spec!r}")
    if step is not None and step <= 0 or times is not None and times <= 1 or hi < lo:
        raise ConfigError(f"{where}: need from <= to, step > 0 or times > 1, not {spec!r}")
    if times is not None and lo <= 0:
        raise ConfigError(f"{where}: a geometric range starts above 0, not at {lo!r}")
    out, v = [], lo
    while v <= hi and len(out) <= _MAX_POINTS:
        out.append(v)
        v = v + step if step is not None else v * times
    return tuple(out)


def _device(spec, where: str) -> DeviceConfig | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        dev = load_config(spec).device
        if dev is None:
            raise ConfigError(f"{where}: config {spec!r} has no device section (name a board "
                              "config with one, such as u280, or give {part, dsp, lut, ff, "
                              "bram})")
        return dev
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a board config name or {{part, dsp, lut, ff, "
                          f"bram, uram}}, not {spec!r}")
    try:
        dev = DeviceConfig(**spec)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None
    dev.validate(f"{where}: ")
    return dev


def _positive_int(data, key, default, where):
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{where}: {key} must be a positive integer, not {v!r}")
    return v


def parse_space(data, source: str = "space") -> Space:
    """Check a space's mapping (see the module docstring) and return the :class:`Space`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a space is a mapping with base and vary, not "
                          f"{type(data).__name__}")
    extra = sorted(set(data) - _KEYS)
    if extra:
        raise ConfigError(f"{source}: unknown key {extra[0]!r} (accepted: "
                          f"{', '.join(sorted(_KEYS))})")
    if "base" not in data:
        raise ConfigError(f"{source}: base (a board config name or path) is missing")
    base = load_config(data["base"]).to_dict()
    base.pop("device", None)        # the front's capacity is the space's own device
    vary = data.get("vary") or {}
    fixed = data.get("set") or {}
    for name, sec in (("vary", vary), ("set", fixed)):
        if not isinstance(sec, dict):
            raise ConfigError(f"{source}: {name} must map config fields to values")
        for path in sec:
            _check_path(path, f"{source}: {name}")
    axes = tuple((p, _values(v, f"{source}: vary.{p}")) for p, v in vary.items())
    count = 1
    for _, v in axes:
        count *= len(v)
    if count > _MAX_POINTS:
        raise ConfigError(f"{source}: the space has {count} points, more than "
                          f"{_MAX_POINTS}: narrow its ranges")
    resources = data.get("resources", "yosys")
    if resources not in RESOURCE_MODES:
        raise ConfigError(f"{source}: resources must be one of {', '.join(RESOURCE_MODES)}, "
                          f"not {resources!r}")
    for key in ("model", "recipe"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ConfigError(f"{source}: {key} must be a name or a path, not {data[key]!r}")
    return Space(base=base, axes=axes, fixed=tuple(fixed.items()), model=data.get("model"),
                 recipe=data.get("recipe"), device=_device(data.get("device"),
                                                           f"{source}: device"),
                 context=_positive_int(data, "context", 64, source),
                 prompt=_positive_int(data, "prompt", 64, source), resources=resources)


def load_space(path) -> Space:
    """Read and check a space file (a path, or the name of a shipped space)."""
    if not Path(path).is_file() and str(path) in SHIPPED_SPACES:
        path = SHIPPED_SPACES[str(path)]
    elif not Path(path).is_file():
        raise ConfigError(f"space file {str(path)!r} not found (give a .yaml path or one of: "
                          f"{', '.join(SHIPPED_SPACES)})")
    path = Path(path)
    return parse_space(read_yaml(path, "space", ConfigError), path.name)
