"""Alembic migrations for the order database, configured in code by `phone_agent.db` (no
alembic.ini). `env.py` runs on a connection handed over by `phone_agent.db.upgrade`, or, when
Alembic's own commands drive it, on an async engine for the configured URL."""
