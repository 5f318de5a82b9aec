"""The provider registry, loaded from ``providers.toml`` and validated at load.

Both services use it: the vault to canonicalise provider names, check key formats
and apply the custom-base-URL policy; the LLM service to pick the adapter (by
``wire_format``, or ``native_format`` at a base URL that is not the
OpenAI-compatible ``/v1`` one: ``ProviderSpec.wire_format_at``), build endpoints
and headers, price usage and serve ``ListProviders``. Code branches on these
fields (capabilities), never on a provider's name.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from rmllm_common.errors import FieldViolation, UnknownProvider

WireFormat = Literal["openai", "anthropic", "gemini", "ollama"]
ReasoningRequest = Literal["reasoning_effort", "reasoning_object", "none"]
JsonSchemaMode = Literal["native", "tool"]
CAPABILITIES = ("tools", "parallel_tools", "vision", "pdf", "json_schema", "reasoning")
SAMPLING_PARAMS = ("temperature", "top_p", "stop")  # what a model's unsupported_params may name
_REASONING_REQUESTS = ("reasoning_effort", "reasoning_object", "none")
_EFFORTS = ("low", "medium", "high")
AuthStyle = Literal["bearer", "x-api-key", "x-goog-api-key", "none"]
_WIRE_FORMATS = ("openai", "anthropic", "gemini", "ollama")
_AUTH_STYLES = ("bearer", "x-api-key", "x-goog-api-key", "none")
# Wire formats whose API refuses a request without max_tokens.
_NEEDS_MAX_TOKENS = ("anthropic",)


COST_QUANTUM = 1e-10  # USD: costs are rounded to this, far below any price's precision


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model the registry knows, with its context window and prices."""

    id: str
    display_name: str
    context_window: int
    input_price: float  # USD per 1M input tokens
    output_price: float  # USD per 1M output tokens
    capabilities: frozenset[str] | None = None  # None: unknown, the provider decides
    cache_read_price: float | None = None  # USD per 1M cached input tokens read; None: input_price
    cache_write_price: float | None = None  # USD per 1M input tokens written to the cache; None: input_price
    reasoning_efforts: tuple[str, ...] = _EFFORTS  # the efforts the model takes
    json_schema_mode: JsonSchemaMode = "native"  # anthropic: native output_config, or a forced tool
    unsupported_params: frozenset[str] = frozenset()  # request fields the model's API refuses

    def cost(
        self, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0, cache_write_tokens: int = 0
    ) -> float:
        """USD for the given token counts; ``input_tokens`` includes the cache reads and writes,
        which are priced at the cache prices where known. Rounded to ``COST_QUANTUM``
        (1e-10 USD), so binary float noise (``5.0999999999999995e-06``) never reaches a caller."""
        read = self.input_price if self.cache_read_price is None else self.cache_read_price
        write = self.input_price if self.cache_write_price is None else self.cache_write_price
        uncached = max(0, input_tokens - cache_read_tokens - cache_write_tokens)
        exact = (
            uncached * self.input_price
            + cache_read_tokens * read
            + cache_write_tokens * write
            + output_tokens * self.output_price
        ) / 1_000_000
        return round(exact, 10)

    def supports(self, capability: str) -> bool:
        """Whether the model has ``capability`` (True when the registry does not say)."""
        return self.capabilities is None or capability in self.capabilities


RelativeTo = Literal["base", "origin"]
_RELATIVE_TO = ("base", "origin")


