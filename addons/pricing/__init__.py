"""Token-row pricing: genai-prices (bundled data, works offline) plus local overrides.

rates.py      the cost formula of one model's rates (pure);
overrides.py  the override file (`--aibridge-prices-file`, default the packaged addons/prices.yaml);
pricer.py     where a model's rates come from (overrides, then genai-prices, cached) and the price of a
              token usage record, which the writer, governance, metrics and OTel are given;
queries.py    what the database says: models without a price, and repricing after an override is added.
"""
