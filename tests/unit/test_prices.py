"""Pricing of token rows: genai-prices semantics, cache/reasoning rules, overrides."""

from __future__ import annotations

import random
from pathlib import Path

import duckdb
import pytest
from genai_prices import Usage, calc_price

from addons.pricing import pricer as prices_mod
from addons.pricing.overrides import DEFAULT_OVERRIDES_PATH, PriceOverride, load_overrides
from addons.pricing.pricer import Pricer
from addons.pricing.queries import missing_prices, reprice
from tests.seed import UNKNOWN_MODEL, seed

# Published list prices in genai-prices 0.2.3, USD per million tokens:
#   claude-sonnet-4-5: input 3, output 15, cache read 0.30, cache write 3.75, 1h write 6;
#                      every rate doubles-ish (6 / 22.5 / 0.6 / 7.5 / 12) above 200k prompt tokens.
#   gpt-4.1:           input 2, output 8, cache read 0.50, no cache-write price.


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer(overrides=[])


# ------------------------------------------------------------------ anthropic


def test_anthropic_cache_read_and_write(pricer: Pricer) -> None:
    # 1000*3 + 20000*0.3 + 5000*3.75 + 800*15 = 39_750 micro-dollars
    cost = pricer.cost("anthropic", "claude-sonnet-4-5", 1000, 800, 20_000, 5_000, {})
    assert cost == pytest.approx(0.03975, abs=1e-12)


def test_anthropic_dated_model_id(pricer: Pricer) -> None:
    cost = pricer.cost("anthropic", "claude-sonnet-4-5-20250929", 1000, 800, 20_000, 5_000, {})
    assert cost == pytest.approx(0.03975, abs=1e-12)


def test_anthropic_one_hour_cache_writes_priced_separately(pricer: Pricer) -> None:
    # 3000 of the writes at 3.75, 2000 at the 1h rate 6: 3000 + 6000 + 11250 + 12000 + 12000
    meta = {"cache_ephemeral_1h_input": 2000, "cache_ephemeral_5m_input": 3000}
    cost = pricer.cost("anthropic", "claude-sonnet-4-5", 1000, 800, 20_000, 5_000, meta)
    assert cost == pytest.approx(0.04425, abs=1e-12)


def test_thinking_tokens_are_not_charged_twice(pricer: Pricer) -> None:
    meta = {"thinking_tokens": 500}
    cost = pricer.cost("anthropic", "claude-sonnet-4-5", 1000, 800, 20_000, 5_000, meta)
    assert cost == pytest.approx(0.03975, abs=1e-12)


def test_long_context_tier_uses_total_prompt_size(pricer: Pricer) -> None:
    # input 150k alone is under 200k, but with 60k cache reads the prompt is 210k:
    # 150000*6 + 60000*0.6 + 1000*22.5 = 958_500 micro-dollars
    cost = pricer.cost("anthropic", "claude-sonnet-4-5", 150_000, 1_000, 60_000, 0, {})
    assert cost == pytest.approx(0.9585, abs=1e-12)


def test_tier_threshold_is_exclusive(pricer: Pricer) -> None:
    assert pricer.cost("anthropic", "claude-sonnet-4-5", 200_000, 0, 0, 0, {}) == pytest.approx(0.6)
    assert pricer.cost("anthropic", "claude-sonnet-4-5", 200_001, 0, 0, 0, {}) == pytest.approx(200_001 * 6 / 1e6)


def test_bedrock_model_id_is_normalised(pricer: Pricer) -> None:
    model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert pricer.cost("anthropic", model, 1000, 800, 20_000, 5_000, {}) == pytest.approx(0.03975)


def test_web_searches_are_charged_per_thousand(pricer: Pricer) -> None:
    base = pricer.cost("anthropic", "claude-sonnet-4-5", 1000, 800, 0, 0, {})
    with_search = pricer.cost("anthropic", "claude-sonnet-4-5", 1000, 800, 0, 0, {"web_search_requests": 3})
    assert base is not None and with_search is not None
    assert with_search - base == pytest.approx(3 * 10 / 1000)


# ------------------------------------------------------------------ openai


def test_openai_cached_input(pricer: Pricer) -> None:
    # input excludes cached: 1000*2 + 20000*0.5 + 800*8 = 18_400 micro-dollars
    cost = pricer.cost("openai", "gpt-4.1", 1000, 800, 20_000, 0, {})
    assert cost == pytest.approx(0.0184, abs=1e-12)


