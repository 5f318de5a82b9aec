"""Validation of VaultService requests, one rule per field, each failure a BadRequest.

Every function here raises ``InvalidRequest`` (or ``UnknownProvider``) with one
field violation naming the request field, and a description that says what is
accepted. Descriptions never echo a key. The provider is resolved through the
registry to its canonical id; keys are checked for size, characters and the
provider's documented prefix; ``base_url`` must pass ``rmllm_common.urls`` (the
rule the LLM service applies too) and the custom-base-URL policy; settings must be
in range; ``update_mask`` paths must be known.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Final

from realmultillm.vault.v1 import vault_pb2

from rmllm_common import urls
from rmllm_common.errors import invalid
from rmllm_common.registry import ProviderSpec, Registry
from rmllm_common.secret import Secret
from vault_service.configs import Changes, Settings

MAX_KEY_BYTES: Final = 4096
MAX_MODEL_CHARS: Final = 200
UPDATE_PATHS: Final = frozenset(
    {
        "base_url",
        "is_active",
        "settings",
        "settings.default_model",
        "settings.temperature",
        "settings.max_tokens",
    }
)


def _has_control_or_space(text: str) -> bool:
    return any(c.isspace() or unicodedata.category(c).startswith("C") for c in text)


def provider(registry: Registry, name: str, field: str = "provider") -> ProviderSpec:
    """The registry entry for an id or alias."""
    return registry.resolve(name, field)


def api_key(key: str, spec: ProviderSpec, field: str = "api_key") -> Secret:
    """The key, checked against the provider's rules, wrapped as a Secret."""
    if not key:
        if spec.requires_key:
            raise invalid(field, f"required: {spec.display_name} needs an API key", provider=spec.id)
        return Secret("")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise invalid(field, f"too long: at most {MAX_KEY_BYTES} bytes", provider=spec.id)
    if _has_control_or_space(key):
        raise invalid(field, "must not contain whitespace or control characters", provider=spec.id)
    if spec.key_prefix and not key.startswith(spec.key_prefix):
        raise invalid(
            field, f"{spec.display_name} keys start with {spec.key_prefix!r}; check the key", provider=spec.id
        )
    return Secret(key)


def base_url(url: str, spec: ProviderSpec, allow_custom: bool, field: str = "base_url") -> str:
    """The normalised endpoint override ("" keeps the provider's default); the rule is
    ``rmllm_common.urls``, shared with the LLM service."""
    if not url:
        return ""
    try:
        normalised = urls.check_base_url(url)
    except urls.BaseUrlError as exc:
        raise invalid(field, str(exc), provider=spec.id) from exc
    refusal = urls.custom_endpoint_refusal(normalised, spec, allow_custom)
    if refusal is not None:
        raise invalid(field, refusal, provider=spec.id)
    return normalised


def settings(message: vault_pb2.ProviderSettings, spec: ProviderSpec, field: str = "settings") -> Settings:
    """Chat defaults, range-checked."""
    model = message.default_model
    if len(model) > MAX_MODEL_CHARS:
        raise invalid(
            f"{field}.default_model", f"too long: at most {MAX_MODEL_CHARS} characters", provider=spec.id
        )
    if _has_control_or_space(model):
        raise invalid(
            f"{field}.default_model", "must not contain whitespace or control characters", provider=spec.id
        )
    temperature = message.temperature if message.HasField("temperature") else None
    if temperature is not None and not (math.isfinite(temperature) and 0.0 <= temperature <= 2.0):
        raise invalid(f"{field}.temperature", "must be between 0.0 and 2.0", provider=spec.id)
    max_tokens = message.max_tokens if message.HasField("max_tokens") else None
    if max_tokens is not None and max_tokens <= 0:
        raise invalid(f"{field}.max_tokens", "must be greater than 0", provider=spec.id)
    return Settings(model, temperature, max_tokens)


def changes(
    request: vault_pb2.UpdateProviderConfigRequest, spec: ProviderSpec, allow_custom: bool
) -> Changes:
    """The validated fields an UpdateProviderConfig sets."""
    paths = list(request.update_mask.paths)
    if not paths:
        raise invalid(
            "update_mask",
            f"must name at least one field: {', '.join(sorted(UPDATE_PATHS))}",
            provider=spec.id,
        )
    for index, path in enumerate(paths):
        if path not in UPDATE_PATHS:
            raise invalid(
                f"update_mask.paths[{index}]",
                f"cannot update {path[:64]!r}; allowed: {', '.join(sorted(UPDATE_PATHS))} "
                "(the key changes only with PutProviderConfig)",
                provider=spec.id,
            )
    config = request.config
    named = frozenset(paths)
    return Changes(
        fields=named,
        base_url=base_url(config.base_url, spec, allow_custom, "config.base_url")
        if "base_url" in named
        else "",
        is_active=config.is_active,
        settings=settings(config.settings, spec, "config.settings")
        if named & {"settings", "settings.default_model", "settings.temperature", "settings.max_tokens"}
        else Settings(),
    )
