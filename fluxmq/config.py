"""FluxMQ configuration: a declarative, typed schema loaded from YAML.

The schema is a tree of frozen dataclasses. Each leaf field is declared with `setting(kind,
default, doc)`, each nested section with `subsection(cls, doc)`, so adding a key is one line:

    max_qos: int = setting(Int(0, 2), 2, "Highest QoS level the broker supports.")

`load_config(path)` reads a YAML file, rejects anything the schema does not know (with a
"did you mean" hint), validates every value and returns a `Config`. Every problem is a
`ConfigError` whose message is one line naming the full key path.

The reference tables in docs/configuration.md and the example file examples/fluxmq.yaml are
generated from the schema (`python -m fluxmq.config --write`), and a test checks that they are
up to date, so the docs cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import ipaddress
import json
import math
import os
import re
import sys
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, dataclass_transform

import yaml

__all__ = [
    "Addr",
    "Bool",
    "BrokerConfig",
    "Config",
    "ConfigError",
    "Duration",
    "Enum",
    "Float",
    "Int",
    "Kind",
    "LogConfig",
    "Section",
    "SectionInfo",
    "ServerConfig",
    "SessionConfig",
    "SettingInfo",
    "Size",
    "StorageConfig",
    "Str",
    "StrList",
    "TCPConfig",
    "TCPListenerConfig",
    "format_duration",
    "iter_schema",
    "iter_settings",
    "load_config",
    "parse_addr",
    "parse_duration",
    "parse_size",
    "render_docs_reference",
    "render_example",
    "section",
    "setting",
    "subsection",
]

_META = "fluxmq.config"
_UINT32_MAX = 4294967295


class ConfigError(Exception):
    """A configuration problem. `str(err)` is one line; `err.key` is the dotted key, if any."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class _Invalid(ValueError):
    """Raised by a value kind with a message that lacks the key; the loader adds the key path."""


def _show(value: Any) -> str:
    """Render a YAML value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return json.dumps(text, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _render_scalar(value: Any, kind: Kind | None = None) -> str:
    """Render a default as YAML for the docs and the example: enum words bare, other strings
    double-quoted."""
    if isinstance(kind, Enum):
        return str(value) if value else '""'
    if isinstance(value, tuple | list):
        return json.dumps(list(value), ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# ---------------------------------------------------------------------------------------------
# Value kinds: how a setting is typed, parsed, dumped back and described.
# ---------------------------------------------------------------------------------------------


class Kind:
    """Base class of value kinds. Subclasses implement `parse` and `describe`."""

    def parse(self, value: Any) -> Any:
        """Validate a YAML value and return the Python value; raise `_Invalid` if it is bad."""
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        """Turn a parsed value back into plain YAML-able data (inverse of `parse`)."""
        return value

    def describe(self) -> str:
        """A short type description for the docs, e.g. `integer, 0 to 2`."""
        raise NotImplementedError


def _range_text(lo: float | None, hi: float | None, unit: str = "") -> str:
    """`from 1 to 5`, `>= 0`, `<= 9` or `` for a range, for messages and docs."""
    if lo is not None and hi is not None:
        return f"from {lo} to {hi}{unit}"
    if lo is not None:
        return f">= {lo}{unit}"
    if hi is not None:
        return f"<= {hi}{unit}"
    return ""


def _in_range(value: float, lo: float | None, hi: float | None) -> bool:
    return (lo is None or value >= lo) and (hi is None or value <= hi)


@dataclass(frozen=True, slots=True)
class Int(Kind):
    """An integer (not a bool, not a float) with optional inclusive bounds."""

    min: int | None = None
    max: int | None = None

    def parse(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected {self._expected()}, got {_show(value)}")
        if not _in_range(value, self.min, self.max):
            raise _Invalid(f"expected {self._expected()}, got {value}")
        return value

    def _expected(self) -> str:
        return f"an integer {_range_text(self.min, self.max)}".rstrip()

    def describe(self) -> str:
        rng = _range_text(self.min, self.max)
        return f"integer, {rng}" if rng else "integer"


_DURATION_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_DURATION_HINT = 'a number of seconds or a string like "100ms", "30s", "5m", "2h", "1h30m"'


def parse_duration(value: Any) -> float:
    """Parse a duration to float seconds: a number (seconds) or e.g. `100ms`, `30s`, `1h30m`.

    Raises ValueError for anything else, including negative and non-finite values.
    """
    if isinstance(value, str):
        seconds = _parse_duration_text(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    else:
        raise ValueError(f"invalid duration {_show(value)} (expected {_DURATION_HINT})")
    result = float(seconds)
    if seconds < 0 or not math.isfinite(result):
        raise ValueError(f"invalid duration {_show(value)}: must be a finite value >= 0")
    return result


def _parse_duration_text(text: str) -> Decimal:
    """Parse `1h30m`-style text (or a bare number of seconds) to Decimal seconds."""
    s = text.strip()
    if re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", s):
        return Decimal(s)
    total, pos = Decimal(0), 0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += Decimal(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or pos != len(s):
        raise ValueError(f"invalid duration {_show(text)} (expected {_DURATION_HINT})")
    return total


def format_duration(seconds: float) -> str:
    """Format seconds as `60s`, `100ms` or `0.0015s`; `parse_duration` reads it back exactly."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    ms = seconds * 1000
    if ms == int(ms) and int(ms) / 1000 == seconds:
        return f"{int(ms)}ms"
    return f"{seconds!r}s"


@dataclass(frozen=True, slots=True)
class Duration(Kind):
    """A duration in float seconds. `min_exclusive=True` makes `min` itself invalid (`> 0`)."""

    min: float = 0.0
    max: float | None = None
    min_exclusive: bool = False

    def parse(self, value: Any) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise _Invalid(str(e)) from None
        too_small = seconds <= self.min if self.min_exclusive else seconds < self.min
        if too_small or (self.max is not None and seconds > self.max):
            raise _Invalid(f"expected a duration {self._range()}, got {_show(value)}")
        return seconds

    def _range(self) -> str:
        low = "0" if self.min == 0 else format_duration(self.min)
        low = f"{'>' if self.min_exclusive else '>='} {low}"
        if self.max is None:
            return low
        return f"{low} and <= {format_duration(self.max)}"

    def dump(self, value: float) -> str:
        return format_duration(value)

    def describe(self) -> str:
        return f"duration, {self._range()}"


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
_SIZE_HINT = 'a number of bytes or a string like "512KB", "10MB", "1GB", where 1KB = 1024 bytes'


