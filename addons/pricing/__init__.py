"""Token-row pricing: genai-prices (bundled data, works offline) plus local overrides.

rates.py      the cost formula of one model's rates (pure);
overrides.py  the override file (`--aibridge-prices-file`, default the packaged addons/prices.yaml);
pricer.py     where a model's rates come from (overrides, then genai-prices, cached) and the price of a
              token usage record (`usage_price`), which the writer, governance, metrics and OTel are given;
queries.py    what the database says: models without a price, and repricing after an override is added.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from addons.flow.records import TokenUsageRecord

# The price of a token usage record in USD (None: the model's price is unknown); defined here, apart from
# genai-prices, so that those given a price (the writer, the sinks) never load it.
type Price = Callable[[TokenUsageRecord], float | None]
