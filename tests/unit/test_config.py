"""Configuration: sources, precedence, provider instances, validation messages."""

from __future__ import annotations

import argparse
import ipaddress
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from addons.settings import config, instances, masking, options, sources, yaml_schema
from addons.settings.durations import parse_duration
from addons.settings.loader import load
from addons.settings.values import ConfigError

SECRET = "sk-test-SECRETVALUE-0123456789abcdefghij"
SECRET2 = "sk-test-OTHERSECRET-9876543210zyxwvutsrq"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
URL_PASSWORD = "pw-SECRETPASSWORD"
EXAMPLE_YAML = Path(__file__).resolve().parents[2] / "config" / "aibridge.example.yaml"
P = "CODER_AIBRIDGE_PROVIDER_"


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sources.add_arguments(parser)
    return parser.parse_args(list(argv))


def write_yaml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "aibridge.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def error(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None) -> str:
    """Load and return the ConfigError message, checking it is one line without secrets."""
    with pytest.raises(ConfigError) as excinfo:
        load(args, environ or {})
    message = str(excinfo.value)
    assert "\n" not in message
    for secret in (SECRET, SECRET2, AWS_KEY, AWS_SECRET):
        assert secret not in message
    return message


def names(settings: config.Settings) -> list[str]:
    return [i.name for i in settings.instances]


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    s = load(None, {})
    assert s.enabled is True
    assert s.retention == timedelta(days=60)
    assert s.structured_logging is False
    assert s.log_json is None and s.log_human is None
    assert s.db == s.home.default_db == s.home.path / "data" / "aibridge.duckdb"  # tests/unit/test_home.py
    assert (s.listen_host, s.listen_port) == ("127.0.0.1", 8888)
    assert s.allow_byok is True
    assert s.proxy_allowed_private_cidrs == ()
    assert s.prometheus_enable is False
    assert s.prometheus_address == "127.0.0.1:2112"
    assert s.config_file is None


def test_default_instances_when_nothing_is_configured() -> None:
    s = load(None, {})
    assert names(s) == ["openai", "anthropic"]
    openai, anthropic = s.instances
    assert openai.type == "openai" and openai.keys == () and openai.key is None
    assert openai.base_url == "https://api.openai.com/v1"
    assert anthropic.base_url == "https://api.anthropic.com"
    assert anthropic.bedrock is None and anthropic.dump_dir is None
    assert s.instance("anthropic") is anthropic
    assert s.instance("nope") is None


def test_no_default_instances_once_anything_is_configured() -> None:
    assert names(load(None, {"CODER_AIBRIDGE_OPENAI_KEY": SECRET})) == ["openai"]
    assert names(load(None, {f"{P}0_TYPE": "copilot"})) == ["copilot"]


def test_load_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODER_AIBRIDGE_RETENTION", "7d")
    assert load().retention == timedelta(days=7)


# --------------------------------------------------------------------------- precedence


def test_precedence_for_a_scalar_setting(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "aibridge:\n  retention: 90d\n")
    assert load(flags("--config", str(path)), {}).retention == timedelta(days=90)
    env = {"CODER_AIBRIDGE_RETENTION": "720h"}
    assert load(flags("--config", str(path)), env).retention == timedelta(hours=720)
    args = flags("--config", str(path), "--aibridge-retention", "30m")
    assert load(args, env).retention == timedelta(minutes=30)


def test_precedence_for_legacy_keys(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path, "aibridge:\n  openai_key: yaml-key\n  openai_base_url: http://yaml.example/v1/\n"
    )
    assert load(flags("--config", str(path)), {}).instance("openai").key == "yaml-key"
    env = {"CODER_AIBRIDGE_OPENAI_KEY": SECRET}
    s = load(flags("--config", str(path)), env)
    assert s.instance("openai").key == SECRET
    assert s.instance("openai").base_url == "http://yaml.example/v1"  # not overridden: YAML value kept
    s = load(flags("--config", str(path), f"--aibridge-openai-key={SECRET2}"), env)
    assert s.instance("openai").keys == (SECRET2,)


def test_empty_values_count_as_unset(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "aibridge:\n  retention: 90d\n")
    s = load(flags("--config", str(path), "--aibridge-retention="), {"CODER_AIBRIDGE_RETENTION": ""})
    assert s.retention == timedelta(days=90)


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "aibridge:\n  db: /tmp/x.duckdb\n")
    s = load(None, {"CODER_AIBRIDGE_CONFIG": str(path)})
    assert s.db == Path("/tmp/x.duckdb")
    assert s.config_file == path


def test_config_flag_wins_over_config_env(tmp_path: Path) -> None:
    a = write_yaml(tmp_path, "aibridge:\n  db: a.duckdb\n")
    b = tmp_path / "b.yaml"
    b.write_text("aibridge:\n  db: b.duckdb\n")
    s = load(flags("--config", str(b)), {"CODER_AIBRIDGE_CONFIG": str(a)})
    assert s.db == Path("b.duckdb") and s.config_file == b