def parse_size(value: Any) -> int:
    """Parse a size to bytes: an integer or e.g. `512KB`, `10MB`, `1GB` (binary: 1KB = 1024).

    Raises ValueError for anything else, including sizes that are not a whole number of bytes.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"invalid size {value}: must be >= 0")
        return value
    m = _SIZE_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {_show(value)} (expected {_SIZE_HINT})")
    size = Decimal(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if size != size.to_integral_value():
        raise ValueError(f"invalid size {_show(value)}: not a whole number of bytes")
    return int(size)


@dataclass(frozen=True, slots=True)
class Size(Kind):
    """A size in bytes (int), written as an integer or with a KB/MB/GB suffix."""

    min: int | None = None
    max: int | None = None

    def parse(self, value: Any) -> int:
        try:
            size = parse_size(value)
        except ValueError as e:
            raise _Invalid(str(e)) from None
        if not _in_range(size, self.min, self.max):
            got = _show(value) if isinstance(value, str) else str(value)
            if isinstance(value, str):
                got += f" ({size} bytes)"
            raise _Invalid(
                f"expected a size {_range_text(self.min, self.max, ' bytes')}, got {got}"
            )
        return size

    def describe(self) -> str:
        rng = _range_text(self.min, self.max, " bytes")
        return f"size, {rng}" if rng else "size"


@dataclass(frozen=True, slots=True)
class Enum(Kind):
    """One of a fixed set of lowercase words (matched case-insensitively); aliases map to them."""

    choices: tuple[str, ...]
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def parse(self, value: Any) -> str:
        if isinstance(value, str):
            word = value.strip().lower()
            word = self.aliases.get(word, word)
            for choice in self.choices:
                if choice.lower() == word:
                    return choice
        shown = ", ".join(c or '""' for c in self.choices)
        raise _Invalid(f"expected one of {shown}, got {_show(value)}")

    def describe(self) -> str:
        text = "one of " + ", ".join(f"`{c}`" if c else '`""`' for c in self.choices)
        if self.aliases:
            text += " (" + ", ".join(f"`{a}` = `{c}`" for a, c in self.aliases.items()) + ")"
        return text


@dataclass(frozen=True, slots=True)
class Str(Kind):
    """A string; `what` names it in messages and docs (`string`, `path`, ...)."""

    what: str = "string"
    allow_empty: bool = False

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or (not value and not self.allow_empty):
            article = "a" if self.allow_empty else "a non-empty"
            raise _Invalid(f"expected {article} {self.what}, got {_show(value)}")
        return value

    def describe(self) -> str:
        return self.what


@dataclass(frozen=True, slots=True)
class Float(Kind):
    """A number (YAML integer or float, not a bool) with optional bounds."""

    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False

    def parse(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"expected {self._expected()}, got {_show(value)}")
        number = float(value)
        too_small = self.min is not None and (
            number <= self.min if self.min_exclusive else number < self.min
        )
        if too_small or not math.isfinite(number) or (self.max is not None and number > self.max):
            raise _Invalid(f"expected {self._expected()}, got {value!r}")
        return number

    def _range(self) -> str:
        if self.min_exclusive and self.min is not None:
            return f"> {self.min:g}" + (f" and <= {self.max:g}" if self.max is not None else "")
        return _range_text(self.min, self.max)

    def _expected(self) -> str:
        return f"a number {self._range()}".rstrip()

    def dump(self, value: float) -> float | int:
        return int(value) if value == int(value) else value

    def describe(self) -> str:
        rng = self._range()
        return f"number, {rng}" if rng else "number"


@dataclass(frozen=True, slots=True)
class StrList(Kind):
    """A list of strings (kept as a tuple); `check(item)` may reject an item with a message."""

    what: str = "strings"
    check: Any = None

    def parse(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise _Invalid(f"expected a list of {self.what}, got {_show(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise _Invalid(f"item {i + 1}: expected a non-empty string, got {_show(item)}")
            if self.check is not None:
                problem = self.check(item)
                if problem:
                    raise _Invalid(f"item {i + 1} ({_show(item)}): {problem}")
        return tuple(value)

    def dump(self, value: tuple[str, ...]) -> list[str]:
        return list(value)

    def describe(self) -> str:
        return f"list of {self.what}"


@dataclass(frozen=True, slots=True)
class Bool(Kind):
    """`true` or `false` (YAML booleans only; the strings "yes"/"no" are not accepted)."""

    def parse(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _Invalid(f"expected true or false, got {_show(value)}")
        return value

    def describe(self) -> str:
        return "boolean"


class FrozenMap(Mapping[str, Any]):
    """An immutable, hashable mapping (a setting value that is a mapping)."""

    __slots__ = ("_d",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._d = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(tuple(self._d.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._d) == dict(other.items())

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"


@dataclass(frozen=True, slots=True)
class AutoBool(Kind):
    """`true`, `false` or `auto` (a YAML boolean, or the word `auto`)."""

    def parse(self, value: Any) -> bool | str:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        raise _Invalid(f"expected true, false or auto, got {_show(value)}")

    def describe(self) -> str:
        return "`true`, `false` or `auto`"


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str) -> str:
    """`text` with each `${NAME}` replaced by the environment variable NAME; raises ValueError
    naming a variable that is not set."""

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            raise ValueError(f"environment variable {m.group(1)} is not set")
        return value

    return _ENV_REF.sub(sub, text)


@dataclass(frozen=True, slots=True)
class StrMap(Kind):
    """A mapping of strings to strings (HTTP headers...); `${NAME}` in a value is replaced by
    the environment variable NAME when the configuration is loaded."""

    what: str = "name: value strings"

    def parse(self, value: Any) -> Mapping[str, str]:
        if not isinstance(value, Mapping):
            raise _Invalid(f"expected a mapping of {self.what}, got {_show(value)}")
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                raise _Invalid(f"expected non-empty string names, got {_show(k)}")
            if not isinstance(v, str):
                raise _Invalid(f"{k}: expected a string, got {_show(v)}")
            try:
                out[k] = expand_env(v)
            except ValueError as e:
                raise _Invalid(f"{k}: {e}") from None
        return FrozenMap(out)

    def dump(self, value: Mapping[str, str]) -> dict[str, str]:
        return dict(value)

    def describe(self) -> str:
        return f"mapping of {self.what}"


@dataclass(frozen=True, slots=True)
class EnvStr(Kind):
    """A string in which `${NAME}` is replaced by the environment variable NAME."""

    what: str = "string"

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _Invalid(f"expected a {self.what}, got {_show(value)}")
        try:
            return expand_env(value)
        except ValueError as e:
            raise _Invalid(str(e)) from None

    def describe(self) -> str:
        return f"{self.what} (`${{ENV}}` expanded)"


@dataclass(frozen=True, slots=True)
class OptionalKind(Kind):
    """`inner`, or null / absent (None): "use the default from elsewhere"."""

    inner: Kind

    def parse(self, value: Any) -> Any:
        return None if value is None else self.inner.parse(value)

    def dump(self, value: Any) -> Any:
        return None if value is None else self.inner.dump(value)

    def describe(self) -> str:
        return f"{self.inner.describe()}, or null"


@dataclass(frozen=True, slots=True)
class Overrides(Kind):
    """Some settings of section `cls` (each checked by its own kind), kept as a mapping of only
    the keys given: they override defaults taken from elsewhere at run time."""

    cls: Any

    def parse(self, value: Any) -> Mapping[str, Any]:
        if value is None:
            return FrozenMap()
        if not isinstance(value, Mapping):
            raise _Invalid(f"expected a mapping of settings, got {_show(value)}")
        specs = _field_specs(self.cls)
        out: dict[str, Any] = {}
        for k, v in value.items():
            spec = specs.get(k) if isinstance(k, str) else None
            if not isinstance(spec, _Setting):
                raise _Invalid(f"unknown key {_show(k)} (valid keys: {', '.join(specs)})")
            try:
                out[k] = spec.kind.parse(v)
            except _Invalid as e:
                raise _Invalid(f"{k}: {e}") from None
        return FrozenMap(out)

    def dump(self, value: Mapping[str, Any]) -> dict[str, Any]:
        specs = _field_specs(self.cls)
        return {k: specs[k].kind.dump(v) for k, v in value.items()}

    def describe(self) -> str:
        return "mapping of overrides"


@dataclass(frozen=True, slots=True)
class SectionList(Kind):
    """A list of mappings, each validated as section `cls` (errors name `key[i].field`)."""

    cls: Any
    what: str = "items"

    def parse(self, value: Any) -> tuple[Any, ...]:
        return self.build(value, "")

    def build(self, value: Any, key: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(f"expected a list of {self.what}, got {_show(value)}")
        return tuple(_build(self.cls, item, f"{key}[{i}]", {}) for i, item in enumerate(value))

    def dump(self, value: tuple[Any, ...]) -> list[dict[str, Any]]:
        return [item.to_dict() for item in value]

    def describe(self) -> str:
        return f"list of {self.what}"


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
_ADDR_HINT = 'expected "host:port", ":port" (all interfaces), "[ipv6]:port", or "" to disable'


def parse_addr(s: str) -> tuple[str, int] | None:
    """Parse a listen address into `(host, port)`; `None` for `""` (listener disabled).

    `":1883"` -> `("", 1883)` (all interfaces), `"127.0.0.1:1883"`, `"[::1]:1883"` ->
    `("::1", 1883)`, `"localhost:1883"`. Raises ValueError with a readable message otherwise.
    """
    if not isinstance(s, str):
        raise ValueError(f"invalid address {_show(s)} ({_ADDR_HINT})")
    if s == "":
        return None
    host, sep, port_text = s.rpartition(":")
    if not sep:
        raise ValueError(f"invalid address {_show(s)} ({_ADDR_HINT})")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid address {_show(s)}: {_show(host)} is not an IPv6 address")
    elif ":" in host:
        raise ValueError(
            f"invalid address {_show(s)}: write IPv6 addresses in brackets, e.g. [::1]:1883"
        )
    elif host:
        _check_host(s, host)
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"invalid address {_show(s)}: port must be a number from 1 to 65535")
    return host, int(port_text)


def _check_host(addr: str, host: str) -> None:
    """Accept an IPv4 address or a DNS host name; raise ValueError otherwise."""
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"invalid address {_show(addr)}: {_show(host)} is not an IPv4 address")
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"invalid address {_show(addr)}: {_show(host)} is not a valid host name")


@dataclass(frozen=True, slots=True)
class Addr(Kind):
    """A listen address string (`host:port`, `:port`, `[ipv6]:port`, or `""` = disabled)."""

    def parse(self, value: Any) -> str:
        try:
            parse_addr(value)
        except ValueError as e:
            raise _Invalid(str(e)) from None
        return value

    def describe(self) -> str:
        return "address"


# ---------------------------------------------------------------------------------------------
# Schema mechanism: sections are frozen dataclasses whose fields carry their spec as metadata.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Setting:
    kind: Kind
    default: Any  # as written in YAML (e.g. "60s"); parsed into the dataclass default
    doc: str


@dataclass(frozen=True, slots=True)
class _Subsection:
    cls: type[Section]
    doc: str
    defaults: Mapping[str, Any]  # per-instance default overrides of cls's own settings


def setting(kind: Kind, default: Any, doc: str) -> Any:
    """Declare a setting: its kind, its default as written in YAML, and a one-paragraph doc."""
    try:
        value = kind.parse(default)
    except _Invalid as e:
        raise TypeError(f"invalid default {default!r}: {e}") from None
    return dataclasses.field(default=value, metadata={_META: _Setting(kind, default, doc)})


def subsection(cls: type[Section], doc: str, **defaults: Any) -> Any:
    """Declare a nested section; `defaults` override defaults of `cls`'s settings here only.

    Example: `tls: TCPListenerConfig = subsection(TCPListenerConfig, "TLS listener", addr="")`.
    """
    specs = _field_specs(cls)
    for name, raw in defaults.items():
        spec = specs.get(name)
        if not isinstance(spec, _Setting):
            raise TypeError(f"{cls.__name__} has no setting {name!r}")
        setting(spec.kind, raw, spec.doc)  # validates the override
    frozen = MappingProxyType(dict(defaults))
    return dataclasses.field(
        default_factory=lambda: _build(cls, {}, "", frozen),
        metadata={_META: _Subsection(cls, doc, frozen)},
    )


class Section:
    """Base class of every config section: adds `to_dict()` and the `check` hook."""

    __slots__ = ()

    def check(self, key: str) -> None:
        """Checks across the settings of this section, after each one is valid on its own;
        `key` is the section's dotted path. Raise ConfigError naming the key."""

    def to_dict(self) -> dict[str, Any]:
        """This section's effective values as plain YAML-able data (durations as strings)."""
        out: dict[str, Any] = {}
        for name, spec in _field_specs(type(self)).items():
            value = getattr(self, name)
            out[name] = value.to_dict() if isinstance(spec, _Subsection) else spec.kind.dump(value)
        return out


