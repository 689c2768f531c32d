"""The database tables, as SQLAlchemy Core metadata (the migrations create them)."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

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

drives = Table(
    "drives",
    metadata,
    Column("uuid", String(36), primary_key=True),
    Column("user", String(36), ForeignKey("users.uuid", ondelete="CASCADE"), nullable=False),
    Column("name", String(256), nullable=False, server_default=""),
    Column("size", BigInteger, nullable=False),
    Column("claim_type", String(16), nullable=False, server_default="exclusive"),
    Column("readers", Text, nullable=False, server_default=""),
    Column("tags", Text, nullable=False, server_default=""),
    Column("user_keys", Text, nullable=False, server_default="{}"),  # JSON object
    Column("avoid", Text, nullable=False, server_default=""),
    Column("cipher", String(32), nullable=False),
    Column("tier", String(16), nullable=False, server_default="disk"),
    # For encrypted drives: the LUKS passphrase (for QEMU) and master key (for in-process
    # I/O), each wrapped by a key derived from the platform key.
    Column("wrapped_passphrase", LargeBinary, nullable=True),
    Column("wrapped_master_key", LargeBinary, nullable=True),
    Column("created_at", Integer, nullable=False),
    Column("read_bytes", BigInteger, nullable=False, server_default="0"),
    Column("read_requests", BigInteger, nullable=False, server_default="0"),
    Column("write_bytes", BigInteger, nullable=False, server_default="0"),
    Column("write_requests", BigInteger, nullable=False, server_default="0"),
    Index("drives_by_user", "user"),
)

# Who holds a drive: a server's device (`guest`) or an imaging job (`imaging`).
claims = Table(
    "claims",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("drive", String(36), ForeignKey("drives.uuid", ondelete="CASCADE"), nullable=False),
    Column("user", String(36), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("holder", String(36), nullable=False),
    Column("device", String(32), nullable=False, server_default=""),
    Column("exclusive", Boolean, nullable=False),
    Index("claims_by_drive", "drive"),
)