def url_at(base_url: str, path: str, relative_to: RelativeTo) -> str:
    """``path`` appended to ``base_url``, or to its origin (scheme and host) alone."""
    if relative_to == "origin":
        parts = urlsplit(base_url)
        return f"{parts.scheme}://{parts.netloc}{path}"
    return base_url.rstrip("/") + path


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """TestKey's request: ``method`` ``path``, relative to base_url or its origin."""

    method: str
    path: str
    relative_to: RelativeTo

    def url(self, base_url: str) -> str:
        """The probe's full URL for an endpoint."""
        return url_at(base_url, self.path, self.relative_to)


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One provider: how to reach it, authenticate, and what it offers."""

    id: str
    display_name: str
    aliases: tuple[str, ...]
    wire_format: WireFormat
    base_url: str
    auth: AuthStyle
    key_prefix: str
    requires_key: bool
    custom_base_url: bool
    default_model: str
    features: frozenset[str]
    probe: ProbeSpec
    models_path: str  # the live listing's path ("" = none), relative to models_relative_to
    models: tuple[ModelSpec, ...]
    models_relative_to: RelativeTo = "base"  # "origin": GitHub's /catalog/models beside /inference
    headers: tuple[tuple[str, str], ...] = ()
    max_tokens_field: str = "max_tokens"
    default_max_tokens: int | None = None
    reasoning_request: ReasoningRequest = "reasoning_effort"  # openai format: how effort is sent
    reasoning_fields: tuple[str, ...] = ()  # openai format: stream delta fields holding reasoning text
    image_urls: bool = True  # whether the provider fetches http(s) image URLs itself
    parallel_tool_switch: bool = True  # whether parallel tool calls can be turned off
    native_format: WireFormat | None = None  # spoken at a base URL whose path does not end in /v1
    _by_model: dict[str, ModelSpec] = field(default_factory=dict, compare=False, repr=False)

    def wire_format_at(self, base_url: str) -> WireFormat:
        """The wire format to speak at ``base_url`` (the spec's own when empty).

        A provider that declares a ``native_format`` (Ollama: ``"ollama"``) speaks its
        ``wire_format`` only where the base URL's path, trailing ``/`` stripped, ends
        in ``/v1`` (the OpenAI-compatible API); anywhere else (``http://host:11434``,
        ``.../api``) it speaks the native format.
        """
        if self.native_format is None:
            return self.wire_format
        path = urlsplit(base_url or self.base_url).path.rstrip("/")
        return self.wire_format if path.endswith("/v1") else self.native_format

    def models_url(self, base_url: str) -> str:
        """The live model listing's URL at ``base_url`` ("" when there is no ``models_path``)."""
        return url_at(base_url, self.models_path, self.models_relative_to) if self.models_path else ""

    def model(self, model_id: str) -> ModelSpec | None:
        """The registry's entry for a model id, if it has one."""
        if not self._by_model:
            self._by_model.update((m.id, m) for m in self.models)
        return self._by_model.get(model_id)

    def cost(
        self,
        model_id: str,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> float:
        """USD for a completion; 0 for a model without known prices."""
        spec = self.model(model_id)
        return spec.cost(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens) if spec else 0.0

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """The headers that carry the key (and the provider's fixed headers)."""
        headers = dict(self.headers)
        if api_key and self.auth == "bearer":
            headers["Authorization"] = f"Bearer {api_key}"
        elif api_key and self.auth in ("x-api-key", "x-goog-api-key"):
            headers[self.auth] = api_key
        return headers


class Registry:
    """Every provider, by canonical id and by alias."""

    def __init__(self, providers: list[ProviderSpec]) -> None:
        self.providers: dict[str, ProviderSpec] = {p.id: p for p in sorted(providers, key=lambda p: p.id)}
        self._names: dict[str, ProviderSpec] = {}
        for spec in self.providers.values():
            for name in (spec.id, *spec.aliases):
                if name in self._names:
                    raise ValueError(f"provider name {name!r} is used twice in the registry")
                self._names[name] = spec

    def get(self, name: str) -> ProviderSpec | None:
        """The provider for an id or alias (case-insensitive), or None."""
        return self._names.get(name.strip().lower())

    def resolve(self, name: str, field_name: str = "provider") -> ProviderSpec:
        """The provider for an id or alias, or an UNKNOWN_PROVIDER error."""
        spec = self.get(name)
        if spec is None:
            known = ", ".join(sorted(self._names))
            description = (
                f"unknown provider {name[:64]!r}; use one of: {known}"
                if name
                else f"required; one of: {known}"
            )
            raise UnknownProvider(
                f"{field_name}: {description}",
                violations=[FieldViolation(field_name, description)],
            )
        return spec

    def names(self) -> list[str]:
        """Every accepted id and alias, sorted."""
        return sorted(self._names)


def _parse(pid: str, raw: dict[str, Any]) -> ProviderSpec:
    where = f"providers.toml [providers.{pid}]"
    wire = raw.get("wire_format")
    if wire not in _WIRE_FORMATS:
        raise ValueError(f"{where}: wire_format must be one of {_WIRE_FORMATS}")
    auth = raw.get("auth")
    if auth not in _AUTH_STYLES:
        raise ValueError(f"{where}: auth must be one of {_AUTH_STYLES}")
    base = str(raw["base_url"]).rstrip("/")
    if urlsplit(base).scheme not in ("http", "https"):
        raise ValueError(f"{where}: base_url must be http(s)")
    probe = raw["probe"]
    models = tuple(_parse_model(where, m) for m in raw.get("models", []))
    default_max = raw.get("default_max_tokens")
    if wire in _NEEDS_MAX_TOKENS and default_max is None:
        raise ValueError(f"{where}: the {wire} API requires max_tokens, so set default_max_tokens")
    reasoning_request = raw.get("reasoning_request", "reasoning_effort")
    if reasoning_request not in _REASONING_REQUESTS:
        raise ValueError(f"{where}: reasoning_request must be one of {_REASONING_REQUESTS}")
    probe_relative_to = probe.get("relative_to", "base")
    models_relative_to = raw.get("models_relative_to", "base")
    if probe_relative_to not in _RELATIVE_TO or models_relative_to not in _RELATIVE_TO:
        raise ValueError(f"{where}: probe.relative_to and models_relative_to must be one of {_RELATIVE_TO}")
    native = raw.get("native_format")
    if native is not None and (native not in _WIRE_FORMATS or native == wire):
        raise ValueError(f"{where}: native_format must be another of {_WIRE_FORMATS}")
    return ProviderSpec(
        id=pid,
        display_name=raw["display_name"],
        aliases=tuple(raw.get("aliases", [])),
        wire_format=wire,
        base_url=base,
        auth=auth,
        key_prefix=raw.get("key_prefix", ""),
        requires_key=bool(raw.get("requires_key", True)),
        custom_base_url=bool(raw.get("custom_base_url", False)),
        default_model=raw["default_model"],
        features=frozenset(raw.get("features", [])),
        probe=ProbeSpec(
            method=probe.get("method", "GET"),
            path=probe["path"],
            relative_to=probe_relative_to,
        ),
        models_path=raw.get("models_path", ""),
        models=models,
        models_relative_to=models_relative_to,
        headers=tuple(sorted(raw.get("headers", {}).items())),
        max_tokens_field=raw.get("max_tokens_field", "max_tokens"),
        default_max_tokens=int(default_max) if default_max is not None else None,
        reasoning_request=reasoning_request,
        reasoning_fields=tuple(raw.get("reasoning_fields", [])),
        image_urls=bool(raw.get("image_urls", True)),
        parallel_tool_switch=bool(raw.get("parallel_tool_switch", True)),
        native_format=native,
    )


def _optional_price(raw: dict[str, Any], name: str) -> float | None:
    value = raw.get(name)
    return None if value is None else float(value)


def _parse_model(where: str, m: dict[str, Any]) -> ModelSpec:
    capabilities = m.get("capabilities")
    if capabilities is not None:
        unknown = set(capabilities) - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"{where} model {m['id']}: unknown capabilities {sorted(unknown)}")
    efforts = tuple(m.get("reasoning_efforts", _EFFORTS))
    if set(efforts) - set(_EFFORTS):
        raise ValueError(f"{where} model {m['id']}: reasoning_efforts must be among {_EFFORTS}")
    mode = m.get("json_schema_mode", "native")
    if mode not in ("native", "tool"):
        raise ValueError(f"{where} model {m['id']}: json_schema_mode must be native or tool")
    unsupported = frozenset(m.get("unsupported_params", ()))
    if unsupported - set(SAMPLING_PARAMS):
        raise ValueError(f"{where} model {m['id']}: unsupported_params must be among {SAMPLING_PARAMS}")
    return ModelSpec(
        id=m["id"],
        display_name=m.get("display_name", m["id"]),
        context_window=int(m.get("context_window", 0)),
        input_price=float(m.get("input_price", 0.0)),
        output_price=float(m.get("output_price", 0.0)),
        capabilities=frozenset(capabilities) if capabilities is not None else None,
        cache_read_price=_optional_price(m, "cache_read_price"),
        cache_write_price=_optional_price(m, "cache_write_price"),
        reasoning_efforts=efforts,
        json_schema_mode=mode,
        unsupported_params=unsupported,
    )


def load_registry(path: Path | None = None) -> Registry:
    """Load and validate a registry file (default: the built-in ``providers.toml``)."""
    text = path.read_text() if path else resources.files(__package__).joinpath("providers.toml").read_text()
    data = tomllib.loads(text)
    return Registry([_parse(pid, raw) for pid, raw in data["providers"].items()])


@cache
def default_registry() -> Registry:
    """The built-in registry, loaded once per process."""
    return load_registry()