_S = TypeVar("_S", bound=Section)


@dataclass_transform(kw_only_default=True, frozen_default=True)
def section(cls: type[_S]) -> type[_S]:
    """Class decorator for a config section: a frozen, slotted, keyword-only dataclass whose
    fields are all declared with `setting(...)` or `subsection(...)`."""
    made = dataclass(frozen=True, slots=True, kw_only=True)(cls)
    for f in dataclasses.fields(made):
        if _META not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with setting() or subsection()")
    return made


def _field_specs(cls: type) -> dict[str, _Setting | _Subsection]:
    """Field name -> spec, in declaration order."""
    return {f.name: f.metadata[_META] for f in dataclasses.fields(cls)}


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """One setting in the schema, as listed by `iter_schema`."""

    key: str
    kind: Kind
    default: Any  # as written in YAML
    doc: str


@dataclass(frozen=True, slots=True)
class SectionInfo:
    """One section in the schema, as listed by `iter_schema`."""

    key: str
    cls: type[Section]
    doc: str


def iter_schema(
    cls: type[Section] | None = None, prefix: str = "", defaults: Mapping[str, Any] | None = None
) -> Iterator[SectionInfo | SettingInfo]:
    """Walk the schema depth first in declaration order; a section comes before its contents."""
    cls = cls or Config
    defaults = defaults or {}
    for name, spec in _field_specs(cls).items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(spec, _Subsection):
            yield SectionInfo(key, spec.cls, spec.doc)
            yield from iter_schema(spec.cls, key, spec.defaults)
        else:
            yield SettingInfo(key, spec.kind, defaults.get(name, spec.default), spec.doc)


def iter_settings() -> Iterator[SettingInfo]:
    """Every setting of the schema with its full dotted key."""
    return (e for e in iter_schema() if isinstance(e, SettingInfo))


# ---------------------------------------------------------------------------------------------
# The schema. One line per key; run `python -m fluxmq.config --write` after changing it.
# ---------------------------------------------------------------------------------------------


@section
class TCPListenerConfig(Section):
    """An MQTT-over-TCP listener."""

    addr: str = setting(
        Addr(),
        ":1883",
        'Listen address: "host:port", ":port" for all interfaces, "[ipv6]:port", '
        'or "" to disable the listener.',
    )
    max_connections: int = setting(
        Int(min=0),
        10000,
        "Most simultaneous connections on this listener; a new connection over the limit is "
        "refused. 0 = unlimited.",
    )
    read_timeout: float = setting(
        Duration(min_exclusive=True),
        "60s",
        "A new connection must send its CONNECT packet within this time, and a partially "
        "received packet must complete within it; otherwise the connection is closed.",
    )
    write_timeout: float = setting(
        Duration(min_exclusive=True),
        "60s",
        "A client that accepts no written data for this long is disconnected.",
    )


def _cipher_problem(name: str) -> str | None:
    from fluxmq.transport.tls import cipher_problem  # the ssl module's view of the name

    return cipher_problem(name)


_CERT_FILE_DOC = (
    "PEM file with the server certificate (and any intermediate certificates after it). "
    "Required when `addr` is set."
)
_KEY_FILE_DOC = "PEM file with the private key of `cert_file`. Required when `addr` is set."
_CA_FILE_DOC = (
    "PEM file with the certificate authorities that client certificates are checked against. "
    "Required for `mtls` and for `client_auth: require` or `verify_if_given`."
)
_CLIENT_AUTH_DOC = (
    "Client certificates: `none` (not asked for), `request` (asked for, not required, not "
    "verified), `require_any` (required, not verified), `verify_if_given` (not required; "
    'verified against `ca_file` if sent), `require` (required and verified). `""`: `require` '
    "when `ca_file` is set, else `none`."
)
_CLIENT_AUTH = Enum(
    ("", "none", "request", "require_any", "verify_if_given", "require"),
    MappingProxyType(
        {
            "no": "none",
            "require-any": "require_any",
            "requireany": "require_any",
            "verify-if-given": "verify_if_given",
            "verifyifgiven": "verify_if_given",
            "require_and_verify": "require",
            "require-and-verify": "require",
            "requireandverify": "require",
        }
    ),
)
_MIN_VERSION = Enum(("TLS1.2", "TLS1.3"), MappingProxyType({"1.2": "tls1.2", "1.3": "tls1.3"}))
_MIN_VERSION_DOC = "Oldest TLS version accepted; an older client fails the handshake."
_CIPHERS = StrList("cipher suite names", _cipher_problem)
_CIPHERS_DOC = (
    "TLS 1.2 cipher suites offered, by IANA name (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`) "
    "or OpenSSL name (`ECDHE-RSA-AES128-GCM-SHA256`); empty = OpenSSL's defaults. TLS 1.3 "
    "suites are always on and cannot be listed."
)
_PREFER_DOC = "Choose the cipher suite by the order of `cipher_suites` rather than the client's."
_IDENTITY_DOC = (
    "Use the client certificate's identity (subject CN, else its first SAN) as the username "
    "given to authentication and authorisation; a client without a certificate is refused "
    "(MQTT: CONNACK 0x87 not authorized)."
)


def _check_tls_listener(section: Any, key: str) -> None:
    """A TLS listener that is on needs loadable certificate files (checked now, so that a bad
    file stops the broker at start with the key named)."""
    if not section.addr:
        return
    from fluxmq.transport.tls import check_listener

    check_listener(section, key)


def tls_settings(cls: type[_S]) -> type[_S]:
    """Give a listener section the inline TLS settings (`cert_file`, `key_file`, `ca_file`,
    `client_auth`, `min_version`, `cipher_suites`, `prefer_server_cipher_suites`,
    `use_identity_as_username`) and their checks. Applied under `@section`, so each class gets
    fields of its own."""
    fields = {
        "cert_file": (str, lambda: setting(Str("path", allow_empty=True), "", _CERT_FILE_DOC)),
        "key_file": (str, lambda: setting(Str("path", allow_empty=True), "", _KEY_FILE_DOC)),
        "ca_file": (str, lambda: setting(Str("path", allow_empty=True), "", _CA_FILE_DOC)),
        "client_auth": (str, lambda: setting(_CLIENT_AUTH, "", _CLIENT_AUTH_DOC)),
        "min_version": (str, lambda: setting(_MIN_VERSION, "TLS1.2", _MIN_VERSION_DOC)),
        "cipher_suites": (tuple[str, ...], lambda: setting(_CIPHERS, [], _CIPHERS_DOC)),
        "prefer_server_cipher_suites": (bool, lambda: setting(Bool(), False, _PREFER_DOC)),
        "use_identity_as_username": (bool, lambda: setting(Bool(), False, _IDENTITY_DOC)),
    }
    annotations = dict(inspect.get_annotations(cls))
    for name, (typ, make) in fields.items():
        annotations[name] = typ
        setattr(cls, name, make())
    cls.__annotations__ = annotations

    def check(self, key: str) -> None:
        _check_tls_listener(self, key)

    cls.check = check
    return cls


