"""The first start: never open to the world, and no setup needed on one's own machine.

On a loopback address with no usable key (and no JWT configured), ``tokenrelay serve``
creates an admin key (valid for ``auth.first_key_lifetime``) and prints a link carrying it
in its fragment, as notebook servers do; the page moves the key into the browser's storage
and out of the address bar. On any other address it
refuses to start until a key exists, saying how to make one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tokenrelay.auth.keys import issue_key
from tokenrelay.auth.tokens import JWTVerifier
from tokenrelay.config import Settings, is_loopback
from tokenrelay.store import Accounts, Store, database_url

FIRST_OWNER = "admin"


class RefuseToServe(Exception):
    """Starting as configured would leave the gateway open; the message says what to do."""


async def first_run_key(settings: Settings) -> str | None:
    """A new admin key when this start needs one (see the module docstring), else None."""
    auth = settings.auth
    if not auth.enabled:
        return None
    if auth.jwt_configured:
        # Read the key files now, so a bad path stops the start with its own message.
        JWTVerifier(auth)
    store = await Store.open(database_url(settings))
    try:
        accounts = Accounts(store)
        if auth.jwt_configured or await accounts.any_usable_key():
            return None
        if not is_loopback(settings.host):
            raise RefuseToServe(
                f"refusing to listen on {settings.host}: no API key exists and no JWT key is "
                "configured, so anyone who can reach it could use it. Create a key first "
                "(tokenrelay keys create --owner you --scope admin), or configure [auth] "
                "jwt_*, or listen on 127.0.0.1, where the first start makes a key for you."
            )
        # It expires, so a link left in a terminal's scrollback stops working; the next
        # start after that makes a new one.
        expires = datetime.now(UTC) + timedelta(seconds=auth.first_key_lifetime)
        _, secret = await issue_key(
            accounts, FIRST_OWNER, ("admin",), name="first run", expires_at=expires
        )
        return secret
    finally:
        await store.close()
