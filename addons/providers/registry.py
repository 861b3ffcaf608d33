"""The provider types an instance can be configured with, by name."""

from __future__ import annotations

from addons.providers.anthropic import ANTHROPIC
from addons.providers.base import Provider
from addons.providers.copilot import COPILOT
from addons.providers.openai import OPENAI

PROVIDERS: dict[str, Provider] = {p.type: p for p in (ANTHROPIC, OPENAI, COPILOT)}
