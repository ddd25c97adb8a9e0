"""One description format for config keys, shared by the node config (vpnagent/config.py)
and the server config (server_ext/config.py): each key's YAML type(s), default, whether it
is required and what it does. The loaders take defaults and types from here, and the
reference tables in docs/operator-guide.md are rendered from here, so the three cannot
drift apart."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

TYPE_NAMES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
              "list": "list", "dict": "mapping"}


@dataclass(frozen=True)
class Check:
    """What values of a key are allowed, beyond its type. `allowed` says it in the reference
    table; `problem` says what is wrong with a value and how to fix it ("must be within
    1-65535"), or returns None for a good one. It is only called with a value of the key's
    type."""
    allowed: str
    problem: Callable[[Any], str | None]


def within(low: float, high: float, unit: str = "") -> Check:
    """A number from `low` to `high`, both included."""
    span = f"{low}-{high}{' ' + unit if unit else ''}"
    return Check(span, lambda v: None if low <= v <= high else f"must be within {span}")


def above(low: float, high: float, unit: str = "") -> Check:
    """A number more than `low`, at most `high`."""
    span = f"more than {low}, at most {high}{' ' + unit if unit else ''}"
    return Check(span, lambda v: None if low < v <= high else f"must be {span}")


def one_of(*choices: str) -> Check:
    """One of a few words."""
    listed = " or ".join(f"`{c}`" for c in choices)
    return Check(listed, lambda v: None if v in choices else f"must be {' or '.join(choices)}")


@dataclass(frozen=True)
class Key:
    """One config key. `default` is the value the loader uses when the key is absent (None:
    no value). `shown` replaces the default in the reference where the real default is
    worked out at run time ("half the host's memory") or is not a plain value. `check`
    says which values of the type are allowed (the loader asks it, the reference shows it).
    `sensitive`: error messages describe the value instead of printing it."""
    types: type | tuple[type, ...]
    help: str
    default: Any = None
    required: bool = False
    shown: str = ""
    check: Check | None = None
    sensitive: bool = False

    @property
    def type_tuple(self) -> tuple[type, ...]:
        return self.types if isinstance(self.types, tuple) else (self.types,)

    @property
    def type_names(self) -> str:
        """What the reference and error messages call the type: "integer or number"."""
        return " or ".join(TYPE_NAMES.get(t.__name__, t.__name__) for t in self.type_tuple)

    def accepts(self, value: Any) -> bool:
        """Whether a YAML value has this key's type. YAML's true/false must not pass for a
        number (bool is an int in Python), nor a number for a flag."""
        return isinstance(value, self.type_tuple) and isinstance(value, bool) == (bool in self.type_tuple)

    def default_markdown(self) -> str:
        """The reference's default column."""
        if self.required:
            return "**required**"
        if self.shown:
            return self.shown
        if self.default is None:
            return "-"
        return f"`{yaml_text(self.default)}`"


def yaml_text(value: Any) -> str:
    """A default as it would be written in the YAML config: false, 8765, [6000, 6999]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_text(v) for v in value) + "]"
    return str(value)


def schema_table(schema: dict[str, Key]) -> str:
    """A Markdown reference table of a config schema: key, type, default, meaning, and the
    allowed values when any key has a check."""
    checked = any(spec.check for spec in schema.values())
    extra = (" allowed |", "---|") if checked else ("", "")
    rows = [f"| key | type | default |{extra[0]} meaning |", f"|---|---|---|{extra[1]}---|"]
    for key, spec in schema.items():
        allowed = f" {spec.check.allowed if spec.check else '-'} |" if checked else ""
        rows.append(f"| `{key}` | {spec.type_names} | {spec.default_markdown()} |{allowed} {spec.help} |")
    return "\n".join(rows) + "\n"
