"""The MQTT topic layout (``/work/shared/DESIGN.md``, "MQTT"), QoS and retain per topic.

::

    freshbox/v1/cab/{cabinet_id}/sales         up    QoS 1            signed records, kind sale
    freshbox/v1/cab/{cabinet_id}/events        up    QoS 1            signed records, kind event
    freshbox/v1/cab/{cabinet_id}/telemetry     up    QoS 0            best-effort readings
    freshbox/v1/cab/{cabinet_id}/inventory     up    QoS 1, retained  what the shelves hold now
    freshbox/v1/cab/{cabinet_id}/status        up    QoS 1, retained  birth online, will offline
    freshbox/v1/cab/{cabinet_id}/cmd           down  QoS 1            signed commands
    freshbox/v1/cab/{cabinet_id}/cmd/result    up    QoS 1            outcome of each command
    freshbox/v1/cab/{cabinet_id}/ack           down  QoS 1            signed cumulative acks
    freshbox/v1/supplier/{supplier_id}/restock down  QoS 1, retained  restock demand per supplier

Identifiers (cabinet and supplier ids) are 1 to 64 characters of ``A-Z a-z 0-9 . _ -``
starting with a letter or digit: never ``/`` (a level separator), ``+`` or ``#``
(wildcards), ``$`` (broker topics), whitespace, control characters or NUL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from cloud_sync.errors import InvalidIdentifier

__all__ = [
    "CABINET_TOPICS",
    "ID_MAX_LEN",
    "ROOT",
    "SUPPLIER_RESTOCK",
    "CabinetTopic",
    "TopicSpec",
    "ack",
    "cabinet_filter",
    "cabinet_topic",
    "cmd",
    "cmd_result",
    "events",
    "inventory",
    "parse_topic",
    "sales",
    "shared",
    "spec",
    "status",
    "supplier_restock",
    "telemetry",
    "validate_cabinet_id",
    "validate_id",
    "validate_supplier_id",
]

#: Root of every freshbox topic (the ``v1`` changes only with an incompatible protocol).
ROOT: Final = "freshbox/v1"
#: Longest cabinet or supplier id.
ID_MAX_LEN: Final = 64

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

CabinetTopic = Literal[
    "sales", "events", "telemetry", "inventory", "status", "cmd", "cmd/result", "ack"
]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How one topic is used: who publishes, QoS, retain."""

    name: str
    #: ``up``: the cabinet publishes, the backend subscribes; ``down``: the reverse
    direction: Literal["up", "down"]
    qos: Literal[0, 1]
    retain: bool
    #: what travels on it
    payload: str


#: Every per-cabinet topic, by its suffix under ``freshbox/v1/cab/{cabinet_id}/``.
CABINET_TOPICS: Final[dict[str, TopicSpec]] = {
    t.name: t
    for t in (
        TopicSpec("sales", "up", 1, False, "signed record, kind sale"),
        TopicSpec("events", "up", 1, False, "signed record, kind event"),
        TopicSpec("telemetry", "up", 0, False, "unsigned readings, best effort"),
        TopicSpec("inventory", "up", 1, True, "unsigned snapshot of what the lanes hold"),
        TopicSpec("status", "up", 1, True, '"online" (birth) or "offline" (last will)'),
        TopicSpec("cmd", "down", 1, False, "signed command"),
        TopicSpec("cmd/result", "up", 1, False, "outcome of a command, by nonce"),
        TopicSpec("ack", "down", 1, False, "signed cumulative ack"),
    )
}
#: The per-supplier topic.
SUPPLIER_RESTOCK: Final = TopicSpec("restock", "down", 1, True, "restock demand snapshot")


def validate_id(value: object, what: str = "id") -> str:
    """``value`` if it is a valid cabinet/supplier id, else :class:`InvalidIdentifier`."""
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidIdentifier(f"{what} is empty")
    if len(value) > ID_MAX_LEN:
        raise InvalidIdentifier(f"{what} is {len(value)} characters long (at most {ID_MAX_LEN})")
    if not _ID.fullmatch(value):
        bad = next((c for c in value if not re.fullmatch(r"[A-Za-z0-9._-]", c)), value[0])
        raise InvalidIdentifier(
            f"{what} {value!r} has {bad!r}: only A-Z a-z 0-9 . _ - are allowed, "
            "starting with a letter or digit"
        )
    return value


