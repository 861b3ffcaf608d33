"""Token-row pricing: genai-prices (bundled data, works offline) plus local overrides.

The writer thread calls `Pricer.cost` once per token row, so the expensive part
(model lookup, ~200 µs inside genai-prices) is resolved once per
(provider, model, service tier) into plain float rates and cached; a row then
costs a few multiplications.

Token semantics. We record `input_tokens` EXCLUDING cache reads and writes for
every provider (DESIGN §6). genai-prices' `Usage.input_tokens` is the TOTAL
prompt size and treats `cache_read_tokens` / `cache_write_tokens` as parts of
it, priced at their own rate (or at the input rate when a model has no cache
price). We therefore rebuild the total and apply the same decomposition:

    total_input = input + cache_read + cache_write
    cost = (total_input - priced cache parts) * input_rate
         + cache_read * cache_read_rate + cache_write * cache_write_rate (+ 1h/5m split)
         + output * output_rate

Tiered prices (e.g. Claude Sonnet 4.5 above 200k prompt tokens) switch every
rate once `total_input` crosses the threshold, as genai-prices does. Reasoning
/ thinking tokens are already inside `output_tokens`; the metadata counters
are informational and never charged again.

Overrides (YAML, default the packaged `addons/prices.yaml`, which
`config/prices.yaml` links to; `--aibridge-prices-file` picks another) win over genai-prices; an
unknown model costs None, never 0, and shows up in `missing_prices`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import orjson
import yaml
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import ModelPrice, TieredPrices

from addons.settings.config import DEFAULT_PRICES_FILE
from addons.store import rollup

if TYPE_CHECKING:
    from addons.flow.records import TokenUsageRecord

__all__ = [
    "DEFAULT_OVERRIDES_PATH",
    "PriceOverride",
    "Pricer",
    "Rates",
    "load_overrides",
    "missing_prices",
    "reprice",
]

DEFAULT_OVERRIDES_PATH = DEFAULT_PRICES_FILE

_PER_MTOK = 1_000_000
_CACHE_MAX = 4096  # resolved (provider, model, tier) entries kept
_PER_K = 1_000

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


# --------------------------------------------------------------------------- rates


@dataclass(frozen=True, slots=True)
class _Rate:
    """One USD price per `per` units, with genai-prices' "cliff" tiers on total input."""

    base: float
    tiers: tuple[tuple[int, float], ...] = ()  # (start, price), ascending

    def at(self, total_input: int) -> float:
        for start, price in reversed(self.tiers):
            if total_input > start:
                return price
        return self.base


def _rate(value: Decimal | TieredPrices | float | None) -> _Rate | None:
    if value is None:
        return None
    if isinstance(value, TieredPrices):
        return _Rate(float(value.base), tuple((t.start, float(t.price)) for t in value.tiers))
    return _Rate(float(value))


@dataclass(frozen=True, slots=True)
class Rates:
    """Resolved prices for one model, USD per million tokens (searches/requests per 1000)."""

    source: str  # "override:<pattern>" or "genai-prices:<provider>/<model id>"
    input: _Rate
    output: _Rate | None = None
    cache_read: _Rate | None = None
    cache_write: _Rate | None = None
    cache_write_5m: _Rate | None = None
    cache_write_1h: _Rate | None = None
    web_searches: _Rate | None = None  # per 1000 searches
    requests: _Rate | None = None  # per 1000 requests

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read: int,
        cache_write: int,
        *,
        cache_write_1h: int = 0,
        cache_write_5m: int = 0,
        web_searches: int = 0,
    ) -> float:
        """Cost in USD; `input_tokens` excludes cache tokens (our recording convention)."""
        total_input = input_tokens + cache_read + cache_write
        # Split of cache writes by TTL, clipped so bad metadata cannot go negative.
        w1h = min(cache_write_1h, cache_write) if self.cache_write_1h else 0
        w5m = min(cache_write_5m, cache_write - w1h) if self.cache_write_5m else 0
        w_rest = cache_write - w1h - w5m if self.cache_write else 0
        read = cache_read if self.cache_read else 0
        # Whatever has no specific price stays in the plain input bucket.
        plain_input = total_input - read - w_rest - w1h - w5m

        usd = plain_input * self.input.at(total_input)
        usd += _part(self.cache_read, read, total_input)
        usd += _part(self.cache_write, w_rest, total_input)
        usd += _part(self.cache_write_1h, w1h, total_input)
        usd += _part(self.cache_write_5m, w5m, total_input)
        usd += _part(self.output, output_tokens, total_input)
        usd /= _PER_MTOK
        usd += _part(self.web_searches, web_searches, total_input) / _PER_K
        usd += _part(self.requests, 1, total_input) / _PER_K
        # Rounding hides float noise (0.03975000000000001) without losing any real precision.
        return round(usd, 12)


def _part(rate: _Rate | None, count: int, total_input: int) -> float:
    return rate.at(total_input) * count if rate is not None and count else 0.0


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


# --------------------------------------------------------------------------- overrides


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """One entry of the override file; prices in USD per million tokens."""

    provider: str  # instance type (anthropic | openai | copilot) or "*"
    model: str  # exact name or glob, case-insensitive
    input: float
    output: float
    cache_read: float | None = None  # None: charged at the input price
    cache_write: float | None = None  # None: charged at the input price
    cache_write_1h: float | None = None  # None: charged at cache_write

    @property
    def is_glob(self) -> bool:
        return any(ch in self.model for ch in "*?[")

    def matches(self, provider: str, model: str) -> bool:
        if self.provider not in ("*", provider.lower()):
            return False
        pattern = self.model.lower()
        return fnmatch.fnmatchcase(model.lower(), pattern) if self.is_glob else model.lower() == pattern

    def rates(self) -> Rates:
        def opt(v: float | None) -> _Rate | None:
            return None if v is None else _Rate(v)

        return Rates(
            source=f"override:{self.provider}/{self.model}",
            input=_Rate(self.input),
            output=_Rate(self.output),
            cache_read=opt(self.cache_read),
            cache_write=opt(self.cache_write),
            cache_write_1h=opt(self.cache_write_1h),
        )