def test_openai_reasoning_tokens_inside_output(pricer: Pricer) -> None:
    for meta in ({"reasoning_tokens": 300}, {"output_reasoning": 300}):
        assert pricer.cost("openai", "gpt-4.1", 1000, 800, 20_000, 0, meta) == pytest.approx(0.0184)


def test_cache_write_without_its_own_price_costs_input_rate(pricer: Pricer) -> None:
    # gpt-4.1 has no cache-write price: genai-prices charges those tokens as plain input.
    cost = pricer.cost("openai", "gpt-4.1", 1000, 800, 20_000, 1_000, {})
    assert cost == pytest.approx(0.0184 + 1_000 * 2 / 1e6)


def test_service_tier_variant(pricer: Pricer) -> None:
    # gpt-5 priority: input 2.5, output 20 (standard: 1.25 / 10)
    standard = pricer.cost("openai", "gpt-5", 1_000_000, 0, 0, 0, {"service_tier": "default"})
    priority = pricer.cost("openai", "gpt-5", 1_000_000, 0, 0, 0, {"service_tier": "priority"})
    assert standard == pytest.approx(1.25)
    assert priority == pytest.approx(2.5)


# ------------------------------------------------------------------ copilot / unknown


@pytest.mark.parametrize(
    ("model", "expected"),
    [("claude-sonnet-4.5", 0.03975), ("gpt-4.1", 0.0184 + 5_000 * 2 / 1e6)],
)
def test_copilot_uses_the_vendor_list_price(pricer: Pricer, model: str, expected: float) -> None:
    assert pricer.cost("copilot", model, 1000, 800, 20_000, 5_000, {}) == pytest.approx(expected)


def test_unknown_model_costs_none_not_zero(pricer: Pricer) -> None:
    assert pricer.cost("openai", UNKNOWN_MODEL, 1000, 800, 0, 0, {}) is None
    assert pricer.cost("copilot", "totally-made-up", 1, 1, 0, 0, {}) is None
    assert pricer.cost("anthropic", None, 1, 1, 0, 0, {}) is None


def test_zero_usage_costs_zero(pricer: Pricer) -> None:
    assert pricer.cost("openai", "gpt-4.1", 0, 0, 0, 0, {}) == 0


@pytest.mark.parametrize(
    ("provider", "model", "gp_provider", "writes"),
    [
        ("anthropic", "claude-sonnet-4-5", "anthropic", True),
        ("anthropic", "claude-opus-4-5", "anthropic", True),
        ("anthropic", "claude-haiku-4-5", "anthropic", True),
        ("openai", "gpt-4.1", "openai", False),
        ("openai", "gpt-5-mini", "openai", False),
        ("openai", "o3", "openai", False),
    ],
)
def test_matches_genai_prices_calc_price(
    pricer: Pricer, provider: str, model: str, gp_provider: str, writes: bool
) -> None:
    """Our fast path equals genai-prices' own calculation, once input is converted to its semantics."""
    rng = random.Random(model)
    for _ in range(200):
        inp, out = rng.randint(0, 300_000), rng.randint(0, 30_000)
        cr = rng.choice((0, rng.randint(0, 200_000)))
        cw = rng.choice((0, rng.randint(0, 50_000))) if writes else 0
        w1h = rng.randint(0, cw) if cw and rng.random() < 0.4 else 0
        usage = Usage(input_tokens=inp + cr + cw, output_tokens=out, cache_read_tokens=cr, cache_write_tokens=cw)
        meta = {}
        if w1h:
            usage.cache_write_1h_tokens = w1h
            meta["cache_ephemeral_1h_input"] = w1h
        expected = float(calc_price(usage, model, provider_id=gp_provider).total_price)
        assert pricer.cost(provider, model, inp, out, cr, cw, meta) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_rates_are_resolved_once_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = prices_mod.get_snapshot

    def counting():  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return real()

    monkeypatch.setattr(prices_mod, "get_snapshot", counting)
    p = Pricer(overrides=[])
    for n in range(500):
        p.cost("anthropic", "claude-sonnet-4-5", n, n, n, n, {})
        p.cost("openai", UNKNOWN_MODEL, n, n, 0, 0, {})
    assert calls == 2  # one lookup per model, including the miss


# ------------------------------------------------------------------ overrides


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    return path