@section
@tls_settings
class TCPTLSListenerConfig(TCPListenerConfig):
    """An MQTT-over-TCP listener with TLS."""


@section
class TCPConfig(Section):
    """MQTT over TCP."""

    plain: TCPListenerConfig = subsection(TCPListenerConfig, "Plain (unencrypted) MQTT over TCP.")
    tls: TCPTLSListenerConfig = subsection(
        TCPTLSListenerConfig,
        "MQTT over TCP with TLS (conventionally port 8883); off unless `addr` is set.",
        addr="",
    )
    mtls: TCPTLSListenerConfig = subsection(
        TCPTLSListenerConfig,
        "MQTT over TCP with mutual TLS: clients must present a certificate signed by `ca_file` "
        "(conventionally port 8884); off unless `addr` is set.",
        addr="",
    )


def _origin_problem(origin: str) -> str | None:
    if origin == "*":
        return None
    if origin.startswith("*."):
        return None if _HOSTNAME.fullmatch(origin[2:]) else "not a valid *.domain pattern"
    if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#\s]+", origin):
        return 'expected "*", "scheme://host[:port]" or "*.domain"'
    return None


@section
class WSListenerConfig(Section):
    """An MQTT-over-WebSocket listener."""

    addr: str = setting(
        Addr(),
        ":8083",
        'Listen address: "host:port", ":port" for all interfaces, "[ipv6]:port", '
        'or "" to disable the listener.',
    )
    path: str = setting(
        Str("URL path"),
        "/mqtt",
        "The only URL path that upgrades to WebSocket; any other path gets HTTP 404.",
    )
    allowed_origins: tuple[str, ...] = setting(
        StrList("origins", _origin_problem),
        [],
        'Origins (the browser\'s `Origin` header) allowed to connect: `"*"` or an empty list '
        "allows all; `scheme://host[:port]` matches exactly (case-insensitive); `*.example.com` "
        "matches any subdomain of example.com. A refused origin gets HTTP 403 before the "
        "upgrade. A request without an `Origin` header (not a browser) is allowed.",
    )
    max_connections: int = setting(
        Int(min=0),
        10000,
        "Most simultaneous MQTT connections on this listener; a new connection over the limit "
        "is refused (MQTT 5: CONNACK 0x9F). 0 = unlimited.",
    )
    read_timeout: float = setting(
        Duration(min_exclusive=True),
        "60s",
        "The WebSocket handshake and then the CONNECT packet must each arrive within this "
        "time, and a partially received packet must complete within it.",
    )
    write_timeout: float = setting(
        Duration(min_exclusive=True),
        "60s",
        "A client that accepts no written data for this long is disconnected.",
    )


@section
@tls_settings
class WSTLSListenerConfig(WSListenerConfig):
    """An MQTT-over-WebSocket listener with TLS (wss://)."""


@section
class WSConfig(Section):
    """MQTT over WebSocket."""

    plain: WSListenerConfig = subsection(WSListenerConfig, "Plain MQTT over WebSocket (ws://).")
    tls: WSTLSListenerConfig = subsection(
        WSTLSListenerConfig,
        "MQTT over WebSocket with TLS (wss://); off unless `addr` is set.",
        addr="",
    )
    mtls: WSTLSListenerConfig = subsection(
        WSTLSListenerConfig,
        "MQTT over WebSocket with mutual TLS (wss:// with client certificates); off unless "
        "`addr` is set.",
        addr="",
    )


@section
class HTTPListenerConfig(Section):
    """An HTTP bridge listener."""

    addr: str = setting(
        Addr(),
        ":8080",
        'Listen address of the HTTP bridge (`POST /publish`, `GET /health`): "host:port", '
        '":port", "[ipv6]:port", or "" to disable it.',
    )
    read_timeout: float = setting(
        Duration(min_exclusive=True),
        "30s",
        "A request must arrive complete within this time, and an idle keep-alive connection is "
        "closed after it.",
    )


@section
@tls_settings
class HTTPTLSListenerConfig(HTTPListenerConfig):
    """An HTTP bridge listener with TLS (https://)."""


@section
class HTTPConfig(Section):
    """The HTTP bridge."""

    plain: HTTPListenerConfig = subsection(HTTPListenerConfig, "Plain HTTP bridge.")
    tls: HTTPTLSListenerConfig = subsection(
        HTTPTLSListenerConfig,
        "HTTP bridge over TLS (https://); off unless `addr` is set.",
        addr="",
    )
    mtls: HTTPTLSListenerConfig = subsection(
        HTTPTLSListenerConfig,
        "HTTP bridge over mutual TLS (https:// with client certificates); off unless `addr` "
        "is set.",
        addr="",
    )


_BLOCK_SIZES = (16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True, slots=True)
class _BlockSize(Int):
    """A CoAP block size: a power of two from 16 to 1024."""

    def parse(self, value: Any) -> int:
        size = Int.parse(self, value)
        if size not in _BLOCK_SIZES:
            raise _Invalid(f"expected one of {', '.join(map(str, _BLOCK_SIZES))}, got {size}")
        return size

    def describe(self) -> str:
        return "integer, one of " + ", ".join(map(str, _BLOCK_SIZES))


@section
class CoAPListenerConfig(Section):
    """A CoAP bridge listener (UDP)."""

    addr: str = setting(
        Addr(),
        ":5683",
        "Listen address (UDP) of the CoAP bridge (`/mqtt/publish/...`, `/mqtt/subscribe/...`, "
        '`/health`): "host:port", ":port", "[ipv6]:port", or "" to disable it.',
    )
    block_size: int = setting(
        _BlockSize(16, 1024),
        1024,
        "Largest block of a block-wise transfer (RFC 7959) both ways: a response or "
        "notification with a larger payload is sent in blocks of this size; a client's larger "
        "blocks are asked to shrink to it.",
    )
    ack_timeout: float = setting(
        Duration(min=0.01, max=60),
        "2s",
        "CoAP ACK_TIMEOUT: a confirmable notification not acknowledged in this time (times a "
        "random factor from 1 to 1.5, doubled on each retry) is sent again.",
    )
    max_retransmit: int = setting(
        Int(0, 10),
        4,
        "CoAP MAX_RETRANSMIT: a confirmable notification still unacknowledged after this many "
        "retransmissions ends the observation.",
    )
    max_peers: int = setting(
        Int(min=1),
        10000,
        "Most client endpoints (address and port; on DTLS, sessions) the listener keeps state "
        "for; a new one over the limit is refused (5.03, or its DTLS handshake is dropped).",
    )
    idle_timeout: float = setting(
        Duration(min_exclusive=True),
        "300s",
        "A client endpoint silent for this long is forgotten (its DTLS session ends), unless "
        "it observes a resource; then its next notification is confirmable, to check that it "
        "is still there.",
    )


@section
class CoAPDTLSListenerConfig(CoAPListenerConfig):
    """A CoAP bridge listener over DTLS 1.2 (coaps://) with X.509 certificates."""

    cert_file: str = setting(Str("path", allow_empty=True), "", _CERT_FILE_DOC)
    key_file: str = setting(Str("path", allow_empty=True), "", _KEY_FILE_DOC)
    ca_file: str = setting(
        Str("path", allow_empty=True),
        "",
        "PEM file with the certificate authorities that client certificates are checked "
        "against. Required for `mdtls` (a certificate is then required); on `dtls` a client "
        "certificate is then asked for and verified if sent.",
    )
    cipher_suites: tuple[str, ...] = setting(
        _CIPHERS,
        [],
        "DTLS 1.2 cipher suites offered, by IANA name (`TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`) "
        "or OpenSSL name; empty = OpenSSL's defaults.",
    )

    def check(self, key: str) -> None:
        if not self.addr:
            return
        from fluxmq.transport.dtls import check_listener

        check_listener(self, key)


@section
class CoAPConfig(Section):
    """The CoAP bridge."""

    plain: CoAPListenerConfig = subsection(CoAPListenerConfig, "Plain CoAP over UDP (coap://).")
    dtls: CoAPDTLSListenerConfig = subsection(
        CoAPDTLSListenerConfig,
        "CoAP over DTLS 1.2 (coaps://, conventionally port 5684); off unless `addr` is set.",
        addr="",
    )
    mdtls: CoAPDTLSListenerConfig = subsection(
        CoAPDTLSListenerConfig,
        "CoAP over DTLS 1.2 with client certificates verified against `ca_file`; off unless "
        "`addr` is set.",
        addr="",
    )


