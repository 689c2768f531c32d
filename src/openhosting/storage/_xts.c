/* AES-256-XTS over 512-byte sectors with plain64 sector numbers, compiled
 * (openhosting.storage.xts).
 *
 * In XTS (IEEE 1619) block j of a sector is XORed, before and after AES with key1, with the
 * tweak T_j = T_0 * alpha^j in GF(2^128), T_0 being AES(key2, sector number). A library call
 * per sector costs more than its AES (OpenSSL's EVP per 512 bytes: ~1.5 GB/s on this
 * machine's EPYC, against ~5 GB/s for one long call), so there are two ways here:
 *
 * - `crypt`, the whole of XTS in one pass with the CPU's AES instructions: the first tweaks
 *   of eight sectors at once, their 32 block tweaks each in eight interleaved chains, then
 *   each sector's blocks through the 14 rounds eight registers at a time (with VAES two
 *   blocks a register). Every byte is loaded and stored once, and the AES units are never
 *   idle waiting on one chain. On CPUs with AES-NI (and VAES), checked at run time.
 * - `xor_tweaks`, the tweak pass alone for machines without them: OpenSSL runs the AES as
 *   ECB calls over many sectors (the caller does), this makes the block tweaks and XORs
 *   them in, and keeps them in a table for the XOR after AES.
 *
 * No secret-dependent branch or memory access: the AES instructions are constant time and
 * the doubling's carry is folded in by a mask, as constant-time implementations do. The key
 * schedule and tweaks the calls keep on the stack are wiped before they return.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define SECTOR_SIZE 512
#define BLOCKS_PER_SECTOR (SECTOR_SIZE / 16)

/* The tweak is a little-endian 128-bit number: two little-endian 64-bit halves. */
static inline uint64_t load_le64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline void store_le64(unsigned char *p, uint64_t v) {
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

static inline void xor_le64(unsigned char *p, uint64_t v) {
    store_le64(p, load_le64(p) ^ v);
}

/* Times alpha: a shift left by one; a bit carried out of the top comes back as
 * x^7 + x^2 + x + 1 (0x87). The carry becomes a mask, not a branch. */
static inline void times_alpha(uint64_t *low, uint64_t *high) {
    uint64_t carry_mask = (uint64_t)0 - (*high >> 63);
    *high = (*high << 1) | (*low >> 63);
    *low = (*low << 1) ^ (carry_mask & 0x87);
}

/* LANES sectors at once: each tweak depends on the one before it, a chain of a few cycles a
 * block, so the chains of several sectors are interleaved for the CPU to run side by side
 * (one sector at a time ran at ~12 cycles a block, four at ~3). */
#define LANES 4

static void xor_tweaks(unsigned char *data, const unsigned char *first_tweaks,
                       unsigned char *table, Py_ssize_t sectors) {
    Py_ssize_t s = 0;
    for (; s + LANES <= sectors; s += LANES) {
        uint64_t low[LANES], high[LANES];
        for (int k = 0; k < LANES; k++) {
            low[k] = load_le64(first_tweaks + 16 * (s + k));
            high[k] = load_le64(first_tweaks + 16 * (s + k) + 8);
        }
        for (int j = 0; j < BLOCKS_PER_SECTOR; j++) {
            for (int k = 0; k < LANES; k++) {
                size_t at = (size_t)(s + k) * SECTOR_SIZE + 16 * j;
                store_le64(table + at, low[k]);
                store_le64(table + at + 8, high[k]);
                xor_le64(data + at, low[k]);
                xor_le64(data + at + 8, high[k]);
                times_alpha(&low[k], &high[k]);
            }
        }
    }
    for (; s < sectors; s++) {
        uint64_t low = load_le64(first_tweaks + 16 * s);
        uint64_t high = load_le64(first_tweaks + 16 * s + 8);
        for (int j = 0; j < BLOCKS_PER_SECTOR; j++) {
            size_t at = (size_t)s * SECTOR_SIZE + 16 * j;
            store_le64(table + at, low);
            store_le64(table + at + 8, high);
            xor_le64(data + at, low);
            xor_le64(data + at + 8, high);
            times_alpha(&low, &high);
        }
    }
}

PyDoc_STRVAR(xor_tweaks_doc,
"xor_tweaks(data, first_tweaks, table)\n"
"\n"
"XOR every 16-byte block of `data` (whole 512-byte sectors, written in place) with its XTS\n"
"tweak, and write the tweaks into `table` (as long as `data`). `first_tweaks` holds T_0 of\n"
"each sector, 16 bytes each. The GIL is released while it runs.");

static PyObject *py_xor_tweaks(PyObject *self, PyObject *args) {
    Py_buffer data, first, table;
    if (!PyArg_ParseTuple(args, "w*y*w*", &data, &first, &table))
        return NULL;
    PyObject *result = NULL;
    if (data.len % SECTOR_SIZE != 0) {
        PyErr_Format(PyExc_ValueError, "data must be whole %d-byte sectors, got %zd bytes",
                     SECTOR_SIZE, data.len);
    } else if (first.len != data.len / SECTOR_SIZE * 16) {
        PyErr_Format(PyExc_ValueError, "need 16 bytes of first tweak per sector: %zd for %zd",
                     first.len, data.len / SECTOR_SIZE);
    } else if (table.len < data.len) {
        PyErr_Format(PyExc_ValueError, "the table (%zd bytes) is shorter than the data (%zd)",
                     table.len, data.len);
    } else if (!PyBuffer_IsContiguous(&data, 'C') || !PyBuffer_IsContiguous(&first, 'C') ||
               !PyBuffer_IsContiguous(&table, 'C')) {
        PyErr_SetString(PyExc_ValueError, "buffers must be contiguous");
    } else {
        Py_BEGIN_ALLOW_THREADS
        xor_tweaks(data.buf, first.buf, table.buf, data.len / SECTOR_SIZE);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&first);
    PyBuffer_Release(&table);
    return result;
}

/* ---- The whole of XTS with the CPU's AES instructions (x86-64 with AES-NI, and VAES) ---- */

#if defined(__x86_64__) && defined(__GNUC__)
#define XTS_X86 1
#include <immintrin.h>

#define ROUNDS 14 /* AES-256 */
#define SECTORS_AT_ONCE 8
#define AESNI __attribute__((target("aes,sse2")))
#define VAES __attribute__((target("aes,vaes,avx2")))

/* Round keys: encryption and decryption with key1 (the data key), encryption with key2. */
typedef struct {
    __m128i encrypt[ROUNDS + 1], decrypt[ROUNDS + 1], tweak[ROUNDS + 1];
} schedule_t;

/* One step of the AES-256 key expansion (FIPS 197 5.2): the previous round key of the same
 * parity, its words XORed together cumulatively, XORed with the assist's chosen word
 * (0xff: RotWord(SubWord(w)) ^ Rcon for even round keys, 0xaa: SubWord(w) for odd ones). */
AESNI static inline __m128i expand_step(__m128i key, __m128i assist) {
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    return _mm_xor_si128(key, assist);
}

/* The assist instruction needs its round constant as an immediate: one macro per pair. */
#define ASSIST(key, rcon, word) _mm_shuffle_epi32(_mm_aeskeygenassist_si128(key, rcon), word)
#define EXPAND_PAIR(rk, i, rcon)                                                         \
    rk[2 * (i)] = expand_step(rk[2 * (i) - 2], ASSIST(rk[2 * (i) - 1], rcon, 0xff));     \
    if ((i) < 7)                                                                         \
        rk[2 * (i) + 1] = expand_step(rk[2 * (i) - 1], ASSIST(rk[2 * (i)], 0, 0xaa));

AESNI static void expand_key_256(const unsigned char *key, __m128i *rk) {
    rk[0] = _mm_loadu_si128((const __m128i *)key);
    rk[1] = _mm_loadu_si128((const __m128i *)(key + 16));
    EXPAND_PAIR(rk, 1, 0x01) EXPAND_PAIR(rk, 2, 0x02) EXPAND_PAIR(rk, 3, 0x04)
    EXPAND_PAIR(rk, 4, 0x08) EXPAND_PAIR(rk, 5, 0x10) EXPAND_PAIR(rk, 6, 0x20)
    EXPAND_PAIR(rk, 7, 0x40)
}

AESNI static void make_schedule(const unsigned char *key, schedule_t *s) {
    expand_key_256(key, s->encrypt);
    expand_key_256(key + 32, s->tweak);
    /* The equivalent inverse cipher (FIPS 197 5.3.5): the round keys reversed, the inner
     * ones through InvMixColumns. */
    s->decrypt[0] = s->encrypt[ROUNDS];
    for (int r = 1; r < ROUNDS; r++)
        s->decrypt[r] = _mm_aesimc_si128(s->encrypt[ROUNDS - r]);
    s->decrypt[ROUNDS] = s->encrypt[0];
}

/* Times alpha on 128-bit lanes: each 32-bit word doubled, the bit carried out of each word
 * added to the next word, the one carried out of the top folded back as 0x87. */
AESNI static inline __m128i times_alpha_128(__m128i t) {
    __m128i carries = _mm_srai_epi32(t, 31);    /* all ones where a word's top bit is set */
    carries = _mm_shuffle_epi32(carries, 0x93); /* word i gets word i-1's, word 0 word 3's */
    carries = _mm_and_si128(carries, _mm_set_epi32(1, 1, 1, 0x87));
    return _mm_xor_si128(_mm_add_epi32(t, t), carries);
}

/* The 32 block tweaks of `count` (at most eight) sectors: their T_0 = AES(key2, plain64
 * number) run side by side through the rounds, then the eight doubling chains interleaved. */
AESNI static inline void sector_tweaks(const schedule_t *s, uint64_t first,
                                       const unsigned char *numbers, size_t count,
                                       __m128i tweaks[SECTORS_AT_ONCE][BLOCKS_PER_SECTOR]) {
    __m128i t[SECTORS_AT_ONCE];
    for (size_t i = 0; i < count; i++) {
        uint64_t number = first + i;
        if (numbers) /* native order, and perhaps not aligned: copied, not dereferenced */
            memcpy(&number, numbers + i * sizeof number, sizeof number);
        t[i] = _mm_xor_si128(_mm_set_epi64x(0, (long long)number), s->tweak[0]);
    }
    for (int r = 1; r < ROUNDS; r++)
        for (size_t i = 0; i < count; i++)
            t[i] = _mm_aesenc_si128(t[i], s->tweak[r]);
    for (size_t i = 0; i < count; i++)
        t[i] = _mm_aesenclast_si128(t[i], s->tweak[ROUNDS]);
    for (int j = 0; j < BLOCKS_PER_SECTOR; j++)
        for (size_t i = 0; i < count; i++) {
            tweaks[i][j] = t[i];
            t[i] = times_alpha_128(t[i]);
        }
}

#define BLOCKS_AT_ONCE 8 /* registers in flight: AES's latency is hidden by the others */

/* Rounds 1-14 on the BLOCKS_AT_ONCE registers x[] (round 0, the key's XOR, is the caller's),
 * round by round across the registers; `round` and `last` are the engine's instructions. */
#define ROUNDS_ON_ALL(x, rk, round, last)                                              \
    do {                                                                               \
        for (int r = 1; r < ROUNDS; r++)                                               \
            for (int k = 0; k < BLOCKS_AT_ONCE; k++)                                   \
                x[k] = round(x[k], rk[r]);                                             \
        for (int k = 0; k < BLOCKS_AT_ONCE; k++)                                       \
            x[k] = last(x[k], rk[ROUNDS]);                                             \
    } while (0)

/* Whether a sector is all zeros. Its first block decides but for holes: ciphertext starts
 * with 16 zero bytes with probability 2^-128. (Which sectors are zeros is no secret: the
 * ciphertext is what the disk holds.) */
AESNI static inline int sector_is_zeros(const __m128i *blocks) {
    __m128i any = _mm_loadu_si128(blocks);
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(any, _mm_setzero_si128())) != 0xffff)
        return 0;
    for (int j = 1; j < BLOCKS_PER_SECTOR; j++)
        any = _mm_or_si128(any, _mm_loadu_si128(blocks + j));
    return _mm_movemask_epi8(_mm_cmpeq_epi8(any, _mm_setzero_si128())) == 0xffff;
}