def test_every_setting_from_each_source(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """\
        aibridge:
          enabled: false
          structured_logging: yes
          log_json: j.log
          log_human: h.log
          db: y.duckdb
          listen: "[::1]:9000"
          allow_byok: false
          proxy_allowed_private_cidrs: [10.0.0.0/8, "fd00::/8"]
          prometheus_enable: true
          prometheus_address: 0.0.0.0:9100
          retention: 0
        """,
    )
    s = load(flags("--config", str(path)), {})
    assert s.enabled is False and s.structured_logging is True and s.allow_byok is False
    assert (s.log_json, s.log_human, s.db) == ("j.log", "h.log", Path("y.duckdb"))
    assert (s.listen_host, s.listen_port) == ("::1", 9000)
    assert s.proxy_allowed_private_cidrs == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert s.prometheus_enable is True and s.prometheus_address == "0.0.0.0:9100"
    assert s.retention is None

    env = {
        "CODER_AIBRIDGE_ENABLED": "YES",
        "CODER_AIBRIDGE_STRUCTURED_LOGGING": "0",
        "CODER_LOGGING_JSON": "ej.log",
        "CODER_LOGGING_HUMAN": "eh.log",
        "CODER_AIBRIDGE_DB": "e.duckdb",
        "CODER_AIBRIDGE_LISTEN": "0.0.0.0:8080",
        "CODER_AIBRIDGE_ALLOW_BYOK": "True",
        "CODER_AIBRIDGE_PROXY_ALLOWED_PRIVATE_CIDRS": "192.168.0.0/16, 172.16.0.0/12",
        "CODER_PROMETHEUS_ENABLE": "no",
        "CODER_PROMETHEUS_ADDRESS": "localhost:2113",
    }
    s = load(flags("--config", str(path)), env)
    assert s.enabled is True and s.structured_logging is False and s.allow_byok is True
    assert (s.log_json, s.log_human, s.db) == ("ej.log", "eh.log", Path("e.duckdb"))
    assert (s.listen_host, s.listen_port) == ("0.0.0.0", 8080)
    assert [str(n) for n in s.proxy_allowed_private_cidrs] == ["192.168.0.0/16", "172.16.0.0/12"]
    assert s.prometheus_enable is False and s.prometheus_address == "localhost:2113"

    args = flags(
        "--config", str(path),
        "--aibridge-enabled=false",
        "--aibridge-structured-logging",
        "--log-json", "fj.log",
        "--log-human", "fh.log",
        "--aibridge-db", "f.duckdb",
        "--aibridge-listen", ":7000",
        "--aibridge-allow-byok=false",
        "--aibridge-proxy-allowed-private-cidrs", "10.1.2.3",
        "--prometheus-enable",
        "--prometheus-address", "127.0.0.1:9999",
    )  # fmt: skip
    s = load(args, env)
    assert s.enabled is False and s.structured_logging is True and s.allow_byok is False
    assert (s.log_json, s.log_human, s.db) == ("fj.log", "fh.log", Path("f.duckdb"))
    assert (s.listen_host, s.listen_port) == ("", 7000)
    assert [str(n) for n in s.proxy_allowed_private_cidrs] == ["10.1.2.3/32"]
    assert s.prometheus_enable is True and s.prometheus_address == "127.0.0.1:9999"


def test_boolean_flag_forms() -> None:
    assert load(flags("--aibridge-enabled"), {"CODER_AIBRIDGE_ENABLED": "false"}).enabled is True
    assert load(flags("--aibridge-enabled=false"), {}).enabled is False
    assert load(flags("--aibridge-enabled=true"), {"CODER_AIBRIDGE_ENABLED": "0"}).enabled is True
    assert load(flags(), {"CODER_AIBRIDGE_ENABLED": "0"}).enabled is False


def test_all_flags_default_to_none() -> None:
    assert all(v is None for v in vars(flags()).values())


# --------------------------------------------------------------------------- legacy instances


def test_legacy_instances() -> None:
    env = {
        "CODER_AIBRIDGE_OPENAI_KEY": SECRET,
        "CODER_AIBRIDGE_OPENAI_BASE_URL": "https://openai.example/v1/",
        "CODER_AIBRIDGE_ANTHROPIC_KEY": SECRET2,
    }
    s = load(None, env)
    assert names(s) == ["openai", "anthropic"]
    assert all(i.source == "legacy" for i in s.instances)
    assert s.instance("openai").base_url == "https://openai.example/v1"
    assert s.instance("anthropic").keys == (SECRET2,)
    assert s.instance("anthropic").base_url == "https://api.anthropic.com"