_OVERRIDE_PRICE_KEYS = ("input", "output", "cache_read", "cache_write", "cache_write_1h")


def load_overrides(path: Path) -> list[PriceOverride]:
    """Parse an override file. Raises ValueError naming the file and entry on bad input."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ValueError(f"cannot read price overrides {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"price overrides {path}: invalid YAML: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise ValueError(f"price overrides {path}: expected a mapping with key 'overrides'")
    entries = doc.get("overrides") or []
    if not isinstance(entries, list):
        raise ValueError(f"price overrides {path}: 'overrides' must be a list")
    return [_parse_override(path, n, e) for n, e in enumerate(entries)]


def _parse_override(path: Path, index: int, entry: Any) -> PriceOverride:
    where = f"price overrides {path}: entry {index}"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a mapping")
    unknown = set(entry) - {"provider", "model", *_OVERRIDE_PRICE_KEYS, "note"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    model = entry.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError(f"{where}: 'model' must be a non-empty string")
    provider = str(entry.get("provider", "*")).lower()
    prices: dict[str, float | None] = {}
    for key in _OVERRIDE_PRICE_KEYS:
        value = entry.get(key)
        if value is None:
            prices[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{where} ({model}): '{key}' must be a non-negative number (USD per 1M tokens)")
        prices[key] = float(value)
    if prices["input"] is None or prices["output"] is None:
        raise ValueError(f"{where} ({model}): 'input' and 'output' prices are required")
    return PriceOverride(provider=provider, model=model, **prices)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pricer


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


def usage_price(pricer: Pricer) -> Callable[[TokenUsageRecord], float | None]:
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


# --------------------------------------------------------------------------- queries


def missing_prices(conn: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Models seen in token rows whose cost is NULL, most tokens first.

    Each dict: provider (type), model, instances (list of provider_name), requests
    (interceptions), tokens (all kinds), first_seen / last_seen (ISO 8601, UTC).
    """
    rows = (
        conn.cursor()
        .execute(
            """
        SELECT i.provider,
               i.model,
               list(DISTINCT i.provider_name ORDER BY i.provider_name) AS instances,
               count(DISTINCT i.id) AS requests,
               sum(t.input_tokens + t.output_tokens + t.cache_read_input_tokens
                   + t.cache_write_input_tokens)::BIGINT AS tokens,
               timezone('UTC', min(t.created_at)) AS first_seen,
               timezone('UTC', max(t.created_at)) AS last_seen
        FROM aibridge_token_usages t
        JOIN aibridge_interceptions i ON i.id = t.interception_id
        WHERE t.cost_usd IS NULL
        GROUP BY i.provider, i.model
        ORDER BY tokens DESC, i.provider, i.model
        """
        )
        .fetchall()
    )
    keys = ("provider", "model", "instances", "requests", "tokens", "first_seen", "last_seen")
    out = []
    for row in rows:
        item = dict(zip(keys, row, strict=True))
        for k in ("first_seen", "last_seen"):
            item[k] = item[k].replace(tzinfo=UTC).isoformat()
        out.append(item)
    return out


def reprice(conn: duckdb.DuckDBPyConnection, pricer: Pricer, *, only_missing: bool = True) -> int:
    """Recompute `cost_usd` (by default only where it is NULL); returns rows updated.

    Use after adding an override for a model `missing_prices` listed. Writes, so
    while the gateway runs it must execute on the gateway's writer connection.
    """
    cur = conn.cursor()
    where = "WHERE t.cost_usd IS NULL" if only_missing else ""
    # One transaction: rowids read here must still name the same rows at UPDATE time.
    cur.execute("BEGIN TRANSACTION")
    try:
        updated = _reprice_in_tx(cur, pricer, where, only_missing)
        if updated:
            rollup.invalidate(cur)  # rolled-up costs are stale now; the next report rebuilds them
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    cur.execute("COMMIT")
    return updated


def _reprice_in_tx(cur: duckdb.DuckDBPyConnection, pricer: Pricer, where: str, only_missing: bool) -> int:
    rows = cur.execute(
        f"""
        SELECT t.rowid, i.provider, i.model, t.input_tokens, t.output_tokens,
               t.cache_read_input_tokens, t.cache_write_input_tokens, t.metadata
        FROM aibridge_token_usages t JOIN aibridge_interceptions i ON i.id = t.interception_id
        {where}
        """
    ).fetchall()
    updates = []
    for rid, provider, model, inp, out, cr, cw, meta in rows:
        cost = pricer.cost(provider, model, inp, out, cr, cw, _load_meta(meta))
        if cost is not None or not only_missing:
            updates.append((rid, cost))
    if not updates:
        return 0
    cur.execute("CREATE OR REPLACE TEMP TABLE _aigw_reprice (rid BIGINT, cost DOUBLE)")
    cur.executemany("INSERT INTO _aigw_reprice VALUES (?, ?)", updates)
    cur.execute(
        "UPDATE aibridge_token_usages SET cost_usd = r.cost FROM _aigw_reprice r "
        "WHERE aibridge_token_usages.rowid = r.rid"
    )
    cur.execute("DROP TABLE _aigw_reprice")
    return len(updates)


def _load_meta(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
