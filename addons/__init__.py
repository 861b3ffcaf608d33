"""aigw: an AI gateway for coding agents, built as mitmproxy addons."""

from typing import Any


def __getattr__(name: str) -> Any:
    # `__version__` is looked up on first use: importlib.metadata costs ~40 ms, which
    # every short CLI command (`aigw interceptions list`, …) would otherwise pay.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import metadata

    try:
        version = metadata.version("aigw")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        version = "0+unknown"
    globals()["__version__"] = version
    return version
