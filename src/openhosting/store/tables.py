"""The database tables, as SQLAlchemy Core metadata (the migrations create them)."""

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("uuid", String(36), primary_key=True),
    Column("name", String(256), nullable=False, server_default=""),
    # HMAC-SHA256 of the secret API key under a key derived from the platform key (hex).
    Column("key_hash", String(64), nullable=False),
    Column("created_at", Integer, nullable=False),
    # Subscription limits; NULL means no limit.
    Column("max_drive_bytes", BigInteger, nullable=True),
)
