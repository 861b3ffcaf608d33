"""The aigw home: the one folder holding `data/` (the database) and `certs/` (the CA).

Every command resolves it the same way, so the CLI run from any directory sees
the state the gateway uses:

1. `--aibridge-home` / `CODER_AIBRIDGE_HOME` / YAML `home` when set;
2. else the current directory, when it already holds aigw state (a database
   in `data/` or a CA in `certs/`), as it does for checkouts that ran the
   gateway before homes existed;
3. else the per-user state directory: `$XDG_STATE_HOME/aigw`, falling back to
   `~/.local/state/aigw`.

An explicit `--aibridge-db` still wins for the database. Only `aigw serve`/`web`
(and `aigw ca --init`) create anything here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "aibridge.duckdb"
CA_KEY_NAME = "mitmproxy-ca.pem"  # mitmproxy's CA (private key + certificate)
HOME_HINT = "--aibridge-home DIR or CODER_AIBRIDGE_HOME=DIR"


@dataclass(frozen=True, slots=True)
class Home:
    path: Path  # absolute
    reason: str  # why this folder, for `aigw config check` and "not found" messages
    explicit: bool = False  # named by the user (flag, variable or YAML), not guessed

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def certs_dir(self) -> Path:
        return self.path / "certs"

    @property
    def default_db(self) -> Path:
        return self.data_dir / DB_NAME

    @property
    def log_file(self) -> Path:
        """Where `aigw serve --detach` writes the gateway's console output."""
        return self.path / "aigw.log"


def state_dir(environ: Mapping[str, str]) -> Path:
    """The per-user state directory (XDG Base Directory spec: relative values are ignored)."""
    xdg = environ.get("XDG_STATE_HOME", "").strip()
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "aigw"


def resolve(explicit: str | None, origin: str, environ: Mapping[str, str], cwd: Path | None = None) -> Home:
    """The home: `explicit` (set by `origin`) when given, else see the module docstring."""
    if explicit:
        return Home(Path(explicit).expanduser().absolute(), f"set by {origin}", explicit=True)
    here = (cwd or Path.cwd()).absolute()
    for held in (Path("data") / DB_NAME, Path("certs") / CA_KEY_NAME):
        if (here / held).exists():
            return Home(here, f"the current directory holds {held}")
    return Home(state_dir(environ), "the per-user state directory, as the current directory holds no aigw state")


__all__ = ["CA_KEY_NAME", "DB_NAME", "HOME_HINT", "Home", "resolve", "state_dir"]
