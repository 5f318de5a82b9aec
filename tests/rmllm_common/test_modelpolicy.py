"""Model policy patterns: parsing and matching, shared by the vault and the LLM service."""

from __future__ import annotations

import pytest

from rmllm_common.modelpolicy import ModelPolicy, PolicyError, matches, parse


def test_parse_validates_and_ignores_blanks() -> None:
    assert parse(" openai/gpt-4o-mini, anthropic/* ,,") == ("openai/gpt-4o-mini", "anthropic/*")
    assert parse("") == ()
    for bad in ("no-slash", "openai/", "/model", "open ai/x", "openai/x;drop", "a/" + "b" * 300):
        with pytest.raises(PolicyError):
            parse(bad)
    with pytest.raises(PolicyError, match="at most 100"):
        parse(",".join(f"openai/m{i}" for i in range(101)))


def test_matching_is_whole_string_with_star_as_any_run() -> None:
    assert matches("anthropic/*", "anthropic", "claude-haiku-4-5")
    assert matches("*/llama3*", "llama", "llama3.1:8b")
    assert matches("openai/gpt-4o-mini", "openai", "gpt-4o-mini")
    assert not matches("openai/gpt-4o", "openai", "gpt-4o-mini")  # no prefix matching
    assert not matches("openai/gpt.4o", "openai", "gpt-4o")  # a dot is a dot
    assert not matches("Openai/*", "openai", "x")  # case-sensitive
    assert matches("openrouter/openai/*", "openrouter", "openai/gpt-4o")  # slashes in model ids


def test_deny_wins_and_empty_allow_allows_the_rest() -> None:
    policy = ModelPolicy(allow=("openai/*", "anthropic/claude-haiku-*"), deny=("openai/gpt-4o",))
    assert policy.allows("openai", "gpt-4o-mini")
    assert not policy.allows("openai", "gpt-4o")
    assert policy.allows("anthropic", "claude-haiku-4-5")
    assert not policy.allows("anthropic", "claude-sonnet-4-5")
    assert not policy.allows("google", "gemini-2.5-flash")
    only_deny = ModelPolicy(deny=("google/*",))
    assert only_deny.allows("openai", "anything") and not only_deny.allows("google", "gemini")
    assert ModelPolicy().allows("any", "thing") and not ModelPolicy()


def test_providers_listed_are_those_some_model_of_may_be_allowed() -> None:
    policy = ModelPolicy(allow=("openai/gpt-4o-mini", "anthropic/*"), deny=("google/*",))
    assert [p for p in ("openai", "anthropic", "google", "grok") if policy.allows_some(p)] == [
        "openai",
        "anthropic",
    ]
    assert ModelPolicy(deny=("openai/gpt-4o",)).allows_some("openai")  # one model denied, not the provider
    assert not ModelPolicy(deny=("*/*",)).allows_some("openai")
