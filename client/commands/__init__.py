"""feddel-center subcommands: embed, join, status (check lives in client/cli.py)."""