def test_legacy_base_url_alone_creates_the_instance() -> None:
    s = load(flags("--aibridge-anthropic-base-url", "http://127.0.0.1:9/"), {})
    assert names(s) == ["anthropic"]
    assert s.instance("anthropic").key is None and s.instance("anthropic").base_url == "http://127.0.0.1:9"


def test_legacy_first_then_indexed_in_index_order() -> None:
    env = {
        f"{P}1_TYPE": "copilot",
        f"{P}0_TYPE": "anthropic",
        f"{P}0_NAME": "claude",
        "CODER_AIBRIDGE_ANTHROPIC_KEY": SECRET,
        "CODER_AIBRIDGE_OPENAI_KEY": SECRET2,
    }
    s = load(None, env)
    assert names(s) == ["openai", "anthropic", "claude", "copilot"]
    assert [i.source for i in s.instances] == ["legacy", "legacy", "indexed", "indexed"]


def test_legacy_bedrock_attaches_to_anthropic() -> None:
    env = {
        "CODER_AIBRIDGE_BEDROCK_REGION": "eu-west-1",
        "CODER_AIBRIDGE_BEDROCK_MODEL": "m",
        "CODER_AIBRIDGE_BEDROCK_SMALL_FAST_MODEL": "s",
    }
    s = load(None, env)
    assert names(s) == ["anthropic"]
    bedrock = s.instance("anthropic").bedrock
    assert bedrock == instances.BedrockSettings("eu-west-1", None, "m", "s", None, None)
    assert bedrock.endpoint == "https://bedrock-runtime.eu-west-1.amazonaws.com"


def test_legacy_bedrock_from_flags_and_yaml(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """\
        aibridge:
          bedrock_region: us-east-1
          bedrock_model: yaml-model
          bedrock_small_fast_model: yaml-small
        """,
    )
    args = flags(
        "--config", str(path),
        "--aibridge-bedrock-base-url", "https://bedrock.internal/",
        "--aibridge-bedrock-access-key", AWS_KEY,
        "--aibridge-bedrock-access-key-secret", AWS_SECRET,
    )  # fmt: skip
    bedrock = load(args, {"CODER_AIBRIDGE_BEDROCK_MODEL": "env-model"}).instance("anthropic").bedrock
    assert bedrock.model == "env-model" and bedrock.small_fast_model == "yaml-small"
    assert bedrock.endpoint == "https://bedrock.internal"  # base URL wins over the region
    assert (bedrock.access_key, bedrock.access_key_secret) == (AWS_KEY, AWS_SECRET)


def test_bedrock_models_default_to_coders_like_its_setup_page_examples(tmp_path: Path) -> None:
    """Coder's setup page omits both models in its examples; its server fills them with these defaults."""
    path = write_yaml(tmp_path, "aibridge:\n  bedrock_region: us-east-1\n  bedrock_small_fast_model: s\n")
    bedrock = load(flags("--config", str(path)), {}).instance("anthropic").bedrock
    assert (bedrock.model, bedrock.small_fast_model) == ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "s")
    env = {"CODER_AIBRIDGE_BEDROCK_REGION": "us-east-1", "CODER_AIBRIDGE_BEDROCK_MODEL": "m"}
    bedrock = load(None, env).instance("anthropic").bedrock
    assert (bedrock.model, bedrock.small_fast_model) == ("m", "global.anthropic.claude-haiku-4-5-20251001-v1:0")
    indexed = {f"{P}0_TYPE": "anthropic", f"{P}0_NAME": "anthropic-bedrock", f"{P}0_BEDROCK_REGION": "us-west-2"}
    bedrock = load(None, indexed).instance("anthropic-bedrock").bedrock
    assert bedrock.model == "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert bedrock.small_fast_model == "global.anthropic.claude-haiku-4-5-20251001-v1:0"
    # The rest of Bedrock's validation is unchanged: a model alone still needs a region or base URL.
    assert error(None, {"CODER_AIBRIDGE_BEDROCK_MODEL": "m"}).startswith("CODER_AIBRIDGE_BEDROCK_REGION: Bedrock needs")


# --------------------------------------------------------------------------- indexed instances


def test_indexed_instance_fields(tmp_path: Path) -> None:
    env = {
        f"{P}0_TYPE": "OpenAI",
        f"{P}0_NAME": "azure-east",
        f"{P}0_KEY": SECRET,
        f"{P}0_KEYS": f"{SECRET2}, {SECRET} ,",
        f"{P}0_BASE_URL": "https://azure.example/openai/v1/",
        f"{P}0_DUMP_DIR": str(tmp_path / "dumps"),
    }
    (inst,) = load(None, env).instances
    assert (inst.type, inst.name, inst.source) == ("openai", "azure-east", "indexed")
    assert inst.keys == (SECRET, SECRET2) and inst.key == SECRET
    assert inst.base_url == "https://azure.example/openai/v1"
    assert inst.dump_dir == tmp_path / "dumps"


