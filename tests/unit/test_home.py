"""Where state lives: the aigw home (addons/settings/home.py) and how configuration resolves it."""

from __future__ import annotations

from pathlib import Path

import pytest

from addons.settings import config, home, loader
from addons.settings.values import ConfigError


def test_explicit_home_wins(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "aibridge.duckdb").touch()
    found = home.resolve("~/aigw-home", "CODER_AIBRIDGE_HOME", {}, cwd=tmp_path)
    assert found == home.Home(Path.home() / "aigw-home", "set by CODER_AIBRIDGE_HOME", explicit=True)


@pytest.mark.parametrize("held", ["data/aibridge.duckdb", "certs/mitmproxy-ca.pem"])
def test_the_current_directory_when_it_holds_state(tmp_path: Path, held: str) -> None:
    (tmp_path / held).parent.mkdir()
    (tmp_path / held).touch()
    found = home.resolve(None, "", {"XDG_STATE_HOME": str(tmp_path / "xdg")}, cwd=tmp_path)
    assert found == home.Home(tmp_path, f"the current directory holds {held}")


def test_empty_folders_are_not_state(tmp_path: Path) -> None:
    # A fresh checkout has certs/ (its README) and no CA: the per-user directory, as for any directory.
    (tmp_path / "certs").mkdir()
    (tmp_path / "data").mkdir()
    found = home.resolve(None, "", {"XDG_STATE_HOME": str(tmp_path / "xdg")}, cwd=tmp_path)
    assert found.path == tmp_path / "xdg" / "aigw" and not found.explicit
    assert found.reason == "the per-user state directory, as the current directory holds no aigw state"


@pytest.mark.parametrize("xdg", ["", "relative/state"])  # the XDG spec says to ignore relative paths
def test_state_dir_falls_back_to_local_state(xdg: str) -> None:
    assert home.state_dir({"XDG_STATE_HOME": xdg}) == Path.home() / ".local" / "state" / "aigw"


def test_paths_inside_the_home(tmp_path: Path) -> None:
    h = home.Home(tmp_path, "x")
    assert (h.default_db, h.certs_dir, h.log_file) == (
        tmp_path / "data" / "aibridge.duckdb", tmp_path / "certs", tmp_path / "aigw.log")


def test_settings_database_follows_the_home_unless_set(tmp_path: Path) -> None:
    s = loader.load(None, {"CODER_AIBRIDGE_HOME": str(tmp_path)})
    assert s.home.path == tmp_path and s.db == tmp_path / "data" / "aibridge.duckdb" and s.db_origin is None
    s = loader.load(None, {"CODER_AIBRIDGE_HOME": str(tmp_path), "CODER_AIBRIDGE_DB": "/srv/x.duckdb"})
    assert s.home.path == tmp_path and s.db == Path("/srv/x.duckdb") and s.db_origin == "CODER_AIBRIDGE_DB"


def test_prices_file_must_exist(tmp_path: Path) -> None:
    assert loader.load(None, {}).prices_file == config.DEFAULT_PRICES_FILE
    assert config.DEFAULT_PRICES_FILE.is_file() and config.DEFAULT_PRICES_FILE.parent.name == "addons"
    with pytest.raises(ConfigError) as excinfo:
        loader.load(None, {"CODER_AIBRIDGE_PRICES_FILE": str(tmp_path / "nope.yaml")})
    assert str(excinfo.value) == f"CODER_AIBRIDGE_PRICES_FILE: no such file {str(tmp_path / 'nope.yaml')!r}"


def test_the_documented_prices_path_is_the_packaged_file() -> None:
    repo = Path(__file__).resolve().parents[2]
    assert (repo / "config" / "prices.yaml").resolve() == config.DEFAULT_PRICES_FILE
