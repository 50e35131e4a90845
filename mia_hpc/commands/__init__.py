"""Subcommand groups of the ``mia-hpc`` CLI, each with ``register(subparsers) -> {name: handler}``."""
