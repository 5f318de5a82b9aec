"""Clients for RealMultiLLM: the Python library and the ``rmllm`` command."""