AESNI static size_t crypt_aesni(const schedule_t *s, unsigned char *data, size_t sectors,
                              uint64_t first, const unsigned char *numbers, int encrypt,
                              int keep_zero_sectors) {
    const __m128i *rk = encrypt ? s->encrypt : s->decrypt;
    __m128i tweaks[SECTORS_AT_ONCE][BLOCKS_PER_SECTOR];
    size_t crypted = 0;
    for (size_t done = 0; done < sectors; done += SECTORS_AT_ONCE) {
        size_t count = sectors - done < SECTORS_AT_ONCE ? sectors - done : SECTORS_AT_ONCE;
        const unsigned char *their_numbers = numbers ? numbers + done * sizeof(uint64_t) : NULL;
        sector_tweaks(s, first + done, their_numbers, count, tweaks);
        for (size_t i = 0; i < count; i++) {
            __m128i *blocks = (__m128i *)(data + (done + i) * SECTOR_SIZE);
            if (keep_zero_sectors && sector_is_zeros(blocks))
                continue;
            crypted++;
            for (int g = 0; g < BLOCKS_PER_SECTOR; g += BLOCKS_AT_ONCE) {
                __m128i x[BLOCKS_AT_ONCE];
                for (int k = 0; k < BLOCKS_AT_ONCE; k++)
                    x[k] = _mm_xor_si128(_mm_xor_si128(_mm_loadu_si128(blocks + g + k),
                                                       tweaks[i][g + k]), rk[0]);
                if (encrypt)
                    ROUNDS_ON_ALL(x, rk, _mm_aesenc_si128, _mm_aesenclast_si128);
                else
                    ROUNDS_ON_ALL(x, rk, _mm_aesdec_si128, _mm_aesdeclast_si128);
                for (int k = 0; k < BLOCKS_AT_ONCE; k++)
                    _mm_storeu_si128(blocks + g + k, _mm_xor_si128(x[k], tweaks[i][g + k]));
            }
        }
    }
    explicit_bzero(tweaks, sizeof tweaks);
    return crypted;
}

