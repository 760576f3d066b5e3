"""The sync over TLS: a real Mosquitto with a TLS listener, certificates made here.

A throwaway CA signs a server certificate for ``127.0.0.1``/``localhost`` and
client certificates whose common name is the MQTT user (the broker configuration
``freshbox broker config`` writes uses it as the user name with
``require_certificate``). Two listeners are tried:

* **TLS with passwords**: server certificate only; clients check it against the CA
  and log in with the generated passwords (``mosquitto_passwd -b`` file);
* **TLS with client certificates**: ``cafile`` + ``require_certificate true`` +
  ``use_identity_as_username true``; clients present a certificate from the CA.

In both, a cabinet's uplink (``cloud_sync/uplink.py``) drains signed records to an
ingest over TLS and gets them acked (outbox empty, every record stored once); and a
client that does not know the CA, presents a certificate from another CA, presents
none, or does not speak TLS at all, is refused.
"""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mqtt import Broker, mosquitto_or_skip, wait_for

from cloud_sync.broker import write_broker_config
from cloud_sync.config import BrokerSettings, SyncSettings
from cloud_sync.ingest import Ingest, IngestDB, load_backend_config
from cloud_sync.keys import (
    generate_private_key,
    load_private_key,
    public_key_text,
    save_private_key,
)
from cloud_sync.lab import free_port
from cloud_sync.nonces import NonceStore
from cloud_sync.records import new_nonce
from cloud_sync.transport import new_client
from cloud_sync.uplink import Uplink
from edge.store import CabinetStore

CAB = "cab-tls1"
RECORDS = 40


