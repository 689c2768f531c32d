# The compiled XTS tweak pass (_xts_tweaks.c).
from _typeshed import ReadableBuffer, WriteableBuffer

def xor_tweaks(
    data: WriteableBuffer, first_tweaks: ReadableBuffer, table: WriteableBuffer, /
) -> None: ...
