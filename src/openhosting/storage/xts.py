"""Bulk AES-256-XTS over 512-byte sectors with plain64 IVs, as LUKS and QEMU use it.

XTS (IEEE 1619) encrypts each 16-byte block j of a sector as

    C = AES(key1, P ^ T_j) ^ T_j,   T_j = AES(key2, iv) * alpha^j in GF(2^128)

where ``iv`` is the sector number as a 64-bit little-endian integer padded to 16 bytes
(dm-crypt's and QEMU's ``plain64``). A library call per sector costs more than the AES
itself (OpenSSL's XTS per 512 bytes: ~1.5 GB/s here, against ~5 GB/s for long calls), so
whole buffers are done at once, by one of three engines, the fastest the CPU runs:

- ``vaes`` and ``aesni`` (`_xts.c`): the whole of XTS in one compiled pass with the CPU's AES
  instructions, every byte loaded and stored once (VAES: two blocks a register). 6-8 GB/s
  and 3.5-5 GB/s a core on this machine's EPYC, where OpenSSL's own XTS does 4.5-5.4 GB/s.
- ``openssl``, for CPUs without them: a cache-sized step of sectors at a time, one ECB call
  with key2 gives T_0 of every sector, a compiled pass (`_xts.xor_tweaks`) derives the 32
  block tweaks of each sector and XORs them in, one ECB call with key1 runs, and NumPy XORs
  the tweaks in again (1.7-3.9 GB/s here: three passes over the data and the calls between).
"""

from __future__ import annotations

import threading

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from openhosting.storage import _xts

SECTOR_SIZE = 512
KEY_SIZE = 64

_BLOCKS_PER_SECTOR = SECTOR_SIZE // 16
# The XTS byte order is little-endian; views of the data use it explicitly.
_U64 = np.dtype("<u8")
# Sectors per inner step: 512 KiB of data with its tweaks and scratch stays in the caches
# (measured on a 2-core EPYC with the compiled pass: 256 to 8,192 sectors within 5 %).
_CHUNK_SECTORS = 1024
_MAX_SECTOR = 2**64 - 1

# What this CPU runs, fastest first; "openssl" runs everywhere.
ENGINES: tuple[str, ...] = (*_xts.engines(), "openssl")


def _check_sector_range(first_sector: int, count: int) -> None:
    if first_sector < 0 or first_sector + count - 1 > _MAX_SECTOR:
        raise ValueError(f"sector numbers must fit in 64 bits, got {first_sector}+{count}")


def _sector_numbers(first_sector: int, count: int) -> np.ndarray:
    """The plain64 sector numbers first_sector .. first_sector+count-1."""
    # Built from a 0-based arange so that numbers near 2^64 do not overflow int64.
    return np.arange(count, dtype=np.uint64) + np.uint64(first_sector)


