"""The cost of one token row from one model's resolved rates.

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
"""

from __future__ import annotations

from dataclasses import dataclass

_PER_MTOK = 1_000_000
_PER_K = 1_000


@dataclass(frozen=True, slots=True)
class Rate:
    """One USD price per `per` units, with genai-prices' "cliff" tiers on total input."""

    base: float
    tiers: tuple[tuple[int, float], ...] = ()  # (start, price), ascending

    def at(self, total_input: int) -> float:
        for start, price in reversed(self.tiers):
            if total_input > start:
                return price
        return self.base


@dataclass(frozen=True, slots=True)
class Rates:
    """Resolved prices for one model, USD per million tokens (searches/requests per 1000)."""

    source: str  # "override:<pattern>" or "genai-prices:<provider>/<model id>"
    input: Rate
    output: Rate | None = None
    cache_read: Rate | None = None
    cache_write: Rate | None = None
    cache_write_5m: Rate | None = None
    cache_write_1h: Rate | None = None
    web_searches: Rate | None = None  # per 1000 searches
    requests: Rate | None = None  # per 1000 requests

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


def _part(rate: Rate | None, count: int, total_input: int) -> float:
    return rate.at(total_input) * count if rate is not None and count else 0.0
