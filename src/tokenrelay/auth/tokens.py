"""JWT bearer tokens, checked with PyJWT.

Each configured key is pinned to the one algorithm it is for: the shared secret to HS256, an
RSA public key to RS256, a P-256 key to ES256 (and a JWKS entry to its own). A token names its
algorithm, but only a key pinned to that algorithm ever checks it, so ``alg: none`` finds no
key, and the classic confusion (an HS256 token "signed" with the public RSA key as an HMAC
secret) finds only the shared secret, or nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tokenrelay import errors
from tokenrelay.config import AuthSettings, ConfigError

ASYMMETRIC = ("RS256", "ES256")
MAX_SUBJECT = 200
# JWT subjects live in a namespace of their own: a token whose ``sub`` is "admin" must not be
# the key owner "admin" (the first-run key's user), nor see that user's conversations.
JWT_USER_PREFIX = "jwt:"


@dataclass(frozen=True, slots=True)
class _Key:
    algorithm: str
    key: Any
    kid: str | None = None


@dataclass(frozen=True, slots=True)
class Claims:
    subject: str
    scopes: frozenset[str]
    expires: float
    """``exp``: seconds since the epoch."""


class JWTVerifier:
    def __init__(self, settings: AuthSettings) -> None:
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.leeway = settings.jwt_leeway
        self._keys: list[_Key] = []
        if settings.jwt_secret is not None:
            self._keys.append(_Key("HS256", settings.jwt_secret.get_secret_value().encode()))
        if settings.jwt_public_key_file is not None:
            self._keys.append(_public_key(settings.jwt_public_key_file))
        if settings.jwt_jwks_file is not None:
            self._keys.extend(_jwks(settings.jwt_jwks_file))

    def verify(self, token: str) -> Claims:
        """The token's claims, or :class:`~tokenrelay.errors.Unauthorized` (never saying why)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refused() from None
        algorithm, kid = header.get("alg"), header.get("kid")
        candidates = [
            key
            for key in self._keys
            if key.algorithm == algorithm and (key.kid is None or kid is None or key.kid == kid)
        ]
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[key.algorithm],
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway,
                    options={"require": ["exp", "iss", "aud", "sub"]},
                )
            except jwt.PyJWTError:
                continue
            return _claims(claims)
        raise _refused()


def _refused() -> errors.Unauthorized:
    return errors.Unauthorized("a valid API key or bearer token is required")


def _claims(claims: dict[str, Any]) -> Claims:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT - len(JWT_USER_PREFIX):
        raise _refused()
    raw = claims.get("scope", claims.get("scp", ""))
    granted = set(raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else [])
    scopes = {"chat"} | ({"admin"} & {str(scope) for scope in granted})
    return Claims(subject=subject, scopes=frozenset(scopes), expires=float(claims["exp"]))


def _public_key(path: Path) -> _Key:
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"auth.jwt_public_key_file {path}: not a PEM public key ({exc})") from exc
    if isinstance(key, rsa.RSAPublicKey):
        return _Key("RS256", key)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return _Key("ES256", key)
    raise ConfigError(f"auth.jwt_public_key_file {path}: use an RSA or a P-256 (ES256) key")


def _jwks(path: Path) -> list[_Key]:
    try:
        document = json.loads(path.read_text())
        found = jwt.PyJWKSet.from_dict(document)
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        raise ConfigError(f"auth.jwt_jwks_file {path}: not a JWKS document ({exc})") from exc
    keys = [
        _Key(jwk.algorithm_name, jwk.key, jwk.key_id)
        for jwk in found.keys
        if jwk.algorithm_name in ASYMMETRIC and jwk.public_key_use in (None, "sig")
    ]
    if not keys:
        raise ConfigError(f"auth.jwt_jwks_file {path}: no RS256 or ES256 signing key in it")
    return keys
