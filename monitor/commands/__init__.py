"""CLI subcommands, one module per stage; each exposes ``add_commands(subparsers)``."""
