"""Command-line trainers: `python -m trainers.train --help`."""
