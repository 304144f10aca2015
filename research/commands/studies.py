"""``hakobune research`` commands (being built)."""

from research.cli import app as app
