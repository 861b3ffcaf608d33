"""Where a model's rates come from, and the price of a token usage record.

The writer thread prices every token row, so the expensive part (model lookup,
~200 µs inside genai-prices) is resolved once per (provider, model, service
tier) into plain float rates and cached; a row then costs a few
multiplications. Overrides (addons/pricing/overrides.py) win over genai-prices;
an unknown model costs None, never 0, and shows up in `missing_prices`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import ModelPrice, TieredPrices

from addons.pricing import Price
from addons.pricing.overrides import DEFAULT_OVERRIDES_PATH, PriceOverride, load_overrides
from addons.pricing.rates import Rate, Rates

_CACHE_MAX = 4096  # resolved (provider, model, tier) entries kept

# Metadata keys for the Anthropic 5m/1h cache-write split (addons/wire/anthropic.py
# writes cache_ephemeral_*_input; the others are accepted for hand-written or
# older rows) and for server-side web searches. Checked in order; first int wins.
_CACHE_1H_KEYS = ("cache_ephemeral_1h_input", "cache_write_1h_tokens", "ephemeral_1h_input_tokens")
_CACHE_5M_KEYS = ("cache_ephemeral_5m_input", "cache_write_5m_tokens", "ephemeral_5m_input_tokens")
_WEB_SEARCH_KEYS = ("web_search_requests", "web_searches")

# Service tiers that mean "standard price" (no variant lookup needed).
_DEFAULT_TIERS = frozenset({"", "default", "auto", "standard"})

# Bedrock / router style model ids: "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
# "anthropic/claude-sonnet-4-5" -> "claude-sonnet-4-5-20250929".
_VENDOR_PREFIX = re.compile(r"^(?:[a-z]{2,4}\.)?(?:anthropic|openai)[./]")
_BEDROCK_SUFFIX = re.compile(r"-v\d+(?::\d+)?$")


class Pricer:
    """Prices token rows. Thread-compatible: the cache only ever grows with immutable values."""

    def __init__(
        self,
        overrides_path: Path | None = None,
        *,
        overrides: Sequence[PriceOverride] | None = None,
    ) -> None:
        """`overrides_path` defaults to the packaged prices.yaml (skipped if that default is absent).

        Passing `overrides` (even an empty list) uses exactly those and reads no file;
        tests and tools that want pure genai-prices behaviour pass `overrides=[]`.
        """
        if overrides is not None:
            self._overrides = list(overrides)
        elif overrides_path is not None:
            self._overrides = load_overrides(overrides_path)
        elif DEFAULT_OVERRIDES_PATH.is_file():
            self._overrides = load_overrides(DEFAULT_OVERRIDES_PATH)
        else:
            self._overrides = []
        # Exact names beat globs; among globs the first in file order wins.
        self._overrides.sort(key=lambda o: o.is_glob)
        self._cache: dict[tuple[str, str, str], Rates | None] = {}

    @property
    def overrides(self) -> tuple[PriceOverride, ...]:
        return tuple(self._overrides)

    def rates(self, provider: str, model: str | None, service_tier: str | None = None) -> Rates | None:
        """Resolved rates for a model (cached); None when the model has no known price."""
        if not model:
            return None
        tier = (service_tier or "").lower()
        tier = "" if tier in _DEFAULT_TIERS else tier
        key = (provider.lower(), model, tier)
        try:
            return self._cache[key]
        except KeyError:
            pass
        rates = self._resolve(key[0], model, tier)
        if len(self._cache) >= _CACHE_MAX:
            # Model names come from clients; never let junk names grow memory without bound.
            self._cache.clear()
        self._cache[key] = rates
        return rates

    def cost(
        self,
        provider: str,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        cache_read: int,
        cache_write: int,
        metadata: Mapping[str, Any] | None,
    ) -> float | None:
        """USD cost of one token row, or None when the model's price is unknown.

        `provider` is the instance TYPE (anthropic | openai | copilot); `input_tokens`
        excludes cache reads/writes. `metadata` may carry the 5m/1h cache-write
        split, `web_search_requests` and `service_tier`; reasoning counters in it are
        ignored because reasoning is already part of `output_tokens`.
        """
        meta = metadata or {}
        tier = meta.get("service_tier")
        rates = self.rates(provider, model, tier if isinstance(tier, str) else None)
        if rates is None:
            return None
        return rates.cost(
            max(input_tokens, 0),
            max(output_tokens, 0),
            max(cache_read, 0),
            max(cache_write, 0),
            cache_write_1h=_meta_int(meta, _CACHE_1H_KEYS),
            cache_write_5m=_meta_int(meta, _CACHE_5M_KEYS),
            web_searches=_meta_int(meta, _WEB_SEARCH_KEYS),
        )

    # -- resolution ---------------------------------------------------------

    def _resolve(self, provider: str, model: str, tier: str) -> Rates | None:
        for override in self._overrides:
            if override.matches(provider, model):
                return override.rates()
        ref = normalize_model(model)
        snapshot = get_snapshot()
        now = datetime.now(UTC)
        for provider_id in _candidate_providers(provider, ref):
            try:
                gp_provider, info = snapshot.find_provider_model(ref, None, provider_id, None)
            except LookupError:
                continue
            context = {"service_tier": tier} if tier else None
            rates = _rates_from_model_price(info.get_prices(now, context), f"genai-prices:{gp_provider.id}/{info.id}")
            if rates is not None:
                return rates
        return None


def usage_price(pricer: Pricer) -> Price:
    """The price of a token usage record (the writer's `cost_usd`, governance's spend)."""
    return lambda usage: pricer.cost(
        usage.provider, usage.model, usage.input_tokens, usage.output_tokens,
        usage.cache_read_input_tokens, usage.cache_write_input_tokens, usage.metadata)


def normalize_model(model: str) -> str:
    """Strip Bedrock/router decorations so genai-prices' name matching applies."""
    ref = model.strip().lower()
    ref = _VENDOR_PREFIX.sub("", ref)
    if ref.startswith("claude"):
        ref = _BEDROCK_SUFFIX.sub("", ref)
    return ref


