"""Bulk AES-256-XTS over 512-byte sectors with plain64 IVs, as LUKS and QEMU use it.

XTS (IEEE 1619) encrypts each 16-byte block j of a sector as

    C = AES(key1, P ^ T_j) ^ T_j,   T_j = AES(key2, iv) * alpha^j in GF(2^128)

where ``iv`` is the sector number as a 64-bit little-endian integer padded to 16 bytes
(dm-crypt's and QEMU's ``plain64``). A library call per sector costs more than the AES
itself, so whole buffers are done at once: one ECB call with key2 gives T_0 of every sector,
NumPy derives the 32 block tweaks of each sector, and one ECB call with key1 runs between two
XORs. Sectors are processed in chunks that keep the temporaries in the CPU cache.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SECTOR_SIZE = 512
KEY_SIZE = 64

_BLOCKS_PER_SECTOR = SECTOR_SIZE // 16
# The XTS byte order is little-endian; views of the data use it explicitly.
_U64 = np.dtype("<u8")
# Sectors per inner step: 128 KiB of data keeps the tweak table and the data in L2.
_CHUNK_SECTORS = 256
_MAX_SECTOR = 2**64 - 1

# x^128 = x^7 + x^2 + x + 1 in the XTS field, so bits shifted out past bit 127 fold back
# shifted by 0, 1, 2 and 7.
_ONE, _TWO, _SEVEN = np.uint64(1), np.uint64(2), np.uint64(7)


def _sector_numbers(first_sector: int, count: int) -> np.ndarray:
    """The plain64 sector numbers first_sector .. first_sector+count-1, range-checked."""
    if first_sector < 0 or first_sector + count - 1 > _MAX_SECTOR:
        raise ValueError(f"sector numbers must fit in 64 bits, got {first_sector}+{count}")
    # Built from a 0-based arange so that numbers near 2^64 do not overflow int64.
    return np.arange(count, dtype=np.uint64) + np.uint64(first_sector)


class XtsCipher:
    """AES-256-XTS with a 64-byte key (key1 = data key, key2 = tweak key), 512-byte units.

    Thread-safe: every call creates its own OpenSSL contexts and buffers.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"AES-256-XTS needs a {KEY_SIZE}-byte key, got {len(key)}")
        key = bytes(key)
        if key[:32] == key[32:]:
            # IEEE 1619-2018 and OpenSSL refuse equal halves: it voids XTS' security proof.
            raise ValueError("the two halves of an XTS key must differ")
        self._data_cipher = Cipher(algorithms.AES(key[:32]), modes.ECB())
        self._tweak_cipher = Cipher(algorithms.AES(key[32:]), modes.ECB())

    def encrypt(self, data: bytes | bytearray | memoryview, first_sector: int) -> bytes:
        """Encrypt whole sectors; the first 512 bytes are sector ``first_sector``."""
        return self._crypt_range(data, first_sector, encrypt=True)

    def decrypt(self, data: bytes | bytearray | memoryview, first_sector: int) -> bytes:
        """Decrypt whole sectors; the first 512 bytes are sector ``first_sector``."""
        return self._crypt_range(data, first_sector, encrypt=False)

    def crypt_sectors(
        self, data: bytes | bytearray | memoryview, sectors: np.ndarray, *, encrypt: bool
    ) -> bytearray:
        """En- or decrypt sectors that need not be contiguous.

        ``sectors`` holds one uint64 sector number per 512 bytes of ``data``. Used to decrypt
        only the allocated sectors of a sparse read in one pass.
        """
        view = memoryview(data).cast("B")
        count = _sector_count(len(view))
        sectors = np.asarray(sectors, dtype=np.uint64)
        if sectors.shape != (count,):
            raise ValueError(f"need {count} sector numbers, got shape {sectors.shape}")
        out = bytearray(len(view))
        self._crypt_into(view, out, sectors, encrypt)
        return out

    def _crypt_range(
        self, data: bytes | bytearray | memoryview, first_sector: int, *, encrypt: bool
    ) -> bytes:
        view = memoryview(data).cast("B")
        count = _sector_count(len(view))
        out = bytearray(len(view))
        self._crypt_into(view, out, _sector_numbers(first_sector, count), encrypt)
        return bytes(out)

    def _crypt_into(
        self, src: memoryview, dst: bytearray, sectors: np.ndarray, encrypt: bool
    ) -> None:
        """Write the transform of ``src`` (whole sectors) into ``dst`` of the same length."""
        count = len(sectors)
        if count == 0:
            return
        source = np.frombuffer(src, dtype=_U64).reshape(count, _BLOCKS_PER_SECTOR, 2)
        target = np.frombuffer(dst, dtype=_U64).reshape(count, _BLOCKS_PER_SECTOR, 2)
        dst_view = memoryview(dst)
        step = min(count, _CHUNK_SECTORS)
        # update_into() wants room for one extra block minus a byte.
        scratch = bytearray(step * SECTOR_SIZE + 15)
        scratch_blocks = np.frombuffer(scratch, dtype=_U64, count=step * SECTOR_SIZE // 8)
        aes = self._data_cipher.encryptor() if encrypt else self._data_cipher.decryptor()
        tweak_aes = self._tweak_cipher.encryptor()
        for start in range(0, count, step):
            stop = min(start + step, count)
            size = (stop - start) * SECTOR_SIZE
            tweaks = self._tweaks(tweak_aes, sectors[start:stop])
            whitened = target[start:stop]
            np.bitwise_xor(source[start:stop], tweaks, out=whitened)
            aes.update_into(dst_view[start * SECTOR_SIZE : start * SECTOR_SIZE + size], scratch)
            result = scratch_blocks[: size // 8].reshape(stop - start, _BLOCKS_PER_SECTOR, 2)
            np.bitwise_xor(result, tweaks, out=whitened)
        aes.finalize()

    @staticmethod
    def _tweaks(tweak_aes: object, sectors: np.ndarray) -> np.ndarray:
        """The (n, 32, 2) table of block tweaks T_0 * alpha^j, j = 0..31, for n sectors.

        A 128-bit tweak is held as (low, high) little-endian 64-bit halves. Columns are filled
        by doubling: columns [k, 2k) are columns [0, k) times alpha^k, a k-bit left shift
        across both halves whose overflow h folds back as h * (x^7 + x^2 + x + 1). Five such
        steps replace 31 single multiplications and keep the NumPy call count low.
        """
        count = len(sectors)
        ivs = np.zeros((count, 2), dtype=_U64)
        ivs[:, 0] = sectors
        t0 = tweak_aes.update(ivs.tobytes())  # type: ignore[attr-defined]
        table = np.empty((count, _BLOCKS_PER_SECTOR, 2), dtype=_U64)
        table[:, 0, :] = np.frombuffer(t0, dtype=_U64).reshape(count, 2)
        width = 1
        while width < _BLOCKS_PER_SECTOR:
            shift, back = np.uint64(width), np.uint64(64 - width)
            low, high = table[:, :width, 0], table[:, :width, 1]
            overflow = high >> back
            new_low, new_high = table[:, width : 2 * width, 0], table[:, width : 2 * width, 1]
            np.left_shift(high, shift, out=new_high)
            new_high |= low >> back
            np.left_shift(low, shift, out=new_low)
            new_low ^= overflow
            new_low ^= overflow << _ONE
            new_low ^= overflow << _TWO
            new_low ^= overflow << _SEVEN
            width *= 2
        return table


def _sector_count(length: int) -> int:
    if length % SECTOR_SIZE:
        raise ValueError(f"XTS data must be whole {SECTOR_SIZE}-byte sectors, got {length} bytes")
    return length // SECTOR_SIZE
