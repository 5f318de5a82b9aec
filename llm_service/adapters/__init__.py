"""Wire-format adapters: OpenAI chat completions, Anthropic Messages, Gemini.

``adapter_for(spec)`` picks the one shared, stateless adapter for a provider by its
registry ``wire_format`` (never by its name); the interface is ``adapters.base``.
"""

from __future__ import annotations

from llm_service.adapters.anthropic import AnthropicAdapter
from llm_service.adapters.base import Adapter
from llm_service.adapters.gemini import GeminiAdapter
from llm_service.adapters.openai import OpenAIAdapter
from rmllm_common.registry import ProviderSpec, WireFormat

ADAPTERS: dict[WireFormat, Adapter] = {
    "openai": OpenAIAdapter(),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
}


def adapter_for(spec: ProviderSpec) -> Adapter:
    """The adapter that speaks ``spec.wire_format``."""
    return ADAPTERS[spec.wire_format]


__all__ = ["ADAPTERS", "adapter_for"]
