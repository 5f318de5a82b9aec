"""The one base-URL rule both services apply: what an endpoint override may look like.

A provider endpoint override (``base_url`` of a stored config, of UpdateProviderConfig,
of TestKey) is checked here and nowhere else, so the vault and the LLM service can
never disagree about it again. ``check_base_url`` accepts an absolute ``http`` or
``https`` URL with a plain host (a DNS name or an IP literal) and an optional port
and path; it refuses whitespace and control characters, backslashes, credentials
(``user:pass@``), a query (even an empty ``?``), a fragment (even an empty ``#``),
percent-encoded or non-ASCII hosts, and anything longer than 2,048 characters. It
returns the URL without trailing slashes, or raises ``BaseUrlError`` whose text is a
field description for a BadRequest. ``custom_endpoint_refusal`` is the operator's
custom-endpoint policy (``RMLLM_ALLOW_CUSTOM_BASE_URL``). Where an accepted URL may
then *connect* to (loopback, private ranges...) is the LLM service's network policy
(``llm_service.netpolicy``), checked after DNS resolution.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final
from urllib.parse import urlsplit

from rmllm_common.registry import ProviderSpec

MAX_BASE_URL_CHARS: Final = 2048
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^(?:{_LABEL}\.)*{_LABEL}\.?$")
_IPV6_LITERAL = re.compile(r"^\[[0-9A-Fa-f:.]+\]$")


class BaseUrlError(ValueError):
    """A refused base URL; ``str(error)`` says what is accepted (never quoting a secret)."""


def _bad_character(text: str) -> bool:
    return any(c.isspace() or c == "\\" or unicodedata.category(c).startswith("C") for c in text)


def check_base_url(url: str) -> str:
    """``url`` normalised (no trailing ``/``), or ``BaseUrlError`` saying what is wrong."""
    if len(url) > MAX_BASE_URL_CHARS:
        raise BaseUrlError(f"too long: at most {MAX_BASE_URL_CHARS} characters")
    if _bad_character(url):
        raise BaseUrlError("must not contain whitespace, backslashes or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise BaseUrlError("not a valid URL") from exc
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BaseUrlError("must be an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise BaseUrlError("must not contain credentials (user:password@)")
    if "?" in url:
        raise BaseUrlError("must not contain a ?query (the provider's paths are appended to it)")
    if "#" in url:
        raise BaseUrlError("must not contain a #fragment")
    host = parts.netloc.rsplit(":", 1)[0] if port is not None or parts.netloc.endswith(":") else parts.netloc
    if not (_HOST.match(host) or _IPV6_LITERAL.match(host)):
        raise BaseUrlError("the host must be a DNS name or an IP address (ASCII letters, digits, '-', '.')")
    if port == 0:
        raise BaseUrlError("the port must be from 1 to 65535")
    return url.rstrip("/")


def custom_endpoint_refusal(normalised: str, spec: ProviderSpec, allow_custom: bool) -> str | None:
    """Why this server refuses ``normalised`` as an endpoint of ``spec`` (None: allowed).

    The provider's own default is always allowed; anything else needs the registry
    to allow custom endpoints for the provider (``llama``) or the operator's
    ``RMLLM_ALLOW_CUSTOM_BASE_URL=1``.
    """
    if normalised == spec.base_url or allow_custom or spec.custom_base_url:
        return None
    return (
        f"{spec.display_name} may only use its default endpoint {spec.base_url} (or leave base_url "
        "empty); the operator can allow custom endpoints with RMLLM_ALLOW_CUSTOM_BASE_URL=1"
    )
