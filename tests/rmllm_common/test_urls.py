"""The one base-URL rule (rmllm_common.urls): both services accept and refuse the same URLs."""

from __future__ import annotations

import grpc
import pytest
from realmultillm.llm.v1 import llm_pb2
from realmultillm.vault.v1 import vault_pb2
from testkit.llm_harness import auth, llm_harness, rich_error

from llm_service.validation import check_base_url as llm_check
from rmllm_common import urls
from rmllm_common.errors import FieldViolation, InvalidRequest
from rmllm_common.registry import default_registry
from vault_service import validation as vault_validation

LLAMA = default_registry().resolve("llama")

REFUSED = [
    ("ftp://h/v1", "http:// or https://"),
    ("http://", "http:// or https://"),
    ("localhost:11434", "http:// or https://"),
    ("http://h:99999/v1", "not a valid URL"),
    ("http://h:0/v1", "port"),
    ("http://u:p@h/v1", "credentials"),
    ("http://u@h/v1", "credentials"),
    ("http://h/v1?x=1", "?query"),
    ("http://h/v1?", "?query"),  # an empty query still hands the caller the whole path
    ("http://h/v1#x", "#fragment"),
    ("http://h/v1#", "#fragment"),
    ("http://h/a b", "whitespace"),
    ("http://h/a\\b", "backslashes"),
    ("http://h\x00/v1", "control"),
    ("http://h%2e/v1", "host"),
    ("http://hé.example/v1", "host"),
    ("http://-bad-.example/v1", "host"),
    ("http://h/" + "a" * 2048, "too long"),
]


@pytest.mark.parametrize(("url", "says"), REFUSED)
def test_refused_urls(url: str, says: str) -> None:
    with pytest.raises(urls.BaseUrlError) as caught:
        urls.check_base_url(url)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("http://localhost:11434/", "http://localhost:11434"),
        ("https://gpu-box.lan:8443/v1/", "https://gpu-box.lan:8443/v1"),
        ("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"),
        ("http://[::1]:11434", "http://[::1]:11434"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
    ],
)
def test_accepted_urls(url: str, normalised: str) -> None:
    assert urls.check_base_url(url) == normalised


@pytest.mark.parametrize(("url", "says"), REFUSED)
def test_the_vault_and_the_llm_service_refuse_the_same_urls(url: str, says: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        vault_validation.base_url(url, LLAMA, allow_custom=True)
    assert caught.value.violations[0].field == "base_url"
    assert says in caught.value.violations[0].description
    bad: list[FieldViolation] = []
    assert llm_check(url, LLAMA, True, bad) == ""
    assert [v.field for v in bad] == ["base_url"]
    assert says in bad[0].description


def test_custom_endpoint_policy_is_shared() -> None:
    openai = default_registry().resolve("openai")
    assert urls.custom_endpoint_refusal("https://api.openai.com/v1", openai, False) is None
    assert urls.custom_endpoint_refusal("https://proxy.example/v1", openai, True) is None
    assert urls.custom_endpoint_refusal("http://gpu.lan:11434", LLAMA, False) is None  # llama allows custom
    refusal = urls.custom_endpoint_refusal("https://proxy.example/v1", openai, False)
    assert refusal is not None and "RMLLM_ALLOW_CUSTOM_BASE_URL=1" in refusal


async def test_testkey_refuses_a_query_like_the_vault() -> None:
    async with llm_harness({"RMLLM_ALLOW_CUSTOM_BASE_URL": "1"}) as llm:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.stub.TestKey(
                llm_pb2.TestKeyRequest(provider="llama", base_url="http://h:1/v1?"), metadata=auth()
            )
    rich = rich_error(caught.value)
    assert rich.code is grpc.StatusCode.INVALID_ARGUMENT
    assert rich.reason == "INVALID_REQUEST"
    assert rich.violations[0][0] == "base_url"


def test_the_vault_refuses_an_empty_query_in_an_update() -> None:
    request = vault_pb2.UpdateProviderConfigRequest(
        config=vault_pb2.ProviderConfig(base_url="http://h:1/v1?")
    )
    request.update_mask.paths.append("base_url")
    with pytest.raises(InvalidRequest) as caught:
        vault_validation.changes(request, LLAMA, allow_custom=False)
    assert caught.value.violations[0].field == "config.base_url"
