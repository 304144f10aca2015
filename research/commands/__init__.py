"""Command modules of the research role; each registers its commands on ``research.cli.app``."""
