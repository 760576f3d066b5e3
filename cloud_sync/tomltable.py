"""Typed, strict reading of TOML tables, shared by the cabinet and the backend.

Every value is checked for its type and range, every unknown key is an error,
and every error names the file and the key: ``cabinet.toml: lanes[2].price_fen:
must be an integer``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self


class TableReader:
    """Typed access to one TOML table; every error names ``source: path.key``.

    Subclasses set ``error`` to the exception their package raises for bad input.
    """

    error: type[Exception] = ValueError

    def __init__(self, source: str, table: object, path: str) -> None:
        if not isinstance(table, dict):
            raise self.error(f"{source}: {path or 'top level'}: must be a table")
        self.source, self.table, self.path = source, table, path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, problem: str) -> Exception:
        return self.error(f"{self.source}: {self.key(name)}: {problem}")

    def has(self, name: str) -> bool:
        return name in self.table

    def get(self, name: str, default: Any = ...) -> Any:
        self.used.add(name)
        if name not in self.table:
            if default is ...:
                raise self.fail(name, "missing")
            return default
        return self.table[name]

    def str_(self, name: str, default: Any = ...) -> str:
        v = self.get(name, default)
        if not isinstance(v, str) or not v:
            raise self.fail(name, "must be a non-empty string")
        return v

    def opt_str(self, name: str) -> str | None:
        if name not in self.table:
            self.used.add(name)
            return None
        return self.str_(name)

    def path_(self, name: str) -> Path | None:
        v = self.opt_str(name)
        return None if v is None else Path(v)

    def int_(
        self, name: str, default: Any = ..., *, minimum: int | None = 0, maximum: int | None = None
    ) -> int:
        """An integer; ``minimum=None`` allows any lower value."""
        v = self.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(name, "must be an integer")
        if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
            if minimum is not None and maximum is not None:
                bound = f"from {minimum} to {maximum}"
            elif minimum is not None:
                bound = f">= {minimum}"
            else:
                bound = f"<= {maximum}"
            raise self.fail(name, f"must be an integer {bound}")
        return v

    def num(self, name: str, default: Any = ..., *, positive: bool = True) -> float:
        v = self.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.fail(name, "must be a number")
        if positive and v <= 0:
            raise self.fail(name, "must be > 0")
        if v < 0:
            raise self.fail(name, "must be >= 0")
        return float(v)

    def bool_(self, name: str, default: Any = ...) -> bool:
        v = self.get(name, default)
        if not isinstance(v, bool):
            raise self.fail(name, "must be true or false")
        return v

    def sub(self, name: str, *, required: bool = False) -> Self:
        v = self.get(name, ... if required else {})
        return type(self)(self.source, v, self.key(name))

    def done(self) -> None:
        extra = sorted(set(self.table) - self.used)
        if extra:
            raise self.fail(extra[0], "unknown key")
