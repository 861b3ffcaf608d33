"""Responses API output items, assembled from a stream's events or a whole response's `output`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from addons.wire.model import Thought, ToolCall, compact_json_text, str_or_none

TOOL_ITEM_TYPES = frozenset({"function_call", "custom_tool_call"})


@dataclass(slots=True)
class OutputItem:
    """What is known about one output item, keyed by its output_index."""

    type: str = ""
    item_id: str | None = None
    call_id: str = ""
    name: str = ""
    input_parts: list[str] = field(default_factory=list)  # tool arguments / custom input deltas
    final_input: str | None = None
    phase: str | None = None
    texts: dict[int, list[str]] = field(default_factory=dict)  # message text by content_index
    summaries: dict[int, list[str]] = field(default_factory=dict)  # by summary_index
    reasoning: dict[int, list[str]] = field(default_factory=dict)  # raw reasoning by content_index
    done: bool = False

    def fill_from(self, item: dict[str, Any]) -> None:
        """Takes the complete item (output_item.done or a final response's output)."""
        self.type = str_or_none(item.get("type")) or self.type
        self.item_id = str_or_none(item.get("id")) or self.item_id
        self.done = True
        if self.type in TOOL_ITEM_TYPES:
            self.call_id = str_or_none(item.get("call_id")) or self.call_id
            self.name = str_or_none(item.get("name")) or self.name
            final = item.get("arguments" if self.type == "function_call" else "input")
            if isinstance(final, str):
                self.final_input = final
        elif self.type == "reasoning":
            self.summaries = texts_by_index(item.get("summary"), "summary_text") or self.summaries
            self.reasoning = texts_by_index(item.get("content"), "reasoning_text") or self.reasoning
        elif self.type == "message":
            self.phase = str_or_none(item.get("phase")) or self.phase
            self.texts = texts_by_index(item.get("content"), "output_text") or self.texts

    def tool_call(self, response_id: str | None) -> ToolCall | None:
        if self.type not in TOOL_ITEM_TYPES or not (self.call_id or self.name):
            return None
        text = self.final_input if self.final_input is not None else "".join(self.input_parts)
        return ToolCall(
            provider_response_id=response_id,
            call_id=self.call_id,
            name=self.name,
            input=compact_json_text(text) if self.type == "function_call" else text,
            item_id=self.item_id if self.item_id != self.call_id else None,
        )

    def thoughts(self, response_id: str | None) -> list[Thought]:
        thoughts: list[Thought] = []
        if self.type == "reasoning":
            for index in sorted(self.summaries):
                thoughts.append(Thought("".join(self.summaries[index]), "reasoning_summary", response_id))
            for index in sorted(self.reasoning):
                thoughts.append(Thought("".join(self.reasoning[index]), "reasoning", response_id))
        elif self.type == "message" and self.phase == "commentary":
            text = "".join("".join(self.texts[index]) for index in sorted(self.texts))
            thoughts.append(Thought(text, "commentary", response_id))
        return [thought for thought in thoughts if thought.content]


def texts_by_index(parts: Any, part_type: str) -> dict[int, list[str]]:
    texts: dict[int, list[str]] = {}
    for index, part in enumerate(parts if isinstance(parts, list) else ()):
        if isinstance(part, dict) and part.get("type") == part_type and isinstance(part.get("text"), str):
            texts[index] = [part["text"]]
    return texts