# ------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Pki:
    """PEM files under one directory: the CA, the broker's certificate, client certificates."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path

    def client(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.crt", self.directory / f"{name}.key"


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "freshbox test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    cn: str,
    out: Path,
    *,
    server: bool = False,
) -> tuple[Path, Path]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = out / f"{cn}.crt", out / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path


def make_pki(directory: Path, clients: list[str]) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, and a client certificate per
    name (CN = name); plus ``rogue/ca.crt`` and ``rogue/NAME.crt``: another CA, which
    nobody trusts, and the same names from it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("freshbox test CA")
    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    server_cert, server_key = _issue(ca, "localhost", directory, server=True)
    for name in clients:
        _issue(ca, name, directory)
    rogue_dir = directory / "rogue"
    rogue_dir.mkdir()
    rogue = _ca("rogue CA")
    (rogue_dir / "ca.crt").write_bytes(rogue[0].public_bytes(serialization.Encoding.PEM))
    for name in clients:
        _issue(rogue, name, rogue_dir)
    return Pki(directory, ca_path, server_cert, server_key)


# ------------------------------------------------------------------ a TLS community


@dataclass
class TlsCommunity:
    root: Path
    pki: Pki
    broker: Broker
    client_certs: bool
    backend_key: Path
    cab_key: Path

    def settings(self, user: str, **changes: Any) -> BrokerSettings:
        """How ``user`` logs in on this listener: the CA, and a certificate or a password."""
        if self.client_certs:
            cert, key = self.pki.client(user)
            base = BrokerSettings(
                "127.0.0.1",
                self.broker.port,
                tls=True,
                ca_file=self.pki.ca,
                cert_file=cert,
                key_file=key,
                keepalive_s=10,
            )
        else:
            base = BrokerSettings(
                "127.0.0.1",
                self.broker.port,
                tls=True,
                ca_file=self.pki.ca,
                username=user,
                password=self.broker.files.users[user],
                keepalive_s=10,
            )
        return replace(base, **changes)

    def ingest_config(self) -> Path:
        s = self.settings("ingest")
        lines = [
            "[broker]",
            'host = "127.0.0.1"',
            f"port = {self.broker.port}",
            "tls = true",
            f'ca_file = "{s.ca_file}"',
            "keepalive_s = 10",
        ]
        if self.client_certs:
            lines += [f'cert_file = "{s.cert_file}"', f'key_file = "{s.key_file}"']
        else:
            lines += [
                'username = "ingest"',
                f'password_file = "{self.broker.files.password_file("ingest")}"',
            ]
        lines += [
            "[backend]",
            f'signing_key = "{self.backend_key}"',
            "[ingest]",
            f'db = "{self.root / "ingest.db"}"',
            "resend_after_s = 0.5",
            "resend_interval_s = 1.0",
            "[[cabinets]]",
            f'id = "{CAB}"',
            f'public_key = "{public_key_text(load_private_key(self.cab_key))}"',
        ]
        path = self.root / "ingest.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


@pytest.fixture(params=["password", "client-cert"])
def tls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TlsCommunity]:
    binary = mosquitto_or_skip()
    client_certs = request.param == "client-cert"
    pki = make_pki(tmp_path / "pki", [CAB, "ingest", "backend"])
    files = write_broker_config(
        tmp_path / "broker",
        [CAB],
        port=free_port(),
        run_as=getpass.getuser(),
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        client_ca=pki.ca if client_certs else None,
    )
    conf = files.conf.read_text()
    assert f"certfile {pki.server_cert.resolve()}" in conf
    assert ("require_certificate true" in conf) == client_certs
    backend_key = tmp_path / "backend.key"
    save_private_key(generate_private_key(), backend_key)
    cab_key = tmp_path / f"{CAB}.key"
    save_private_key(generate_private_key(), cab_key)
    broker = Broker(binary, files)
    broker.start()
    try:
        yield TlsCommunity(tmp_path, pki, broker, client_certs, backend_key, cab_key)
    finally:
        broker.kill()


# ------------------------------------------------------------------ helpers


def _connack(settings: BrokerSettings, timeout: float = 5.0) -> int | str:
    """The CONNACK reason code a client with ``settings`` gets (0: accepted), or why it got
    none: ``"tls: ..."`` when the handshake fails, ``"no connack"`` when the connection
    closes or stays silent."""
    got: list[int] = []
    done = threading.Event()
    try:
        client = new_client(settings, f"probe-{new_nonce()[:8]}")
    except Exception as exc:  # a TLS setup error (unreadable file...) is a refusal too
        return f"setup: {exc}"

    def on_connect(c: Any, u: Any, f: Any, reason: Any, p: Any) -> None:
        got.append(int(reason.value))
        done.set()

    def on_disconnect(c: Any, u: Any, f: Any, reason: Any, p: Any) -> None:
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(settings.host, settings.port, keepalive=10)
    except (ssl.SSLError, OSError) as exc:
        return f"tls: {exc}"
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0] if got else "no connack"


def _uplink(tls: TlsCommunity, broker: BrokerSettings, store: CabinetStore) -> Uplink:
    settings = SyncSettings(
        broker=broker,
        signing_key=tls.cab_key,
        backend_public_key=public_key_text(load_private_key(tls.backend_key)),
        retransmit_s=2.0,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
    )
    return Uplink(
        settings,
        store,
        load_private_key(tls.backend_key).public_key(),
        nonces=NonceStore(tls.root / f"{CAB}-nonces.db"),
    )


# ------------------------------------------------------------------ the tests


def test_uplink_drains_to_ingest_over_tls(tls: TlsCommunity) -> None:
    store = CabinetStore(
        tls.root / f"{CAB}.db", cabinet_id=CAB, signing_key=load_private_key(tls.cab_key)
    )
    for i in range(RECORDS):
        store.record_event(1000.0 + i, "door_check", data={"i": i, "note": "über TLS"})
    ingest = Ingest(load_backend_config(tls.ingest_config()))
    ingest.start()
    uplink = _uplink(tls, tls.settings(CAB), store)
    try:
        assert ingest.wait_connected(10), "the ingest did not connect over TLS"
        uplink.start()
        assert uplink.wait_connected(10), "the uplink did not connect over TLS"
        wait_for(
            lambda: store.outbox_head().acked_upto == RECORDS,
            30,
            "every record acked over TLS",
        )
        # more records while connected: published and acked too
        for i in range(5):
            store.record_event(2000.0 + i, "door_check", data={"i": i})
        wait_for(
            lambda: store.outbox_head().acked_upto == RECORDS + 5, 30, "the new records acked"
        )
    finally:
        uplink.stop()
        ingest.stop()
    head = store.outbox_head()
    assert head.acked_upto == head.last_seq == RECORDS + 5
    assert store.outbox_records() == []
    assert store.check_consistency() == []
    assert uplink.stats.bad_acks == 0 and uplink.stats.acks >= 1
    assert uplink.stats.connects >= 1
    store.close()
    idb = IngestDB(load_backend_config(tls.ingest_config()).db)
    try:
        assert idb.head(CAB)[0] == RECORDS + 5 and not idb.head(CAB)[2]
        assert idb.counts()["records"] == RECORDS + 5
        assert idb.counts()["quarantine"] == 0 and idb.counts()["alarms"] == 0
    finally:
        idb.close()


def test_tls_clients_that_do_not_check_out_are_refused(tls: TlsCommunity) -> None:
    good = tls.settings(CAB)
    assert _connack(good) == 0
    # not knowing the CA: the broker's certificate does not verify (system trust store)
    no_ca = _connack(replace(good, ca_file=None))
    assert isinstance(no_ca, str) and no_ca.startswith("tls:"), no_ca
    assert "certificate verify failed" in no_ca
    # trusting another CA: the same
    wrong_ca = _connack(replace(good, ca_file=tls.pki.directory / "rogue" / "ca.crt"))
    assert isinstance(wrong_ca, str) and wrong_ca.startswith("tls:"), wrong_ca
    # no TLS at all on a TLS listener: no CONNACK
    assert _connack(replace(good, tls=False, ca_file=None, cert_file=None, key_file=None)) != 0
    rogue_cert = tls.pki.directory / "rogue" / f"{CAB}.crt"
    rogue_key = tls.pki.directory / "rogue" / f"{CAB}.key"
    if tls.client_certs:
        # a certificate from a CA the broker does not trust, or none at all
        assert _connack(replace(good, cert_file=rogue_cert, key_file=rogue_key)) != 0
        assert _connack(replace(good, cert_file=None, key_file=None)) != 0
    else:
        assert _connack(replace(good, password="not-the-password")) not in (0, "no connack")
        assert _connack(replace(good, username=None, password=None)) != 0


def test_uplink_with_a_wrong_certificate_never_connects(tls: TlsCommunity) -> None:
    if tls.client_certs:
        rogue = tls.pki.directory / "rogue"
        broker = tls.settings(CAB, cert_file=rogue / f"{CAB}.crt", key_file=rogue / f"{CAB}.key")
    else:
        broker = tls.settings(CAB, ca_file=None)  # cannot verify the broker
    store = CabinetStore(
        tls.root / f"{CAB}.db", cabinet_id=CAB, signing_key=load_private_key(tls.cab_key)
    )
    store.record_event(1.0, "door_check")
    uplink = _uplink(tls, broker, store)
    uplink.start()
    try:
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            assert not uplink.connected
            time.sleep(0.05)
        assert uplink.stats.connect_failures >= 2 and uplink.stats.connects == 0
        assert store.outbox_head().acked_upto == 0 and len(store.outbox_records()) == 1
    finally:
        uplink.stop()
        store.close()
