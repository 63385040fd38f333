"""Routing: which pools may serve a tier, in the order to try them."""

from __future__ import annotations

from .config import GatewayConfig


class Router:
    def __init__(self, config: GatewayConfig) -> None:
        self._plans = {name: tuple(tier.pools) for name, tier in config.tiers.items()}

    def plan(self, tier: str) -> tuple[str, ...]:
        """Pools for `tier`, primary first; later ones are tried only if earlier ones are down."""
        return self._plans[tier]
