"""The providers' replies to probe and listing GETs, shaped like the real ones.

``get_reply(path, provider)`` answers OpenRouter's ``/key``, xAI's ``/api-key``,
GitHub's ``/catalog/models``, Ollama's ``/api/tags`` and every ``/models``
listing (OpenAI-style ``data[]``, Anthropic's ``data[]`` with ``display_name``,
Gemini's ``models[]`` two per page with ``nextPageToken``), built from the
registry's model list. GitHub's catalog is a top-level JSON array of entries shaped
as docs.github.com's "REST API endpoints for models catalog" shows them
(``github_catalog_entry``), with one embedding model among the chat models, as the
real catalog lists; ``GITHUB_CATALOG_DOC`` is a catalog around the docs' own example.
"""

from __future__ import annotations

from typing import Any

from fakes.provider_errors import Reply
from rmllm_common.registry import default_registry

# docs.github.com, "REST API endpoints for models catalog", List all models: the
# example answer of GET https://models.github.ai/catalog/models, verbatim.
GITHUB_DOCS_EXAMPLE: dict[str, Any] = {
    "id": "openai/gpt-4.1",
    "name": "OpenAI GPT-4.1",
    "publisher": "OpenAI",
    "registry": "azure-openai",
    "summary": "gpt-4.1 outperforms gpt-4o across the board, with major gains in coding, "
    "instruction following, and long-context understanding",
    "html_url": "https://github.com/marketplace/models/azure-openai/gpt-4-1",
    "version": "2025-04-14",
    "capabilities": ["streaming", "tool-calling"],
    "limits": {"max_input_tokens": 1048576, "max_output_tokens": 32768},
    "rate_limit_tier": "high",
    "supported_input_modalities": ["text", "image", "audio"],
    "supported_output_modalities": ["text"],
    "tags": ["multipurpose", "multilingual", "multimodal"],
}
# An embedding model as the catalog lists it: its output is "embeddings", not text,
# so chat completions cannot use it.
GITHUB_EMBEDDING_ENTRY: dict[str, Any] = {
    "id": "openai/text-embedding-3-small",
    "name": "OpenAI Text Embedding 3 (small)",
    "publisher": "OpenAI",
    "registry": "azure-openai",
    "summary": "Text-embedding-3 series models are the latest and most capable embedding model from OpenAI.",
    "html_url": "https://github.com/marketplace/models/azure-openai/text-embedding-3-small",
    "version": "1",
    "capabilities": [],
    "limits": {"max_input_tokens": 8191, "max_output_tokens": None},
    "rate_limit_tier": "embeddings",
    "supported_input_modalities": ["text"],
    "supported_output_modalities": ["embeddings"],
    "tags": ["rag", "multilingual"],
}


def github_catalog_entry(model_id: str, name: str, max_input_tokens: int) -> dict[str, Any]:
    """A chat model's entry in GitHub's catalog, in the docs' shape."""
    publisher, _, slug = model_id.partition("/")
    return {
        "id": model_id,
        "name": name,
        "publisher": publisher,
        "registry": "azureml",
        "summary": f"{name}.",
        "html_url": f"https://github.com/marketplace/models/azureml/{slug}",
        "version": "1",
        "capabilities": ["streaming"],
        "limits": {"max_input_tokens": max_input_tokens, "max_output_tokens": 4096},
        "rate_limit_tier": "low",
        "supported_input_modalities": ["text"],
        "supported_output_modalities": ["text"],
        "tags": ["multilingual"],
    }


# The docs' example (a model the registry knows), a chat model the registry does not
# know, and an embedding model.
GITHUB_CATALOG_DOC: list[dict[str, Any]] = [
    GITHUB_DOCS_EXAMPLE,
    GITHUB_EMBEDDING_ENTRY,
    github_catalog_entry("microsoft/phi-4-mini-instruct", "Phi-4-mini-instruct", 128000),
]


def _listing(provider: str, page_token: str) -> Any:
    spec = default_registry().providers[provider]
    if spec.wire_format == "gemini":
        page = 0 if not page_token else int(page_token.removeprefix("page-"))
        models = spec.models[page * 2 : page * 2 + 2]
        body: dict[str, Any] = {
            "models": [
                {
                    "name": f"models/{m.id}",
                    "version": "001",
                    "displayName": m.display_name,
                    "inputTokenLimit": m.context_window,
                    "outputTokenLimit": 65536,
                    "supportedGenerationMethods": ["generateContent", "countTokens"],
                    "temperature": 1,
                    "topP": 0.95,
                }
                for m in models
            ]
        }
        if page * 2 + 2 < len(spec.models):
            body["nextPageToken"] = f"page-{page + 1}"
        return body
    if spec.wire_format == "anthropic":
        data = [
            {
                "type": "model",
                "id": m.id,
                "display_name": m.display_name,
                "created_at": "2025-09-29T00:00:00Z",
            }
            for m in spec.models
        ]
        return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
    listed: list[dict[str, Any]] = [
        {"id": m.id, "object": "model", "created": 1721172741, "owned_by": "system"} for m in spec.models
    ]
    if provider == "openrouter":
        listed = [
            {"id": m.id, "name": m.display_name, "context_length": m.context_window} for m in spec.models
        ]
    return {"object": "list", "data": listed}


def get_reply(path: str, provider: str, page_token: str = "") -> Reply:
    """The answer to a probe or listing GET for ``provider`` (which owns ``path``)."""
    if path.endswith("/key"):
        return (
            200,
            {},
            {
                "data": {
                    "label": "sk-or-v1-0e6...a1c",
                    "limit": None,
                    "usage": 0.0213,
                    "is_provisioning_key": False,
                    "limit_remaining": None,
                    "is_free_tier": False,
                    "rate_limit": {"requests": -1, "interval": "10s"},
                }
            },
        )
    if path.endswith("/api-key"):
        return (
            200,
            {},
            {
                "redacted_api_key": "xai-...Vd9M",
                "user_id": "6b2d4f8a-1c3e-4a5b-9d7f-0e2c4a6b8d1f",
                "name": "ci",
                "create_time": "2025-03-01T10:00:00Z",
                "team_id": "4f1c2b7e-8d3a-4e6f-9b0c-5a2d7e1f3c84",
                "acls": ["api-key:model:*", "api-key:endpoint:*"],
                "api_key_id": "a7c1e3f5-2b4d-4f6a-8c0e-1d3f5a7b9c2e",
                "team_blocked": False,
                "api_key_blocked": False,
                "api_key_disabled": False,
            },
        )
    if path.endswith("/catalog/models"):
        chat = [
            github_catalog_entry(m.id, m.display_name, m.context_window)
            for m in default_registry().providers["github"].models
        ]
        return 200, {}, [*chat, GITHUB_EMBEDDING_ENTRY]
    if path.endswith("/api/tags"):
        return (
            200,
            {},
            {
                "models": [
                    {
                        "name": f"{m.id}:latest" if ":" not in m.id else m.id,
                        "model": m.id,
                        "modified_at": "2025-05-01T10:00:00.000000000Z",
                        "size": 2019393189,
                        "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                        "details": {
                            "format": "gguf",
                            "family": "llama",
                            "parameter_size": "3.2B",
                            "quantization_level": "Q4_K_M",
                        },
                    }
                    for m in default_registry().providers["llama"].models
                ]
            },
        )
    return 200, {}, _listing(provider, page_token)