def test_indexed_defaults() -> None:
    env = {f"{P}0_TYPE": "anthropic", f"{P}1_TYPE": "copilot", f"{P}2_TYPE": "openai"}
    s = load(None, env)
    assert [(i.name, i.base_url) for i in s.instances] == [
        ("anthropic", "https://api.anthropic.com"),
        ("copilot", "https://api.individual.githubcopilot.com"),
        ("openai", "https://api.openai.com/v1"),
    ]
    assert all(i.keys == () for i in s.instances)


def test_chatgpt_default_base_url() -> None:
    s = load(None, {f"{P}0_TYPE": "openai", f"{P}0_NAME": "chatgpt"})
    assert s.instance("chatgpt").base_url == "https://chatgpt.com/backend-api/codex"
    s = load(None, {f"{P}0_TYPE": "openai", f"{P}0_NAME": "chatgpt", f"{P}0_BASE_URL": "http://x.test/"})
    assert s.instance("chatgpt").base_url == "http://x.test"
    s = load(None, {f"{P}0_TYPE": "anthropic", f"{P}0_NAME": "chatgpt"})
    assert s.instance("chatgpt").base_url == "https://api.anthropic.com"


def test_indexed_bedrock_with_aliases() -> None:
    env = {
        f"{P}0_TYPE": "anthropic",
        f"{P}0_NAME": "bedrock",
        f"{P}0_BEDROCK_REGION": "us-west-2",
        f"{P}0_BEDROCK_MODEL": "m",
        f"{P}0_BEDROCK_SMALL_FAST_MODEL": "s",
        f"{P}0_BEDROCK_ACCESS_KEYS": AWS_KEY,
        f"{P}0_BEDROCK_ACCESS_KEY_SECRETS": AWS_SECRET,
    }
    bedrock = load(None, env).instance("bedrock").bedrock
    assert (bedrock.access_key, bedrock.access_key_secret) == (AWS_KEY, AWS_SECRET)
    assert bedrock.endpoint == "https://bedrock-runtime.us-west-2.amazonaws.com"
    # singular and plural together are fine when equal
    env |= {f"{P}0_BEDROCK_ACCESS_KEY": AWS_KEY, f"{P}0_BEDROCK_ACCESS_KEY_SECRET": AWS_SECRET}
    assert load(None, env).instance("bedrock").bedrock == bedrock


@pytest.mark.parametrize("field", ["BEDROCK_ACCESS_KEY", "BEDROCK_ACCESS_KEY_SECRET"])
def test_indexed_alias_conflict(field: str) -> None:
    env = {
        f"{P}0_TYPE": "anthropic",
        f"{P}0_BEDROCK_REGION": "us-west-2",
        f"{P}0_BEDROCK_MODEL": "m",
        f"{P}0_BEDROCK_SMALL_FAST_MODEL": "s",
        f"{P}0_{field}": AWS_KEY,
        f"{P}0_{field}S": AWS_SECRET,
    }
    assert error(None, env).startswith(f"{P}0_{field}S: differs from {P}0_{field} (the two are aliases")


# --------------------------------------------------------------------------- YAML instances


def test_yaml_providers(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        f"""\
        aibridge:
          providers:
            - type: anthropic
              name: claude
              key: {SECRET}
              keys: [{SECRET2}, {SECRET}]
              base_url: https://proxy.example/anthropic/
              dump_dir: {tmp_path}/d
            - type: openai
              keys: "a, b"
            - type: anthropic
              name: bedrock
              bedrock:
                base_url: https://bedrock.example
                model: m
                small_fast_model: s
                access_key: {AWS_KEY}
                access_key_secret: {AWS_SECRET}
        """,
    )
    s = load(flags("--config", str(path)), {})
    assert names(s) == ["claude", "openai", "bedrock"]
    claude = s.instance("claude")
    assert claude.source == "yaml" and claude.keys == (SECRET, SECRET2)
    assert claude.base_url == "https://proxy.example/anthropic" and claude.dump_dir == tmp_path / "d"
    assert s.instance("openai").keys == ("a", "b")
    bedrock = s.instance("bedrock").bedrock
    assert bedrock.region is None and bedrock.endpoint == "https://bedrock.example"


def test_env_indexed_list_replaces_yaml_list(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """\
        aibridge:
          providers:
            - type: anthropic
              name: from-yaml
            - type: openai
        """,
    )
    assert names(load(flags("--config", str(path)), {})) == ["from-yaml", "openai"]
    s = load(flags("--config", str(path)), {f"{P}0_TYPE": "copilot"})
    assert names(s) == ["copilot"]