@section
class APIConfig(Section):
    """The admin REST API."""

    addr: str = setting(
        Addr(),
        "",
        'Listen address of the admin API (`/api/v1/...`, see docs/operations.md): "host:port", '
        '":port", "[ipv6]:port", or "" (the default) to leave it off.',
    )
    token: str = setting(
        EnvStr("string"),
        "",
        "Bearer token every request must carry (`Authorization: Bearer <token>`); required when "
        "`addr` is set. `${NAME}` is replaced by the environment variable NAME.",
    )

    def check(self, key: str) -> None:
        if self.addr and not self.token:
            raise ConfigError(f"{key}.token: required when {key}.addr is set", f"{key}.token")


@section
class ServerConfig(Section):
    """Network listeners."""

    tcp: TCPConfig = subsection(TCPConfig, "MQTT over TCP listeners.")
    websocket: WSConfig = subsection(WSConfig, "MQTT over WebSocket listeners.")
    http: HTTPConfig = subsection(HTTPConfig, "HTTP bridge listeners.")
    coap: CoAPConfig = subsection(CoAPConfig, "CoAP bridge listeners (UDP, DTLS, mutual DTLS).")
    health_enabled: bool = setting(
        Bool(), True, "Serve the health endpoints (`/health`, `/ready`, `/cluster/status`)."
    )
    health_addr: str = setting(
        Addr(),
        ":8081",
        'Listen address of the health endpoints; "" disables them (as does '
        "`health_enabled: false`). It also serves `GET /metrics` (Prometheus).",
    )
    api: APIConfig = subsection(APIConfig, "The admin REST API (off unless `addr` is set).")


@section
class BrokerConfig(Section):
    """MQTT protocol limits and timers."""

    max_message_size: int = setting(
        Size(1024, 268435455),
        1048576,
        "Largest MQTT packet accepted, in bytes (or with a KB/MB suffix). Advertised to MQTT 5 "
        "clients as Maximum Packet Size; a larger inbound packet gets reason code 0x95 "
        "(Packet too large).",
    )
    max_retained_messages: int = setting(
        Int(min=0), 10000, "Most retained messages kept. 0 = unlimited."
    )
    max_qos: int = setting(Int(0, 2), 2, "Highest QoS level the broker supports (0, 1 or 2).")
    max_inflight: int = setting(
        Int(1, 65535),
        100,
        "Outbound QoS 1 and 2 messages in flight (sent, not yet acknowledged) per client; also "
        "capped by the client's Receive Maximum.",
    )
    max_pending_bytes: int = setting(
        Size(16384, 268435455),
        1048576,
        "Output waiting to be written to one client (its socket full) above which new QoS 0 "
        "messages to it are dropped, and counted as `slow_subscriber` drops; the bound that "
        "keeps a client that stopped reading from growing the broker's memory. QoS 1 and 2 "
        "messages are never dropped for it: they wait in the session's queue.",
    )
    retry_interval: float = setting(
        Duration(),
        "20s",
        "MQTT 3.1.1 only: resend an unacknowledged QoS 1 or 2 message after this long; 0 "
        "disables resends. MQTT 5 forbids resending within a session, so MQTT 5 clients get "
        "resends only when they reconnect.",
    )
    max_topic_alias: int = setting(
        Int(0, 65535),
        10,
        "Topic Alias Maximum advertised to MQTT 5 clients: how many topic aliases a client may "
        "use when publishing to the broker. 0 = no inbound topic aliases.",
    )
    receive_maximum: int = setting(
        Int(1, 65535),
        1024,
        "Receive Maximum advertised to MQTT 5 clients: how many QoS 1 and 2 messages a client "
        "may have unacknowledged towards the broker. A client sending more is disconnected "
        "with reason code 0x93 (Receive Maximum exceeded).",
    )
    max_keepalive: int = setting(
        Int(0, 65535),
        65535,
        "Largest Keep Alive accepted, in seconds. An MQTT 5 client asking for more (or for 0) "
        "gets Server Keep Alive = this value; an MQTT 3.1.1 client asking for more is refused "
        "with CONNACK 0x02 (identifier rejected), as Mosquitto does.",
    )
    sys_interval: float = setting(
        Duration(),
        "10s",
        "How often the $SYS/broker/... statistics topics are published. 0 disables them.",
    )


@section
class SessionConfig(Section):
    """Persistent sessions."""

    max_offline_queue_size: int = setting(
        Int(min=1), 1000, "Most messages queued for one offline persistent session."
    )
    offline_queue_policy: str = setting(
        Enum(("evict", "reject")),
        "evict",
        "When an offline session's queue is full: `evict` drops the oldest queued message to "
        "make room, `reject` drops the new message.",
    )
    default_expiry_interval: int = setting(
        Int(0, _UINT32_MAX),
        7200,
        "Session expiry, in seconds, for MQTT 3.1.1 clients connecting with clean session 0 "
        "(MQTT 3.1.1 has no expiry field). 4294967295 = never expires.",
    )
    max_expiry_interval: int = setting(
        Int(0, _UINT32_MAX),
        _UINT32_MAX,
        "Cap, in seconds, on the Session Expiry Interval an MQTT 5 client asks for; the capped "
        "value is returned in CONNACK. 4294967295 = no cap.",
    )


@section
class LogConfig(Section):
    """Logging to standard error."""

    level: str = setting(
        Enum(("debug", "info", "warning", "error"), MappingProxyType({"warn": "warning"})),
        "info",
        "Least severe level logged. `fluxmq serve --log-level` overrides it.",
    )
    format: str = setting(
        Enum(("text", "json")),
        "text",
        "`text`: one line per event, `<time> <LEVEL> <logger>: <message> key=value ...`; "
        "`json`: one JSON object per line with `ts`, `level`, `logger`, `msg` and the event's "
        "fields.",
    )


@section
class StorageConfig(Section):
    """Where durable state is kept."""

    type: str = setting(
        Enum(("memory", "lmdb")),
        "lmdb",
        "`lmdb`: sessions, subscriptions, in-flight and queued messages, retained messages and "
        "wills are kept in an LMDB database under `storage.path` and survive restarts; "
        "`memory`: nothing survives a restart.",
    )
    path: str = setting(
        Str("path"),
        "./data",
        "Directory of the LMDB database (created if missing); a relative path is relative to "
        "the broker's working directory. Only one broker may use a directory at a time.",
    )
    fsync: str = setting(
        Enum(("always", "interval", "never")),
        "interval",
        "`always`: PUBACK/PUBREC, SUBACK and the CONNACK of a persistent session are sent only "
        "after the state they acknowledge is fsynced (one group commit per event-loop turn); "
        "`interval`: committed every loop turn, fsynced every `storage.fsync_interval`; "
        "`never`: fsync is left to the operating system. See docs/storage.md.",
    )
    fsync_interval: float = setting(
        Duration(min=0.001),
        "1s",
        "How often committed state is fsynced with `storage.fsync: interval`.",
    )


@section
class ConnectionRateConfig(Section):
    """New connections per source IP address."""

    enabled: bool = setting(
        Bool(), True, "Limit new connections per source IP (when `ratelimit.enabled`)."
    )
    rate: float = setting(
        Float(0, min_exclusive=True),
        1.6667,
        "New connections allowed per second per IP, on average (1.6667 = 100 a minute).",
    )
    burst: int = setting(Int(min=1), 20, "New connections an IP may open at once.")
    cleanup_interval: float = setting(
        Duration(min_exclusive=True),
        "300s",
        "How often the limiter forgets the addresses whose allowance has refilled completely.",
    )


@section
class MessageRateConfig(Section):
    """PUBLISH packets per client."""

    enabled: bool = setting(
        Bool(), True, "Limit PUBLISH packets per client (when `ratelimit.enabled`)."
    )
    rate: float = setting(
        Float(0, min_exclusive=True), 1000, "PUBLISH packets allowed per second per client."
    )
    burst: int = setting(Int(min=1), 100, "PUBLISH packets a client may send at once.")


@section
class SubscribeRateConfig(Section):
    """Subscriptions per client."""

    enabled: bool = setting(
        Bool(), True, "Limit SUBSCRIBE topic filters per client (when `ratelimit.enabled`)."
    )
    rate: float = setting(
        Float(0, min_exclusive=True), 100, "Topic filters allowed per second per client."
    )
    burst: int = setting(Int(min=1), 10, "Topic filters a client may subscribe to at once.")


