"""The error contract has one source, ``rmllm_common.errors.REASONS``; everything else follows it.

Checked here: every server error class, every ``reason=`` a service passes, the
reason list in ``llm.proto``, and the client's classes (``clients.errors`` imports no
server code, so the comparison is made here, in the test).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from clients import errors as client_errors
from rmllm_common import errors

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PACKAGES = ("llm_service", "vault_service", "rmllm_common")


def subclasses(cls: Any) -> Iterator[Any]:
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)


def server_classes() -> list[type[errors.RmllmError]]:
    return sorted(set(subclasses(errors.RmllmError)), key=lambda c: c.__name__)


def passed_reasons() -> list[tuple[str, str, grpc.StatusCode | None]]:
    """Every ``reason="..."`` keyword in the services' code: (where, reason, the class's code if known)."""
    found = []
    for package in SERVICE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                for keyword in node.keywords:
                    if keyword.arg == "reason" and isinstance(keyword.value, ast.Constant):
                        callee = getattr(errors, getattr(node.func, "id", ""), None)
                        code = (
                            callee.code
                            if isinstance(callee, type) and issubclass(callee, errors.RmllmError)
                            else None
                        )
                        found.append(
                            (f"{path.relative_to(ROOT)}:{node.lineno}", str(keyword.value.value), code)
                        )
    return found


def client_class_for(reason: str, code: grpc.StatusCode) -> type[client_errors.RmllmClientError] | None:
    """The client class dedicated to ``reason`` (found among all of them, not through the lookup)."""
    matches = [
        c
        for c in subclasses(client_errors.RmllmClientError)
        if c.__dict__.get("reason") == reason and c.code == code
    ]
    assert len(matches) <= 1, matches
    return matches[0] if matches else None


def test_reasons_are_upper_snake_case() -> None:
    assert all(re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", reason) for reason in errors.REASONS)


def test_every_server_error_class_is_in_the_table_with_its_code() -> None:
    classes = server_classes()
    assert len(classes) > 20
    for cls in classes:
        assert cls.reason in errors.REASONS, (
            f"{cls.__name__}: add {cls.reason} to rmllm_common.errors.REASONS"
        )
        assert errors.REASONS[cls.reason].code == cls.code, cls.__name__


def test_every_reason_a_service_passes_is_in_the_table_with_its_code() -> None:
    passed = passed_reasons()
    assert passed, "the scan found no reason= at all: it is broken"
    for where, reason, code in passed:
        assert reason in errors.REASONS, f"{where}: add {reason} to rmllm_common.errors.REASONS"
        if code is not None:
            assert errors.REASONS[reason].code == code, f"{where}: {reason} is {errors.REASONS[reason].code}"


def test_the_reason_scan_sees_a_drift() -> None:
    # The scan reads keyword arguments, so a new `reason="..."` cannot slip past it.
    tree = ast.parse('raise errors.Unavailable("x", reason="SOMETHING_NEW")')
    keywords = [k for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords]
    assert [(k.arg, getattr(k.value, "value", None)) for k in keywords] == [("reason", "SOMETHING_NEW")]
    assert "SOMETHING_NEW" not in errors.REASONS


def test_llm_proto_lists_exactly_the_llm_services_reasons_with_their_codes() -> None:
    text = (ROOT / "protos/realmultillm/llm/v1/llm.proto").read_text()
    header = text[text.index("Reasons, with their status codes") : text.index("syntax =")]
    listed = dict(re.findall(r"^//   ([A-Z][A-Z0-9_]*) \(([A-Z_]+)\):", header, flags=re.MULTILINE))
    expected = {
        reason: spec.code.name for reason, spec in errors.REASONS.items() if errors.LLM in spec.services
    }
    assert listed == expected


def test_every_server_error_has_its_own_client_class() -> None:
    wire = {cls.reason: cls.code for cls in server_classes()}
    wire |= {reason: errors.REASONS[reason].code for _, reason, _ in passed_reasons()}
    for reason, code in sorted(wire.items(), key=lambda item: item[0]):
        if not errors.REASONS[reason].services:
            continue  # printed by the operator commands, never sent to a client
        found = client_class_for(reason, code)
        assert found is not None, f"add a client class for {reason} ({code.name}) to clients/errors.py"
        assert client_errors.error_class(code, reason) is found
