"""An MQTT broker inside the backend process, for the single-machine demo.

:class:`EmbeddedBroker` runs the pure-Python amqtt broker (MQTT 3.1.1 only: no
MQTT 5, so no shared subscriptions; clients must use
``BrokerSettings(mqtt_version="3.1.1")``, which :meth:`EmbeddedBroker.settings`
returns) in a thread of its own with its own asyncio loop, so the caller may be
synchronous or run another loop (aiohttp). Retained messages and last wills work,
which is what the cabinets' retained ``status`` (birth ``online``, will
``offline``) needs. Nothing is persisted: retained messages are lost when the
broker stops.

Anonymous clients are let in (any user name and password is accepted), so the
broker binds to the loopback interface unless told otherwise explicitly.
Production uses Mosquitto or EMQX (``freshbox broker config``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from types import TracebackType
from typing import Any, Final

from cloud_sync.config import BrokerSettings
from cloud_sync.lab import free_port

__all__ = ["EmbeddedBroker", "EmbeddedBrokerError", "free_port"]

log = logging.getLogger("freshbox.backend.broker")

#: amqtt logs every connection at INFO and some client hiccups at ERROR with tracebacks
AMQTT_LOGGERS: Final = ("amqtt", "transitions")
#: the amqtt plugins loaded: anonymous authentication and nothing else (no $SYS topics,
#: no packet logging)
_ANONYMOUS_PLUGIN: Final = "amqtt.plugins.authentication.AnonymousAuthPlugin"


def _connect_packet(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT: clean session, no will, no credentials, keepalive 0."""
    cid = client_id.encode("ascii")
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
    return bytes((0x10, len(body))) + body


def _probe(host: str, port: int, timeout: float = 1.0) -> None:
    """CONNECT, expect CONNACK accepted, DISCONNECT; OSError when that fails."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_connect_packet(f"probe-{os.getpid()}-{threading.get_ident() % 10000}"))
        ack = b""
        while len(ack) < 4:
            chunk = sock.recv(4 - len(ack))
            if not chunk:
                raise ConnectionError("closed before CONNACK")
            ack += chunk
        if ack != b"\x20\x02\x00\x00":
            raise ConnectionError(f"unexpected CONNACK {ack.hex()}")
        sock.sendall(b"\xe0\x00")  # DISCONNECT


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not start or stop."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EmbeddedBroker:
    """amqtt on ``host:port`` in a background thread.

    ``port`` None picks a free port (amqtt cannot bind port 0 and report the port it
    got, so a free one is chosen first with :func:`free_port`). Anonymous access is
    the only access; on an address other than loopback it must be asked for with
    ``allow_anonymous=True``.

    Use as a context manager, or :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        allow_anonymous: bool | None = None,
        log_level: int = logging.WARNING,
    ) -> None:
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"port: must be from 1 to 65535, not {port}")
        if not host:
            raise ValueError("host: must not be empty")
        if allow_anonymous is None:
            allow_anonymous = _is_loopback(host)
            if not allow_anonymous:
                raise ValueError(
                    f"host: {host!r} is not a loopback address and the embedded broker only "
                    "has anonymous access; pass allow_anonymous=True to serve it anyway"
                )
        if not allow_anonymous:
            raise ValueError("allow_anonymous: the embedded broker has no other access")
        self.host = host
        self.port = port if port is not None else free_port()
        self.log_level = log_level
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.started_in_s: float | None = None

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        """``mqtt://HOST:PORT``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._started.is_set()

    def settings(self, username: str | None = None, *, keepalive_s: int = 30) -> BrokerSettings:
        """How a client reaches this broker (MQTT 3.1.1, no TLS, no password)."""
        return BrokerSettings(
            host=self.host,
            port=self.port,
            username=username,
            keepalive_s=keepalive_s,
            mqtt_version="3.1.1",
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker thread and return once the port accepts MQTT connections.

        Raises :class:`EmbeddedBrokerError` when amqtt fails (e.g. the port is taken)
        and :class:`TimeoutError` when it is not listening within ``timeout`` seconds.
        """
        if self._thread is not None:
            raise EmbeddedBrokerError("the embedded broker was already started")
        # a stopped broker may start again on the same port (without its retained messages)
        self._started.clear()
        self._error = None
        self._loop = None
        self._stop = None
        for name in AMQTT_LOGGERS:
            logging.getLogger(name).setLevel(self.log_level)
        began = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"amqtt-{self.port}", daemon=True)
        self._thread.start()
        end = began + timeout
        while not self._started.wait(0.02):
            if self._error is not None or not self._thread.is_alive():
                self._thread.join(1.0)
                raise EmbeddedBrokerError(
                    f"the embedded broker did not start on {self.host}:{self.port}: "
                    f"{self._error or 'its thread ended'}"
                ) from self._error
            if time.monotonic() >= end:
                self.stop()
                raise TimeoutError(f"the embedded broker did not start within {timeout:g} s")
        self._wait_listening(end)
        self.started_in_s = time.monotonic() - began
        log.info("embedded broker on %s (started in %.2f s)", self.url, self.started_in_s)

    def _wait_listening(self, end: float) -> None:
        """Until an MQTT CONNECT gets its CONNACK (a bare TCP probe would make amqtt log an
        error about a client that sent nothing)."""
        while True:
            try:
                _probe(self.host, self.port)
                return
            except OSError as exc:
                if time.monotonic() >= end:
                    self.stop()
                    raise TimeoutError(
                        f"nothing accepts MQTT connections on {self.host}:{self.port}: {exc}"
                    ) from None
                time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the broker down (clients are disconnected, without their wills) and join
        its thread. Idempotent."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._cancel_all)
            thread.join(2.0)
        self._thread = None
        if thread.is_alive():
            raise EmbeddedBrokerError(f"the embedded broker did not stop within {timeout:g} s")

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ the thread

    def _config(self) -> Any:
        from amqtt.contexts import BrokerConfig, ListenerConfig

        return BrokerConfig(
            listeners={"default": ListenerConfig(bind=f"{self.host}:{self.port}")},
            plugins={_ANONYMOUS_PLUGIN: {"allow_anonymous": True}},
        )

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() or logged
            self._error = exc
            if self._started.is_set():
                log.error("embedded broker failed: %s", exc)
        finally:
            with contextlib.suppress(BaseException):
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        from amqtt.broker import Broker

        self._stop = asyncio.Event()
        broker = Broker(self._config())
        await broker.start()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await broker.shutdown()

    def _cancel_all(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for task in asyncio.all_tasks(loop):
            task.cancel()
