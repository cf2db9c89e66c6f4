"""The ``tilewise`` command line: argument parsing and every sub-command."""
