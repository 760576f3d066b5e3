"""The backend's embedded amqtt broker: retained messages, last wills, paho clients."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from backend.broker import EmbeddedBroker, EmbeddedBrokerError, free_port
from cloud_sync import topics
from cloud_sync.transport import connect_args, new_client

WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


@dataclass
class Client:
    """A paho client (MQTT 3.1.1, from the broker's settings) that records what it receives."""

    client: mqtt.Client
    messages: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    connected: threading.Event = field(default_factory=threading.Event)
    subscribed: threading.Event = field(default_factory=threading.Event)

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), msg.retain, msg.qos))
            self.cond.notify_all()

    def wait_for(self, payload: bytes, timeout: float = WAIT_S) -> Received:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.messages:
                    if m.payload == payload:
                        return m
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {payload!r} within {timeout:g} s: {self.messages}")
                self.cond.wait(left)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=qos)
        assert self.subscribed.wait(WAIT_S), f"no SUBACK for {topic}"


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def clients(broker: EmbeddedBroker) -> Iterator[Any]:
    made: list[Client] = []

    def connect(client_id: str, *, will: tuple[str, bytes] | None = None) -> Client:
        settings = broker.settings(client_id, keepalive_s=10)
        c = Client(new_client(settings, client_id))
        c.client.on_message = c.on_message
        c.client.on_connect = lambda *a: c.connected.set()
        c.client.on_subscribe = lambda *a: c.subscribed.set()
        if will is not None:
            c.client.will_set(will[0], will[1], qos=1, retain=True)
        c.client.connect(settings.host, settings.port, **connect_args(settings))
        c.client.loop_start()
        assert c.connected.wait(WAIT_S), f"{client_id} did not connect"
        made.append(c)
        return c

    yield connect
    for c in made:
        with contextlib.suppress(Exception):
            c.client.disconnect()
        with contextlib.suppress(Exception):
            c.client.loop_stop()


def test_url_and_settings(broker: EmbeddedBroker) -> None:
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    s = broker.settings("cab-demo-01")
    assert (s.host, s.port, s.username, s.mqtt_version, s.mqtt5) == (
        "127.0.0.1",
        broker.port,
        "cab-demo-01",
        "3.1.1",
        False,
    )
    assert broker.settings().username is None
    assert broker.running


def test_paho_round_trip(clients: Any) -> None:
    sub = clients("backend-1")
    sub.subscribe(topics.cabinet_filter("sales"))
    pub = clients("cab-demo-01")
    info = pub.client.publish(topics.sales("cab-demo-01"), b'{"seq":1}', qos=1)
    info.wait_for_publish(WAIT_S)
    got = sub.wait_for(b'{"seq":1}')
    assert got.topic == "freshbox/v1/cab/cab-demo-01/sales"
    assert got.qos == 1 and not got.retain
    pub.client.publish(topics.sales("cab-demo-01"), b"qos0", qos=0)
    assert sub.wait_for(b"qos0").topic == got.topic
    # and back down: the cabinet's command topic
    pub.subscribe(topics.cmd("cab-demo-01"))
    sub.client.publish(topics.cmd("cab-demo-01"), b"unlock", qos=1)
    assert pub.wait_for(b"unlock").topic == "freshbox/v1/cab/cab-demo-01/cmd"


def test_retained_message_reaches_a_later_subscriber(clients: Any) -> None:
    cab = clients("cab-demo-02")
    cab.client.publish(
        topics.status("cab-demo-02"), b"online", qos=1, retain=True
    ).wait_for_publish(WAIT_S)
    cab.client.disconnect()  # a clean disconnect: no will, the retained message stays
    time.sleep(0.2)
    later = clients("backend-2")
    later.subscribe(topics.cabinet_filter("status"))
    got = later.wait_for(b"online")
    assert got.topic == "freshbox/v1/cab/cab-demo-02/status"
    assert got.retain
    # an empty retained payload clears it
    clearer = clients("clearer")
    clearer.client.publish(topics.status("cab-demo-02"), b"", qos=1, retain=True).wait_for_publish(
        WAIT_S
    )
    time.sleep(0.2)
    third = clients("backend-3")
    third.subscribe(topics.cabinet_filter("status"))
    time.sleep(0.5)
    assert [m for m in third.messages if m.payload] == []


def test_last_will_is_published_and_retained_when_the_socket_dies(clients: Any) -> None:
    status = topics.status("cab-demo-03")
    watcher = clients("backend-4")
    watcher.subscribe(topics.cabinet_filter("status"))
    cab = clients("cab-demo-03", will=(status, b"offline"))
    cab.client.publish(status, b"online", qos=1, retain=True).wait_for_publish(WAIT_S)
    watcher.wait_for(b"online")
    # the cabinet's process dies: its socket goes away without a DISCONNECT
    cab.client.loop_stop()
    sock = cab.client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    will = watcher.wait_for(b"offline")
    assert will.topic == "freshbox/v1/cab/cab-demo-03/status"
    later = clients("backend-5")
    later.subscribe(topics.cabinet_filter("status"))
    got = later.wait_for(b"offline")
    assert got.retain and got.topic == will.topic
    # it replaced "online" (amqtt may deliver the will twice to a subscriber that arrives
    # while it is being retained: harmless, status is a state, not an event)
    assert {m.payload for m in later.messages} == {b"offline"}


def test_mqtt5_clients_are_refused(broker: EmbeddedBroker) -> None:
    refused = threading.Event()
    codes: list[Any] = []

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        codes.append(rc)
        refused.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="v5", protocol=mqtt.MQTTv5)
    c.on_connect = on_connect
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        assert refused.wait(WAIT_S)
        assert codes[0].is_failure
    finally:
        c.disconnect()
        c.loop_stop()


def test_stop_restart_and_a_taken_port() -> None:
    b = EmbeddedBroker(port=free_port())
    b.start()
    started = b.started_in_s
    assert started is not None and started < 5.0
    with pytest.raises(EmbeddedBrokerError, match="did not start"), EmbeddedBroker(port=b.port):
        pass
    b.stop()
    b.stop()  # idempotent
    assert not b.running
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", b.port), timeout=1):
        pass
    b.start()  # again, on the same port
    try:
        with pytest.raises(EmbeddedBrokerError, match="already started"):
            b.start()
        assert b.running
    finally:
        b.stop()


def test_refuses_anonymous_access_beyond_loopback_unless_asked() -> None:
    with pytest.raises(ValueError, match=r"host: '0\.0\.0\.0' is not a loopback address"):
        EmbeddedBroker("0.0.0.0", 1883)
    with pytest.raises(ValueError, match="port"):
        EmbeddedBroker(port=0)
    assert EmbeddedBroker("::1", 1884).url == "mqtt://[::1]:1884"
