"""Wire-format adapters: OpenAI chat completions, Anthropic Messages, Gemini, Ollama native.

``adapter_for(spec, base_url)`` picks the one shared, stateless adapter for a
provider at a base URL by its registry data (never by its name): the
``wire_format``, or the ``native_format`` where the base URL is not the
OpenAI-compatible ``/v1`` one (``ProviderSpec.wire_format_at``); the interface is
``adapters.base``.
"""

from __future__ import annotations

from llm_service.adapters.anthropic import AnthropicAdapter
from llm_service.adapters.base import Adapter
from llm_service.adapters.gemini import GeminiAdapter
from llm_service.adapters.ollama import OllamaAdapter
from llm_service.adapters.openai import OpenAIAdapter
from rmllm_common.registry import ProviderSpec, WireFormat

ADAPTERS: dict[WireFormat, Adapter] = {
    "openai": OpenAIAdapter(),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
    "ollama": OllamaAdapter(),
}


def adapter_for(spec: ProviderSpec, base_url: str = "") -> Adapter:
    """The adapter that speaks ``spec``'s wire format at ``base_url`` ("" for its default)."""
    return ADAPTERS[spec.wire_format_at(base_url)]


__all__ = ["ADAPTERS", "adapter_for"]
