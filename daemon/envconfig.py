"""`LIFELONG_<SECTION>__<KEY>` environment overrides of lifelong.toml, read as nested config trees."""

from __future__ import annotations

import sys
from typing import Any, Mapping

from registry.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "LIFELONG_"


def env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Nested overrides from `LIFELONG_<SECTION>__<KEY>` vars, and dotted key -> var name."""
    tree: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        if any(not part for part in path):
            raise ConfigError(name, "malformed override name (use LIFELONG_<SECTION>__<KEY>)")
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(name, "conflicts with another override")
            node = child
        node[path[-1]] = env_value(raw)
        origin[".".join(path)] = name
    return tree, origin


def env_value(raw: str) -> Any:
    """An env value read as a TOML value when it is one (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
