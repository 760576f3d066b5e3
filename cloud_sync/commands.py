"""``freshbox keys``, ``ledger``, ``ingest``, ``broker`` and ``cmd``: keys, ledgers and the wire."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_LEDGER_EPILOG = (
    "Exit status: 0 the chain is intact; 1 something is broken (bad signature, gap, "
    "fork, wrong cabinet, out of order); 2 the file or key could not be read "
    "(the message names the line). See docs/protocol.md."
)


def register(sub: Any) -> None:
    keys = sub.add_parser(
        "keys",
        help="Ed25519 signing keys of cabinets and backends",
        description="Create and inspect the Ed25519 keys that sign records and commands "
        "(docs/protocol.md).",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    init = keys_sub.add_parser(
        "init",
        help="generate a key pair, write the private key (mode 0600), print the public key",
        description="Generate a new Ed25519 key pair, write the private key to FILE as PEM "
        "with mode 0600 (never overwriting an existing file unless --force), and print the "
        "public key (base64url) and its key id. Exit status 1 when the file was not written.",
    )
    init.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="private key file to create"
    )
    init.add_argument(
        "--force", action="store_true", help="replace FILE if it exists (the old key is lost)"
    )
    init.set_defaults(func=_keys_init)

    show = keys_sub.add_parser(
        "show",
        help="print the public key and key id of a key file",
        description="Print the public key (base64url) and key id of a private key file "
        "(PEM) or a public key file (base64url text or PEM).",
    )
    show.add_argument("key", type=Path, metavar="FILE", help="private or public key file")
    show.set_defaults(func=_keys_show)

    ledger = sub.add_parser(
        "ledger",
        help="check signed, hash-chained cabinet records",
        description="Work with ledgers: JSON Lines files of signed cabinet records "
        "(docs/protocol.md).",
    )
    ledger_sub = ledger.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND", required=True)
    verify = ledger_sub.add_parser(
        "verify",
        help="verify every signature and link of a cabinet's record chain",
        description="Verify a JSON Lines file of records with the cabinet's public key: "
        "signatures, seq order and gaps, prev hashes (forks), duplicates, cabinet id. "
        "Prints the records, chains and head hash found, and every problem.",
        epilog=_LEDGER_EPILOG,
    )
    verify.add_argument(
        "--file",
        type=Path,
        metavar="RECORDS.jsonl",
        help="the records, one JSON object per line, in seq order (with --public-key)",
    )
    verify.add_argument(
        "--public-key",
        metavar="KEY",
        help="the cabinet's public key: base64url text, or a file holding it or a PEM key "
        "(a key text starting with '-' must be glued on: --public-key=KEY)",
    )
    verify.add_argument(
        "--db",
        metavar="FILE|URL",
        help="instead of --file: an ingest database (a SQLite file or a database URL such as "
        "postgresql://host/db); every stored chain is checked with "
        "the enrolled keys (and a quarantined cabinet counts as broken)",
    )
    verify.add_argument(
        "--cabinet",
        metavar="ID",
        help="the cabinet the chain must belong to (default: the one most records name)",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(func=_ledger_verify)

    from cloud_sync.cli_sync import register_sync

    register_sync(sub)


def _fail(message: str, code: int) -> int:
    print(f"freshbox: {message}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------- keys


def _keys_init(args: argparse.Namespace) -> int:
    from cloud_sync.errors import SyncError
    from cloud_sync.keys import generate_private_key, key_id, public_key_text, save_private_key

    key = generate_private_key()
    try:
        save_private_key(key, args.out, force=args.force)
    except SyncError as exc:
        return _fail(str(exc), 1)
    print(f"public key: {public_key_text(key)}")
    print(f"key id:     {key_id(key)}")
    print(f"private key written to {args.out} (mode 0600); keep it secret, back it up offline")
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    from cloud_sync.errors import KeyFileError
    from cloud_sync.keys import key_id, load_private_key, load_public_key, public_key_text

    try:
        with args.key.open("rb") as fh:
            is_private = b"PRIVATE KEY" in fh.read(16 * 1024)
    except OSError:
        is_private = False  # the loaders below report the problem
    try:
        key = load_private_key(args.key) if is_private else load_public_key(args.key)
    except KeyFileError as exc:
        return _fail(str(exc), 2)
    print(f"public key: {public_key_text(key)}")
    print(f"key id:     {key_id(key)}")
    return 0


# ------------------------------------------------------------------------- ledger


def _public_key(spec: str) -> Ed25519PublicKey:
    """A public key from text or a file; raises KeyFileError or MalformedMessage."""
    from cloud_sync.keys import load_public_key, public_key_from_text

    path = Path(spec)
    if path.exists():
        return load_public_key(path)
    return public_key_from_text(spec)


def _read_ledger(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSON Lines file; raises ``_BadInput`` naming the line."""
    from cloud_sync.errors import MalformedMessage
    from cloud_sync.records import parse_record

    try:
        with path.open("rb") as fh:
            raw_lines = fh.readlines()
    except OSError as exc:
        raise _BadInput(f"{path}: cannot read: {exc.strerror or exc}") from None
    records: list[dict[str, Any]] = []
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        try:
            records.append(parse_record(raw))
        except MalformedMessage as exc:
            raise _BadInput(f"{path} line {number}: {exc}") from None
    return records


