"""The ``freshbox`` command: one entry point, subcommands registered by each package."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from edge.errors import ConfigError, EdgeError, InputError

#: Packages that contribute subcommands, each with a ``register(subparsers)`` function.
COMMAND_MODULES = (
    "firmware_mock.commands",
    "firmware_mock.mock_commands",
    "edge.commands",
    "cloud_sync.commands",
    "backend.commands",
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree (importing only argparse-level code)."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="freshbox",
        description=(
            "freshbox: gravity-sensing fresh-produce cabinets. The cabinet daemon, "
            "its simulator and the tools around them."
        ),
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeat for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.func(args)
    except (InputError, ConfigError) as exc:
        print(f"freshbox: {exc}", file=sys.stderr)
        return 2
    except EdgeError as exc:
        print(f"freshbox: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
