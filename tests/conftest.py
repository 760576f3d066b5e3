"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SCENARIOS = FIXTURES / "scenarios"


@pytest.fixture
def scenarios_dir() -> Path:
    return SCENARIOS


# argon2 at test strength: the default parameters cost ~60 ms per hash
from backend.passwords import configure  # noqa: E402

configure(time_cost=1, memory_cost_kib=1024)

# backend fixtures (database_target, backend_env, api) for every test module
from backend_env import api, backend_env, database_target  # noqa: E402, F401
