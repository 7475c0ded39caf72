"""API keys: bearer tokens with scopes, checked by the OTLP receivers and the query API.

Keys are configured in the `labtel_auth` extension by their hash, never the token itself:
`sha256:<hex>` (tokens made by `labtel keys create` carry 256 random bits, so one SHA-256 is
enough) or `pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>` for tokens chosen by people.
Presented tokens are hashed and compared with `hmac.compare_digest`, so the comparison takes
the same time whatever matches.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
import socket
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, get_args

from labtel.sdk.textform import digits

Scope = Literal["ingest", "read", "sql", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
"""`ingest`: send events (OTLP, compatibility writes); `read`: query routes and `/metrics`;
`sql`: `POST /sql`; `admin`: alert management and other admin routes, and every other scope."""

TOKEN_PREFIX = "labtel_"
PBKDF2_PREFIX = "pbkdf2_sha256$"
PBKDF2_ITERATIONS = 600_000
_CACHE_SIZE = 1024


class HashFormatError(ValueError):
    """A configured key hash is not `sha256:<64 hex>` or `pbkdf2_sha256$<n>$<salt>$<hash>`."""


def new_token() -> str:
    """A fresh random token: `labtel_` and 43 URL-safe characters (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_token(token: str, kdf: Literal["sha256", "pbkdf2"] = "sha256", iterations: int = PBKDF2_ITERATIONS) -> str:
    """The text to put in the config's `hash:` for `token`."""
    if kdf == "sha256":
        return f"sha256:{sha256_hex(token)}"
    salt = secrets.token_bytes(16)
    derived = hashlib.pbkdf2_hmac("sha256", token.encode(), salt, iterations)
    return f"{PBKDF2_PREFIX}{iterations}${salt.hex()}${derived.hex()}"


def check_hash(value: str) -> str:
    """`value` if it is a usable key hash; raises HashFormatError naming the expected forms."""
    expected = (
        "expected 'sha256:<64 hex digits>' or 'pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>' (labtel keys hash)"
    )
    if value.startswith("sha256:"):
        digest = value[len("sha256:") :]
        if len(digest) != 64 or not _is_hex(digest):
            raise HashFormatError(f"bad sha256 hash: {expected}")
        return value
    if value.startswith(PBKDF2_PREFIX):
        parts = value[len(PBKDF2_PREFIX) :].split("$")
        if len(parts) != 3 or not digits(parts[0]) or int(parts[0]) < 1000 or not all(_is_hex(p) for p in parts[1:]):
            raise HashFormatError(f"bad pbkdf2_sha256 hash (at least 1000 iterations): {expected}")
        return value
    if value.startswith(TOKEN_PREFIX):
        raise HashFormatError(f"this looks like a token, not its hash: never put tokens in the config; {expected}")
    raise HashFormatError(expected)


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return bool(text)


@dataclass(frozen=True)
class ApiKey:
    """One configured key: its name (shown in logs, never the token), hash and scopes."""

    name: str
    hash: str
    scopes: frozenset[Scope]

    def matches(self, token: str, token_sha256: str) -> bool:
        """Whether `token` is this key's token (constant-time comparison of hashes)."""
        if self.hash.startswith("sha256:"):
            return hmac.compare_digest(self.hash[len("sha256:") :], token_sha256)
        iterations, salt, expected = self.hash[len(PBKDF2_PREFIX) :].split("$")
        derived = hashlib.pbkdf2_hmac("sha256", token.encode(), bytes.fromhex(salt), int(iterations))
        return hmac.compare_digest(derived.hex(), expected)

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or "admin" in self.scopes


class AuthError(Exception):
    """A request is refused: `status` 401 (no or unknown token) or 403 (the key lacks the scope)."""

    def __init__(self, status: Literal[401, 403], message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Authenticator:
    """Checks bearer tokens against the configured keys. Successful and failed checks of
    KDF-hashed keys are remembered (by the token's SHA-256) so a slow KDF runs once per token;
    the servers run uncached KDF checks one at a time off the event loop (`authorize_async`),
    so a flood of made-up tokens cannot stall requests with known ones."""

    def __init__(self, name: str, keys: list[ApiKey]) -> None:
        self.name = name
        self.keys = list(keys)
        self._slow = any(not key.hash.startswith("sha256:") for key in keys)
        self._cache: OrderedDict[str, ApiKey | None] = OrderedDict()
        self._kdf_turn = asyncio.Semaphore(1)

    def identify(self, token: str) -> ApiKey | None:
        """The key whose token this is, or None."""
        digest = sha256_hex(token)
        if self._slow and digest in self._cache:
            self._cache.move_to_end(digest)
            return self._cache[digest]
        found = None
        for key in self.keys:  # no early exit: every key is compared
            if key.matches(token, digest) and found is None:
                found = key
        if self._slow:
            self._cache[digest] = found
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return found

    def authorize(self, authorization: str | None, scope: Scope) -> ApiKey:
        """The key of an `Authorization: Bearer <token>` value if it grants `scope`; else AuthError."""
        return _granted(self.identify(_required_token(authorization)), scope)

    async def authorize_async(self, authorization: str | None, scope: Scope) -> ApiKey:
        """`authorize` for servers: a KDF check not cached yet runs in a thread, one at a time."""
        token = _required_token(authorization)
        if not self._slow or sha256_hex(token) in self._cache:
            return _granted(self.identify(token), scope)
        async with self._kdf_turn:
            key = await asyncio.to_thread(self.identify, token)
        return _granted(key, scope)


def _required_token(authorization: str | None) -> str:
    token = bearer_token(authorization)
    if token is None:
        raise AuthError(401, "an API key is required: send 'Authorization: Bearer <token>'")
    return token


def _granted(key: ApiKey | None, scope: Scope) -> ApiKey:
    if key is None:
        raise AuthError(401, "the API key is not valid: no configured key has this token")
    if not key.allows(scope):
        raise AuthError(403, f"the API key {key.name!r} lacks the {scope!r} scope")
    return key


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization` value `Bearer <token>` (scheme case-insensitive), or None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def is_loopback(host: str) -> bool:
    """Whether listening on `host` is reachable from this machine only (an empty host or
    0.0.0.0 / :: means every interface)."""
    name = host.strip("[]")
    if not name:
        return False
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)