class _BadInput(Exception):
    pass


def _ledger_verify(args: argparse.Namespace) -> int:
    from cloud_sync.errors import SyncError
    from cloud_sync.keys import key_id
    from cloud_sync.records import verify_chain
    from cloud_sync.topics import validate_cabinet_id

    if args.db is not None:
        if args.file is not None or args.public_key is not None:
            return _fail("--db checks an ingest database: give it without --file/--public-key", 2)
        from cloud_sync.cli_sync import ledger_verify_db

        return ledger_verify_db(args)
    if args.file is None or args.public_key is None:
        return _fail("give --file RECORDS.jsonl and --public-key KEY, or --db FILE", 2)

    try:
        public_key = _public_key(args.public_key)
    except SyncError as exc:
        return _fail(f"--public-key: {exc}", 2)
    try:
        if args.cabinet is not None:
            validate_cabinet_id(args.cabinet)
    except SyncError as exc:
        return _fail(f"--cabinet: {exc}", 2)
    try:
        records = _read_ledger(args.file)
    except _BadInput as exc:
        return _fail(str(exc), 2)

    report = verify_chain(records, public_key, cabinet_id=args.cabinet)
    if args.json:
        out = report.to_json()
        out["file"] = str(args.file)
        out["key_id"] = key_id(public_key)
        json.dump(out, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0 if report.ok else 1

    span = f" (seq {report.first_seq}..{report.last_seq})" if report.first_seq is not None else ""
    print(f"ledger {args.file}: key {key_id(public_key)}, cabinet {report.cabinet or '-'}")
    print(f"  records:    {report.count}, {report.verified} verified{span}")
    print(f"  chains:     {report.segments}")
    head = f"{report.head_hash} (seq {report.last_seq})" if report.head_hash else "-"
    print(f"  head hash:  {head}")
    dups = sorted(set(report.duplicates))
    print(
        "  duplicates: "
        + (
            f"{len(report.duplicates)} identical (seq {', '.join(map(str, dups[:10]))})"
            if dups
            else "none"
        )
    )
    print(f"  problems:   {len(report.problems) or 'none'}")
    for problem in report.problems[:200]:
        print(f"    {problem}")
    if len(report.problems) > 200:
        print(f"    ... and {len(report.problems) - 200} more")
    if report.ok and report.count == 0:
        print("OK: the file holds no records")
        return 0
    if report.ok:
        print("OK: every record verifies and the chain is unbroken")
        return 0
    reasons = ", ".join(sorted(report.reasons()))
    print(f"BROKEN: {len(report.problems)} problem(s): {reasons}")
    return 1