/* The same with VAES: two blocks a 256-bit register, sixteen blocks in flight; the round
 * keys broadcast to both halves. */
VAES static size_t crypt_vaes(const schedule_t *s, unsigned char *data, size_t sectors,
                            uint64_t first, const unsigned char *numbers, int encrypt,
                            int keep_zero_sectors) {
    const __m128i *rk128 = encrypt ? s->encrypt : s->decrypt;
    __m256i rk[ROUNDS + 1];
    for (int r = 0; r <= ROUNDS; r++)
        rk[r] = _mm256_broadcastsi128_si256(rk128[r]);
    __m128i tweaks[SECTORS_AT_ONCE][BLOCKS_PER_SECTOR] __attribute__((aligned(32)));
    size_t crypted = 0;
    for (size_t done = 0; done < sectors; done += SECTORS_AT_ONCE) {
        size_t count = sectors - done < SECTORS_AT_ONCE ? sectors - done : SECTORS_AT_ONCE;
        const unsigned char *their_numbers = numbers ? numbers + done * sizeof(uint64_t) : NULL;
        sector_tweaks(s, first + done, their_numbers, count, tweaks);
        for (size_t i = 0; i < count; i++) {
            __m256i *pairs = (__m256i *)(data + (done + i) * SECTOR_SIZE);
            if (keep_zero_sectors && sector_is_zeros((const __m128i *)pairs))
                continue;
            crypted++;
            const __m256i *tweak_pairs = (const __m256i *)tweaks[i];
            for (int g = 0; g < BLOCKS_PER_SECTOR / 2; g += BLOCKS_AT_ONCE) {
                __m256i x[BLOCKS_AT_ONCE];
                for (int k = 0; k < BLOCKS_AT_ONCE; k++)
                    x[k] = _mm256_xor_si256(_mm256_xor_si256(_mm256_loadu_si256(pairs + g + k),
                                                             tweak_pairs[g + k]), rk[0]);
                if (encrypt)
                    ROUNDS_ON_ALL(x, rk, _mm256_aesenc_epi128, _mm256_aesenclast_epi128);
                else
                    ROUNDS_ON_ALL(x, rk, _mm256_aesdec_epi128, _mm256_aesdeclast_epi128);
                for (int k = 0; k < BLOCKS_AT_ONCE; k++)
                    _mm256_storeu_si256(pairs + g + k,
                                        _mm256_xor_si256(x[k], tweak_pairs[g + k]));
            }
        }
    }
    explicit_bzero(tweaks, sizeof tweaks);
    explicit_bzero(rk, sizeof rk);
    return crypted;
}