def test_yaml_providers_after_legacy(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "aibridge:\n  providers:\n    - type: copilot\n")
    s = load(flags("--config", str(path)), {"CODER_AIBRIDGE_OPENAI_KEY": SECRET})
    assert names(s) == ["openai", "copilot"]


def test_example_yaml_loads_and_documents_every_key() -> None:
    s = load(flags("--config", str(EXAMPLE_YAML)), {})
    assert s.instances and s.config_file == EXAMPLE_YAML
    text = EXAMPLE_YAML.read_text()
    models = (yaml_schema._YamlSection, yaml_schema._YamlProvider, yaml_schema._YamlBedrock)
    for model in models:
        for key in model.model_fields:
            assert f"{key}:" in text, key
    for opt in options.OPTIONS:
        assert opt.env in text or opt.env.removeprefix("CODER_AIBRIDGE_BEDROCK_") in text, opt.env
    assert "REPLACES" in text


# --------------------------------------------------------------------------- validation


def test_unknown_type() -> None:
    message = error(None, {f"{P}0_TYPE": "openai", f"{P}1_TYPE": "anthropic", f"{P}2_TYPE": "gemini"})
    assert message == (f"{P}2_TYPE: unknown provider type 'gemini' (expected openai, anthropic or copilot)")


def test_type_required() -> None:
    message = error(None, {f"{P}0_NAME": "x", f"{P}0_KEY": SECRET})
    assert message.startswith(f"{P}0_TYPE: required")


def test_yaml_type_required_names_the_yaml_path(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "aibridge:\n  providers:\n    - type: openai\n    - name: foo\n")
    assert error(flags("--config", str(path))).startswith("aibridge.providers[1].type: required")


@pytest.mark.parametrize(
    ("indices", "named", "missing"),
    [((0, 2), 2, 1), ((1,), 1, 0), ((0, 1, 3), 3, 2)],
)
def test_indices_must_be_contiguous(indices: tuple[int, ...], named: int, missing: int) -> None:
    message = error(None, {f"{P}{i}_TYPE": "openai" for i in indices} | {f"{P}{indices[0]}_NAME": "a"})
    assert message.startswith(f"{P}{named}_*:")
    assert f"{P}{missing}_*" in message


def test_unknown_indexed_field() -> None:
    message = error(None, {f"{P}0_TYPE": "openai", f"{P}0_BASEURL": "http://x"})
    assert message.startswith(f"{P}0_BASEURL: unknown provider setting 'BASEURL'")


def test_malformed_indexed_variable() -> None:
    assert error(None, {f"{P}X_TYPE": "openai"}).startswith(f"{P}X_TYPE:")
    assert error(None, {f"{P}01_TYPE": "openai"}).startswith(f"{P}01_TYPE:")


@pytest.mark.parametrize("name", ["Foo", "foo_bar", "-foo", "foo-", "foo--bar", "f o"])
def test_invalid_name(name: str) -> None:
    message = error(None, {f"{P}0_TYPE": "openai", f"{P}0_NAME": name})
    assert message.startswith(f"{P}0_NAME: invalid provider name")


@pytest.mark.parametrize("name", sorted(instances.RESERVED_NAMES))
def test_reserved_name(name: str) -> None:
    message = error(None, {f"{P}0_TYPE": "openai", f"{P}0_NAME": name})
    assert message.startswith(f"{P}0_NAME: provider name '{name}' is reserved")


def test_reserved_name_in_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "aibridge:\n  providers:\n    - type: openai\n      name: admin\n")
    assert error(flags("--config", str(path))).startswith("aibridge.providers[0].name: provider name 'admin'")


def test_duplicate_names() -> None:
    message = error(None, {f"{P}0_TYPE": "openai", f"{P}1_TYPE": "openai"})
    assert message.startswith(f"{P}1_NAME: duplicate provider name 'openai'")
    assert f"{P}0_NAME" in message and "defaulted from the type" in message
    message = error(
        None, {f"{P}0_TYPE": "openai", f"{P}0_NAME": "x", f"{P}1_TYPE": "anthropic", f"{P}1_NAME": "x"}
    )
    assert message.startswith(f"{P}1_NAME: duplicate provider name 'x'") and f"{P}0_NAME" in message


def test_duplicate_names_in_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "aibridge:\n  providers:\n    - type: copilot\n    - type: copilot\n")
    message = error(flags("--config", str(path)))
    assert (
        message.startswith("aibridge.providers[1].name: duplicate")
        and "aibridge.providers[0].name" in message
    )


def test_legacy_and_indexed_conflict() -> None:
    env = {"CODER_AIBRIDGE_OPENAI_KEY": SECRET, f"{P}0_TYPE": "openai", f"{P}0_KEY": SECRET2}
    message = error(None, env)
    assert message.startswith(f"{P}0_NAME: provider name 'openai' (defaulted from the type) conflicts")
    assert "legacy" in message
    assert "CODER_AIBRIDGE_OPENAI_KEY" in message


