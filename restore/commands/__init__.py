"""Command-line apps of the restore role (mounted by ``hakobune.cli``)."""
