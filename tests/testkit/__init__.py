"""Shared test helpers: real service subprocesses, ports, the network guard."""