def test_override_file_wins_over_genai_prices(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
overrides:
  - provider: anthropic
    model: claude-sonnet-4-5*
    input: 2.55
    output: 12.75
    cache_read: 0.255
    cache_write: 3.1875
  - provider: "*"
    model: acme-*
    input: 1
    output: 2
""",
    )
    p = Pricer(path)
    # 1000*2.55 + 800*12.75 + 20000*0.255 + 5000*3.1875 = 33_787.5 micro-dollars
    assert p.cost("anthropic", "claude-sonnet-4-5-20250929", 1000, 800, 20_000, 5_000, {}) == pytest.approx(0.0337875)
    # provider must match: copilot traffic of the same model keeps the list price
    assert p.cost("copilot", "claude-sonnet-4-5", 1000, 800, 20_000, 5_000, {}) == pytest.approx(0.03975)
    # cache tokens without an override price are charged at the override's input price
    assert p.cost("openai", "acme-coder", 1000, 1000, 1000, 1000, {}) == pytest.approx((3000 * 1 + 1000 * 2) / 1e6)
    assert p.rates("openai", "acme-coder").source == "override:*/acme-*"  # type: ignore[union-attr]


def test_exact_override_beats_glob(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
overrides:
  - {model: "gpt-4.1*", input: 9, output: 9}
  - {model: "gpt-4.1", input: 1, output: 1}
""",
    )
    p = Pricer(path)
    assert p.cost("openai", "gpt-4.1", 1_000_000, 0, 0, 0, {}) == pytest.approx(1.0)
    assert p.cost("openai", "gpt-4.1-mini", 1_000_000, 0, 0, 0, {}) == pytest.approx(9.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("overrides: [{model: x, output: 1}]", "'input' and 'output'"),
        ("overrides: [{model: x, input: -1, output: 1}]", "non-negative"),
        ("overrides: [{model: x, input: 1, output: 1, discount: 3}]", "unknown key"),
        ("overrides: [{input: 1, output: 1}]", "'model'"),
        ("overrides: {model: x}", "must be a list"),
        ("overrides: [unclosed", "invalid YAML"),
        ("- just a list", "mapping"),
    ],
)
def test_bad_override_file_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        load_overrides(_write(tmp_path, text))
    assert str(tmp_path) in str(info.value)


def test_missing_override_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read price overrides"):
        Pricer(tmp_path / "nope.yaml")


def test_shipped_override_file() -> None:
    overrides = load_overrides(DEFAULT_OVERRIDES_PATH)
    assert overrides, "config/prices.yaml should ship an active example"
    p = Pricer()  # default path
    assert p.cost("openai", "acme-coder-7b", 1_000_000, 1_000_000, 0, 0, {}) == pytest.approx(0.40 + 1.60)
    # the negotiated-price example is commented out: real models keep list prices
    assert p.cost("anthropic", "claude-sonnet-4-5", 1000, 800, 20_000, 5_000, {}) == pytest.approx(0.03975)


def test_override_objects_can_be_passed_directly() -> None:
    p = Pricer(overrides=[PriceOverride(provider="openai", model=UNKNOWN_MODEL, input=1, output=1)])
    assert p.cost("openai", UNKNOWN_MODEL, 500_000, 500_000, 0, 0, {}) == pytest.approx(1.0)


# ------------------------------------------------------------------ database helpers


def test_missing_prices_lists_unknown_models() -> None:
    conn = duckdb.connect()
    s = seed(conn, days=7)
    missing = missing_prices(conn)
    assert [(m["provider"], m["model"]) for m in missing] == [("openai", UNKNOWN_MODEL)]
    row = missing[0]
    assert row["requests"] == s.unpriced_requests
    assert row["instances"] == ["openai"]
    assert row["tokens"] > 0
    assert row["first_seen"] <= row["last_seen"]


def test_reprice_fills_missing_costs() -> None:
    conn = duckdb.connect()
    s = seed(conn, days=7)
    p = Pricer(overrides=[PriceOverride(provider="openai", model=UNKNOWN_MODEL, input=1, output=2)])
    assert reprice(conn, p) == s.unpriced_rows
    assert missing_prices(conn) == []
    total = conn.execute("SELECT sum(cost_usd) FROM aibridge_token_usages").fetchone()[0]  # type: ignore[index]
    assert total > s.cost_usd
    assert reprice(conn, p) == 0  # nothing left to do
