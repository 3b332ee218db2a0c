"""The ``mdpr`` command line: one module per subcommand, registered here."""

from __future__ import annotations

from mdpr.cli.app import app

# Importing a module registers its subcommand(s). Only subcommands that really work are listed.
# (Keep this list sorted by the order users meet the commands.)
_COMMANDS = [
    "demo",
    "prepare",
    "train",
    "evaluate",
    "extract",
    "index",
    "query",
    "store",
    "visualize",
    "export",
    "listing",
]

for _name in _COMMANDS:
    __import__(f"mdpr.cli.{_name}")


def main() -> None:
    """Entry point of the ``mdpr`` console script."""
    app()


__all__ = ["app", "main"]
