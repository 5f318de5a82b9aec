"""The overhead benchmark: the gateway measured against a direct call to the same fake provider.

``python -m bench`` (see ``bench.cli``) starts the fake OpenAI-compatible provider
from ``tests/fakes`` in its own process, the vault and the LLM service as real
processes, and a load generator in another process; runs the direct and gateway
configurations alternately at each concurrency; and writes ``results.json``,
``results.md`` and ``results.png`` (by default into ``docs/benchmarks/``).
"""
