"""A fake LLM provider that speaks the OpenAI, Anthropic and Gemini wire formats byte for byte.

In-process (pytest, inside the test's event loop)::

    async with FakeProvider() as fake:          # 127.0.0.1, a free port
        fake.enqueue(Scenario.transcript("openrouter_basic", chunks=(1,)))
        base_url = fake.base_url("openrouter")  # http://127.0.0.1:PORT/api/v1
        ...                                     # call the adapter / the service
        record = await fake.wait_finished()     # the last request, once answered
        assert record.path == "/api/v1/chat/completions" and not record.disconnected

As a process (subprocess tests, benchmarks)::

    PYTHONPATH=tests python -m fakes.server --port 0 [--no-record] [--default slow
        --slow-delay 0.05 --slow-pieces 20]

prints one line ``{"event": "serving", "address": "127.0.0.1:PORT"}`` on stdout
(``testkit.procs.start(["fakes.server", "--port", "0"], {"PYTHONPATH": "tests"})``
understands it) and serves until SIGTERM. ``--no-record`` is the benchmark's fast
mode: chat requests without a scenario get a cached synthetic answer in their
wire format, nothing is recorded, no delay. ``--default slow`` makes every chat
answer a stream of ``--slow-pieces`` events ``--slow-delay`` seconds apart (for
the many-open-streams benchmark).

HTTP control API (JSON, on the same port):

* ``POST /_fake/scenarios`` a scenario object or a list of them: queued in order.
  Fields: ``transcript`` (a name under ``transcripts/``), ``canned``
  (``[provider, kind]``, kinds in ``fakes.provider_errors.KINDS``), ``json`` (+ ``status``),
  ``body_b64``, or none of these (a synthetic stream: ``pieces``, ``fail_after``);
  delivery: ``chunks`` (write sizes, cycled), ``delay`` (seconds between writes),
  ``truncate_at`` / ``end_at`` / ``stall_at`` (body bytes), ``hang``; ``headers``,
  ``route`` (``"chat"`` or ``"get"``), ``times``.
* ``PUT /_fake/default`` a scenario object (or ``null``) for unqueued requests.
* ``PUT /_fake/record`` ``{"enabled": false}`` stops recording.
* ``GET /_fake/requests`` the recorded requests: ``method``, ``path``, ``query``,
  ``headers`` (lower-case names), ``json``, ``route``, ``provider``, ``scenario``,
  ``outcome`` (answered, disconnected, truncated, ended_early, stalled, hung),
  ``disconnected``, ``finished``.
* ``POST /_fake/reset`` forgets the queue, the default and the records.

The recorded transcripts (``fakes.transcripts``) carry their expected result;
``fakes.harness`` has the helpers adapter tests share.
"""

from __future__ import annotations

from fakes.scenario import Scenario
from fakes.server import FakeProvider, RecordedRequest

__all__ = ["FakeProvider", "RecordedRequest", "Scenario"]
