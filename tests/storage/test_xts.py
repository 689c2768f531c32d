"""AES-256-XTS in bulk: IEEE 1619 vectors, equality with OpenSSL's XTS sector by sector, for
every engine this CPU runs (the compiled AES-NI and VAES passes, and the OpenSSL ECB one that
runs everywhere)."""

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from openhosting.storage import _xts, xts
from openhosting.storage.xts import ENGINES, SECTOR_SIZE, XtsCipher

each_engine = pytest.mark.parametrize("engine", ENGINES)

# IEEE P1619/D16 (IEEE 1619-2007) Annex B, vectors 10-14: XTS-AES-256 over one 512-byte
# data unit. The data unit sequence number is the tweak, which for 512-byte units is exactly
# the plain64 sector number.
IEEE_KEY = bytes.fromhex(
    "2718281828459045235360287471352662497757247093699959574966967627"
    "3141592653589793238462643383279502884197169399375105820974944592"
)
IEEE_PLAINTEXT = bytes(range(256)) * 2
IEEE_VECTORS = {
    10: (
        0xFF,
        "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b"
        "5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd"
        "5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0"
        "c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca"
        "2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0"
        "b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f"
        "93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec"
        "583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a"
        "84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1"
        "505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae"
        "9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29"
        "a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac"
        "6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f"
        "645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385"
        "1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa"
        "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151",
    ),
    11: (
        0xFFFF,
        "77a31251618a15e6b92d1d66dffe7b50b50bad552305ba0217a610688eff7e11"
        "e1d0225438e093242d6db274fde801d4cae06f2092c728b2478559df58e837c2"
        "469ee4a4fa794e4bbc7f39bc026e3cb72c33b0888f25b4acf56a2a9804f1ce6d"
        "3d6e1dc6ca181d4b546179d55544aa7760c40d06741539c7e3cd9d2f6650b201"
        "3fd0eeb8c2b8e3d8d240ccae2d4c98320a7442e1c8d75a42d6e6cfa4c2eca179"
        "8d158c7aecdf82490f24bb9b38e108bcda12c3faf9a21141c3613b58367f922a"
        "aa26cd22f23d708dae699ad7cb40a8ad0b6e2784973dcb605684c08b8d6998c6"
        "9aac049921871ebb65301a4619ca80ecb485a31d744223ce8ddc2394828d6a80"
        "470c092f5ba413c3378fa6054255c6f9df4495862bbb3287681f931b687c888a"
        "bf844dfc8fc28331e579928cd12bd2390ae123cf03818d14dedde5c0c24c8ab0"
        "18bfca75ca096f2d531f3d1619e785f1ada437cab92e980558b3dce1474afb75"
        "bfedbf8ff54cb2618e0244c9ac0d3c66fb51598cd2db11f9be39791abe447c63"
        "094f7c453b7ff87cb5bb36b7c79efb0872d17058b83b15ab0866ad8a58656c5a"
        "7e20dbdf308b2461d97c0ec0024a2715055249cf3b478ddd4740de654f75ca68"
        "6e0d7345c69ed50cdc2a8b332b1f8824108ac937eb050585608ee734097fc090"
        "54fbff89eeaeea791f4a7ab1f9868294a4f9e27b42af8100cb9d59cef9645803",
    ),
    12: (
        0xFFFFFF,
        "e387aaa58ba483afa7e8eb469778317ecf4cf573aa9d4eac23f2cdf914e4e200"
        "a8b490e42ee646802dc6ee2b471b278195d60918ececb44bf79966f83faba049"
        "9298ebc699c0c8634715a320bb4f075d622e74c8c932004f25b41e361025b5a8"
        "7815391f6108fc4afa6a05d9303c6ba68a128a55705d415985832fdeaae6c8e1"
        "9110e84d1b1f199a2692119edc96132658f09da7c623efcec712537a3d94c0bf"
        "5d7e352ec94ae5797fdb377dc1551150721adf15bd26a8efc2fcaad56881fa9e"
        "62462c28f30ae1ceaca93c345cf243b73f542e2074a705bd2643bb9f7cc79bb6"
        "e7091ea6e232df0f9ad0d6cf502327876d82207abf2115cdacf6d5a48f6c1879"
        "a65b115f0f8b3cb3c59d15dd8c769bc014795a1837f3901b5845eb491adfefe0"
        "97b1fa30a12fc1f65ba22905031539971a10f2f36c321bb51331cdefb39e3964"
        "c7ef079994f5b69b2edd83a71ef549971ee93f44eac3938fcdd61d01fa71799d"
        "a3a8091c4c48aa9ed263ff0749df95d44fef6a0bb578ec69456aa5408ae32c7a"
        "f08ad7ba8921287e3bbee31b767be06a0e705c864a769137df28292283ea81a2"
        "480241b44d9921cdbec1bc28dc1fda114bd8e5217ac9d8ebafa720e9da4f9ace"
        "231cc949e5b96fe76ffc21063fddc83a6b8679c00d35e09576a875305bed5f36"
        "ed242c8900dd1fa965bc950dfce09b132263a1eef52dd6888c309f5a7d712826",
    ),
    13: (
        0xFFFFFFFF,
        "bf53d2dade78e822a4d949a9bc6766b01b06a8ef70d26748c6a7fc36d80ae4c5"
        "520f7c4ab0ac8544424fa405162fef5a6b7f229498063618d39f0003cb5fb8d1"
        "c86b643497da1ff945c8d3bedeca4f479702a7a735f043ddb1d6aaade3c4a0ac"
        "7ca7f3fa5279bef56f82cd7a2f38672e824814e10700300a055e1630b8f1cb0e"
        "919f5e942010a416e2bf48cb46993d3cb6a51c19bacf864785a00bc2ecff15d3"
        "50875b246ed53e68be6f55bd7e05cfc2b2ed6432198a6444b6d8c247fab941f5"
        "69768b5c429366f1d3f00f0345b96123d56204c01c63b22ce78baf116e525ed9"
        "0fdea39fa469494d3866c31e05f295ff21fea8d4e6e13d67e47ce722e9698a1c"
        "1048d68ebcde76b86fcf976eab8aa9790268b7068e017a8b9b749409514f1053"
        "027fd16c3786ea1bac5f15cb79711ee2abe82f5cf8b13ae73030ef5b9e4457e7"
        "5d1304f988d62dd6fc4b94ed38ba831da4b7634971b6cd8ec325d9c61c00f1df"
        "73627ed3745a5e8489f3a95c69639c32cd6e1d537a85f75cc844726e8a72fc00"
        "77ad22000f1d5078f6b866318c668f1ad03d5a5fced5219f2eabbd0aa5c0f460"
        "d183f04404a0d6f469558e81fab24a167905ab4c7878502ad3e38fdbe62a4155"
        "6cec37325759533ce8f25f367c87bb5578d667ae93f9e2fd99bcbc5f2fbba88c"
        "f6516139420fcff3b7361d86322c4bd84c82f335abb152c4a93411373aaa8220",
    ),
    14: (
        0xFFFFFFFFFF,
        "64497e5a831e4a932c09be3e5393376daa599548b816031d224bbf50a818ed23"
        "50eae7e96087c8a0db51ad290bd00c1ac1620857635bf246c176ab463be30b80"
        "8da548081ac847b158e1264be25bb0910bbc92647108089415d45fab1b3d2604"
        "e8a8eff1ae4020cfa39936b66827b23f371b92200be90251e6d73c5f86de5fd4"
        "a950781933d79a28272b782a2ec313efdfcc0628f43d744c2dc2ff3dcb66999b"
        "50c7ca895b0c64791eeaa5f29499fb1c026f84ce5b5c72ba1083cddb5ce45434"
        "631665c333b60b11593fb253c5179a2c8db813782a004856a1653011e93fb6d8"
        "76c18366dd8683f53412c0c180f9c848592d593f8609ca736317d356e13e2bff"
        "3a9f59cd9aeb19cd482593d8c46128bb32423b37a9adfb482b99453fbe25a41b"
        "f6feb4aa0bef5ed24bf73c762978025482c13115e4015aac992e5613a3b5c2f6"
        "85b84795cb6e9b2656d8c88157e52c42f978d8634c43d06fea928f2822e465aa"
        "6576e9bf419384506cc3ce3c54ac1a6f67dc66f3b30191e698380bc999b05abc"
        "e19dc0c6dcc2dd001ec535ba18deb2df1a101023108318c75dc98611a09dc48a"
        "0acdec676fabdf222f07e026f059b672b56e5cbc8e1d21bbd867dd9272120546"
        "81d70ea737134cdfce93b6f82ae22423274e58a0821cc5502e2d0ab4585e94de"
        "6975be5e0b4efce51cd3e70c25a1fbbbd609d273ad5b0d59631c531f6a0a57b9",
    ),
}


