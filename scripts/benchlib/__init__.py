"""Helpers for scripts/bench.py: real peer proxies, load generation, process accounting."""