def test_legacy_flag_and_yaml_provider_conflict(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "aibridge:\n  providers:\n    - type: anthropic\n      name: anthropic\n")
    args = flags("--config", str(path), "--aibridge-anthropic-base-url", "http://a.test")
    message = error(args)
    assert message.startswith("aibridge.providers[0].name:") and "--aibridge-anthropic-base-url" in message


def test_legacy_bedrock_conflicts_with_indexed_anthropic() -> None:
    env = {
        "CODER_AIBRIDGE_BEDROCK_REGION": "us-east-1",
        "CODER_AIBRIDGE_BEDROCK_MODEL": "m",
        "CODER_AIBRIDGE_BEDROCK_SMALL_FAST_MODEL": "s",
        f"{P}0_TYPE": "anthropic",
    }
    message = error(None, env)
    assert f"{P}0_NAME" in message and "CODER_AIBRIDGE_BEDROCK_REGION" in message


def test_no_conflict_without_the_legacy_instance() -> None:
    s = load(None, {"CODER_AIBRIDGE_ANTHROPIC_KEY": SECRET, f"{P}0_TYPE": "openai"})
    assert names(s) == ["anthropic", "openai"]


@pytest.mark.parametrize("field", ["KEY", "KEYS"])
def test_copilot_takes_no_key(field: str) -> None:
    message = error(None, {f"{P}0_TYPE": "copilot", f"{P}0_{field}": SECRET})
    assert message.startswith(f"{P}0_{field}: copilot providers take no key")


def test_copilot_key_in_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, f"aibridge:\n  providers:\n    - type: copilot\n      key: {SECRET}\n")
    assert error(flags("--config", str(path))).startswith("aibridge.providers[0].key: copilot")


@pytest.mark.parametrize("type_", ["openai", "copilot"])
def test_bedrock_only_on_anthropic(type_: str) -> None:
    env = {f"{P}0_TYPE": type_, f"{P}0_BEDROCK_REGION": "us-east-1"}
    message = error(None, env)
    assert message.startswith(f"{P}0_BEDROCK_REGION: Bedrock settings are only allowed on anthropic")


def test_bedrock_only_on_anthropic_in_yaml(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path, "aibridge:\n  providers:\n    - type: openai\n      bedrock:\n        model: m\n"
    )
    assert error(flags("--config", str(path))).startswith(
        "aibridge.providers[0].bedrock.model: Bedrock settings"
    )


BEDROCK_OK = {
    f"{P}0_TYPE": "anthropic",
    f"{P}0_BEDROCK_REGION": "us-east-1",
    f"{P}0_BEDROCK_MODEL": "m",
    f"{P}0_BEDROCK_SMALL_FAST_MODEL": "s",
}


B = f"{P}0_BEDROCK_"


@pytest.mark.parametrize(
    ("drop", "add", "prefix"),
    [
        ("REGION", {}, f"{B}REGION: Bedrock needs a region or a base URL ({B}BASE_URL)"),
        (None, {"ACCESS_KEY": AWS_KEY}, f"{B}ACCESS_KEY_SECRET: required when {B}ACCESS_KEY is set"),
        (
            None,
            {"ACCESS_KEY_SECRET": AWS_SECRET},
            f"{B}ACCESS_KEY: required when {B}ACCESS_KEY_SECRET is set",
        ),
        (None, {"REGION": "us east 1"}, f"{B}REGION: invalid AWS region"),
        (None, {"BASE_URL": "bedrock.example"}, f"{B}BASE_URL: must be an absolute http(s) URL"),
    ],
)
def test_bedrock_validation(drop: str | None, add: dict[str, str], prefix: str) -> None:
    env = {k: v for k, v in BEDROCK_OK.items() if k != f"{B}{drop}"} | {f"{B}{k}": v for k, v in add.items()}
    assert error(None, env).startswith(prefix)


def test_bedrock_base_url_alone_is_enough() -> None:
    env = {k: v for k, v in BEDROCK_OK.items() if "REGION" not in k} | {
        f"{P}0_BEDROCK_BASE_URL": "http://b.test/"
    }
    bedrock = load(None, env).instance("anthropic").bedrock
    assert bedrock.region is None and bedrock.endpoint == "http://b.test"


@pytest.mark.parametrize(
    "url", ["api.openai.com/v1", "ftp://x.test", "https://", "http:///path", "https://h:99999"]
)
def test_base_url_must_be_absolute_http(url: str) -> None:
    assert error(None, {f"{P}0_TYPE": "openai", f"{P}0_BASE_URL": url}).startswith(
        f"{P}0_BASE_URL: must be an absolute http(s) URL"
    )
    assert error(flags(f"--aibridge-openai-base-url={url}")).startswith("--aibridge-openai-base-url: must be")


