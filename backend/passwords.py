"""Password hashing with Argon2id (argon2-cffi's defaults: RFC 9106's low-memory profile)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["configure", "hash_password", "needs_rehash", "verify_password"]

_hasher = PasswordHasher()


def configure(*, time_cost: int, memory_cost_kib: int) -> None:
    """Cheaper hashing for tests and benchmarks only (never in production)."""
    global _hasher, _DUMMY
    _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost_kib, parallelism=1)
    _DUMMY = _hasher.hash("freshbox: no such user")

# verified against when the user does not exist, so that a wrong username costs as much
# time as a wrong password and does not reveal which usernames exist
_DUMMY = _hasher.hash("freshbox: no such user")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)