@section
class RateLimitConfig(Section):
    """Rate limits."""

    enabled: bool = setting(
        Bool(),
        False,
        "Master switch: no rate limit applies unless this is true (then each of `connection`, "
        "`message`, `subscribe` applies unless its own `enabled` is false).",
    )
    connection: ConnectionRateConfig = subsection(
        ConnectionRateConfig,
        "New connections per source IP, on the MQTT listeners (TCP: closed before MQTT; "
        "WebSocket: HTTP 429 before the upgrade).",
    )
    message: MessageRateConfig = subsection(
        MessageRateConfig,
        "PUBLISH packets per client (MQTT 5: PUBACK/PUBREC 0x97 Quota exceeded, QoS 0 dropped "
        "and counted; MQTT 3.1.1: disconnected; HTTP bridge, per source IP: 429).",
    )
    subscribe: SubscribeRateConfig = subsection(
        SubscribeRateConfig,
        "SUBSCRIBE topic filters per client (MQTT 5: SUBACK 0x97 for each filter over the "
        "limit; MQTT 3.1.1: 0x80).",
    )


def _events_problem(name: str) -> str | None:
    from fluxmq.ops.events import EVENT_TYPES

    if name in EVENT_TYPES:
        return None
    return "unknown event (expected one of " + ", ".join(EVENT_TYPES) + ")"


def _filter_problem(topic_filter: str) -> str | None:
    from fluxmq._speedups.codec import valid_topic_filter

    return None if valid_topic_filter(topic_filter) else "not a valid MQTT topic filter"


@section
class HTTPAuthConfig(Section):
    """The HTTP authentication callout."""

    url: str = setting(
        Str("URL", allow_empty=True),
        "",
        "URL the broker POSTs each connecting client's credentials to (JSON: `client_id`, "
        "`username`, `password`, `cert_identity`, `cert_sans`, `remote_addr`, `protocol`, "
        '`listener`); the answer `{"result": "allow"}` (optionally with `"acl": [...]`) lets '
        'it in, `{"result": "deny"}`, 401 or 403 refuses it. "" = no callout. See '
        "docs/security.md.",
    )
    timeout: float = setting(
        Duration(min_exclusive=True), "5s", "How long to wait for the callout's answer."
    )
    cache_ttl: float = setting(
        Duration(),
        "60s",
        "How long an answer is reused for the same client id, username, password, certificate "
        "and source IP. 0 = ask every time. Failures are never cached.",
    )
    on_error: str = setting(
        Enum(("deny", "allow")),
        "deny",
        "When the callout fails (timeout, connection refused, another status, a body that is "
        "not understood): `deny` refuses the client (MQTT 5 CONNACK 0x87, 3.1.1 0x05); `allow` "
        "lets it in with the rules of `auth.acl_file`.",
    )
    headers: Any = setting(
        StrMap(),
        {},
        "Extra request headers (e.g. `Authorization`); `${NAME}` is replaced by the "
        "environment variable NAME.",
    )

    def check(self, key: str) -> None:
        if self.url and not re.match(r"https?://[^/\s]+", self.url):
            raise ConfigError(f"{key}.url: expected an http:// or https:// URL", f"{key}.url")


def _check_auth_file(kind: str, path: str, key: str) -> None:
    if not path:
        return
    if kind == "password":
        from fluxmq.security.passwords import PasswordFile as loader
    else:
        from fluxmq.security.acl import ACL as loader  # type: ignore[assignment]
    try:
        loader.load(path)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}", key) from None


@section
class AuthConfig(Section):
    """Authentication and authorisation."""

    allow_anonymous: bool | str = setting(
        AutoBool(),
        "auto",
        "Whether a client without a username may connect. `auto`: yes while every listener "
        "binds to a loopback address; when one binds to another address, only clients "
        "connecting from a loopback address (127.0.0.0/8, ::1) may connect without a "
        "username. `true`: everyone may; `false`: nobody may (MQTT 5 CONNACK 0x87, 3.1.1 "
        "0x05). See docs/security.md.",
    )
    password_file: str = setting(
        Str("path", allow_empty=True),
        "",
        "Mosquitto password file (`user:$7$...` or `user:$6$...` lines, as `mosquitto_passwd` "
        "or `fluxmq passwd` write them). A client with a username must give its password "
        '(else MQTT 5 CONNACK 0x86, 3.1.1 0x04). "" = none. Re-read on reload.',
    )
    acl_file: str = setting(
        Str("path", allow_empty=True),
        "",
        "Mosquitto ACL file (`user`, `topic`, `pattern` lines). Once set, everything not "
        'allowed by a rule is denied. "" = everything is allowed. Re-read on reload.',
    )
    http: HTTPAuthConfig = subsection(HTTPAuthConfig, "The HTTP authentication callout.")

    def check(self, key: str) -> None:
        _check_auth_file("password", self.password_file, f"{key}.password_file")
        _check_auth_file("acl", self.acl_file, f"{key}.acl_file")


@section
class RetryConfig(Section):
    """Retries of a webhook delivery."""

    max_attempts: int = setting(
        Int(min=1), 3, "Attempts in all (1 = no retry) before the event is dropped."
    )
    initial_interval: float = setting(
        Duration(min_exclusive=True), "1s", "Wait before the first retry."
    )
    max_interval: float = setting(
        Duration(min_exclusive=True), "30s", "Longest wait between two attempts."
    )
    multiplier: float = setting(
        Float(min=1.0), 2.0, "Each wait is the previous one times this (exponential backoff)."
    )


@section
class BreakerConfig(Section):
    """The circuit breaker of a webhook endpoint."""

    failure_threshold: int = setting(
        Int(min=1),
        5,
        "Consecutive failed attempts that open the circuit: events for the endpoint are then "
        "dropped (and counted) without being sent.",
    )
    reset_timeout: float = setting(
        Duration(min_exclusive=True),
        "60s",
        "How long the circuit stays open before one trial request is let through (a success "
        "closes it).",
    )


@section
class WebhookDefaults(Section):
    """Defaults of every endpoint."""

    timeout: float = setting(
        Duration(min_exclusive=True), "5s", "How long one HTTP request may take."
    )
    retry: RetryConfig = subsection(RetryConfig, "Retries with exponential backoff.")
    circuit_breaker: BreakerConfig = subsection(BreakerConfig, "The circuit breaker.")


@section
class WebhookEndpoint(Section):
    """One webhook endpoint (an item of `webhook.endpoints`)."""

    name: str = setting(Str("string", allow_empty=True), "", "Name in logs and metrics.")
    type: str = setting(Enum(("http",)), "http", "Only `http` (HTTP POST of JSON).")
    url: str = setting(Str("URL", allow_empty=True), "", "The http:// or https:// URL.")
    events: tuple[str, ...] = setting(
        StrList("event types", _events_problem), [], "Event types sent; empty = all."
    )
    topic_filters: tuple[str, ...] = setting(
        StrList("topic filters", _filter_problem),
        [],
        "For events with a topic: only topics matching one of these; empty = all.",
    )
    headers: Any = setting(StrMap(), {}, "Extra headers; `${NAME}` is expanded.")
    timeout: float | None = setting(
        OptionalKind(Duration(min_exclusive=True)), None, "Overrides `defaults.timeout`."
    )
    retry: Any = setting(Overrides(RetryConfig), {}, "Overrides of `defaults.retry`.")
    circuit_breaker: Any = setting(
        Overrides(BreakerConfig), {}, "Overrides of `defaults.circuit_breaker`."
    )

    def check(self, key: str) -> None:
        if not re.match(r"https?://[^/\s]+", self.url):
            raise ConfigError(f"{key}.url: expected an http:// or https:// URL", f"{key}.url")


@section
class WebhookConfig(Section):
    """Webhooks: broker events POSTed as JSON to HTTP endpoints."""

    enabled: bool = setting(Bool(), False, "Send webhook events to `endpoints`.")
    queue_size: int = setting(
        Int(min=100),
        10000,
        "Events waiting to be sent, per endpoint; when full, `drop_policy` decides.",
    )
    drop_policy: str = setting(
        Enum(("oldest", "newest")),
        "oldest",
        "When an endpoint's queue is full: `oldest` drops the oldest waiting event to make "
        "room, `newest` drops the new event. Drops are counted "
        "(`fluxmq_webhook_dropped_total`).",
    )
    workers: int = setting(Int(1, 256), 5, "Concurrent requests per endpoint.")
    include_payload: bool = setting(
        Bool(), False, "Add the payload (base64, `payload`) to `message.published` events."
    )
    shutdown_timeout: float = setting(
        Duration(), "30s", "At shutdown (or reload), how long queued events may still be sent."
    )
    defaults: WebhookDefaults = subsection(WebhookDefaults, "Defaults of every endpoint.")
    endpoints: tuple[Any, ...] = setting(
        SectionList(WebhookEndpoint, "endpoints"),
        [],
        "The endpoints: each a mapping with `url` (required), `name`, `type` (`http`), "
        "`events`, `topic_filters`, `headers`, `timeout`, `retry` and `circuit_breaker` "
        "(overriding `defaults`). See docs/operations.md.",
    )


