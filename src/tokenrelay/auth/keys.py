"""API keys: ``tr_`` and 40 random base62 characters, shown once, stored as a SHA-256 hash.

SHA-256, not a password hash, is the right tool here: a key carries about 238 bits from the
operating system's CSPRNG, so no amount of hashing speed makes guessing one from its hash
feasible. bcrypt and argon2 are slow on purpose to protect low-entropy human passwords; on a
key they would only cost every request tens of milliseconds of CPU.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tokenrelay.store.accounts import Accounts, KeyRecord

PREFIX = "tr_"
ALPHABET = string.ascii_letters + string.digits
SECRET_LENGTH = 40
# What ``keys list`` shows: enough to tell keys apart, far too little to guess the rest.
VISIBLE = len(PREFIX) + 8
KEY_FORMAT = re.compile(rf"^{PREFIX}[A-Za-z0-9]{{{SECRET_LENGTH}}}$")
SCOPES = ("chat", "admin")


@dataclass(frozen=True, slots=True)
class NewKey:
    id: str
    secret: str
    prefix: str
    hash: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> NewKey:
    secret = PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(SECRET_LENGTH))
    key_id = "key_" + "".join(secrets.choice(ALPHABET) for _ in range(16))
    return NewKey(id=key_id, secret=secret, prefix=secret[:VISIBLE], hash=hash_key(secret))


def well_formed(token: str) -> bool:
    """Whether ``token`` could be a key at all: anything else is refused without a lookup."""
    return KEY_FORMAT.match(token) is not None


def matches(secret: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented key with a stored hash.

    The lookup found the row by this same hash, so this re-check guards the code path, not
    the secret; it is constant-time so that it never becomes the weak link if the lookup
    changes.
    """
    return hmac.compare_digest(hash_key(secret).encode(), stored_hash.encode())


async def issue_key(
    accounts: Accounts,
    owner: str,
    scopes: Sequence[str] = ("chat",),
    *,
    name: str | None = None,
    expires_at: datetime | None = None,
    limits: dict[str, int | None] | None = None,
) -> tuple[KeyRecord, str]:
    """Create a key for ``owner`` (created too, if new); the secret is returned only here."""
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}")
    key = new_key()
    record = await accounts.add_key(
        key_id=key.id,
        prefix=key.prefix,
        key_hash=key.hash,
        owner=owner,
        scopes=sorted(set(scopes)),
        name=name,
        expires_at=expires_at,
        limits=limits,
    )
    return record, key.secret
