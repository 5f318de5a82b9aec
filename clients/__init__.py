"""Clients for RealMultiLLM: the Python library (sync and asyncio) and the ``rmllm`` command.

Example::

    from clients import Client, KeyNotConfigured

    with Client(token=os.environ["RMLLM_TOKEN"]) as client:
        try:
            with client.stream_chat("openai", "Write a haiku") as stream:
                for delta in stream:
                    print(delta, end="", flush=True)
            print(f"\\n{stream.result.usage}")  # 12 in / 34 out tokens · $0.000022
        except KeyNotConfigured:
            print("store a key first: rmllm keys set openai")

``Client`` (``clients.sync``) blocks; ``AsyncClient`` (``clients.aio``) has the same
methods as coroutines. Results are the dataclasses of ``clients.datatypes``; failures
raise the typed exceptions of ``clients.errors``. The package needs only grpcio,
grpcio-status and the generated ``realmultillm`` stubs, never the servers.
"""

from clients.aio import AsyncChatStream, AsyncClient
from clients.calls import UNSET
from clients.channels import DEFAULT_LLM_TARGET, DEFAULT_VAULT_TARGET, ClientOptions, Tls
from clients.datatypes import (
    ChatResult,
    Document,
    FinishReason,
    Image,
    Message,
    ModelInfo,
    ModelList,
    ProviderConfig,
    ProviderInfo,
    ProviderSettings,
    Reasoning,
    ResponseFormat,
    Role,
    TestKeyReason,
    TestKeyResult,
    Tool,
    ToolCall,
    Usage,
    format_usd,
)
from clients.errors import (
    AlreadyExists,
    BudgetExceeded,
    Cancelled,
    CapabilityUnsupported,
    ConfigNotFound,
    DatabaseUnavailable,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidRequest,
    KeyDecryptionFailed,
    KeyNotConfigured,
    MalformedRequest,
    MethodNotAllowed,
    ModelNotAllowed,
    NotFound,
    PermissionDenied,
    ProviderError,
    ProviderKeyInvalid,
    ProviderQuotaExhausted,
    ProviderRateLimited,
    ProviderUnavailable,
    RateLimited,
    ResourceExhausted,
    RmllmClientError,
    ServiceCredentialRequired,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    UnknownProvider,
    UpstreamResponseTooLarge,
    UpstreamStreamTruncated,
    UserDisabled,
    VaultUnavailable,
    from_grpc_error,
)
from clients.sync import ChatStream, Client
from clients.usage import UsageGroup, UsagePage, UsageRecord, UsageSummary, UsageTotals

__all__ = [
    "DEFAULT_LLM_TARGET",
    "DEFAULT_VAULT_TARGET",
    "UNSET",
    "AlreadyExists",
    "AsyncChatStream",
    "AsyncClient",
    "BudgetExceeded",
    "Cancelled",
    "CapabilityUnsupported",
    "ChatResult",
    "ChatStream",
    "Client",
    "ClientOptions",
    "ConfigNotFound",
    "DatabaseUnavailable",
    "DeadlineExceeded",
    "Document",
    "FailedPrecondition",
    "FieldViolation",
    "FinishReason",
    "Image",
    "Internal",
    "InvalidRequest",
    "KeyDecryptionFailed",
    "KeyNotConfigured",
    "MalformedRequest",
    "Message",
    "MethodNotAllowed",
    "ModelInfo",
    "ModelList",
    "ModelNotAllowed",
    "NotFound",
    "PermissionDenied",
    "ProviderConfig",
    "ProviderError",
    "ProviderInfo",
    "ProviderKeyInvalid",
    "ProviderQuotaExhausted",
    "ProviderRateLimited",
    "ProviderSettings",
    "ProviderUnavailable",
    "RateLimited",
    "Reasoning",
    "ResourceExhausted",
    "ResponseFormat",
    "RmllmClientError",
    "Role",
    "ServiceCredentialRequired",
    "TestKeyReason",
    "TestKeyResult",
    "Tls",
    "Tool",
    "ToolCall",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnknownProvider",
    "UpstreamResponseTooLarge",
    "UpstreamStreamTruncated",
    "Usage",
    "UsageGroup",
    "UsagePage",
    "UsageRecord",
    "UsageSummary",
    "UsageTotals",
    "UserDisabled",
    "VaultUnavailable",
    "format_usd",
    "from_grpc_error",
]
