"""``freshbox ingest``, ``broker config``, ``cmd ...`` and ``ledger verify --db``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

_INGEST_EPILOG = (
    "The configuration is TOML: [broker] host, port, tls, ca_file, cert_file, key_file, "
    "username, password or password_file; [backend] signing_key (the backend's Ed25519 key: "
    "signs acks and resend commands); [ingest] db, group, batch_max, resend_after_s, "
    "resend_interval_s, command_ttl_s, client_id; [[cabinets]] id, public_key (base64url or a "
    "key file): the enrolled cabinets. See docs/protocol.md section 10."
)


def _fail(message: str, code: int) -> int:
    print(f"freshbox: {message}", file=sys.stderr)
    return code


def register_sync(sub: Any) -> None:
    ingest = sub.add_parser(
        "ingest",
        help="run the backend's record ingest (verify, dedupe, store, ack)",
        description="Subscribe to every cabinet's sales and events through the MQTT shared "
        "subscription $share/GROUP/freshbox/v1/cab/+/..., verify each record's signature, "
        "enrolment and hash chain, store it once in the ingest database, and publish signed "
        "cumulative acks. Several ingest processes may share one database and group. Runs "
        "until SIGINT/SIGTERM.",
        epilog=_INGEST_EPILOG,
    )
    ingest.add_argument(
        "--config", type=Path, required=True, metavar="FILE", help="ingest TOML file"
    )
    ingest.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    ingest.add_argument(
        "--stats-every",
        type=float,
        default=0.0,
        metavar="S",
        help="print counters to standard error every S seconds",
    )
    ingest.set_defaults(func=_ingest)

    broker = sub.add_parser(
        "broker",
        help="MQTT broker configuration (Mosquitto)",
        description="Write the Mosquitto configuration for a freshbox community.",
    )
    broker_sub = broker.add_subparsers(dest="broker_command", metavar="SUBCOMMAND", required=True)
    conf = broker_sub.add_parser(
        "config",
        help="write mosquitto.conf, the password file, the ACL and the credentials",
        description="Write DIR/mosquitto.conf (listener, allow_anonymous false, password_file, "
        "acl_file, persistence), DIR/passwords (PBKDF2-SHA512 hashes, via mosquitto_passwd -b "
        "when installed), DIR/acl (each cabinet confined to its own topics; users 'ingest' and "
        "'backend'), and the plain passwords in DIR/credentials.toml and DIR/secrets/USER.password "
        "(mode 0600). Users already in DIR/credentials.toml keep their passwords. Start the "
        "broker with: mosquitto -c DIR/mosquitto.conf",
    )
    conf.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory to write")
    conf.add_argument(
        "--cabinets",
        required=True,
        metavar="ID,...",
        help="comma-separated cabinet ids (each becomes a broker user)",
    )
    conf.add_argument("--port", type=int, default=1883, help="listener port (default 1883)")
    conf.add_argument(
        "--bind",
        default="127.0.0.1",
        help="listener address (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    conf.add_argument(
        "--run-as", metavar="USER", help="account mosquitto switches to when started as root"
    )
    conf.add_argument("--tls-cert", type=Path, metavar="PEM", help="server certificate (TLS)")
    conf.add_argument("--tls-key", type=Path, metavar="PEM", help="server key (TLS)")
    conf.add_argument(
        "--client-ca",
        type=Path,
        metavar="PEM",
        help="CA of client certificates: require them, CN = user name",
    )
    conf.add_argument(
        "--print-passwords", action="store_true", help="also print the generated passwords"
    )
    conf.set_defaults(func=_broker_config)

    cmd = sub.add_parser(
        "cmd",
        help="send a signed command to a cabinet",
        description="Sign a command with the backend key, publish it on the cabinet's cmd "
        "topic and print its results from cmd/result (docs/protocol.md section 4).",
    )
    cmd_sub = cmd.add_subparsers(dest="cmd_command", metavar="COMMAND", required=True)
    unlock = cmd_sub.add_parser(
        "unlock",
        help="unlock a cabinet for a resident",
        description="Send a signed unlock. With --wait, print the cabinet's result (unlocked, "
        "or refused with a reason); with --follow also wait for the session's end (billed "
        "with the sale's seq, or door_never_opened). Exit status 0 ok, 1 refused, 3 no result "
        "in time, 2 bad arguments or configuration.",
    )
    unlock.add_argument("cabinet", metavar="CABINET", help="cabinet id")
    unlock.add_argument("--resident", required=True, metavar="R", help="the resident's id")
    unlock.add_argument(
        "--role",
        default="resident",
        choices=("resident", "operator"),
        help="resident (billed) or operator (restocking, never billed)",
    )
    _command_options(unlock)
    unlock.set_defaults(func=_cmd_unlock)
    send = cmd_sub.add_parser(
        "send",
        help="send any command (restock, tare, set_prices, set_planogram, resend)",
        description="Send a signed command NAME with JSON arguments. Exit status as for unlock.",
    )
    send.add_argument("cabinet", metavar="CABINET", help="cabinet id")
    send.add_argument("name", metavar="NAME", help="command name")
    send.add_argument("--args", default="{}", metavar="JSON", help="arguments (a JSON object)")
    _command_options(send)
    send.set_defaults(func=_cmd_send)


def _command_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="backend TOML file ([broker] and [backend], as for ingest)",
    )
    p.add_argument("--wait", action="store_true", help="wait for and print the result")
    p.add_argument(
        "--follow", action="store_true", help="wait for the final result (implies --wait)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        metavar="S",
        help="how long to wait for a result (default 20)",
    )
    p.add_argument(
        "--ttl",
        type=float,
        default=15.0,
        metavar="S",
        help="the command expires S seconds after it is sent (default 15)",
    )


# ------------------------------------------------------------------------ ingest


def _ingest(args: argparse.Namespace) -> int:
    from cloud_sync.errors import SyncError
    from cloud_sync.ingest import Ingest, load_backend_config

    try:
        config = load_backend_config(args.config)
        ingest = Ingest(config)
    except SyncError as exc:
        return _fail(str(exc), 2)
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    print(f"freshbox ingest: {ingest.client_id} -> {config.db} (group {config.group})", flush=True)
    ingest.start()
    end = None if args.duration is None else time.monotonic() + args.duration
    next_stats = time.monotonic() + args.stats_every if args.stats_every > 0 else None
    try:
        while not stop.is_set():
            stop.wait(0.2)
            now = time.monotonic()
            if end is not None and now >= end:
                break
            if next_stats is not None and now >= next_stats:
                next_stats = now + args.stats_every
                print(f"stats {json.dumps(_stats(ingest))}", file=sys.stderr, flush=True)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        ingest.stop()
    print(f"stats {json.dumps(_stats(ingest))}", flush=True)
    return 0


def _stats(ingest: Any) -> dict[str, Any]:
    s = ingest.stats
    return {
        "received": s.received,
        "stored": s.stored,
        "duplicates": s.duplicates,
        "held": s.held,
        "rejected": s.rejected,
        "quarantined": s.quarantined,
        "acks": s.acks,
        "resends": s.resends,
    }


# ------------------------------------------------------------------------ broker


def _broker_config(args: argparse.Namespace) -> int:
    from cloud_sync.broker import write_broker_config
    from cloud_sync.errors import SyncError

    cabinets = [c.strip() for c in args.cabinets.split(",") if c.strip()]
    try:
        files = write_broker_config(
            args.out,
            cabinets,
            port=args.port,
            bind=args.bind,
            run_as=args.run_as,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            client_ca=args.client_ca,
        )
    except SyncError as exc:
        return _fail(str(exc), 2)
    print(f"wrote {files.conf}")
    print(f"      {files.passwords} ({len(files.users)} users, hashed with {files.hashed_with})")
    print(f"      {files.acl}")
    print(f"      {files.credentials} and {files.directory / 'secrets'}/USER.password (mode 0600)")
    print(f"users: {', '.join(files.users)}")
    if args.print_passwords:
        for user, password in files.users.items():
            print(f"  {user} {password}")
    print(f"start the broker: mosquitto -c {files.conf}")
    return 0


# ------------------------------------------------------------------------ cmd


def _cmd_unlock(args: argparse.Namespace) -> int:
    return _send(args, "unlock", {"resident": args.resident, "role": args.role})


def _cmd_send(args: argparse.Namespace) -> int:
    try:
        cmd_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        return _fail(f"--args: not JSON: {exc.msg}", 2)
    if not isinstance(cmd_args, dict):
        return _fail("--args: must be a JSON object", 2)
    return _send(args, args.name, cmd_args)


def _send(args: argparse.Namespace, name: str, cmd_args: dict[str, Any]) -> int:
    from cloud_sync.canonical import canonical_bytes
    from cloud_sync.commander import Commander
    from cloud_sync.errors import SyncError
    from cloud_sync.ingest import load_backend_config
    from cloud_sync.keys import load_private_key
    from cloud_sync.topics import validate_cabinet_id

    try:
        validate_cabinet_id(args.cabinet)
        config = load_backend_config(args.config)
        key = load_private_key(config.signing_key)
    except SyncError as exc:
        return _fail(str(exc), 2)
    commander = Commander(config.broker, key)
    try:
        commander.start(timeout=min(args.timeout, 10.0))
    except TimeoutError as exc:
        return _fail(str(exc), 3)
    try:
        try:
            cmd = commander.send(args.cabinet, name, cmd_args, ttl_s=args.ttl)
        except SyncError as exc:
            return _fail(str(exc), 2)
        print(
            f"sent {name} to {args.cabinet}, nonce {cmd['nonce']}, expires {cmd['expires']}",
            flush=True,
        )
        if not (args.wait or args.follow):
            time.sleep(0.2)  # let the QoS 1 publish leave
            return 0
        end = time.monotonic() + args.timeout
        seen = 0
        final: dict[str, Any] | None = None
        while time.monotonic() < end:
            got = commander.wait(cmd["nonce"], max(0.0, end - time.monotonic()), final=args.follow)
            results = commander.results(cmd["nonce"])
            for r in results[seen:]:
                print(canonical_bytes(r).decode("utf-8"), flush=True)
            seen = len(results)
            if got is not None:
                final = got
                break
        if final is None:
            return _fail(f"no result from {args.cabinet} within {args.timeout:g} s", 3)
        return 0 if final.get("ok") else 1
    finally:
        commander.stop()


# ------------------------------------------------------------------------ ledger --db


def ledger_verify_db(args: argparse.Namespace) -> int:
    from sqlalchemy import create_engine
    from sqlalchemy import exc as sa_exc
    from sqlalchemy import text as sql_text

    from cloud_sync.errors import MalformedMessage, SyncError
    from cloud_sync.keys import key_id, public_key_from_text
    from cloud_sync.records import parse_record, verify_chain
    from cloud_sync.sqldb import database_url

    path = str(args.db)
    if "://" not in path and not Path(path).is_file():
        return _fail(f"{path}: no such ingest database", 2)
    try:
        url = database_url(path)
    except SyncError as e:
        return _fail(str(e), 2)
    if url.get_backend_name() == "sqlite":  # read-only: never create or lock anything
        url = url.set(database=f"file:{url.database}?mode=ro").update_query_dict({"uri": "true"})
    engine = create_engine(url)
    try:
        conn = engine.connect()
        enrolled = {
            r[0]: r[1]
            for r in conn.exec_driver_sql("SELECT cabinet, public_key FROM enrolment").fetchall()
        }
        heads = {
            r[0]: (int(r[1]), r[2], bool(r[3]), r[4])
            for r in conn.exec_driver_sql(
                "SELECT cabinet, seq, hash, quarantined, quarantine_reason FROM heads"
            ).fetchall()
        }
    except sa_exc.SQLAlchemyError as e:
        engine.dispose()
        reason = getattr(e, "orig", None) or e
        return _fail(f"{path}: not an ingest database: {reason}", 2)
    cabinets = sorted(set(enrolled) | set(heads))
    if args.cabinet is not None:
        cabinets = [c for c in cabinets if c == args.cabinet]
    results: list[dict[str, Any]] = []
    broken = 0
    for cab in cabinets:
        problems: list[str] = []
        head_seq, head_hash, quarantined, why = heads.get(cab, (0, "0" * 64, False, None))
        rows = conn.execute(
            sql_text("SELECT seq, record_json FROM records WHERE cabinet = :c ORDER BY seq"),
            {"c": cab},
        ).fetchall()
        key_text = enrolled.get(cab)
        summary: dict[str, Any] = {"cabinet": cab, "records": len(rows), "head_seq": head_seq}
        if key_text is None:
            problems.append("stored records but the cabinet is not enrolled")
        else:
            key = public_key_from_text(key_text)
            summary["key_id"] = key_id(key)
            records = []
            for seq, text in rows:
                try:
                    records.append(parse_record(text))
                except MalformedMessage as exc:
                    problems.append(f"seq {seq}: unreadable: {exc}")
            report = verify_chain(records, key, cabinet_id=cab)
            problems += [str(p) for p in report.problems]
            if rows and (report.first_seq != 1):
                problems.append(f"chain starts at seq {report.first_seq}, not 1")
            if report.last_seq != (head_seq or None) or (rows and report.head_hash != head_hash):
                problems.append(
                    f"stored head seq {head_seq} {head_hash[:16]}... does not match the chain "
                    f"(last seq {report.last_seq}, {str(report.head_hash)[:16]}...)"
                )
            summary["chains"] = report.segments
            summary["head_hash"] = report.head_hash
        if quarantined:
            problems.append(f"quarantined: {why}")
        summary["problems"] = problems
        summary["ok"] = not problems
        broken += bool(problems)
        results.append(summary)
    alarms = int(conn.exec_driver_sql("SELECT count(*) FROM alarms").scalar_one())
    conn.close()
    engine.dispose()
    if args.json:
        json.dump(
            {"db": str(path), "ok": broken == 0, "cabinets": results, "alarms": alarms}, sys.stdout
        )
        sys.stdout.write("\n")
        return 0 if broken == 0 else 1
    print(f"ingest database {path}: {len(results)} cabinet(s), {alarms} alarm(s)")
    for r in results:
        state = "OK" if r["ok"] else "BROKEN"
        print(f"  {r['cabinet']}: {r['records']} records, head seq {r['head_seq']}: {state}")
        for p in r["problems"][:50]:
            print(f"    {p}")
    verified = len(results) - broken
    print(f"chains verified {verified}/{len(results)}")
    return 0 if broken == 0 else 1