static int has_aesni(void) {
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("sse2");
}

static int has_vaes(void) {
    return has_aesni() && __builtin_cpu_supports("vaes") && __builtin_cpu_supports("avx2");
}
#else
#define XTS_X86 0
#endif

PyDoc_STRVAR(engines_doc,
"engines() -> tuple[str, ...]\n"
"\n"
"The engines of `crypt` this CPU can run, fastest first: 'vaes', 'aesni', or none.");

static PyObject *py_engines(PyObject *self, PyObject *unused) {
#if XTS_X86
    if (has_vaes())
        return Py_BuildValue("(ss)", "vaes", "aesni");
    if (has_aesni())
        return Py_BuildValue("(s)", "aesni");
#endif
    return PyTuple_New(0);
}

PyDoc_STRVAR(expand_key_doc,
"expand_key(key) -> bytes\n"
"\n"
"The round keys `crypt` takes, from a 64-byte XTS key (key1, the data key, then key2, the\n"
"tweak key). Needs an engine (engines() not empty).");

static PyObject *py_expand_key(PyObject *self, PyObject *args) {
    Py_buffer key;
    if (!PyArg_ParseTuple(args, "y*", &key))
        return NULL;
    PyObject *result = NULL;
#if XTS_X86
    if (key.len != 64) {
        PyErr_Format(PyExc_ValueError, "an AES-256-XTS key is 64 bytes, got %zd", key.len);
    } else if (!has_aesni()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU has no AES instructions");
    } else {
        schedule_t schedule;
        make_schedule(key.buf, &schedule);
        result = PyBytes_FromStringAndSize((const char *)&schedule, sizeof schedule);
        explicit_bzero(&schedule, sizeof schedule);
    }
#else
    PyErr_SetString(PyExc_RuntimeError, "built without the AES instructions' engines");
#endif
    PyBuffer_Release(&key);
    return result;
}

