"""Accounts: users and keys, billing and usage, dashboard sessions, the audit trail."""
