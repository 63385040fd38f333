"""Identity → tier: API keys decide which tiers a caller may claim.

Keys are stored as SHA-256 digests (in the config, or in a file/env var named by it),
so a leaked config does not leak keys. Without keys, anyone may claim any tier; the
gateway still serves but warns that tiers are unauthenticated.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass

import yaml

from .config import ApiKey, AuthConfig
from .errors import GatewayError

log = logging.getLogger("tiergate")


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    tiers: frozenset[str]
    default_tier: str | None



def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyBook:
    """Looks up callers by the digest of their bearer key."""

    def __init__(self, auth: AuthConfig, tiers: Collection[str]) -> None:
        """Raises ValueError for a key naming a tier `tiers` lacks: keys from a file or env var are
        first seen here, so a reload that drops a tier some key still uses fails instead of the
        key's requests."""
        keys = list(auth.keys)
        if auth.keys_file is not None:
            keys += _keys_from_yaml(auth.keys_file.read_text(), str(auth.keys_file))
        if auth.keys_env is not None:
            keys += _keys_from_yaml(os.environ.get(auth.keys_env, "") or "[]", f"${auth.keys_env}")
        for key in keys:
            if unknown := set(key.tiers) - set(tiers):
                raise ValueError(f"API key {key.name!r} names unknown tiers {sorted(unknown)}")
        self._callers = {
            key.sha256: Caller(key.name, frozenset(key.tiers), key.default_tier) for key in keys
        }
        if not self._callers:
            log.warning("no API keys configured: tiers are unauthenticated, any caller may claim any tier")

    @property
    def enabled(self) -> bool:
        return bool(self._callers)

    def identify(self, authorization: str | None) -> Caller | None:
        """The caller behind an Authorization header; None when keys are not in use."""
        if not self._callers:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise GatewayError(
                401, "Unauthorized", "send an API key as 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": "Bearer"},
            )
        caller = self._callers.get(digest(token.strip()))
        if caller is None:
            raise GatewayError(401, "Unauthorized", "unknown API key", {"WWW-Authenticate": "Bearer"})
        return caller


def authorize(caller: Caller | None, tier: str) -> None:
    if caller is not None and tier not in caller.tiers:
        raise GatewayError(
            403, "Forbidden",
            f"this API key may not use tier {tier!r}; allowed: {', '.join(sorted(caller.tiers))}",
        )


def _keys_from_yaml(text: str, source: str) -> list[ApiKey]:
    entries = yaml.safe_load(text) or []
    if not isinstance(entries, list):
        raise ValueError(f"{source}: expected a list of API keys")
    return [ApiKey.model_validate(entry) for entry in entries]
