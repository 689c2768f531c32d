"""Persistence: tables, queries and migrations (SQLite in the state directory by default)."""