def _queue_topic_problem(topic_filter: str) -> str | None:
    problem = _filter_problem(topic_filter)
    if problem is None and topic_filter.split("/", 1)[0] == "$queue":
        return "`$queue/` topics always go to the queue they name; list other topics here"
    return problem


def queue_name_problem(name: str) -> str | None:
    """Why `name` cannot name a durable queue (None if it can)."""
    if not name:
        return "a queue name must not be empty"
    if any(c in name for c in "/+#\0") or name.startswith("$"):
        return "a queue name is one topic level without +, # or a leading $"
    if len(name.encode()) > 200:
        return "a queue name is at most 200 bytes"
    return None


@section
class QueueRetryConfig(Section):
    """Redelivery of nacked messages."""

    max_retries: int = setting(
        Int(min=0),
        10,
        "Redeliveries a message gets after its first delivery (a nack, the visibility timeout "
        "passing, or its consumer leaving each cost one); one more failure moves it to the "
        "dead-letter queue.",
    )
    initial_backoff: float = setting(
        Duration(), "5s", "Wait before a nacked message is redelivered the first time."
    )
    max_backoff: float = setting(Duration(), "300s", "Longest wait before a redelivery.")
    multiplier: float = setting(
        Float(min=1.0), 2.0, "Each wait is the previous one times this (exponential backoff)."
    )


@section
class QueueDLQConfig(Section):
    """The dead-letter queue."""

    enabled: bool = setting(
        Bool(),
        True,
        "Move rejected messages, and messages out of retries, to the dead-letter queue "
        "(`false`: they are dropped and counted).",
    )
    topic: str = setting(
        Str("topic", allow_empty=True),
        "",
        "Where dead letters are appended: a `$queue/<queue>/<routing key>` topic. "
        '"" = `$queue/dlq/<queue>` (queue `dlq`, the routing key being the original queue\'s '
        "name). The dead-letter queue is an ordinary queue (created if missing).",
    )

    def check(self, key: str) -> None:
        t = self.topic
        if t and (
            not t.startswith("$queue/")
            or queue_name_problem(t.split("/")[1])
            or _filter_problem(t)
            or any(c in t for c in "+#")
        ):
            raise ConfigError(
                f"{key}.topic: expected a $queue/<queue>[/<routing key>] topic, got {_show(t)}",
                f"{key}.topic",
            )


@section
class QueueRetentionConfig(Section):
    """How long a queue keeps its messages, and its segment files."""

    max_age: float = setting(
        Duration(),
        "604800s",
        "Segments whose newest message is older than this are removed (whole segments). "
        "0 = no age limit.",
    )
    max_bytes: int = setting(
        Size(min=0),
        0,
        "The oldest segments are removed while the queue's partitions hold more than this "
        "(whole segments; the segment being written stays). 0 = no size limit.",
    )
    compaction: bool = setting(
        Bool(),
        False,
        "Keep only the newest message of each `partition-key` in written segments (messages "
        "without a key are kept).",
    )
    segment_bytes: int = setting(
        Size(1024, 1073741824),
        67108864,
        "A partition starts a new segment file once its segment holds this many bytes.",
    )
    segment_age: float = setting(
        Duration(min_exclusive=True),
        "3600s",
        "... or once its first message is this old (so that retention can remove it).",
    )


@section
class QueueLimitsConfig(Section):
    """Limits of a queue."""

    max_message_size: int = setting(
        Size(min=0),
        1048576,
        "Largest payload accepted; a larger publish is refused (MQTT 5: reason code 0x83 "
        "with a reason string). 0 = no limit beyond `broker.max_message_size`.",
    )
    max_depth: int = setting(
        Int(min=0),
        100000,
        "Most messages not yet acknowledged by the slowest consumer group (by every message "
        "kept, for a queue without groups); a publish to a full queue is refused (MQTT 5: "
        "0x97 quota exceeded; MQTT 3.1.1: the client is disconnected). 0 = no limit.",
    )


@section
class QueueSettings(Section):
    """The settings of a durable queue."""

    partitions: int = setting(
        Int(1, 1024),
        1,
        "Partitions: logs of their own, each delivered in order by one consumer of a group "
        "at a time (`ordering: partition`).",
    )
    ordering: str = setting(
        Enum(("partition", "none")),
        "partition",
        "`partition`: the `partition-key` user property picks the partition (a stable hash; "
        "round-robin without a key), each partition is owned by one consumer of a group and "
        "delivered in offset order; `none`: messages spread over a group's consumers.",
    )
    visibility_timeout: float = setting(
        Duration(min_exclusive=True),
        "30s",
        "A delivery not acknowledged within this time is redelivered.",
    )
    retry: QueueRetryConfig = subsection(QueueRetryConfig, "Redelivery of nacked messages.")
    dlq: QueueDLQConfig = subsection(QueueDLQConfig, "The dead-letter queue.")
    retention: QueueRetentionConfig = subsection(
        QueueRetentionConfig, "Retention, compaction and segment files."
    )
    limits: QueueLimitsConfig = subsection(QueueLimitsConfig, "Limits.")


@section
class QueueDefinition(QueueSettings):
    """One durable queue (an item of `queues`): `name`, `topics` and any setting of
    `queue.defaults`."""

    name: str = setting(Str("string", allow_empty=True), "", "The queue's name (required).")
    topics: tuple[str, ...] = setting(
        StrList("topic filters", _queue_topic_problem),
        [],
        "Ordinary topics the queue captures (MQTT filters, e.g. `orders/#`), besides "
        "`$queue/<name>/...`.",
    )

    def check(self, key: str) -> None:
        problem = queue_name_problem(self.name)
        if problem:
            raise ConfigError(f"{key}.name: {problem}", f"{key}.name")


def _unique_queue_names(queues: tuple[QueueDefinition, ...]) -> str | None:
    seen: set[str] = set()
    for i, q in enumerate(queues):
        if q.name in seen:
            return f"queues[{i}].name: queue {q.name!r} is defined twice"
        seen.add(q.name)
    return None


@section
class QueueConfig(Section):
    """Durable queues (see docs/queues.md)."""

    auto_create: bool = setting(
        Bool(),
        True,
        "A publish or subscribe to `$queue/<name>/...` of an unknown queue creates it with "
        "`defaults`; `false`: refused (MQTT 5 PUBACK 0x90, SUBACK 0x80, with a reason string).",
    )
    retention_interval: float = setting(
        Duration(min_exclusive=True),
        "30s",
        "How often segment age, retention and compaction are applied.",
    )
    defaults: QueueSettings = subsection(
        QueueSettings,
        "Settings of queues created automatically or by the admin API without settings. A "
        "queue in `queues` takes the built-in defaults shown here for the keys it leaves out.",
    )


@section
class ClusterConfig(Section):
    """This node's place in a cluster."""

    node_id: str = setting(
        Str("string"), "fluxmq-1", "This node's name, reported by `GET /cluster/status`."
    )


@section
class Config(Section):
    """The whole FluxMQ configuration. `Config()` is the all-defaults configuration."""

    server: ServerConfig = subsection(ServerConfig, "Network listeners.")
    broker: BrokerConfig = subsection(BrokerConfig, "MQTT protocol limits and timers.")
    session: SessionConfig = subsection(SessionConfig, "Persistent sessions.")
    log: LogConfig = subsection(LogConfig, "Logging (to standard error).")
    storage: StorageConfig = subsection(StorageConfig, "Where durable state is kept.")
    ratelimit: RateLimitConfig = subsection(RateLimitConfig, "Rate limits (off by default).")
    cluster: ClusterConfig = subsection(ClusterConfig, "This node's identity.")
    auth: AuthConfig = subsection(AuthConfig, "Authentication and authorisation.")
    webhook: WebhookConfig = subsection(WebhookConfig, "Webhooks (off by default).")
    queue: QueueConfig = subsection(QueueConfig, "Durable queues: automatic creation, defaults.")
    queues: tuple[Any, ...] = setting(
        SectionList(QueueDefinition, "queues"),
        [],
        "Durable queues created at start: each a mapping with `name` (required), `topics` and "
        "any key of `queue.defaults` (`partitions`, `ordering`, `visibility_timeout`, `retry`, "
        "`dlq`, `retention`, `limits`). See docs/queues.md.",
    )

    def check(self, key: str) -> None:
        problem = _unique_queue_names(self.queues)
        if problem:
            raise ConfigError(problem, problem.split(":")[0])


