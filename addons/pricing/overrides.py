"""The price override file: YAML, default the packaged `addons/prices.yaml` (which
`config/prices.yaml` links to); `--aibridge-prices-file` picks another. Overrides win
over genai-prices (addons/pricing/pricer.py)."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from addons.pricing.rates import Rate, Rates
from addons.settings.config import DEFAULT_PRICES_FILE

DEFAULT_OVERRIDES_PATH = DEFAULT_PRICES_FILE


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
        def opt(v: float | None) -> Rate | None:
            return None if v is None else Rate(v)

        return Rates(
            source=f"override:{self.provider}/{self.model}",
            input=Rate(self.input),
            output=Rate(self.output),
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
