"""Alembic migrations of the center catalog (run by :meth:`center.catalog.Catalog.open`)."""
