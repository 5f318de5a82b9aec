"""The error interceptor's release of a failed call's frames (rmllm_common.server)."""

from __future__ import annotations

import gc
import weakref

from rmllm_common.errors import ProviderError
from rmllm_common.server import _released


class Buffer(bytearray):
    """A bytearray that can be weakly referenced."""


def _fail(holder: list[weakref.ref[Buffer]]) -> None:
    data = Buffer(1024 * 1024)  # a provider's answer, held by this frame
    holder.append(weakref.ref(data))
    try:
        raise ConnectionResetError("cut")
    except ConnectionResetError as e:
        raise ProviderError("the provider failed") from e


def test_a_released_error_keeps_no_frame_alive() -> None:
    gc.disable()
    try:
        holder: list[weakref.ref[Buffer]] = []
        try:
            _fail(holder)
        except ProviderError as e:
            error = e
        assert holder[0]() is not None  # the traceback keeps the frame, and the buffer, alive
        released = _released(error)
        assert released is error and error.__traceback__ is None and error.__cause__ is not None
        assert error.__cause__.__traceback__ is None
        assert holder[0]() is None  # freed by reference counting, no garbage collection needed
    finally:
        gc.enable()
