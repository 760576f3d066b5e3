"""The backend's parts, bundled for the request handlers (``request.app[BACKEND]``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from aiohttp import web

from backend.bus import EventBus
from backend.clock import Clock
from backend.config import BackendSettings
from backend.db import Database
from backend.payments import PaymentProvider, SimulatedProvider

if TYPE_CHECKING:
    from backend.fleet import Fleet

__all__ = ["BACKEND", "Backend", "templates"]

TEMPLATES = Path(__file__).with_name("templates")


def fen(amount: int | None) -> str:
    """1380 -> '¥13.80' (negative amounts keep their sign)."""
    if amount is None:
        return "-"
    sign = "-" if amount < 0 else ""
    return f"{sign}¥{abs(amount) // 100}.{abs(amount) % 100:02d}"


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fen"] = fen
    return env


@dataclass
class Backend:
    settings: BackendSettings
    db: Database
    clock: Clock = field(default_factory=Clock)
    bus: EventBus = field(default_factory=EventBus)
    payments: PaymentProvider = field(default_factory=SimulatedProvider)
    fleet: Fleet | None = None
    jinja: jinja2.Environment = field(default_factory=templates)

    def render(self, name: str, **context: Any) -> str:
        return self.jinja.get_template(name).render(**context)


BACKEND = web.AppKey("backend", Backend)
