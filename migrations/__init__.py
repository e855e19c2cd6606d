"""Alembic migrations of the control plane's database (Postgres, or SQLite embedded)."""