class XtsCipher:
    """AES-256-XTS with a 64-byte key (key1 = data key, key2 = tweak key), 512-byte units.

    ``engine`` is one of ENGINES, the fastest by default (the others are for the tests and
    the benchmark). Thread-safe: the compiled engines keep nothing between calls; the
    OpenSSL one creates its contexts in every call and its scratch buffers are the calling
    thread's own.
    """

    def __init__(self, key: bytes, engine: str | None = None) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"AES-256-XTS needs a {KEY_SIZE}-byte key, got {len(key)}")
        key = bytes(key)
        if key[:32] == key[32:]:
            # IEEE 1619-2018 and OpenSSL refuse equal halves: it voids XTS' security proof.
            raise ValueError("the two halves of an XTS key must differ")
        self.engine = ENGINES[0] if engine is None else engine
        if self.engine not in ENGINES:
            raise ValueError(f"no XTS engine {self.engine!r} on this CPU: {ENGINES}")
        if self.engine == "openssl":
            self._data_cipher = Cipher(algorithms.AES(key[:32]), modes.ECB())
            self._tweak_cipher = Cipher(algorithms.AES(key[32:]), modes.ECB())
        else:
            self._schedule = _xts.expand_key(key)

    def encrypt(self, data: bytes | bytearray | memoryview, first_sector: int) -> bytes:
        """Encrypt whole sectors; the first 512 bytes are sector ``first_sector``."""
        out = bytearray(data)
        self.crypt_in_place(out, first_sector, encrypt=True)
        return bytes(out)

    def decrypt(self, data: bytes | bytearray | memoryview, first_sector: int) -> bytes:
        """Decrypt whole sectors; the first 512 bytes are sector ``first_sector``."""
        out = bytearray(data)
        self.crypt_in_place(out, first_sector, encrypt=False)
        return bytes(out)

    def crypt_in_place(
        self, buffer: bytearray | memoryview, sectors: int | np.ndarray, *, encrypt: bool
    ) -> None:
        """En- or decrypt a writable buffer of whole sectors in place, without copies.

        ``sectors`` is the number of the first sector, or an array with one sector number per
        512 bytes, so that scattered sectors (the allocated ones of a sparse read) can be
        done in one pass.
        """
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise TypeError("crypt_in_place needs a writable buffer")
        count = _sector_count(len(view))
        first = 0
        numbers = None
        if isinstance(sectors, int):
            _check_sector_range(sectors, count)
            first = sectors
        else:
            numbers = np.ascontiguousarray(sectors, dtype=np.uint64)
            if numbers.shape != (count,):
                raise ValueError(f"need {count} sector numbers, got shape {numbers.shape}")
        if count == 0:
            return
        if self.engine == "openssl":
            if numbers is None:
                numbers = _sector_numbers(first, count)
            self._crypt_with_openssl(view, numbers, encrypt)
        else:
            numbers_buffer = None if numbers is None else numbers.data
            _xts.crypt(self.engine, self._schedule, view, first, numbers_buffer, encrypt, False)

    def decrypt_nonzero_sectors(self, buffer: bytearray | memoryview, first_sector: int) -> int:
        """Decrypt in place the sectors of a writable buffer whose ciphertext is not all
        zeros; the others (a sparse file's holes, never written) stay zeros. How many were
        decrypted. The compiled engines test each sector as they go; the OpenSSL one gathers
        the sectors with data for one bulk pass."""
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise TypeError("decrypt_nonzero_sectors needs a writable buffer")
        count = _sector_count(len(view))
        _check_sector_range(first_sector, count)
        if count == 0:
            return 0
        if self.engine != "openssl":
            return _xts.crypt(self.engine, self._schedule, view, first_sector, None, False, True)
        sectors = np.frombuffer(view, dtype=np.uint64).reshape(count, SECTOR_SIZE // 8)
        written = _nonzero_sectors(sectors)
        index = np.flatnonzero(written)
        if len(index) == count:
            self._crypt_with_openssl(view, _sector_numbers(first_sector, count), False)
        elif len(index):
            picked = sectors[index]
            numbers = index.astype(np.uint64) + np.uint64(first_sector)
            self._crypt_with_openssl(picked.data.cast("B"), numbers, False)
            sectors[index] = picked
        return len(index)

    def _crypt_with_openssl(self, view: memoryview, numbers: np.ndarray, encrypt: bool) -> None:
        count = len(numbers)
        blocks = np.frombuffer(view, dtype=_U64).reshape(count, _BLOCKS_PER_SECTOR, 2)
        work = _thread_work() if count >= _CHUNK_SECTORS else _TweakWork(count)
        aes = self._data_cipher.encryptor() if encrypt else self._data_cipher.decryptor()
        tweak_aes = self._tweak_cipher.encryptor()
        for start in range(0, count, work.step):
            stop = min(start + work.step, count)
            data = view[start * SECTOR_SIZE : stop * SECTOR_SIZE]
            work.xor_tweaks(tweak_aes, numbers[start:stop], data)
            aes.update_into(data, work.scratch)
            np.bitwise_xor(
                work.scratch_blocks[: stop - start],
                work.table_blocks[: stop - start],
                out=blocks[start:stop],
            )
        aes.finalize()


class _TweakWork:
    """Scratch buffers for up to `step` sectors, made once per call (or kept by the thread):
    fresh ones in every step would cost allocations and cold cache lines."""

    def __init__(self, step: int) -> None:
        self.step = step
        self._ivs = np.zeros((step, 2), dtype=_U64)
        self.table = bytearray(step * SECTOR_SIZE)  # the block tweaks of the step's sectors
        self.table_blocks = np.frombuffer(self.table, dtype=_U64).reshape(
            step, _BLOCKS_PER_SECTOR, 2
        )
        # update_into() wants room for one extra block minus a byte.
        self.scratch = bytearray(step * SECTOR_SIZE + 15)
        self.scratch_blocks = np.frombuffer(
            self.scratch, dtype=_U64, count=step * SECTOR_SIZE // 8
        ).reshape(step, _BLOCKS_PER_SECTOR, 2)

    def xor_tweaks(self, tweak_aes: CipherContext, sectors: np.ndarray, data: memoryview) -> None:
        """XOR `data`, the whole sectors numbered `sectors`, with their block tweaks, and keep
        the tweaks in `table` for the XOR after AES. T_0 of every sector is one ECB call with
        the tweak key over their plain64 numbers; the compiled pass does the rest."""
        count = len(sectors)
        ivs = self._ivs[:count]
        ivs[:, 0] = sectors
        first_tweaks = tweak_aes.update(ivs.data.cast("B"))
        _xts.xor_tweaks(data, first_tweaks, self.table)


_works = threading.local()


def _thread_work() -> _TweakWork:
    """This thread's scratch arrays for whole steps, kept: made afresh for every 4 MiB read,
    their megabytes cost page faults and cold cache lines each time."""
    work: _TweakWork | None = getattr(_works, "work", None)
    if work is None:
        work = _works.work = _TweakWork(_CHUNK_SECTORS)
    return work


def _nonzero_sectors(sectors: np.ndarray) -> np.ndarray:
    """Which rows of a (count, 64) uint64 view of sectors hold any non-zero byte.

    Only the first 16 bytes of each sector are looked at first: ciphertext starts with 16
    zero bytes with probability 2^-128, so the whole sector is checked only where they are
    zero (a hole, in practice), and the answer is exact at a thirty-second of the reads.
    The two words are ORed rather than reduced with any(axis=1): NumPy's reduction over
    rows of two cost ten times as much (3% of an encrypted read's CPU).
    """
    written: np.ndarray = np.bitwise_or(sectors[:, 0], sectors[:, 1]).astype(bool)
    doubtful = np.flatnonzero(~written)
    if len(doubtful):
        written[doubtful] = sectors[doubtful].any(axis=1)
    return written


def _sector_count(length: int) -> int:
    if length % SECTOR_SIZE:
        raise ValueError(f"XTS data must be whole {SECTOR_SIZE}-byte sectors, got {length} bytes")
    return length // SECTOR_SIZE
