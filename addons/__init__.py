"""aigw: an AI gateway for coding agents, built as mitmproxy addons."""

from importlib import metadata

try:
    __version__ = metadata.version("aigw")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
