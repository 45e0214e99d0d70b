"""The store's background reads on its own connection (store.direct) give back what SQLAlchemy
reads: the same record, its times as aware UTC datetimes, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tokenrelay.auth import keys
from tokenrelay.store.accounts import Accounts
from tokenrelay.store.engine import create_engine
from tokenrelay.store.models import utcnow
from tokenrelay.store.repository import Store


@pytest.mark.parametrize("direct", [True, False], ids=["direct-connection", "sqlalchemy"])
async def test_a_key_read_again_in_the_background_is_the_key_a_request_reads(
    database_url: str, direct: bool
) -> None:
    store = Store(create_engine(database_url), direct=direct)
    try:
        accounts = Accounts(store)
        expires = utcnow() + timedelta(days=3)
        limits = {"requests_per_minute": 7, "tokens_per_day": 5_000_000_000}
        issued, secret = await keys.issue_key(
            accounts, "ada", ("chat", "admin"), name="ci", expires_at=expires, limits=limits
        )
        digest = keys.hash_key(secret)

        by_request = await accounts.key_by_hash(digest)
        in_background = await accounts.key_by_hash(digest, background=True)
        assert by_request is not None and in_background == by_request
        assert in_background.id == issued.id and in_background.owner == "ada"
        assert in_background.scopes == ("admin", "chat")
        assert in_background.expires_at == expires
        assert in_background.created_at.utcoffset() == timedelta(0)
        assert in_background.limits["tokens_per_day"] == 5_000_000_000
        assert in_background.limits["concurrent_streams"] is None
        assert in_background.usable(utcnow())

        revoked = await accounts.revoke_key(issued.id)
        assert revoked is not None
        again = await accounts.key_by_hash(digest, background=True)
        assert again is not None and again.revoked_at == revoked.revoked_at
        assert not again.usable(utcnow())
        assert await accounts.key_by_hash("0" * 64, background=True) is None
    finally:
        await store.close()
