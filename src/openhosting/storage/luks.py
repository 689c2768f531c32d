"""LUKS1 containers for encrypted drives: create, unlock, and read/write the payload in place.

An encrypted drive is one file: a LUKS1 header (aes, xts-plain64, a 512-bit master key, so
AES-256-XTS, sha256), then the payload, whose sector n is encrypted with plain64 IV n
(counted from the payload start). QEMU opens the same file natively with
``driver=luks,key-secret=...``; the daemon reads and writes it here with the same key.

Layout written by :func:`format_luks1`: the 592-byte header in the first 4 KiB, eight key
slot areas of 500 sectors each rounded up to 4 KiB (504 sectors, from sector 8, as
cryptsetup and QEMU place them), only slot 0 in use, and the payload at sector 4096 (2 MiB,
cryptsetup's alignment; QEMU itself would put it at 4040). The payload is left sparse.

Never-written sectors: a hole reads as zero bytes, and zero *ciphertext* decrypts to
garbage. QEMU does not hide that (a guest sees garbage in never-written sectors of any LUKS
drive, the accepted behaviour of ``qemu-img create -f luks``), but our API promises that
bytes never written read as zeros. So :meth:`LuksVolume.read_at` returns zeros for every
sector whose ciphertext on disk is all zeros (holes included; real ciphertext is all zeros
with probability 2^-4096) and decrypts the rest. Writes always store real ciphertext, zeros
included: storing zero ciphertext for zero data would make QEMU read garbage where the
guest expects zeros. So the file stays sparse exactly where nothing was ever written.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import struct
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from openhosting.errors import SystemError_
from openhosting.reverter import Reverter
from openhosting.storage.file_writes import pwrite_all
from openhosting.storage.xts import SECTOR_SIZE, XtsCipher

MAGIC = b"LUKS\xba\xbe"
CIPHER_NAME, CIPHER_MODE, HASH_SPEC = "aes", "xts-plain64", "sha256"
KEY_BYTES = 64
STRIPES = 4000
PAYLOAD_OFFSET_SECTORS = 4096
SLOT_ENABLED, SLOT_DISABLED = 0x00AC71F3, 0x0000DEAD

_HEADER = struct.Struct(">6sH32s32s32sII20s32sI40s")
_SLOT = struct.Struct(">II32sII")
_NUM_SLOTS = 8
HEADER_SIZE = _HEADER.size + _NUM_SLOTS * _SLOT.size  # 592
_SALT_SIZE = 32
_FIRST_SLOT_SECTOR = 8  # key material starts after the 4 KiB that hold the header
_ALIGN_SECTORS = 8  # slot areas are rounded up to 4 KiB


class LuksError(SystemError_):
    """A LUKS container cannot be opened: not LUKS1, unsupported, damaged, or wrong key."""


@dataclass(frozen=True)
class KeySlot:
    """One of the eight key slots: the master key, AF-split and encrypted by a passphrase."""

    active: bool
    iterations: int
    salt: bytes
    key_offset: int  # in sectors
    stripes: int

    def pack(self) -> bytes:
        state = SLOT_ENABLED if self.active else SLOT_DISABLED
        return _SLOT.pack(state, self.iterations, self.salt, self.key_offset, self.stripes)

    @classmethod
    def unpack(cls, raw: bytes, at: int) -> KeySlot:
        state, iterations, salt, key_offset, stripes = _SLOT.unpack_from(raw, at)
        return cls(state == SLOT_ENABLED, iterations, salt, key_offset, stripes)


@dataclass(frozen=True)
class LuksHeader:
    """A parsed LUKS1 header; ``master_key`` is filled in by :func:`unlock_luks1` only."""

    cipher_name: str
    cipher_mode: str
    hash_spec: str
    payload_offset: int  # in bytes
    key_bytes: int
    mk_digest: bytes
    mk_digest_salt: bytes
    mk_digest_iterations: int
    uuid: str
    key_slots: tuple[KeySlot, ...]
    master_key: bytes = field(default=b"", repr=False)

    def pack(self) -> bytes:
        """The 592 bytes of this header as they are stored on disk (big-endian)."""
        texts = [text.encode() for text in (self.cipher_name, self.cipher_mode, self.hash_spec)]
        numbers = (self.payload_offset // SECTOR_SIZE, self.key_bytes)
        digest = (self.mk_digest, self.mk_digest_salt, self.mk_digest_iterations)
        head = _HEADER.pack(MAGIC, 1, *texts, *numbers, *digest, self.uuid.encode())
        return head + b"".join(slot.pack() for slot in self.key_slots)

    @classmethod
    def unpack(cls, raw: bytes) -> LuksHeader:
        """Parse the first 592 bytes of a container; LuksError if it is not LUKS1."""
        if len(raw) < HEADER_SIZE or raw[:6] != MAGIC:
            raise LuksError("not a LUKS container")
        fields = _HEADER.unpack_from(raw)
        _, version, name, mode, hash_spec, offset, key_bytes, digest, salt, iterations, uid = fields
        if version != 1:
            raise LuksError(f"LUKS version {version} is not supported, only LUKS1")
        names = (_text(name), _text(mode), _text(hash_spec))
        digest_info = (digest, salt, iterations)
        slots = tuple(KeySlot.unpack(raw, _HEADER.size + i * _SLOT.size) for i in range(_NUM_SLOTS))
        return cls(*names, offset * SECTOR_SIZE, key_bytes, *digest_info, _text(uid), slots)


def read_luks1_header(path: Path) -> LuksHeader:
    """The header of the container at ``path``, without unlocking it."""
    with open(path, "rb") as file:
        return LuksHeader.unpack(file.read(HEADER_SIZE))


def payload_offset(path: Path) -> int:
    """Byte offset of the payload in the container at ``path``."""
    return read_luks1_header(path).payload_offset


def format_luks1(
    path: Path, passphrase: bytes, payload_size: int, *, iterations: int = 1000
) -> bytes:
    """Create a new container file with a sparse payload of ``payload_size`` bytes.

    The passphrase goes into key slot 0. ``iterations`` is the PBKDF2 count of the slot and
    of the master key digest: the platform's passphrases are random 256-bit secrets, so a
    modest count keeps unlocking cheap without helping brute force. The file must not exist
    yet; it is created 0600 and fsynced. Returns the 64-byte master key.
    """
    _check_passphrase(passphrase)
    _check_size(payload_size)
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    master_key = _new_master_key()
    slot_sectors = _material_sectors(KEY_BYTES, STRIPES)
    slot_salt = os.urandom(_SALT_SIZE)
    digest_salt = os.urandom(_SALT_SIZE)
    # Every slot gets its area, as cryptsetup and QEMU lay them out; only slot 0 is active.
    slots = tuple(
        KeySlot(False, 0, bytes(_SALT_SIZE), _FIRST_SLOT_SECTOR + i * slot_sectors, STRIPES)
        for i in range(_NUM_SLOTS)
    )
    slots = (replace(slots[0], active=True, iterations=iterations, salt=slot_salt), *slots[1:])
    header = LuksHeader(
        cipher_name=CIPHER_NAME,
        cipher_mode=CIPHER_MODE,
        hash_spec=HASH_SPEC,
        payload_offset=PAYLOAD_OFFSET_SECTORS * SECTOR_SIZE,
        key_bytes=KEY_BYTES,
        mk_digest=_mk_digest(HASH_SPEC, master_key, digest_salt, iterations),
        mk_digest_salt=digest_salt,
        mk_digest_iterations=iterations,
        uuid=str(uuid.uuid4()),
        key_slots=slots,
    )
    slot_key = hashlib.pbkdf2_hmac(HASH_SPEC, passphrase, slot_salt, iterations, KEY_BYTES)
    material = bytearray(_af_split(master_key, STRIPES, HASH_SPEC))
    material += bytes(-len(material) % SECTOR_SIZE)
    # Key material is encrypted like payload, with sector numbers counted from its start.
    XtsCipher(slot_key).crypt_in_place(material, 0, encrypt=True)

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with Reverter() as revert:
        revert.add(functools.partial(os.unlink, path))
        try:
            pwrite_all(fd, header.pack(), 0)
            pwrite_all(fd, material, slots[0].key_offset * SECTOR_SIZE)
            os.ftruncate(fd, header.payload_offset + payload_size)
            os.fsync(fd)
        finally:
            os.close(fd)
        revert.success()
    return master_key


def unlock_luks1(path: Path, passphrase: bytes) -> LuksHeader:
    """Open the container at ``path``: its header with ``master_key`` set.

    Raises LuksError if the container is not one we can use or no key slot opens.
    """
    _check_passphrase(passphrase)
    with open(path, "rb") as file:
        header = LuksHeader.unpack(file.read(HEADER_SIZE))
        _check_supported(header)
        for slot in header.key_slots:
            if not slot.active:
                continue
            size = header.key_bytes * slot.stripes
            file.seek(slot.key_offset * SECTOR_SIZE)
            material = bytearray(file.read(size + -size % SECTOR_SIZE))
            if len(material) != size + -size % SECTOR_SIZE:
                raise LuksError(f"LUKS container {path} is truncated inside a key slot")
            slot_key = hashlib.pbkdf2_hmac(
                header.hash_spec, passphrase, slot.salt, slot.iterations, header.key_bytes
            )
            XtsCipher(slot_key).crypt_in_place(material, 0, encrypt=False)
            candidate = _af_merge(material[:size], header.key_bytes, slot.stripes, header.hash_spec)
            digest = _mk_digest(
                header.hash_spec, candidate, header.mk_digest_salt, header.mk_digest_iterations
            )
            if hmac.compare_digest(digest, header.mk_digest):
                return replace(header, master_key=candidate)
    raise LuksError(f"the passphrase opens no key slot of LUKS container {path}")


class LuksVolume:
    """Random access to the decrypted payload of an open LUKS1 file.

    Offsets are payload bytes (0 = first payload byte); any offset and length work, partial
    sectors are read, merged and re-encrypted. Calls are safe from several threads, except
    that writes touching the same sector must not run concurrently (read-modify-write).
    """

    def __init__(
        self,
        file: int | str | os.PathLike[str],
        master_key: bytes,
        payload_offset: int | None = None,
    ) -> None:
        """Use an open fd (left open by :meth:`close`) or open a path read-write.

        ``payload_offset`` (bytes) defaults to the one in the container's header.
        """
        self._owns_fd = not isinstance(file, int)
        self._fd = file if isinstance(file, int) else os.open(file, os.O_RDWR | os.O_CLOEXEC)
        with Reverter() as revert:
            revert.add(self.close)
            if payload_offset is None:
                payload_offset = LuksHeader.unpack(
                    os.pread(self._fd, HEADER_SIZE, 0)
                ).payload_offset
            if payload_offset <= 0 or payload_offset % SECTOR_SIZE:
                raise ValueError(f"payload offset must be a positive multiple of {SECTOR_SIZE}")
            self._cipher = XtsCipher(master_key)
            revert.success()
        self._base = payload_offset

    @classmethod
    def open(cls, path: Path, passphrase: bytes) -> LuksVolume:
        """Unlock the container at ``path`` and open its payload."""
        header = unlock_luks1(path, passphrase)
        return cls(path, header.master_key, header.payload_offset)

    @property
    def payload_offset(self) -> int:
        """Where the payload starts in the file, in bytes."""
        return self._base

    @property
    def size(self) -> int:
        """Payload size in bytes."""
        return max(0, os.fstat(self._fd).st_size - self._base)

    def read_at(self, offset: int, length: int) -> bytes | bytearray:
        """Up to ``length`` payload bytes at ``offset``; short only at the end of the payload.

        The bytes come in the buffer they were decrypted in, not copied: a new one per call.
        """
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        first = offset // SECTOR_SIZE
        count = -(-(offset + length) // SECTOR_SIZE) - first
        start = offset - first * SECTOR_SIZE
        plain = self._read_sectors(first, count)
        if plain is None:
            return bytes(length)
        # Cutting a bytearray's tail or head moves no bytes (CPython keeps a start offset).
        del plain[start + length :]
        del plain[:start]
        return plain

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at payload ``offset``; the payload never grows (see :meth:`resize`)."""
        view = memoryview(data).cast("B")
        if offset < 0 or offset + len(view) > self.size:
            raise ValueError(
                f"write of {len(view)} bytes at {offset} is outside the payload of {self.size}"
            )
        if not view:
            return
        first = offset // SECTOR_SIZE
        last = -(-(offset + len(view)) // SECTOR_SIZE)  # one past the last sector
        start = offset - first * SECTOR_SIZE
        if start == 0 and len(view) % SECTOR_SIZE == 0:
            buffer = bytearray(view)
        else:
            buffer = bytearray((last - first) * SECTOR_SIZE)
            # Partial edge sectors keep their other bytes: read them (at most two) first.
            edges = {first} if start else set()
            if (offset + len(view)) % SECTOR_SIZE:
                edges.add(last - 1)
            for sector in edges:
                plain = self._read_sectors(sector, 1)
                if plain is not None:
                    at = (sector - first) * SECTOR_SIZE
                    buffer[at : at + SECTOR_SIZE] = plain
            buffer[start : start + len(view)] = view
        self._cipher.crypt_in_place(buffer, first, encrypt=True)
        pwrite_all(self._fd, buffer, self._base + first * SECTOR_SIZE)

    def encrypt_sectors(self, buffer: bytearray | memoryview, first_sector: int) -> None:
        """Encrypt whole payload sectors in place, as sectors `first_sector`.. are stored."""
        self._cipher.crypt_in_place(buffer, first_sector, encrypt=True)

    def resize(self, payload_size: int) -> None:
        """Grow (with a never-written, zero-reading tail) or shrink the payload."""
        _check_size(payload_size)
        os.ftruncate(self._fd, self._base + payload_size)

    def sync(self) -> None:
        """Flush written data to stable storage."""
        os.fdatasync(self._fd)

    def close(self) -> None:
        """Close the file if this volume opened it."""
        if self._owns_fd and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> LuksVolume:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def read_sectors_into(self, first: int, view: memoryview) -> bool:
        """Fill `view` (whole sectors, writable) with the plaintext of the sectors from
        `first`, decrypted in place: no buffer of its own, so a caller can read a drive
        through the same few buffers. Sectors never written (and any past the file's end)
        are zeros. Whether any sector held data."""
        _sector_count_of(len(view))  # whole sectors, or a ValueError
        done, position = 0, self._base + first * SECTOR_SIZE
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], position + done)
            if got == 0:
                view[done:] = bytes(len(view) - done)  # past the end of the file: zeros
                break
            done += got
        return self._cipher.decrypt_nonzero_sectors(view, first) > 0

    def _read_sectors(self, first: int, count: int) -> bytearray | None:
        """Plaintext of ``count`` sectors, or None if none was ever written.

        A sector whose ciphertext is all zeros (a hole, or never written) reads as zeros.
        """
        buffer = bytearray(count * SECTOR_SIZE)
        return buffer if self.read_sectors_into(first, memoryview(buffer)) else None


