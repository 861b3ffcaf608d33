"""What the CLI prints: costs, JSON text, warnings about misspelled variables, duration hints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from addons import cli
from addons.cli import common, data, query
from addons.settings import config, loader, sources
from addons.settings.durations import parse_duration
from addons.settings.values import ConfigError


@pytest.mark.parametrize(("raw", "shown"), [
    (0.0010674999999999999, 0.0010675),
    (12345.678912345, 12345.678912),
    (0.1 + 0.2, 0.3),
    (8e-07, 8e-07),
    (0.0, 0.0),
])
def test_costs_are_rounded(raw: float, shown: float) -> None:
    assert common.round_cost(raw) == shown


def test_json_output_is_readable_and_rounds_only_costs() -> None:
    text = common.dump_json({"prompt": "wait…", "cost_usd": 0.0010674999999999999, "ratio": 0.1 + 0.2,
                          "tokens": [{"total_cost": 1 / 3}]}, indent=None)
    assert text == ('{"prompt": "wait…", "cost_usd": 0.0010675, "ratio": 0.30000000000000004, '
                    '"tokens": [{"total_cost": 0.333333}]}')
    assert json.loads(query.format_rows(["model", "cost_usd"], [["m…", 1 / 3]], "json")) == [
        {"model": "m…", "cost_usd": 0.333333}]
    assert "m…" in query.format_rows(["model"], [["m…"]], "json")


def test_unknown_variables_name_the_closest_known_one() -> None:
    warnings = sources.unknown_variables({
        "CODER_AIBRIDGE_ANTROPIC_KEY": "x", "CODER_AIBRIDGE_LISTEN": "127.0.0.1:1", "CODER_AIBRIDGE_ZZZ": "1",
        "CODER_AIBRIDGE_PROVIDER_0_TYPE": "openai", "CODER_AIBRIDGE_HOME": "/x", "HOME": "/root",
    })
    assert warnings == (
        "CODER_AIBRIDGE_ANTROPIC_KEY: unknown variable, ignored (did you mean CODER_AIBRIDGE_ANTHROPIC_KEY?)",
        "CODER_AIBRIDGE_ZZZ: unknown variable, ignored (see aigw serve --help for the known names)",
    )
    assert loader.load(None, {"CODER_AIBRIDGE_RETENTON": "1d"}).unknown_variables == (
        "CODER_AIBRIDGE_RETENTON: unknown variable, ignored (did you mean CODER_AIBRIDGE_RETENTION?)",)


def test_duration_errors_say_what_zero_means_only_when_it_means_something() -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_duration("90days", "--expires", "never expires")
    assert str(excinfo.value) == (
        "--expires: invalid duration '90days' (use e.g. 90d, 720h, 30m, 45s or 1h30m; 0 never expires)")
    with pytest.raises(ConfigError) as excinfo:
        parse_duration("soon", "aigw_shutdown_grace")
    assert str(excinfo.value) == "aigw_shutdown_grace: invalid duration 'soon' (use e.g. 90d, 720h, 30m, 45s or 1h30m)"
    with pytest.raises(ConfigError, match="0 keeps forever"):
        loader.load(None, {"CODER_AIBRIDGE_RETENTION": "forever"})


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from addons import __version__

    with pytest.raises(SystemExit) as excinfo:
        cli.main(["--version"])
    assert excinfo.value.code == 0 and capsys.readouterr().out == f"aigw {__version__}\n"


@pytest.mark.parametrize(("words", "expected"), [
    (["aigw", "inter"], ["interceptions"]),
    (["aigw", "keys", ""], ["create", "list", "revoke"]),
    (["aigw", "keys", "create", "--user", "al", "--exp"], ["--expires"]),
    (["aigw", "serve", "--aibridge-ho"], ["--aibridge-home"]),
])
def test_bash_completion(tmp_path: Path, words: list[str], expected: list[str]) -> None:
    import shutil
    import subprocess

    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    script = tmp_path / "aigw.bash"
    script.write_text(cli.bash_completion(cli.build_parser()))
    quoted = " ".join(f"'{w}'" for w in words)
    result = subprocess.run(["bash", "-c", f'source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; '
                             '_aigw; printf "%s\\n" "${COMPREPLY[@]}"'], capture_output=True, text=True, timeout=30)
    assert set(expected) <= set(result.stdout.split()), result.stdout + result.stderr
    assert all(w.startswith(words[-1]) for w in result.stdout.split())


def test_prices_hint_names_the_file_to_edit(tmp_path: Path) -> None:
    row = {"provider": "openai", "model": "acme-9"}
    default = data.price_hint(loader.load(None, {}), row)
    assert default == (
        "To price a model, add an entry such as `- {provider: openai, model: acme-9, input: 3.00, output: 15.00}` "
        f"(USD per 1M tokens) to config/prices.yaml (in a checkout; it is {config.DEFAULT_PRICES_FILE}), or to your "
        "own copy named by --aibridge-prices-file FILE or CODER_AIBRIDGE_PRICES_FILE, then restart the gateway.")
    own = tmp_path / "p.yaml"
    own.write_text("overrides: []\n")
    settings = loader.load(None, {"CODER_AIBRIDGE_PRICES_FILE": str(own)})
    assert f" to {own}, then restart" in data.price_hint(settings, row)
