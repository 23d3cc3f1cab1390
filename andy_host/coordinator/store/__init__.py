"""Durable state behind one interface, on SQLite (the default) or PostgreSQL.

``interface`` (the Store protocol and its values), ``schema`` (both schemas and their
typed rows), ``keycache`` (the cache of live keys both keep), ``sqlite`` and ``postgres``
(the two stores)."""