def test_base_url_with_credentials_is_not_echoed() -> None:
    url = f"ftp://user:{SECRET}@host/"
    message = error(None, {"CODER_AIBRIDGE_ANTHROPIC_BASE_URL": url})
    assert message.startswith("CODER_AIBRIDGE_ANTHROPIC_BASE_URL: must be an absolute http(s) URL")


@pytest.mark.parametrize(
    ("env", "flag"),
    [
        ("CODER_AIBRIDGE_ENABLED", "--aibridge-enabled"),
        ("CODER_AIBRIDGE_STRUCTURED_LOGGING", "--aibridge-structured-logging"),
        ("CODER_AIBRIDGE_ALLOW_BYOK", "--aibridge-allow-byok"),
        ("CODER_PROMETHEUS_ENABLE", "--prometheus-enable"),
    ],
)
def test_bad_booleans(env: str, flag: str) -> None:
    assert error(None, {env: "maybe"}) == f"{env}: invalid boolean 'maybe' (expected true or false)"
    assert error(flags(f"{flag}=on")).startswith(f"{flag}: invalid boolean 'on'")


def test_bad_boolean_in_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "aibridge:\n  allow_byok: sometimes\n")
    assert error(flags("--config", str(path))).startswith("aibridge.allow_byok: invalid boolean")


def test_bad_retention_names_its_source(tmp_path: Path) -> None:
    assert error(None, {"CODER_AIBRIDGE_RETENTION": "60"}).startswith(
        "CODER_AIBRIDGE_RETENTION: invalid duration"
    )
    assert error(flags("--aibridge-retention", "soon")).startswith(
        "--aibridge-retention: invalid duration 'soon'"
    )
    path = write_yaml(tmp_path, "aibridge:\n  retention: 3 weeks\n")
    assert error(flags("--config", str(path))).startswith("aibridge.retention: invalid duration")


@pytest.mark.parametrize("value", ["10.0.0.0/33", "not-a-cidr", "10.0.0.0/8,bogus", "fd00::/129"])
def test_bad_cidrs(value: str) -> None:
    env = "CODER_AIBRIDGE_PROXY_ALLOWED_PRIVATE_CIDRS"
    assert error(None, {env: value}).startswith(f"{env}: invalid CIDR")
    flag = "--aibridge-proxy-allowed-private-cidrs"
    assert error(flags(f"{flag}={value}")).startswith(f"{flag}: invalid CIDR")


@pytest.mark.parametrize(
    "value", ["8888", "localhost", "127.0.0.1:0", "127.0.0.1:65536", "::1:8888", "[zz]:80", "a b:80"]
)
def test_bad_listen_address(value: str) -> None:
    assert error(None, {"CODER_AIBRIDGE_LISTEN": value}).startswith("CODER_AIBRIDGE_LISTEN: invalid address")
    assert error(flags(f"--aibridge-listen={value}")).startswith("--aibridge-listen: invalid address")


@pytest.mark.parametrize("value", ["2112", "127.0.0.1:", "127.0.0.1:70000"])
def test_bad_prometheus_address(value: str) -> None:
    assert error(None, {"CODER_PROMETHEUS_ADDRESS": value}).startswith(
        "CODER_PROMETHEUS_ADDRESS: invalid address"
    )


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("127.0.0.1:1", "127.0.0.1", 1),
        ("[::]:65535", "::", 65535),
        (":8888", "", 8888),
        ("gw.local:80", "gw.local", 80),
    ],
)
def test_listen_addresses(value: str, host: str, port: int) -> None:
    s = load(None, {"CODER_AIBRIDGE_LISTEN": value})
    assert (s.listen_host, s.listen_port) == (host, port)


# --------------------------------------------------------------------------- YAML file problems


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert error(flags("--config", str(missing))).startswith("--config: cannot read")
    assert error(None, {"CODER_AIBRIDGE_CONFIG": str(missing)}).startswith(
        "CODER_AIBRIDGE_CONFIG: cannot read"
    )


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "aibridge:\n  retention: [60d\n")
    message = error(flags("--config", str(path)))
    assert message.startswith("--config:") and "not valid YAML" in message and "line" in message


def test_yaml_must_be_a_mapping(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "- 1\n- 2\n")
    assert error(flags("--config", str(path))).startswith("--config:")


def test_empty_yaml_is_fine(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "")
    assert names(load(flags("--config", str(path)), {})) == ["openai", "anthropic"]
    path.write_text("aibridge:\n")
    assert load(flags("--config", str(path)), {}).enabled is True


PROVIDERS = "aibridge:\n  providers:\n"