# Keys of the original Go broker that have a different name here (old key -> new key).
_RENAMED = {
    "storage.badger_dir": "storage.path",
    "session.max_inflight_messages": "broker.max_inflight",
}


# ---------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------


def _build(cls: type[_S], data: Any, path: str, defaults: Mapping[str, Any]) -> _S:
    """Validate `data` (a YAML mapping or None) against section `cls` and construct it."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        where = path or "top level"
        raise ConfigError(f"{where}: expected a mapping of settings, got {_show(data)}", path)
    specs = _field_specs(cls)
    for key in data:
        if not isinstance(key, str) or key not in specs:
            raise _unknown_key(path, key, list(specs))
    values: dict[str, Any] = {}
    for name, spec in specs.items():
        key = f"{path}.{name}" if path else name
        if isinstance(spec, _Subsection):
            values[name] = _build(spec.cls, data.get(name), key, spec.defaults)
            continue
        raw = data[name] if name in data else defaults.get(name, spec.default)
        try:
            if isinstance(spec.kind, SectionList):
                values[name] = spec.kind.build(raw, key)
                continue
            values[name] = spec.kind.parse(raw)
        except _Invalid as e:
            raise ConfigError(f"{key}: {e}", key) from None
    built = cls(**values)
    if path or cls is Config:
        built.check(path)
    return built


def _unknown_key(path: str, key: Any, siblings: list[str]) -> ConfigError:
    """The error for an unknown key, with the closest known key if there is one."""
    name = key if isinstance(key, str) else _show(key)
    full = f"{path}.{name}" if path else name
    hint = _suggest(path, name, siblings)
    if hint:
        return ConfigError(f"unknown key {full} (did you mean {hint}?)", full)
    return ConfigError(f"unknown key {full} (valid keys here: {', '.join(siblings)})", full)


def _suggest(path: str, name: str, siblings: list[str]) -> str | None:
    """The closest known key: a renamed key, a similar sibling, a key elsewhere with this name,
    or a similar full key path."""
    full = f"{path}.{name}" if path else name
    if full in _RENAMED:
        return _RENAMED[full]
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    if close:
        return f"{path}.{close[0]}" if path else close[0]
    known = [e.key for e in iter_schema() if not full.startswith(e.key + ".")]
    same_name = [k for k in known if k.rsplit(".", 1)[-1] == name]
    if same_name:
        return same_name[0]
    close = difflib.get_close_matches(full, known, n=1, cutoff=0.8)
    return close[0] if close else None


class _Loader(yaml.SafeLoader):
    """A safe YAML loader that rejects duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: the constructor reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_show(key)}", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_text(path: str | os.PathLike[str]) -> str:
    """Read the config file, turning OS and encoding errors into ConfigError."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {os.fspath(path)}")
    except IsADirectoryError:
        raise ConfigError(f"cannot read config file {os.fspath(path)}: it is a directory")
    except PermissionError:
        raise ConfigError(f"cannot read config file {os.fspath(path)}: permission denied")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"cannot read config file {os.fspath(path)}: not UTF-8 (invalid byte at offset {e.start})"
        )
    except OSError as e:
        raise ConfigError(f"cannot read config file {os.fspath(path)}: {e.strerror or e}")


def _parse_yaml(text: str, path: str) -> Any:
    """Parse YAML text; a syntax error becomes a ConfigError with line and column."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = " ".join(str(e.problem or e.context or "syntax error").split())
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}")
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}")


def _apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Set dotted keys (e.g. `log.level`) in raw YAML data, creating sections as needed."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node: Any = data
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                break  # the file has a non-mapping here; validation reports it
        else:
            node[leaf] = value


def load_config(
    path: str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Load and validate a YAML config file; `None` means all defaults.

    `overrides` maps dotted keys to raw values (as they would be written in YAML) and takes
    precedence over the file, e.g. `{"log.level": "debug"}` from a command-line flag. An empty
    file is the all-defaults config. Raises ConfigError with a one-line message.
    """
    data: Any = None
    if path is not None:
        data = _parse_yaml(_read_text(path), os.fspath(path))
        if data is not None and not isinstance(data, dict):
            raise ConfigError(
                f"{os.fspath(path)}: the top level must be a mapping of sections "
                f"({', '.join(_field_specs(Config))}), got {_show(data)}"
            )
    data = dict(data or {})
    if overrides:
        _apply_overrides(data, overrides)
    return _build(Config, data, "", {})


# ---------------------------------------------------------------------------------------------
# Generated documentation: the reference tables and the example config.
# ---------------------------------------------------------------------------------------------

DOCS_BEGIN = "<!-- BEGIN GENERATED REFERENCE: edit fluxmq/config.py, then run `python -m fluxmq.config --write` -->"
DOCS_END = "<!-- END GENERATED REFERENCE -->"


def render_docs_reference() -> str:
    """The Markdown reference: one table per section that has settings, from the schema."""
    out: list[str] = [DOCS_BEGIN]
    for entry in iter_schema():
        if isinstance(entry, SectionInfo):
            if any(isinstance(s, _Setting) for s in _field_specs(entry.cls).values()):
                out += ["", f"### `{entry.key}`", "", entry.doc, ""]
                out += ["| Key | Type | Default | Description |", "|---|---|---|---|"]
            continue
        if "." not in entry.key:  # a top-level setting: a table of its own
            out += [
                "",
                f"### `{entry.key}`",
                "",
                "| Key | Type | Default | Description |",
                "|---|---|---|---|",
            ]
        cells = [
            f"`{entry.key}`",
            entry.kind.describe(),
            f"`{_render_scalar(entry.default, entry.kind)}`",
            entry.doc,
        ]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    out += ["", DOCS_END]
    return "\n".join(out) + "\n"


def _comment(text: str, indent: str, width: int = 96) -> list[str]:
    """`text` as wrapped YAML comment lines."""
    return textwrap.wrap(
        text, width=width, initial_indent=indent + "# ", subsequent_indent=indent + "# "
    )


EXAMPLE_HEADER = """\
# FluxMQ example configuration: every setting, at its default value.
#
# Run with `fluxmq serve --config fluxmq.yaml`; check a file with `fluxmq check-config FILE`.
# Every key is optional (a missing key keeps its default) and an unknown key is an error.
# Durations: a number of seconds or "100ms", "30s", "5m", "2h", "1h30m".
# Sizes: a number of bytes or "512KB", "10MB", "1GB" (1KB = 1024 bytes).
# The full reference is docs/configuration.md. This file is generated from the schema in
# fluxmq/config.py by `python -m fluxmq.config --write`.
"""


def render_example() -> str:
    """The example YAML config: every key at its default, each with its doc as a comment."""
    out = [EXAMPLE_HEADER.rstrip("\n")]
    for entry in iter_schema():
        depth = entry.key.count(".")
        indent = "  " * depth
        if depth == 0:
            out.append("")
        if isinstance(entry, SectionInfo):
            out += [*_comment(entry.doc, indent), f"{indent}{entry.key.rsplit('.', 1)[-1]}:"]
        else:
            value = _render_scalar(entry.default, entry.kind)
            out += _comment(entry.doc, indent)
            out.append(f"{indent}# Type: {entry.kind.describe().replace('`', '')}.")
            out.append(f"{indent}{entry.key.rsplit('.', 1)[-1]}: {value}")
    return "\n".join(out) + "\n"


def replace_docs_reference(markdown: str) -> str:
    """`markdown` with the text between the generated-reference markers regenerated."""
    start, end = markdown.find(DOCS_BEGIN), markdown.find(DOCS_END)
    if start < 0 or end < start:
        raise ValueError("the generated-reference markers are missing")
    after = markdown[end + len(DOCS_END) :]
    return markdown[:start] + render_docs_reference() + after.removeprefix("\n")


def _main(argv: list[str] | None = None) -> int:
    """`python -m fluxmq.config --write [DOCS] [EXAMPLE]`: regenerate the docs and example."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "--write":
        print(_main.__doc__, file=sys.stderr)
        return 2
    docs = Path(args[1] if len(args) > 1 else "docs/configuration.md")
    example = Path(args[2] if len(args) > 2 else "examples/fluxmq.yaml")
    docs.write_text(replace_docs_reference(docs.read_text(encoding="utf-8")), encoding="utf-8")
    example.parent.mkdir(parents=True, exist_ok=True)
    example.write_text(render_example(), encoding="utf-8")
    print(f"wrote {docs} and {example}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
