"""Every configuration example of Coder's setup page starts as written.

`../shared/fixtures/seed-config/` holds each example exactly as the page gives it (`*.env`
environment files, `*.yaml` for `--config`, `*.txt` flags one per line) and a README whose table
names the routes the page says each creates. For every file: `aigw config check` passes, `aigw
serve` becomes ready, and every listed route — plus the intercepted routes of every instance the
configuration resolves to — answers 401 without a key (so the route exists: an unknown one is 404).
Files added to the folder later are picked up without changing this test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from addons.settings.instances import DEFAULT_BEDROCK_MODEL, DEFAULT_BEDROCK_SMALL_FAST_MODEL
from tests.gateway_process import REPO, Gateway, aigw, clean_env

SEED = REPO.parent / "shared" / "fixtures" / "seed-config"
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not SEED.is_dir(), reason=f"configuration examples not found at {SEED}"),
]

EXAMPLES = sorted(p for p in SEED.glob("*") if p.suffix in (".env", ".yaml", ".yml", ".txt")) if SEED.is_dir() else []
PREFIX = "/api/v2/aibridge/"
DEFAULT_MARK = " (Coder's default)"
# The recorded routes of each instance type (README, "Pointing clients at the gateway").
INTERCEPTED = {
    "anthropic": ("/v1/messages",),
    "openai": ("/v1/chat/completions", "/v1/responses"),
    "copilot": ("/chat/completions", "/responses", "/v1/messages"),
}


def listed_routes() -> dict[str, list[str]]:
    """File name -> the backticked routes in its row of the README's table (`—`: none)."""
    routes: dict[str, list[str]] = {}
    for line in (SEED / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.search(r"\.(env|ya?ml|txt)\b", cells[0]):
            continue
        for name in re.split(r"[,\s]+", cells[0]):
            if name:
                routes[name] = re.findall(r"`([^`]+)`", cells[-1])
    return routes


def how_to_run(example: Path) -> tuple[dict[str, str], list[str]]:
    """The example as the environment and command-line arguments it gives `aigw`."""
    lines = [ln.strip() for ln in example.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if example.suffix == ".env":
        return dict(ln.removeprefix("export ").split("=", 1) for ln in lines), []
    if example.suffix in (".yaml", ".yml"):
        return {}, ["--config", str(example)]
    return {}, lines


def resolved_instances(output: str) -> dict[str, str]:
    """Instance name -> type, from the JSON lines `aigw config check` prints (secrets masked)."""
    instances = {}
    for line in output.splitlines():
        if line.startswith("{"):
            item = json.loads(line)
            instances[item["name"]] = item["type"]
    return instances


def bedrock_instances(output: str) -> dict[str, dict[str, str]]:
    """Instance name -> its Bedrock settings, for the instances `aigw config check` says use Bedrock."""
    return {item["name"]: item["bedrock"] for line in output.splitlines() if line.startswith("{")
            if (item := json.loads(line))["bedrock"]}


def routes_to_probe(listed: list[str], instances: dict[str, str]) -> list[str]:
    """Each route the README lists (an instance name or a `…` stands for that instance's recorded
    routes), and the recorded routes of every resolved instance."""
    paths = {PREFIX + name + route for name, type_ in instances.items() for route in INTERCEPTED[type_]}
    for entry in listed:
        target = entry.removeprefix(PREFIX)
        name, _, rest = target.partition("/")
        assert name in instances, f"the page lists instance {name!r}, the configuration has {sorted(instances)}"
        if not rest or rest.endswith("…"):
            paths.update(PREFIX + name + route for route in INTERCEPTED[instances[name]])
        else:
            paths.add(PREFIX + target)
    return sorted(paths)


def test_the_examples_are_there() -> None:
    assert EXAMPLES, f"no configuration examples in {SEED}"
    listed = listed_routes()
    assert listed, "the README's table lists no examples"
    missing = sorted(set(listed) - {p.name for p in EXAMPLES})
    assert not missing, f"the README names examples that are not in the folder: {missing}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_starts_as_written(example: Path, tmp_path: Path) -> None:
    variables, args = how_to_run(example)
    env = clean_env(**variables)
    check = aigw(["config", "check", *args], env, tmp_path)
    instances = resolved_instances(check.stdout)
    assert instances, f"{example.name}: config check resolved no instance:\n{check.stdout}"
    assert "warning" not in check.stderr.lower(), f"{example.name} warns as written:\n{check.stderr}"
    for name, bedrock in bedrock_instances(check.stdout).items():
        # The page's examples name no model: the effective ones are shown, Coder's defaults marked.
        expected = (f"{name}: Bedrock model {bedrock['model']}"
                    f"{DEFAULT_MARK if bedrock['model'] == DEFAULT_BEDROCK_MODEL else ''}, small-fast model "
                    f"{bedrock['small_fast_model']}"
                    f"{DEFAULT_MARK if bedrock['small_fast_model'] == DEFAULT_BEDROCK_SMALL_FAST_MODEL else ''}")
        assert expected in check.stdout.splitlines(), check.stdout

    paths = routes_to_probe(listed_routes().get(example.name, []), instances)
    gateway = Gateway(tmp_path, env, args).start()
    try:
        with httpx.Client(base_url=gateway.url, trust_env=False, timeout=10) as client:
            for path in paths:
                response = client.post(path, json={"model": "m", "messages": []})
                assert response.status_code == 401, f"{example.name}: POST {path} -> {response.status_code} " \
                                                     f"{response.text}"
    finally:
        gateway.stop()
    assert gateway.proc is not None and gateway.proc.returncode == 0, gateway.output()