def validate_cabinet_id(value: object) -> str:
    """``value`` if it is a valid cabinet id (see the module docstring)."""
    return validate_id(value, "cabinet id")


def validate_supplier_id(value: object) -> str:
    """``value`` if it is a valid supplier id (same rules as a cabinet id)."""
    return validate_id(value, "supplier id")


def spec(name: str) -> TopicSpec:
    """The :class:`TopicSpec` of a per-cabinet topic suffix (``"sales"``, ``"cmd/result"``...)."""
    try:
        return CABINET_TOPICS[name]
    except KeyError:
        raise InvalidIdentifier(f"no cabinet topic {name!r}") from None


def cabinet_topic(cabinet_id: str, name: CabinetTopic) -> str:
    """``freshbox/v1/cab/{cabinet_id}/{name}``."""
    spec(name)
    return f"{ROOT}/cab/{validate_cabinet_id(cabinet_id)}/{name}"


def sales(cabinet_id: str) -> str:
    """Signed sale records, cabinet to backend."""
    return cabinet_topic(cabinet_id, "sales")


def events(cabinet_id: str) -> str:
    """Signed event records, cabinet to backend."""
    return cabinet_topic(cabinet_id, "events")


def telemetry(cabinet_id: str) -> str:
    """Best-effort readings, cabinet to backend."""
    return cabinet_topic(cabinet_id, "telemetry")


def inventory(cabinet_id: str) -> str:
    """Retained inventory snapshot, cabinet to backend."""
    return cabinet_topic(cabinet_id, "inventory")


def status(cabinet_id: str) -> str:
    """Retained ``online``/``offline`` (birth and last will), cabinet to backend."""
    return cabinet_topic(cabinet_id, "status")


def cmd(cabinet_id: str) -> str:
    """Signed commands, backend to cabinet."""
    return cabinet_topic(cabinet_id, "cmd")


def cmd_result(cabinet_id: str) -> str:
    """Command outcomes, cabinet to backend."""
    return cabinet_topic(cabinet_id, "cmd/result")


def ack(cabinet_id: str) -> str:
    """Signed cumulative acks, backend to cabinet."""
    return cabinet_topic(cabinet_id, "ack")


def supplier_restock(supplier_id: str) -> str:
    """``freshbox/v1/supplier/{supplier_id}/restock`` (retained), backend to supplier."""
    return f"{ROOT}/supplier/{validate_supplier_id(supplier_id)}/restock"


def cabinet_filter(name: CabinetTopic) -> str:
    """The subscription filter for one topic of every cabinet: ``freshbox/v1/cab/+/{name}``."""
    spec(name)
    return f"{ROOT}/cab/+/{name}"


def shared(group: str, topic_filter: str) -> str:
    """An MQTT 5 shared subscription ``$share/{group}/{filter}`` (Mosquitto and EMQX)."""
    if not _GROUP.fullmatch(group):
        raise InvalidIdentifier(f"share group {group!r} is not a valid identifier")
    return f"$share/{group}/{topic_filter}"


def parse_topic(topic: str) -> tuple[str, str, str]:
    """Split a concrete freshbox topic into ``(scope, id, name)``.

    ``scope`` is ``"cab"`` or ``"supplier"``; ``name`` the suffix (``"sales"``,
    ``"cmd/result"``, ``"restock"``...). Anything else raises
    :class:`~cloud_sync.errors.InvalidIdentifier`.
    """
    prefix = ROOT + "/"
    if not isinstance(topic, str) or not topic.startswith(prefix):
        raise InvalidIdentifier(f"topic {topic!r} is not under {prefix}")
    parts = topic[len(prefix) :].split("/", 2)
    if len(parts) != 3:
        raise InvalidIdentifier(f"topic {topic!r} has too few levels")
    scope, ident, name = parts
    if scope == "cab":
        validate_cabinet_id(ident)
        spec(name)
    elif scope == "supplier":
        validate_supplier_id(ident)
        if name != SUPPLIER_RESTOCK.name:
            raise InvalidIdentifier(f"no supplier topic {name!r}")
    else:
        raise InvalidIdentifier(f"topic {topic!r}: unknown scope {scope!r}")
    return scope, ident, name
