"""Workflows: one plain function per subcommand, shared by the CLI and Python users."""