def _rate(value: Decimal | TieredPrices | float | None) -> Rate | None:
    if value is None:
        return None
    if isinstance(value, TieredPrices):
        return Rate(float(value.base), tuple((t.start, float(t.price)) for t in value.tiers))
    return Rate(float(value))


def _rates_from_model_price(mp: ModelPrice, source: str) -> Rates | None:
    """Our fast-path rates from a genai-prices ModelPrice; None when it has no token price."""
    input_rate = _rate(mp.input_mtok)
    if input_rate is None:
        # e.g. Copilot-internal entries with no published rate: unknown, not free.
        return None
    return Rates(
        source=source,
        input=input_rate,
        output=_rate(mp.output_mtok),
        cache_read=_rate(mp.cache_read_mtok),
        cache_write=_rate(mp.cache_write_mtok),
        cache_write_5m=_rate(mp.cache_write_5m_mtok),
        cache_write_1h=_rate(mp.cache_write_1h_mtok),
        web_searches=_rate(mp.web_searches_kcount),
        requests=_rate(mp.requests_kcount),
    )


def _native_provider(model: str) -> str | None:
    """The vendor that publishes list prices for a model name (used for Copilot)."""
    if "claude" in model:
        return "anthropic"
    if model.startswith(("gpt-", "o1", "o3", "o4", "codex", "chatgpt")):
        return "openai"
    if model.startswith("gemini"):
        return "google"
    if model.startswith("grok"):
        return "x-ai"
    return None


def _candidate_providers(provider: str, model: str) -> list[str | None]:
    """genai-prices provider ids to try, in order; None means "match by model name"."""
    candidates: list[str | None]
    if provider == "copilot":
        # Copilot re-sells vendor models; price them at the vendor's list price,
        # falling back to Copilot's own published table.
        candidates = [_native_provider(model), None, "github-copilot"]
    elif provider in ("anthropic", "openai"):
        candidates = [provider, None]
    else:
        candidates = [provider or None, None]
    return list(dict.fromkeys(candidates))  # de-duplicated, order kept


def _meta_int(meta: Mapping[str, Any], keys: Iterable[str]) -> int:
    for key in keys:
        value = meta.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return max(value, 0)
    nested = meta.get("cache_creation")
    if isinstance(nested, Mapping):
        for key in keys:
            value = nested.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return max(value, 0)
    return 0