def _sector_count_of(length: int) -> int:
    if length % SECTOR_SIZE:
        raise ValueError(f"need whole {SECTOR_SIZE}-byte sectors, got {length} bytes")
    return length // SECTOR_SIZE


def _af_split(key: bytes, stripes: int, hash_name: str) -> bytes:
    """LUKS anti-forensic split: stripes-1 random blocks, then one that recovers the key."""
    size = len(key)
    randoms = os.urandom(size * (stripes - 1))
    mixed = bytes(size)
    for index in range(stripes - 1):
        mixed = _diffuse(_xor(mixed, randoms[index * size : (index + 1) * size]), hash_name)
    return randoms + _xor(mixed, key)


def _af_merge(material: bytes | bytearray, size: int, stripes: int, hash_name: str) -> bytes:
    """Inverse of :func:`_af_split`."""
    mixed = bytes(size)
    for index in range(stripes - 1):
        mixed = _diffuse(_xor(mixed, material[index * size : (index + 1) * size]), hash_name)
    return _xor(mixed, material[(stripes - 1) * size : stripes * size])


def _diffuse(block: bytes, hash_name: str) -> bytes:
    """Hash each digest-sized piece of ``block`` with its big-endian 32-bit index prepended."""
    step = hashlib.new(hash_name).digest_size
    pieces = []
    for index, start in enumerate(range(0, len(block), step)):
        piece = block[start : start + step]
        digest = hashlib.new(hash_name, index.to_bytes(4, "big") + piece).digest()
        pieces.append(digest[: len(piece)])
    return b"".join(pieces)


