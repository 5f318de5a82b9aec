"""What the ``rmllm`` command prints: tables, the chat summary, one-line errors, exit codes.

Every error becomes exactly one line that says how to fix it (``no openai key
stored: run `rmllm keys set openai```), never a traceback, and an exit code that
depends on its class (see ``EXIT_CODES``). Messages are built from the error's
reason, provider and target and the server's message, which never holds a key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from clients import errors
from clients.config import ConfigError
from clients.datatypes import ChatResult, ModelList, ProviderConfig, ProviderInfo

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_AUTH = 4
EXIT_NOT_CONFIGURED = 5
EXIT_KEY_INVALID = 6
EXIT_INVALID = 7
EXIT_RATE_LIMITED = 8
EXIT_UNAVAILABLE = 9
EXIT_TIMEOUT = 10
EXIT_INTERNAL = 11
EXIT_INTERRUPTED = 130

# First match wins: subclasses before their bases.
EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (ConfigError, EXIT_CONFIG),
    (errors.Unauthenticated, EXIT_AUTH),
    (errors.PermissionDenied, EXIT_AUTH),
    (errors.KeyNotConfigured, EXIT_NOT_CONFIGURED),
    (errors.NotFound, EXIT_NOT_CONFIGURED),
    (errors.ProviderKeyInvalid, EXIT_KEY_INVALID),
    (errors.InvalidRequest, EXIT_INVALID),
    (errors.ResourceExhausted, EXIT_RATE_LIMITED),
    (errors.Unavailable, EXIT_UNAVAILABLE),
    (errors.DeadlineExceeded, EXIT_TIMEOUT),
    (errors.Internal, EXIT_INTERNAL),
)

DEV_UP = "(`python3 scripts/dev.py up`)"


def exit_code(error: Exception) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_ERROR


def _wait(error: errors.RmllmClientError) -> str:
    if error.retry_after is None:
        return "retry in a moment"
    return f"retry in {max(1, math.ceil(error.retry_after))}s"


def _token_hint(credential_from: str, path: str) -> str:
    """What to do about a refused token, given where it came from (nothing for a pasted one)."""
    if credential_from == "RMLLM_TOKEN":
        return "; the token is the one in RMLLM_TOKEN: set it to a valid token"
    if credential_from == "file":
        return f"; the token is the one saved in {path}: save a valid one with `rmllm login`"
    return ""


def describe(  # noqa: PLR0911, PLR0912
    error: errors.RmllmClientError, provider: str | None = None, *, credential_from: str = "", path: str = ""
) -> str:
    """One line saying what went wrong and how to fix it.

    ``credential_from`` (``CliSettings.credential_from``) and ``path`` (the config file) say
    where a refused token came from, so that the hint names the right place.
    """
    p = error.provider or provider or "that provider"
    where = f"the {error.service or 'service'} at {error.target}" if error.target else "the service"
    if isinstance(error, errors.KeyNotConfigured | errors.ConfigNotFound):
        return f"no {p} key stored: run `rmllm keys set {p}`"
    if isinstance(error, errors.UserDisabled):
        return f"the token was refused: {error.message}"
    if isinstance(error, errors.Unauthenticated):
        return f"the token was refused: {error.message}{_token_hint(credential_from, path)}"
    if isinstance(error, errors.ModelNotAllowed):
        return f"not allowed: {error.message}"
    if isinstance(error, errors.PermissionDenied):
        return f"permission denied by {where}: {error.message}"
    if isinstance(error, errors.CapabilityUnsupported):
        return f"not supported: {error.message}"
    if isinstance(error, errors.ProviderKeyInvalid):
        return f"{p} rejected the stored key: store a valid one with `rmllm keys set {p}`"
    if isinstance(error, errors.UnknownProvider):
        return f"unknown provider {p!r}: see `rmllm providers` for the ids and aliases"
    if isinstance(error, errors.InvalidRequest):
        details = "; ".join(f"{v.field}: {v.description}" for v in error.field_violations)
        return f"invalid request: {details or error.message}"
    if isinstance(error, errors.ProviderQuotaExhausted):
        return f"the {p} account has no quota or credit left: add credit, or `rmllm keys set {p}` another key"
    if isinstance(error, errors.ProviderRateLimited):
        return f"{p} is rate limiting this key: {_wait(error)}"
    if isinstance(error, errors.UpstreamResponseTooLarge):
        return f"the {p} answer passed this gateway's size limit: {error.message}"
    if isinstance(error, errors.BudgetExceeded):
        return f"over budget: {error.message}; see `rmllm usage`"
    if isinstance(error, errors.ResourceExhausted):
        return f"rate limited ({error.message}): {_wait(error)}"
    if isinstance(error, errors.VaultUnavailable):
        return f"{where} cannot reach the vault: is it running? {DEV_UP}"
    if isinstance(error, errors.DatabaseUnavailable):
        return f"{where} cannot use its database right now: {error.message}"
    if isinstance(error, errors.ProviderUnavailable) and error.metadata.get("cause") == "dns":
        return f"{p} cannot be reached: {error.message}"  # a name that does not resolve: waiting rarely helps
    if isinstance(error, errors.ProviderUnavailable):
        return f"{p} is unavailable right now ({error.message}): try again later"
    if isinstance(error, errors.UpstreamStreamTruncated):
        return f"the {p} answer was cut short before it finished: try again"
    if isinstance(error, errors.Unavailable):
        return f"cannot reach {where}: is it running? {DEV_UP}"
    if isinstance(error, errors.DeadlineExceeded):
        return f"{where} did not answer in time: try again, or give more time with --timeout SECONDS"
    if isinstance(error, errors.KeyDecryptionFailed):
        return (
            f"the vault cannot decrypt the stored {p} key (its seed changed): "
            f"ask the operator, or store the key again with `rmllm keys set {p}`"
        )
    if isinstance(error, errors.Internal):
        return f"{where} failed: {error.message}"
    if isinstance(error, errors.Unimplemented):
        return f"{where} does not support this call (is it an older version?): {error.message}"
    return f"{where} answered {error.code.name} ({error.reason}): {error.message}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, with a header row."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [list(headers), *rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "-"


def configs_table(configs: Sequence[ProviderConfig]) -> str:
    rows = [
        [
            c.provider,
            f"…{c.key_hint}" if c.key_hint else "-",
            c.settings.default_model or "(default)",
            _when(c.update_time),
            str(c.usage_count),
            "yes" if c.is_active else "no",
        ]
        for c in configs
    ]
    return table(["PROVIDER", "KEY", "MODEL", "UPDATED", "USES", "ACTIVE"], rows)


def providers_table(providers: Sequence[ProviderInfo]) -> str:
    rows = [
        [
            p.id,
            p.display_name,
            ", ".join(p.aliases) or "-",
            p.default_model,
            "yes" if p.requires_key else "no",
            str(len(p.models)),
        ]
        for p in providers
    ]
    return table(["PROVIDER", "NAME", "ALIASES", "DEFAULT MODEL", "NEEDS KEY", "MODELS"], rows)


def _price(value: float) -> str:
    return f"{value:g}" if value else "-"


def models_table(models: ModelList) -> str:
    rows = [
        [
            m.id,
            m.display_name,
            str(m.context_window) if m.context_window else "-",
            _price(m.input_price_per_mtok),
            _price(m.output_price_per_mtok),
        ]
        for m in models.models
    ]
    return table(["MODEL", "NAME", "CONTEXT", "IN $/MTOK", "OUT $/MTOK"], rows)


def summary(result: ChatResult) -> str:
    """``[openai gpt-4o-mini · 12 in / 34 out tokens · $0.000022 · stop]``."""
    usage = result.usage
    return f"[{result.provider} {result.model} · {usage} · {result.finish_reason.value}]"