PyDoc_STRVAR(crypt_doc,
"crypt(engine, schedule, data, first_sector, sector_numbers, encrypt, keep_zero_sectors)\n"
"    -> int\n"
"\n"
"En- or decrypt `data`, whole 512-byte sectors, in place with AES-256-XTS; the number of\n"
"sectors done. The sectors are numbered from `first_sector`, or by `sector_numbers` (native\n"
"uint64s, one per sector) when it is not None. With `keep_zero_sectors`, sectors of 512 zero\n"
"bytes are left as they are. `schedule` comes from expand_key(), `engine` from engines().\n"
"The GIL is released while it runs.");

static PyObject *py_crypt(PyObject *self, PyObject *args) {
    const char *engine;
    Py_buffer schedule_buffer, data;
    PyObject *first_object, *numbers_object;
    int encrypt, keep_zero_sectors;
    if (!PyArg_ParseTuple(args, "sy*w*OOpp", &engine, &schedule_buffer, &data, &first_object,
                          &numbers_object, &encrypt, &keep_zero_sectors))
        return NULL;
    PyObject *result = NULL;
    Py_buffer numbers = {0};
    int have_numbers = 0;
    unsigned long long first = PyLong_AsUnsignedLongLong(first_object);
    Py_ssize_t sectors = data.len / SECTOR_SIZE;
    if (first == (unsigned long long)-1 && PyErr_Occurred()) {
        goto done;
    }
    if (numbers_object != Py_None) {
        if (PyObject_GetBuffer(numbers_object, &numbers, PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        have_numbers = 1;
    }
#if XTS_X86
    int vaes = strcmp(engine, "vaes") == 0, aesni = strcmp(engine, "aesni") == 0;
    if (!(vaes && has_vaes()) && !(aesni && has_aesni())) {
        PyErr_Format(PyExc_ValueError, "engine %s is not one this CPU can run", engine);
    } else if (schedule_buffer.len != (Py_ssize_t)sizeof(schedule_t)) {
        PyErr_SetString(PyExc_ValueError, "the schedule is not one from expand_key()");
    } else if (data.len % SECTOR_SIZE != 0) {
        PyErr_Format(PyExc_ValueError, "data must be whole %d-byte sectors, got %zd bytes",
                     SECTOR_SIZE, data.len);
    } else if (!PyBuffer_IsContiguous(&data, 'C')) {
        PyErr_SetString(PyExc_ValueError, "data must be contiguous");
    } else if (have_numbers && numbers.len != sectors * (Py_ssize_t)sizeof(uint64_t)) {
        PyErr_Format(PyExc_ValueError, "need one 8-byte sector number per sector: %zd bytes "
                     "for %zd sectors", numbers.len, sectors);
    } else if (!have_numbers && sectors > 0 && first > UINT64_MAX - (uint64_t)(sectors - 1)) {
        PyErr_Format(PyExc_ValueError, "sector numbers must fit in 64 bits, got %llu+%zd",
                     first, sectors);
    } else {
        const unsigned char *numbers_at = have_numbers ? numbers.buf : NULL;
        schedule_t schedule; /* aligned for the loads; the buffer may not be */
        memcpy(&schedule, schedule_buffer.buf, sizeof schedule);
        size_t crypted;
        Py_BEGIN_ALLOW_THREADS
        if (vaes)
            crypted = crypt_vaes(&schedule, data.buf, (size_t)sectors, first, numbers_at,
                                 encrypt, keep_zero_sectors);
        else
            crypted = crypt_aesni(&schedule, data.buf, (size_t)sectors, first, numbers_at,
                                  encrypt, keep_zero_sectors);
        Py_END_ALLOW_THREADS
        explicit_bzero(&schedule, sizeof schedule);
        result = PyLong_FromSize_t(crypted);
    }
#else
    (void)engine, (void)encrypt, (void)keep_zero_sectors, (void)first, (void)sectors;
    PyErr_SetString(PyExc_ValueError, "built without the AES instructions' engines");
#endif
done:
    if (have_numbers)
        PyBuffer_Release(&numbers);
    PyBuffer_Release(&schedule_buffer);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef methods[] = {
    {"engines", py_engines, METH_NOARGS, engines_doc},
    {"expand_key", py_expand_key, METH_VARARGS, expand_key_doc},
    {"crypt", py_crypt, METH_VARARGS, crypt_doc},
    {"xor_tweaks", py_xor_tweaks, METH_VARARGS, xor_tweaks_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_xts",
    "AES-256-XTS over 512-byte sectors, compiled (openhosting.storage.xts).", -1, methods,
};

PyMODINIT_FUNC PyInit__xts(void) {
#if XTS_X86
    __builtin_cpu_init();
#endif
    return PyModule_Create(&module);
}
