"""One description format for config keys, shared by the node config (vpnagent/config.py)
and the server config (server_ext/config.py): each key's YAML type(s), default, whether it
is required and what it does. The loaders take defaults and types from here, and the
reference tables in docs/operator-guide.md are rendered from here, so the three cannot
drift apart."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TYPE_NAMES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
              "list": "list", "dict": "mapping"}


@dataclass(frozen=True)
class Key:
    """One config key. `default` is the value the loader uses when the key is absent (None:
    no value). `shown` replaces the default in the reference where the real default is
    worked out at run time ("half the host's memory") or is not a plain value."""
    types: type | tuple[type, ...]
    help: str
    default: Any = None
    required: bool = False
    shown: str = ""

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
    """A Markdown reference table of a config schema: key, type, default, meaning."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, spec in schema.items():
        rows.append(f"| `{key}` | {spec.type_names} | {spec.default_markdown()} | {spec.help} |")
    return "\n".join(rows) + "\n"
