# AES-256-XTS over 512-byte sectors, compiled (_xts.c).
from _typeshed import ReadableBuffer, WriteableBuffer

def engines() -> tuple[str, ...]: ...
def expand_key(key: ReadableBuffer, /) -> bytes: ...
def crypt(
    engine: str,
    schedule: ReadableBuffer,
    data: WriteableBuffer,
    first_sector: int,
    sector_numbers: ReadableBuffer | None,
    encrypt: bool,
    keep_zero_sectors: bool,
    /,
) -> int: ...
def xor_tweaks(
    data: WriteableBuffer, first_tweaks: ReadableBuffer, table: WriteableBuffer, /
) -> None: ...
