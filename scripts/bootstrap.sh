#!/usr/bin/env bash
# Create ./.venv (if needed) and install freshbox into it with the given extras.
# Sourced by the other scripts: `. scripts/bootstrap.sh dev` (always pass the argument, even
# "": a sourced script without arguments sees its caller's, such as `--duration 60`).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x "$repo/.venv/bin/python" ]; then
    "$python" -m venv "$repo/.venv"
fi
stamp="$repo/.venv/.installed-${extras:-base}"
if [ -z "$extras" ]; then
    # any install up to date with pyproject.toml (dev, say) includes the base package
    for done_stamp in "$repo"/.venv/.installed-*; do
        if [ -f "$done_stamp" ] && [ ! "$repo/pyproject.toml" -nt "$done_stamp" ]; then
            stamp="$done_stamp"
            break
        fi
    done
fi
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
    "$repo/.venv/bin/python" -m pip install --quiet --upgrade pip
    if [ -n "$extras" ]; then
        "$repo/.venv/bin/python" -m pip install --quiet -e "$repo[$extras]"
    else
        "$repo/.venv/bin/python" -m pip install --quiet -e "$repo"
    fi
    touch "$stamp"
fi
export PATH="$repo/.venv/bin:$PATH"