def _xor(left: bytes | bytearray, right: bytes | bytearray) -> bytes:
    value = int.from_bytes(left, "little") ^ int.from_bytes(right, "little")
    return value.to_bytes(len(left), "little")


def _mk_digest(hash_name: str, master_key: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac(hash_name, master_key, salt, iterations, 20)


def _new_master_key() -> bytes:
    while True:
        key = os.urandom(KEY_BYTES)
        if key[:32] != key[32:]:  # XTS refuses equal halves; never happens in practice
            return key


def _material_sectors(key_bytes: int, stripes: int) -> int:
    sectors = -(-key_bytes * stripes // SECTOR_SIZE)
    return -(-sectors // _ALIGN_SECTORS) * _ALIGN_SECTORS


def _check_supported(header: LuksHeader) -> None:
    cipher = (header.cipher_name, header.cipher_mode, header.key_bytes)
    if cipher != (CIPHER_NAME, CIPHER_MODE, KEY_BYTES):
        raise LuksError("LUKS cipher {}-{} with a {}-byte key is not supported".format(*cipher))
    if header.hash_spec not in hashlib.algorithms_available:
        raise LuksError(f"LUKS hash {header.hash_spec} is not supported")
    counts = [header.mk_digest_iterations, header.payload_offset]
    counts += [
        n for slot in header.key_slots if slot.active for n in (slot.iterations, slot.stripes)
    ]
    if min(counts) < 1:
        raise LuksError("LUKS header is damaged: a zero iteration, stripe or offset count")


def _check_passphrase(passphrase: bytes) -> None:
    # QEMU reads a secret as UTF-8 and stops at the first NUL, so both would make the
    # container unopenable there.
    if not passphrase:
        raise ValueError("a LUKS passphrase must not be empty")
    if b"\0" in passphrase:
        raise ValueError("a LUKS passphrase must not contain NUL bytes")
    try:
        passphrase.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("a LUKS passphrase must be valid UTF-8") from None


def _check_size(payload_size: int) -> None:
    if payload_size < 0 or payload_size % SECTOR_SIZE:
        raise ValueError(f"payload size must be a non-negative multiple of {SECTOR_SIZE}")


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")