@pytest.mark.parametrize(
    ("body", "prefix"),
    [
        ("aibrige:\n  enabled: true\n", "aibrige: unknown key"),
        ("aibridge:\n  retension: 1d\n", "aibridge.retension: unknown key"),
        (PROVIDERS + "    - type: openai\n    - nmae: x\n", "aibridge.providers[1].nmae: unknown key"),
        (PROVIDERS + "    - bedrock:\n        zone: x\n", "aibridge.providers[0].bedrock.zone: unknown key"),
        (PROVIDERS + "    - bedrock: us-east-1\n", "aibridge.providers[0].bedrock: expected a mapping"),
        ("aibridge:\n  providers: {type: openai}\n", "aibridge.providers: expected a list"),
        (PROVIDERS + "    - openai\n", "aibridge.providers[0]: expected a mapping"),
        ("aibridge:\n  retention: {days: 3}\n", "aibridge.retention: expected a single value"),
        (PROVIDERS + "    - keys: {a: b}\n", "aibridge.providers[0].keys: expected a list"),
        (PROVIDERS + "    - keys: [[a]]\n", "aibridge.providers[0].keys: expected a list"),
        ("aibridge: 3\n", "aibridge: expected a mapping"),
    ],
)
def test_yaml_schema_errors(tmp_path: Path, body: str, prefix: str) -> None:
    path = write_yaml(tmp_path, body)
    assert error(flags("--config", str(path))).startswith(prefix)


def test_yaml_secrets_never_in_errors(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path, f"aibridge:\n  providers:\n    - type: copilot\n      keys: [{SECRET}, {SECRET2}]\n"
    )
    assert error(flags("--config", str(path))).startswith("aibridge.providers[0].keys: copilot")


# --------------------------------------------------------------------------- masking


def test_masked_never_contains_a_secret() -> None:
    env = {
        f"{P}0_TYPE": "anthropic",
        f"{P}0_KEYS": f"{SECRET},{SECRET2},abc",
        f"{P}0_BASE_URL": f"https://user:{URL_PASSWORD}@proxy.example/",
        f"{P}0_BEDROCK_REGION": "us-east-1",
        f"{P}0_BEDROCK_MODEL": "m",
        f"{P}0_BEDROCK_SMALL_FAST_MODEL": "s",
        f"{P}0_BEDROCK_ACCESS_KEY": AWS_KEY,
        f"{P}0_BEDROCK_ACCESS_KEY_SECRET": AWS_SECRET,
    }
    s = load(None, env)
    inst = s.instance("anthropic")
    masked = inst.masked()
    text = repr(masked)
    for secret in (SECRET, SECRET2, AWS_KEY, AWS_SECRET, URL_PASSWORD):
        assert secret not in text
        assert secret[:5] not in text
        assert secret not in repr(inst) and secret not in repr(s)
    assert masked["keys"] == [f"sk-t…({len(SECRET)} chars)", f"sk-t…({len(SECRET2)} chars)", "…(3 chars)"]
    assert masked["bedrock"]["access_key"] == f"AKIA…({len(AWS_KEY)} chars)"
    assert masked["bedrock"]["access_key_secret"] == f"…({len(AWS_SECRET)} chars)"
    assert masked["base_url"] == "https://user:***@proxy.example"
    assert masked["bedrock"]["endpoint"] == "https://bedrock-runtime.us-east-1.amazonaws.com"
    assert masked["name"] == "anthropic" and masked["type"] == "anthropic"


@pytest.mark.parametrize(
    ("secret", "hint"), [("", "…(0 chars)"), ("abcdefg", "a…(7 chars)"), ("a" * 16, "aaaa…(16 chars)")]
)
def test_mask_secret(secret: str, hint: str) -> None:
    assert masking.mask_secret(secret) == hint


def test_settings_are_frozen() -> None:
    s = load(None, {})
    with pytest.raises(AttributeError):
        s.enabled = False  # type: ignore[misc]
    with pytest.raises(AttributeError):
        s.instances[0].name = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", timedelta(days=90)),
        ("720h", timedelta(hours=720)),
        ("30m", timedelta(minutes=30)),
        ("45s", timedelta(seconds=45)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1.5h", timedelta(minutes=90)),
        ("500ms", timedelta(milliseconds=500)),
        (" 60D ", timedelta(days=60)),
        ("0", None),
        ("0s", None),
        ("0d0h", None),
    ],
)
def test_parse_duration(text: str, expected: timedelta | None) -> None:
    assert parse_duration(text, "X") == expected


@pytest.mark.parametrize(
    "text", ["", "60", "d", "-1d", "1w", "1h 30m", "h1", "1e3s", "99999999999999d", "1.d"]
)
def test_parse_duration_errors(text: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_duration(text, "--aibridge-retention")
    assert str(excinfo.value).startswith("--aibridge-retention: invalid duration")
