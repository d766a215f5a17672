"""Scoped throttling whose rates are read per request, with defaults for unset scopes.

DRF's ``ScopedRateThrottle`` copies ``DEFAULT_THROTTLE_RATES`` at import and fails with
ImproperlyConfigured (a 500) for a scope the shop did not list; this one reads the rates
on every request (so ``override_settings`` works) and falls back to ``DEFAULT_THROTTLE_RATES``.
"""

from __future__ import annotations

from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle

from clip_search.api.conf import DEFAULT_THROTTLE_RATES


class ClipScopedRateThrottle(ScopedRateThrottle):
    @property
    def THROTTLE_RATES(self) -> dict[str, str | None]:  # DRF reads this attribute name
        return {**DEFAULT_THROTTLE_RATES, **(api_settings.DEFAULT_THROTTLE_RATES or {})}

    def get_rate(self) -> str | None:
        return self.THROTTLE_RATES.get(self.scope)

    def get_ident(self, request) -> str | None:
        """Without ``NUM_PROXIES`` DRF keys on whatever X-Forwarded-For the client sends, so a
        new made-up address per request would never be throttled. Then: the socket's address
        (a shop behind a proxy sets ``NUM_PROXIES``, and DRF picks the client from the header)."""
        if api_settings.NUM_PROXIES is None:
            return request.META.get("REMOTE_ADDR")
        return super().get_ident(request)
