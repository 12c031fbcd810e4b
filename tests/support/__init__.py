"""Helpers that tests and benchmarks share: real and fake servers on loopback."""
