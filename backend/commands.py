"""``freshbox demo``, ``freshbox serve``, ``freshbox qr`` and ``freshbox backend ...``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import signal
import sys
from pathlib import Path
from typing import Any

from backend.errors import BackendError


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="run everything on embedded defaults: broker, backend, 3 cabinets, shoppers",
        description="Start an embedded MQTT broker, the backend on SQLite under ./var/demo, "
        "three simulated cabinets running the real edge daemon, and simulated residents who "
        "open cabinets now and then. Prints the URLs and the demo logins.",
    )
    demo.add_argument("--port", type=int, default=8080, help="HTTP port of the backend (8080)")
    demo.add_argument("--host", default="127.0.0.1", help="HTTP address (127.0.0.1)")
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument(
        "--broker",
        metavar="URL",
        help="use this MQTT broker (mqtt://host:port, add ?version=3.1.1 for a broker "
        "without MQTT 5) instead of the embedded one",
    )
    demo.add_argument("--dir", type=Path, default=Path("var/demo"), help="state directory")
    demo.add_argument("--cabinets", type=int, default=3, help="how many cabinets (3)")
    demo.add_argument(
        "--mean-gap", type=float, default=20.0, help="mean seconds between two shoppers (20)"
    )
    demo.add_argument(
        "--fresh", action="store_true", help="forget earlier runs (empty database and stores)"
    )
    demo.set_defaults(func=_demo)

    serve = sub.add_parser(
        "serve",
        help="run the community backend (HTTP, ingest, cabinet commands)",
        description="Run the backend with a TOML configuration (every key has a default; "
        "FRESHBOX__SECTION__KEY environment variables override keys).",
    )
    serve.add_argument("--config", type=Path, help="backend TOML file (default: built-in)")
    serve.set_defaults(func=_serve)

    qr = sub.add_parser(
        "qr",
        help="write the QR code to stick on a cabinet (its page's URL) as a PNG",
        description="Write a PNG QR code of the cabinet page's URL, {public_url}/c/CABINET.",
    )
    qr.add_argument("cabinet", help="cabinet id")
    qr.add_argument("-o", "--out", type=Path, required=True, help="PNG file to write")
    qr.add_argument("--config", type=Path, help="backend TOML file (for http.public_url)")
    qr.add_argument("--url", help="the backend's public URL (overrides the configuration)")
    qr.set_defaults(func=_qr)

    be = sub.add_parser(
        "backend",
        help="backend administration: migrations, users, cabinets, API tokens",
        description="Administer the backend's database (configuration as for serve).",
    )
    be.add_argument("--config", type=Path, help="backend TOML file (default: built-in)")
    be_sub = be.add_subparsers(dest="backend_command", metavar="SUBCOMMAND", required=True)
    mig = be_sub.add_parser(
        "migrate", help="bring the database schema up to date", description="Run migrations."
    )
    mig.set_defaults(func=_migrate)
    user = be_sub.add_parser(
        "user-add",
        help="create a user (the password is asked for, or read from --password-file)",
        description="Create a resident, operator, supplier or admin account.",
    )
    user.add_argument("username", help="login name (a-z 0-9 . _ -)")
    user.add_argument(
        "--role", required=True, choices=("resident", "operator", "supplier", "admin"), help="role"
    )
    user.add_argument("--name", required=True, help="display name")
    user.add_argument("--building", help="resident: building")
    user.add_argument("--unit", help="resident: unit")
    user.add_argument("--operator", help="operator: the property company's id")
    user.add_argument("--supplier", help="supplier: the vegetable base's id")
    user.add_argument("--password-file", type=Path, help="read the password from this file")
    user.set_defaults(func=_user_add)
    cab = be_sub.add_parser(
        "cabinet-add",
        help="register a cabinet and enrol its public key",
        description="Register a cabinet for an operator, with the planogram of its TOML.",
    )
    cab.add_argument("cabinet", help="cabinet id")
    cab.add_argument("--operator", required=True, help="the property company's id")
    cab.add_argument("--name", required=True, help="display name")
    cab.add_argument("--location", default="", help="where it stands")
    cab.add_argument("--public-key", required=True, help="the cabinet's public key (file or text)")
    cab.add_argument("--cabinet-config", type=Path, help="the cabinet's TOML (for its lanes)")
    cab.set_defaults(func=_cabinet_add)


def _fail(message: str) -> int:
    print(f"freshbox: {message}", file=sys.stderr)
    return 2


def _demo(args: argparse.Namespace) -> int:
    from backend.demo import DemoOptions, run_demo

    _quiet_libraries()
    opts = DemoOptions(
        directory=args.dir,
        port=args.port,
        host=args.host,
        duration=args.duration,
        broker_url=args.broker,
        cabinets=args.cabinets,
        mean_gap_s=args.mean_gap,
        fresh=args.fresh,
    )
    try:
        return asyncio.run(run_demo(opts))
    except BackendError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot start the demo: {exc}")


def _quiet_libraries() -> None:
    import logging

    for noisy in ("amqtt", "transitions", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _serve(args: argparse.Namespace) -> int:
    from backend.config import load_settings
    from backend.server import BackendServer

    try:
        settings = load_settings(args.config)
        server = BackendServer(settings)
    except BackendError as exc:
        return _fail(str(exc))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await server.start()
        print(f"freshbox backend: {server.url}", flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(main())
    return 0


def _qr(args: argparse.Namespace) -> int:
    from backend.config import load_settings
    from backend.qr import cabinet_url, write_qr_png

    try:
        base = args.url or load_settings(args.config).public_url
        url = cabinet_url(base.rstrip("/"), args.cabinet)
        write_qr_png(url, args.out)
    except BackendError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{args.out}: {exc.strerror or exc}")
    print(f"{args.out}: QR code of {url}")
    return 0


def _database(args: argparse.Namespace) -> Any:
    from backend.config import load_settings
    from backend.db import Database

    settings = load_settings(args.config)
    db = Database(settings.db, workers=1)
    db.migrate()
    return db


def _migrate(args: argparse.Namespace) -> int:
    try:
        db = _database(args)
    except BackendError as exc:
        return _fail(str(exc))
    print(f"database {db.url.render_as_string(hide_password=True)}: up to date")
    db.close()
    return 0


def _user_add(args: argparse.Namespace) -> int:
    from backend.accounts import create_household, create_user
    from backend.clock import Clock

    if args.password_file:
        password = args.password_file.read_text(encoding="utf-8").strip()
    else:
        password = getpass.getpass(f"password for {args.username}: ")
    try:
        db = _database(args)
        now = Clock().now()

        def add(conn: Any) -> int:
            household = None
            if args.role == "resident":
                if not args.building or not args.unit:
                    from backend.errors import InputError

                    raise InputError("--building/--unit", "a resident needs both")
                household = create_household(conn, args.building, args.unit)
            return create_user(
                conn,
                username=args.username,
                password=password,
                role=args.role,
                display_name=args.name,
                now=now,
                household_id=household,
                operator_id=args.operator,
                supplier_id=args.supplier,
            )

        user_id = db.write(add)
        db.close()
    except BackendError as exc:
        return _fail(str(exc))
    print(f"user {args.username} ({args.role}) created with id {user_id}")
    return 0


def _cabinet_add(args: argparse.Namespace) -> int:
    import tomllib

    from backend.clock import Clock
    from backend.seed import CabinetSpec, LaneSpec, add_cabinet
    from cloud_sync.errors import SyncError
    from cloud_sync.ingest_db import IngestDB
    from cloud_sync.keys import public_key_text
    from cloud_sync.transport import public_key_spec

    try:
        key = public_key_text(public_key_spec(args.public_key, "--public-key"))
    except SyncError as exc:
        return _fail(str(exc))
    lanes: list[LaneSpec] = []
    if args.cabinet_config:
        data = tomllib.loads(args.cabinet_config.read_text(encoding="utf-8"))
        for ln in data.get("lanes", []):
            price = ln.get("price_fen", ln.get("price_fen_per_kg", 0))
            lanes.append(
                LaneSpec(
                    ln["lane"],
                    ln["sku"],
                    ln.get("name", ln["sku"]),
                    ln["mode"],
                    price,
                    ln.get("unit_weight_g"),
                )
            )
    try:
        db = _database(args)
        spec = CabinetSpec(args.cabinet, args.name, args.location, args.operator, key, lanes)
        added = db.write(add_cabinet, spec, Clock().now())
        IngestDB(db.engine).enrol(args.cabinet, key)
        db.close()
    except (BackendError, SyncError) as exc:
        return _fail(str(exc))
    print(f"cabinet {args.cabinet} {'registered' if added else 'already registered'}; key enrolled")
    return 0


__all__ = ["register"]
