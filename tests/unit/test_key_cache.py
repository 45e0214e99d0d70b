"""A key in steady use is read again in the background before its cached entry runs out: its
requests never wait on the database, and a revocation still takes effect within
key_cache_ttl of the last read."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import cast

import pytest

from tokenrelay import errors
from tokenrelay.auth import keys
from tokenrelay.auth.authenticator import Authenticator
from tokenrelay.config import AuthSettings
from tokenrelay.store.accounts import Accounts, KeyRecord
from tokenrelay.store.models import utcnow

TTL = 0.4


class KeyTable:
    """The accounts' key lookup, counted, and held up while ``gate`` is clear."""

    def __init__(self, record: KeyRecord) -> None:
        self.record: KeyRecord | None = record
        self.lookups = 0
        self.in_background = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def key_by_hash(self, key_hash: str, *, background: bool = False) -> KeyRecord | None:
        self.lookups += 1
        self.in_background += background
        await self.gate.wait()
        return self.record if self.record is not None and self.record.key_hash == key_hash else None


def setup() -> tuple[Authenticator, KeyTable, str]:
    key = keys.new_key()
    record = KeyRecord(
        id=key.id,
        prefix=key.prefix,
        key_hash=key.hash,
        owner="ada",
        name=None,
        scopes=("chat",),
        created_at=utcnow(),
        expires_at=None,
        revoked_at=None,
        limits={},
    )
    table = KeyTable(record)
    checker = Authenticator(AuthSettings(key_cache_ttl=TTL), cast(Accounts, table))
    return checker, table, key.secret


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_key_in_use_is_read_again_before_it_runs_out_and_never_waited_for() -> None:
    checker, table, secret = setup()
    first = await checker.authenticate(secret)
    assert table.lookups == 1
    assert await checker.authenticate(secret) is first
    assert table.lookups == 1

    await asyncio.sleep(TTL * 0.6)
    # Past half its life: answered from the cache while the database is slow to answer.
    table.gate.clear()
    principal = await asyncio.wait_for(checker.authenticate(secret), 0.1)
    assert principal.user == "ada"
    await settle()
    assert table.lookups == 2
    # Read again on the store's own connection: the request's own lookup was not.
    assert table.in_background == 1
    # One read again at a time, however many requests come meanwhile.
    await checker.authenticate(secret)
    await settle()
    assert table.lookups == 2
    table.gate.set()
    await settle()

    # Past the first read's TTL, the entry read again still holds: no lookup on the way.
    await asyncio.sleep(TTL * 0.5)
    await checker.authenticate(secret)
    assert table.lookups in (2, 3)  # at most another background read, never a wait


async def test_a_revocation_read_in_the_background_refuses_the_key() -> None:
    checker, table, secret = setup()
    await checker.authenticate(secret)
    assert table.record is not None
    table.record = dataclasses.replace(table.record, revoked_at=utcnow())
    await asyncio.sleep(TTL * 0.6)
    # This request was made before the read saw the revocation; the next one after it.
    await checker.authenticate(secret)
    await settle()
    with pytest.raises(errors.Unauthorized):
        await checker.authenticate(secret)


async def test_a_key_unused_for_its_ttl_is_looked_up_on_the_request() -> None:
    checker, table, secret = setup()
    await checker.authenticate(secret)
    await asyncio.sleep(TTL * 1.1)
    await checker.authenticate(secret)
    assert table.lookups == 2


async def test_forgetting_keys_during_a_background_read_is_not_undone_by_it() -> None:
    checker, table, secret = setup()
    await checker.authenticate(secret)
    await asyncio.sleep(TTL * 0.6)
    table.gate.clear()
    await checker.authenticate(secret)
    await settle()
    checker.forget_keys()  # a revocation on this instance
    table.gate.set()
    await settle()
    lookups = table.lookups
    await checker.authenticate(secret)
    assert table.lookups == lookups + 1


async def test_closing_waits_for_a_background_read() -> None:
    checker, table, secret = setup()
    await checker.authenticate(secret)
    await asyncio.sleep(TTL * 0.6)
    table.gate.clear()
    await checker.authenticate(secret)
    await settle()
    asyncio.get_running_loop().call_later(0.05, table.gate.set)
    await checker.aclose()
    # The read ended (and renewed the entry) before aclose returned: the store may close now.
    assert table.gate.is_set()
    assert table.lookups == 2
