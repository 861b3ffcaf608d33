"""GitHub Copilot's API: OpenAI's Chat and Responses plus Anthropic's Messages, under the user's own token."""

from __future__ import annotations

from addons.providers.anthropic import MESSAGES
from addons.providers.base import Api, Provider, rule
from addons.providers.openai import CHAT, RESPONSES

COPILOT = Provider(
    type="copilot",
    gateway_prefix="",
    rules=(
        rule(r"/chat/completions", Api.CHAT, "/chat/completions", ("POST",)),
        rule(r"/responses", Api.RESPONSES, "/responses", ("POST",)),
        rule(r"/v1/messages", Api.MESSAGES, "/v1/messages", ("POST",)),
    ),
    apis={Api.CHAT: CHAT, Api.RESPONSES: RESPONSES, Api.MESSAGES: MESSAGES},
    passthrough_everything=True,
    client_credential_only=True,  # Copilot has no organisation key: the user's GitHub token goes upstream
    websocket_responses=True,
)
