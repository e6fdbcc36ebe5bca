"""The `mcpmeter` command."""
