/* The XTS tweak pass of openhosting.storage.xts, compiled.
 *
 * In XTS (IEEE 1619) block j of a sector is XORed, before and after AES, with the tweak
 * T_j = T_0 * alpha^j in GF(2^128), T_0 being AES(key2, sector number). The AES runs in
 * OpenSSL (one ECB call over many sectors); what is left, the 32 tweaks of each sector and
 * the XOR with them, is a chain of shifts that NumPy could only do in some fifteen passes
 * over memory, more than half of an encrypted read's decryption. Here it is one pass: each
 * tweak is made from the one before it (a doubling), XORed into the data, and kept in a table
 * for the XOR after AES.
 *
 * No key and no secret-dependent branch or memory access: the doubling's carry is folded in
 * by a mask, as constant-time implementations do.
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

static PyMethodDef methods[] = {
    {"xor_tweaks", py_xor_tweaks, METH_VARARGS, xor_tweaks_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_xts_tweaks",
    "The XTS tweak pass of openhosting.storage.xts, compiled.", -1, methods,
};

PyMODINIT_FUNC PyInit__xts_tweaks(void) { return PyModule_Create(&module); }
