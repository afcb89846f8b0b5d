"""The `probe` command line. Nothing in probe imports it."""

from probe.cli.main import cli, main

__all__ = ["cli", "main"]
