"""Durable state behind one interface, on SQLite (the default) or PostgreSQL."""
