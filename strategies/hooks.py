"""Hook interfaces checked when a class is defined: a public method that is not a hook is refused, so
a misspelt hook is an error at import, never a hook silently not called (strategies, tasks)."""

from __future__ import annotations

from typing import Sequence


def refuse_unknown(cls: type, hooks: Sequence[str], kind: str) -> None:
    unknown = [n for n, v in vars(cls).items()
               if callable(v) and not isinstance(v, type) and not n.startswith("_") and n not in hooks]
    if unknown:
        raise TypeError(f"{cls.__name__} defines {', '.join(unknown)}: not a {kind} hook ({', '.join(hooks)})")