def reference_encrypt(key: bytes, data: bytes, first_sector: int) -> bytes:
    """One `cryptography` XTS call per sector: slow, but an independent implementation."""
    out = []
    for index in range(len(data) // SECTOR_SIZE):
        tweak = (first_sector + index).to_bytes(16, "little")
        encryptor = Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()
        out.append(encryptor.update(data[index * SECTOR_SIZE : (index + 1) * SECTOR_SIZE]))
    return b"".join(out)


def random_key() -> bytes:
    return os.urandom(64)


@pytest.mark.parametrize("vector", sorted(IEEE_VECTORS))
@each_engine
def test_ieee_1619_xts_aes_256_vectors_encrypt_and_decrypt(vector: int, engine: str) -> None:
    sector, ciphertext_hex = IEEE_VECTORS[vector]
    ciphertext = bytes.fromhex(ciphertext_hex)
    cipher = XtsCipher(IEEE_KEY, engine)
    assert cipher.encrypt(IEEE_PLAINTEXT, sector) == ciphertext
    assert cipher.decrypt(ciphertext, sector) == IEEE_PLAINTEXT


@each_engine
def test_ieee_vector_10_holds_inside_a_longer_buffer(engine: str) -> None:
    # Sector 0xff as the third sector of a buffer: the tweak follows the position.
    sector, ciphertext_hex = IEEE_VECTORS[10]
    data = os.urandom(2 * SECTOR_SIZE) + IEEE_PLAINTEXT + os.urandom(SECTOR_SIZE)
    out = XtsCipher(IEEE_KEY, engine).encrypt(data, sector - 2)
    assert out[2 * SECTOR_SIZE : 3 * SECTOR_SIZE] == bytes.fromhex(ciphertext_hex)


@settings(max_examples=60, deadline=None)
@given(
    key=st.binary(min_size=64, max_size=64),
    first_sector=st.integers(min_value=0, max_value=2**64 - 16),
    data=st.integers(min_value=1, max_value=9).flatmap(
        lambda n: st.binary(min_size=n * SECTOR_SIZE, max_size=n * SECTOR_SIZE)
    ),
)
@each_engine
def test_equals_cryptography_xts_sector_by_sector(
    key: bytes, first_sector: int, data: bytes, engine: str
) -> None:
    assume(key[:32] != key[32:])
    cipher = XtsCipher(key, engine)
    ciphertext = cipher.encrypt(data, first_sector)
    assert ciphertext == reference_encrypt(key, data, first_sector)
    assert cipher.decrypt(ciphertext, first_sector) == data


@pytest.mark.parametrize("first_sector", [2**32 - 3, 2**32, 2**40 + 12345, 2**63 - 2, 2**64 - 4])
@each_engine
def test_large_sector_numbers_use_all_64_bits(first_sector: int, engine: str) -> None:
    key, data = random_key(), os.urandom(4 * SECTOR_SIZE)
    ciphertext = XtsCipher(key, engine).encrypt(data, first_sector)
    assert ciphertext == reference_encrypt(key, data, first_sector)
    if first_sector >= 2**32:  # the high half of the sector number matters
        assert ciphertext != XtsCipher(key, engine).encrypt(data, first_sector % 2**32)


@each_engine
def test_buffers_longer_than_one_internal_chunk_match_the_reference(engine: str) -> None:
    key = random_key()
    count = xts._CHUNK_SECTORS * 2 + 37
    data = os.urandom(count * SECTOR_SIZE)
    cipher = XtsCipher(key, engine)
    ciphertext = cipher.encrypt(data, 1000)
    assert ciphertext == reference_encrypt(key, data, 1000)
    assert cipher.decrypt(ciphertext, 1000) == data


@each_engine
def test_accepts_bytearray_and_memoryview_input_without_changing_it(engine: str) -> None:
    key, data = random_key(), os.urandom(3 * SECTOR_SIZE)
    cipher = XtsCipher(key, engine)
    expected = cipher.encrypt(data, 9)
    buffer = bytearray(data)
    assert cipher.encrypt(buffer, 9) == expected
    assert cipher.encrypt(memoryview(buffer), 9) == expected
    assert buffer == data


@each_engine
def test_crypt_in_place_handles_scattered_sector_numbers(engine: str) -> None:
    key, data = random_key(), os.urandom(4 * SECTOR_SIZE)
    numbers = [5, 9, 2**33, 6]
    buffer = bytearray(data)
    XtsCipher(key, engine).crypt_in_place(buffer, np.array(numbers, dtype=np.uint64), encrypt=True)
    expected = b"".join(
        reference_encrypt(key, data[i * SECTOR_SIZE : (i + 1) * SECTOR_SIZE], sector)
        for i, sector in enumerate(numbers)
    )
    assert buffer == expected
    XtsCipher(key, engine).crypt_in_place(buffer, np.array(numbers, dtype=np.uint64), encrypt=False)
    assert buffer == data


@each_engine
def test_crypt_in_place_refuses_read_only_buffers(engine: str) -> None:
    with pytest.raises(TypeError):
        XtsCipher(random_key(), engine).crypt_in_place(memoryview(bytes(512)), 0, encrypt=True)


@each_engine
def test_empty_input_gives_empty_output(engine: str) -> None:
    assert XtsCipher(random_key(), engine).encrypt(b"", 0) == b""


@pytest.mark.parametrize("length", [1, 16, 511, 513, 1000, 4095])
@each_engine
def test_lengths_that_are_not_whole_sectors_are_refused(length: int, engine: str) -> None:
    cipher = XtsCipher(random_key(), engine)
    with pytest.raises(ValueError, match="512"):
        cipher.encrypt(bytes(length), 0)
    with pytest.raises(ValueError, match="512"):
        cipher.decrypt(bytes(length), 0)


@pytest.mark.parametrize("first_sector", [-1, 2**64 - 1, 2**64])
@each_engine
def test_sector_numbers_outside_64_bits_are_refused(first_sector: int, engine: str) -> None:
    # Two sectors starting at 2^64-1 would need sector 2^64.
    with pytest.raises(ValueError, match="64 bits"):
        XtsCipher(random_key(), engine).encrypt(bytes(2 * SECTOR_SIZE), first_sector)


@pytest.mark.parametrize("length", [0, 32, 63, 65])
def test_keys_must_be_64_bytes(length: int) -> None:
    with pytest.raises(ValueError, match="64-byte"):
        XtsCipher(bytes(range(length)))


def test_keys_with_equal_halves_are_refused() -> None:
    with pytest.raises(ValueError, match="differ"):
        XtsCipher(bytes(32) * 2)


def test_the_compiled_tweak_pass_gives_the_tweaks_of_ieee_1619() -> None:
    """T_1 = T_0 * alpha and on: a carry out of the top bit comes back as 0x87, at every
    block of a sector and in every lane the pass interleaves (sectors 0-4: four at once and
    one alone)."""
    top_bit_set = bytes(15) + b"\x80"  # T_0 = x^127: T_1 = x^128 = x^7 + x^2 + x + 1
    first = top_bit_set + bytes(range(16)) + os.urandom(16 * 3)
    data = bytearray(5 * SECTOR_SIZE)
    table = bytearray(5 * SECTOR_SIZE)
    _xts.xor_tweaks(data, first, table)
    assert data == table  # zeros XORed with the tweaks are the tweaks
    for sector in range(5):
        tweak = int.from_bytes(first[16 * sector : 16 * sector + 16], "little")
        for block in range(SECTOR_SIZE // 16):
            at = sector * SECTOR_SIZE + 16 * block
            assert int.from_bytes(table[at : at + 16], "little") == tweak, (sector, block)
            tweak <<= 1
            if tweak >> 128:
                tweak = (tweak ^ (1 << 128)) ^ 0x87
    assert table[SECTOR_SIZE : SECTOR_SIZE + 16] == bytes(range(16))
    assert table[16:32] == (0x87).to_bytes(16, "little")


@pytest.mark.parametrize(
    ("data", "first", "table", "error"),
    [
        (bytearray(500), bytes(16), bytearray(512), "whole 512-byte sectors"),
        (bytearray(1024), bytes(16), bytearray(1024), "16 bytes of first tweak per sector"),
        (bytearray(1024), bytes(32), bytearray(512), "shorter than the data"),
    ],
)
def test_the_compiled_tweak_pass_refuses_buffers_of_the_wrong_size(
    data: bytearray, first: bytes, table: bytearray, error: str
) -> None:
    # A C loop over lengths it does not check would write past a buffer's end.
    before = bytes(data)
    with pytest.raises(ValueError, match=error):
        _xts.xor_tweaks(data, first, table)
    assert data == before


def test_the_compiled_tweak_pass_refuses_read_only_data() -> None:
    with pytest.raises(TypeError):
        _xts.xor_tweaks(bytes(512), bytes(16), bytearray(512))


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_the_engines_are_the_ones_the_cpu_flags_allow_fastest_first() -> None:
    flags = _cpu_flags()
    expected = []
    if {"aes", "vaes", "avx2"} <= flags:
        expected.append("vaes")
    if "aes" in flags:
        expected.append("aesni")
    assert (*expected, "openssl") == ENGINES
    assert XtsCipher(random_key()).engine == ENGINES[0]


def test_an_engine_this_cpu_cannot_run_is_refused() -> None:
    with pytest.raises(ValueError, match="no XTS engine 'sse9'"):
        XtsCipher(random_key(), "sse9")


def test_every_engine_gives_the_same_bytes_over_groups_of_sectors_and_their_tails() -> None:
    """The compiled engines work eight sectors at a time: 8 * 3 + 5 sectors, scattered
    numbers, both directions, each engine against the others."""
    key, data = random_key(), os.urandom(29 * SECTOR_SIZE)
    numbers = np.array([2**64 - 1 - i * 7919 for i in range(29)], dtype=np.uint64)
    results = {}
    for engine in ENGINES:
        buffer = bytearray(data)
        XtsCipher(key, engine).crypt_in_place(buffer, numbers, encrypt=True)
        results[engine] = bytes(buffer)
        XtsCipher(key, engine).crypt_in_place(buffer, numbers, encrypt=False)
        assert buffer == data, engine
    assert len(set(results.values())) == 1, sorted(results)
    assert results["openssl"][:SECTOR_SIZE] == reference_encrypt(key, data[:SECTOR_SIZE], 2**64 - 1)


@each_engine
def test_threads_sharing_one_cipher_each_get_their_own_bytes(engine: str) -> None:
    # The compiled engines run without the GIL: the calls of several threads overlap.
    key = random_key()
    cipher = XtsCipher(key, engine)
    plaintexts = [os.urandom(256 * SECTOR_SIZE) for _ in range(4)]
    expected = [XtsCipher(key, "openssl").encrypt(p, 100 * i) for i, p in enumerate(plaintexts)]
    wrong: list[int] = []

    def work(index: int) -> None:
        for _ in range(20):
            buffer = bytearray(plaintexts[index])
            cipher.crypt_in_place(buffer, 100 * index, encrypt=True)
            if buffer != expected[index]:
                wrong.append(index)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


COMPILED_ENGINES = [engine for engine in ENGINES if engine != "openssl"]


@pytest.mark.parametrize("engine", COMPILED_ENGINES)
@pytest.mark.parametrize(
    ("schedule_size", "data", "first", "numbers", "error"),
    [
        (-1, bytearray(1000), 0, None, "whole 512-byte sectors"),
        (100, bytearray(512), 0, None, "not one from expand_key"),
        (-1, bytearray(1024), 0, bytes(8), "one 8-byte sector number per sector"),
        (-1, bytearray(1024), 2**64 - 1, None, "fit in 64 bits"),
    ],
)
def test_the_compiled_engines_refuse_what_would_write_out_of_bounds(
    engine: str, schedule_size: int, data: bytearray, first: int, numbers: bytes | None,
    error: str,
) -> None:  # fmt: skip
    # The Python side checks these first; the C side must not trust it.
    schedule = _xts.expand_key(random_key())
    if schedule_size >= 0:
        schedule = schedule[:schedule_size]
    before = bytes(data)
    with pytest.raises(ValueError, match=error):
        _xts.crypt(engine, schedule, data, first, numbers, True, False)
    assert data == before


@pytest.mark.parametrize("engine", COMPILED_ENGINES)
def test_the_compiled_engines_refuse_read_only_data_and_negative_sectors(engine: str) -> None:
    schedule = _xts.expand_key(random_key())
    with pytest.raises(TypeError):
        _xts.crypt(engine, schedule, bytes(512), 0, None, True, False)
    with pytest.raises(OverflowError):
        _xts.crypt(engine, schedule, bytearray(512), -1, None, True, False)
    with pytest.raises(ValueError, match="not one this CPU can run"):
        _xts.crypt("openssl", schedule, bytearray(512), 0, None, True, False)
    with pytest.raises(ValueError, match="64 bytes"):
        _xts.expand_key(bytes(32))


@each_engine
def test_decrypting_nonzero_sectors_leaves_zero_sectors_as_zeros(engine: str) -> None:
    """A sparse drive's holes read as zeros: sectors of zero ciphertext are not decrypted
    (which would give noise), every other one is, whatever its first bytes."""
    key = random_key()
    plain = os.urandom(20 * SECTOR_SIZE)
    stored = bytearray(XtsCipher(key, "openssl").encrypt(plain, 500))
    holes = [0, 3, 4, 5, 11, 19]
    for sector in holes:
        stored[sector * SECTOR_SIZE : (sector + 1) * SECTOR_SIZE] = bytes(SECTOR_SIZE)
    # Ciphertext starting with 16 zero bytes is not a hole (the whole sector is looked at).
    stored[7 * SECTOR_SIZE : 7 * SECTOR_SIZE + 16] = bytes(16)
    expected = bytearray(XtsCipher(key, "openssl").decrypt(stored, 500))
    for sector in holes:
        expected[sector * SECTOR_SIZE : (sector + 1) * SECTOR_SIZE] = bytes(SECTOR_SIZE)
    buffer = bytearray(stored)
    assert XtsCipher(key, engine).decrypt_nonzero_sectors(buffer, 500) == 20 - len(holes)
    assert buffer == expected
    assert buffer[SECTOR_SIZE : 3 * SECTOR_SIZE] == plain[SECTOR_SIZE : 3 * SECTOR_SIZE]


@each_engine
def test_decrypting_nonzero_sectors_of_all_zeros_or_all_data(engine: str) -> None:
    key = random_key()
    cipher = XtsCipher(key, engine)
    zeros = bytearray(9 * SECTOR_SIZE)
    assert cipher.decrypt_nonzero_sectors(zeros, 0) == 0
    assert zeros == bytes(9 * SECTOR_SIZE)
    plain = os.urandom(9 * SECTOR_SIZE)
    buffer = bytearray(cipher.encrypt(plain, 2**40))
    assert cipher.decrypt_nonzero_sectors(buffer, 2**40) == 9
    assert buffer == plain
    assert cipher.decrypt_nonzero_sectors(bytearray(), 0) == 0
    with pytest.raises(ValueError, match="64 bits"):
        cipher.decrypt_nonzero_sectors(bytearray(2 * SECTOR_SIZE), 2**64 - 1)
    with pytest.raises(TypeError):
        cipher.decrypt_nonzero_sectors(memoryview(bytes(SECTOR_SIZE)), 0)


@pytest.mark.parametrize("engine", COMPILED_ENGINES)
def test_the_compiled_engines_take_sector_numbers_from_any_buffer(engine: str) -> None:
    # Native uint64s, from a buffer that need not be aligned (one byte in).
    key, data = random_key(), os.urandom(3 * SECTOR_SIZE)
    numbers = [2**63 + 5, 17, 2**32]
    raw = b"".join(number.to_bytes(8, "little") for number in numbers)
    unaligned = memoryview(bytearray(1) + raw)[1:]
    buffer = bytearray(data)
    assert _xts.crypt(engine, _xts.expand_key(key), buffer, 0, unaligned, True, False) == 3
    expected = b"".join(
        reference_encrypt(key, data[i * SECTOR_SIZE : (i + 1) * SECTOR_SIZE], number)
        for i, number in enumerate(numbers)
    )
    assert buffer == expected
