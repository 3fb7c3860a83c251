"""feddel-sim subcommands: curate, demo, compare, bench (data lives in simulations/cli.py)."""
