/*
 * netoffload._native._kernel: the Internet checksum (RFC 1071) over whole batches.
 *
 * One call per batch: the Python side passes the batch buffer and numpy arrays of
 * offsets/lengths (through the buffer protocol, no numpy C API), the kernel loops
 * over the packets. Three entry points:
 *
 *   range_sums(buf, a, b, out)   one's complement sums of buf[a[i]:b[i]]
 *   verify(...)                  the checksum task's verify mode, parse included,
 *                                for plain raw-IP (or already parsed) packets
 *   fill(...)                    its fill mode (full and partial), the same packets
 *   segment(...)                 TSO/USO: headers + payload copied into the
 *                                segments, payload summed while it is copied
 *                                (copy and checksum in one pass), fields patched
 *
 * Sums: 32-bit words added into 64-bit accumulators (no carry is ever lost below
 * 2^32 words), reduced modulo 0xFFFF at the end (2^16 == 1 mod 0xFFFF, RFC 1071's
 * byte-order independence: on a little-endian host the sum of native words is the
 * byte-swapped network-order sum, i.e. times 256 mod 0xFFFF). Every sum this file
 * returns is "mod 0xFFFF in network order": 0 stands for a folded 0xFFFF (or for
 * nothing), exactly what soft/checksum.py's numpy range_sums returns.
 *
 * On x86-64 the long loops have an AVX2 version picked at run time
 * (__builtin_cpu_supports); the build never uses -march=native.
 *
 * Every offset the caller passes is checked against the buffers' sizes: a bad
 * argument raises ValueError, never reads or writes out of bounds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Built with numpy's headers (the build hook defines NO_NUMPY when it finds
 * them), a contiguous ndarray argument is read through its struct, in a few
 * nanoseconds, instead of through the buffer protocol (~50 ns an array, which
 * was most of what the engine's per-stage calls cost). Without them, or for any
 * other object, the buffer protocol does it. */
#ifdef NO_NUMPY
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#define NPY_TARGET_VERSION NPY_1_22_API_VERSION
#include <numpy/arrayobject.h>
#endif

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NO_X86_AVX2 1
#include <immintrin.h>
#else
#define NO_X86_AVX2 0
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define NO_LITTLE 0
#else
#define NO_LITTLE 1
#endif

#define M16 0xFFFFu

/* ------------------------------------------------------------------ sums */
static inline uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t mod16(uint64_t x) { return x % M16; }

/* native-order sum of n < 8 bytes (zero-padded word) */
static inline uint64_t tail_sum(const uint8_t *p, size_t n) {
    uint64_t w = 0;
    memcpy(&w, p, n);
    return (w & 0xFFFFFFFFu) + (w >> 32);
}

/* native-order sum (not reduced) of n bytes, portable C, 4 words per step */
static uint64_t sum_c(const uint8_t *p, size_t n) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint64_t w0 = load64(p + i), w1 = load64(p + i + 8);
        uint64_t w2 = load64(p + i + 16), w3 = load64(p + i + 24);
        s0 += (w0 & 0xFFFFFFFFu) + (w0 >> 32);
        s1 += (w1 & 0xFFFFFFFFu) + (w1 >> 32);
        s2 += (w2 & 0xFFFFFFFFu) + (w2 >> 32);
        s3 += (w3 & 0xFFFFFFFFu) + (w3 >> 32);
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t w = load64(p + i);
        s0 += (w & 0xFFFFFFFFu) + (w >> 32);
    }
    s0 += tail_sum(p + i, n - i);
    return s0 + s1 + s2 + s3;
}

/* the same, copying the bytes to dst as it goes */
static uint64_t copy_sum_c(uint8_t *dst, const uint8_t *p, size_t n) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint64_t w0 = load64(p + i), w1 = load64(p + i + 8);
        uint64_t w2 = load64(p + i + 16), w3 = load64(p + i + 24);
        memcpy(dst + i, &w0, 8);
        memcpy(dst + i + 8, &w1, 8);
        memcpy(dst + i + 16, &w2, 8);
        memcpy(dst + i + 24, &w3, 8);
        s0 += (w0 & 0xFFFFFFFFu) + (w0 >> 32);
        s1 += (w1 & 0xFFFFFFFFu) + (w1 >> 32);
        s2 += (w2 & 0xFFFFFFFFu) + (w2 >> 32);
        s3 += (w3 & 0xFFFFFFFFu) + (w3 >> 32);
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t w = load64(p + i);
        memcpy(dst + i, &w, 8);
        s0 += (w & 0xFFFFFFFFu) + (w >> 32);
    }
    memcpy(dst + i, p + i, n - i);
    s0 += tail_sum(p + i, n - i);
    return s0 + s1 + s2 + s3;
}

#if NO_X86_AVX2
/* 32-bit lanes of 64-bit lanes: lo half masked, hi half shifted down, both added */
#define NO_ACC(acc, v)                                                             \
    acc = _mm256_add_epi64(acc, _mm256_and_si256(v, lo32));                        \
    acc = _mm256_add_epi64(acc, _mm256_srli_epi64(v, 32))

__attribute__((target("avx2"))) static inline uint64_t hsum256(__m256i a0, __m256i a1,
                                                               __m256i a2, __m256i a3) {
    __m256i a = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    __m128i h = _mm_add_epi64(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    return (uint64_t)_mm_cvtsi128_si64(h) + (uint64_t)_mm_extract_epi64(h, 1);
}

__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint8_t *p, size_t n) {
    const __m256i lo32 = _mm256_set1_epi64x(0xFFFFFFFF);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)(p + i));
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(p + i + 32));
        __m256i v2 = _mm256_loadu_si256((const __m256i *)(p + i + 64));
        __m256i v3 = _mm256_loadu_si256((const __m256i *)(p + i + 96));
        NO_ACC(a0, v0);
        NO_ACC(a1, v1);
        NO_ACC(a2, v2);
        NO_ACC(a3, v3);
    }
    for (; i + 32 <= n; i += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(p + i));
        NO_ACC(a0, v);
    }
    uint64_t s = hsum256(a0, a1, a2, a3);
    return s + sum_c(p + i, n - i);
}

__attribute__((target("avx2"))) static uint64_t copy_sum_avx2(uint8_t *dst, const uint8_t *p,
                                                              size_t n) {
    const __m256i lo32 = _mm256_set1_epi64x(0xFFFFFFFF);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)(p + i));
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(p + i + 32));
        __m256i v2 = _mm256_loadu_si256((const __m256i *)(p + i + 64));
        __m256i v3 = _mm256_loadu_si256((const __m256i *)(p + i + 96));
        _mm256_storeu_si256((__m256i *)(dst + i), v0);
        _mm256_storeu_si256((__m256i *)(dst + i + 32), v1);
        _mm256_storeu_si256((__m256i *)(dst + i + 64), v2);
        _mm256_storeu_si256((__m256i *)(dst + i + 96), v3);
        NO_ACC(a0, v0);
        NO_ACC(a1, v1);
        NO_ACC(a2, v2);
        NO_ACC(a3, v3);
    }
    for (; i + 32 <= n; i += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(p + i));
        _mm256_storeu_si256((__m256i *)(dst + i), v);
        NO_ACC(a0, v);
    }
    uint64_t s = hsum256(a0, a1, a2, a3);
    return s + copy_sum_c(dst + i, p + i, n - i);
}
#endif

static int use_avx2 = 0;

/*
 * Native-order sums, not reduced. Every 8 bytes add less than 2^33, so a range of
 * less than CHUNK = 2^30 bytes sums to less than 2^60: a handful of such sums and
 * small constants add up without overflow and are reduced once. Longer ranges are
 * summed by chunks, each reduced modulo 0xFFFF (chunks have even lengths, so the
 * byte order of every chunk is the same).
 */
#define CHUNK ((size_t)1 << 30)

static inline uint64_t sum_chunk(const uint8_t *p, size_t n) {
#if NO_X86_AVX2
    if (use_avx2 && n >= 128) return sum_avx2(p, n);
#endif
    return sum_c(p, n);
}

static inline uint64_t copy_sum_chunk(uint8_t *dst, const uint8_t *p, size_t n) {
#if NO_X86_AVX2
    if (use_avx2 && n >= 128) return copy_sum_avx2(dst, p, n);
#endif
    return copy_sum_c(dst, p, n);
}

static uint64_t sum_native(const uint8_t *p, size_t n) {
    if (n < CHUNK) return sum_chunk(p, n);
    uint64_t s = 0;
    for (size_t i = 0; i < n; i += CHUNK) s += mod16(sum_chunk(p + i, n - i < CHUNK ? n - i : CHUNK));
    return s;
}

static uint64_t copy_sum_native(uint8_t *dst, const uint8_t *p, size_t n) {
    if (n < CHUNK) return copy_sum_chunk(dst, p, n);
    uint64_t s = 0;
    for (size_t i = 0; i < n; i += CHUNK)
        s += mod16(copy_sum_chunk(dst + i, p + i, n - i < CHUNK ? n - i : CHUNK));
    return s;
}

/* native-order sum of a short range (headers, addresses), n < 2^16 */
static inline uint64_t small_sum(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint32_t w;
        memcpy(&w, p + i, 4);
        s += w;
    }
    uint32_t w = 0;
    memcpy(&w, p + i, n - i);
    return s + w;
}

/* a network-order value (< 2^48) as a native-order addend */
static inline uint64_t native_of(uint64_t x) {
#if NO_LITTLE
    return (mod16(x) << 8);
#else
    return x;
#endif
}

/* a native-order sum as a network-order sum mod 0xFFFF */
static inline uint32_t to_net(uint64_t s) {
    uint64_t r = mod16(s);
#if NO_LITTLE
    r = (r << 8) % M16;
#endif
    return (uint32_t)r;
}

/* network-order sum mod 0xFFFF of p[0:n] */
static inline uint32_t net_sum(const uint8_t *p, size_t n) { return to_net(sum_native(p, n)); }

static inline uint32_t rd16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }

static inline void wr16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* ------------------------------------------------------------------ buffers */
typedef struct {
    Py_buffer view;
    int held;
} Buf;

static int get_buf(PyObject *obj, Buf *b, int writable, Py_ssize_t itemsize, const char *name) {
#ifdef NO_NUMPY
    if (PyArray_Check(obj)) {
        PyArrayObject *a = (PyArrayObject *)obj;
        if (PyArray_IS_C_CONTIGUOUS(a) && (!writable || PyArray_ISWRITEABLE(a))) {
            if (PyArray_ITEMSIZE(a) != itemsize) {
                PyErr_Format(PyExc_ValueError, "%s: items of %zd bytes, want %zd", name,
                             (Py_ssize_t)PyArray_ITEMSIZE(a), itemsize);
                return -1;
            }
            b->view.buf = PyArray_DATA(a);
            b->view.len = PyArray_NBYTES(a);
            b->view.itemsize = itemsize;
            b->held = 0; /* nothing to release: the caller's reference keeps it */
            return 0;
        }
    }
#endif
    if (PyObject_GetBuffer(obj, &b->view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0) {
        return -1;
    }
    b->held = 1;
    /* numpy sets itemsize whatever the flags: a wrong dtype is refused, not misread */
    if (b->view.itemsize != itemsize || b->view.len % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%s: items of %zd bytes, want %zd", name,
                     b->view.itemsize, itemsize);
        return -1;
    }
    return 0;
}

static void release(Buf *bufs, int n) {
    for (int i = 0; i < n; i++) {
        if (bufs[i].held) {
            PyBuffer_Release(&bufs[i].view);
            bufs[i].held = 0;
        }
    }
}

static int need_items(Buf *b, Py_ssize_t itemsize, Py_ssize_t n, const char *name) {
    if (b->view.len / itemsize < n) {
        PyErr_Format(PyExc_ValueError, "%s: %zd items, need %zd", name, b->view.len / itemsize,
                     n);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ range_sums */
static PyObject *py_range_sums(PyObject *self, PyObject *args) {
    PyObject *o[4];
    Buf b[4];
    memset(b, 0, sizeof b);
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOO:range_sums", &o[0], &o[1], &o[2], &o[3])) return NULL;
    if (get_buf(o[0], &b[0], 0, 1, "buf") < 0 || get_buf(o[1], &b[1], 0, 8, "a") < 0 ||
        get_buf(o[2], &b[2], 0, 8, "b") < 0 || get_buf(o[3], &b[3], 1, 8, "out") < 0)
        goto fail;
    Py_ssize_t n = b[1].view.len / 8;
    if (need_items(&b[2], 8, n, "b") < 0 || need_items(&b[3], 8, n, "out") < 0) goto fail;
    const uint8_t *buf = b[0].view.buf;
    const int64_t *a = b[1].view.buf, *e = b[2].view.buf;
    int64_t blen = b[0].view.len;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (a[i] < 0 || a[i] > e[i] || e[i] > blen) {
            PyErr_Format(PyExc_ValueError, "range_sums: range %zd [%lld, %lld) outside [0, %lld)",
                         i, (long long)a[i], (long long)e[i], (long long)blen);
            goto fail;
        }
    }
    uint64_t *out = b[3].view.buf;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t i = 0; i < n; i++) out[i] = net_sum(buf + a[i], (size_t)(e[i] - a[i]));
    Py_END_ALLOW_THREADS;
    release(b, 4);
    Py_RETURN_NONE;
fail:
    release(b, 4);
    return NULL;
}

/* ------------------------------------------------------------------ copy_ranges */
/* copy_ranges(dst, dst_start, src, src_start, length): for every i,
 * dst[dst_start[i] : +length[i]] = src[src_start[i] : +length[i]] (memmove: the
 * ranges may overlap, also when dst and src are one buffer). Every range is
 * checked against its buffer before anything is copied. */
static PyObject *py_copy_ranges(PyObject *self, PyObject *args) {
    PyObject *o[5];
    Buf b[5];
    memset(b, 0, sizeof b);
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOO:copy_ranges", &o[0], &o[1], &o[2], &o[3], &o[4]))
        return NULL;
    if (get_buf(o[0], &b[0], 1, 1, "dst") < 0 || get_buf(o[1], &b[1], 0, 8, "dst_start") < 0 ||
        get_buf(o[2], &b[2], 0, 1, "src") < 0 || get_buf(o[3], &b[3], 0, 8, "src_start") < 0 ||
        get_buf(o[4], &b[4], 0, 8, "length") < 0)
        goto fail;
    Py_ssize_t n = b[4].view.len / 8;
    if (need_items(&b[1], 8, n, "dst_start") < 0 || need_items(&b[3], 8, n, "src_start") < 0)
        goto fail;
    uint8_t *dst = b[0].view.buf;
    const uint8_t *src = b[2].view.buf;
    const int64_t *ds = b[1].view.buf, *ss = b[3].view.buf, *ln = b[4].view.buf;
    int64_t dlen = b[0].view.len, slen = b[2].view.len;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (ln[i] < 0 || ds[i] < 0 || ss[i] < 0 || ds[i] > dlen - ln[i] || ss[i] > slen - ln[i]) {
            PyErr_Format(PyExc_ValueError,
                         "copy_ranges: range %zd (dst %lld, src %lld, length %lld) outside "
                         "the buffers (%lld, %lld)",
                         i, (long long)ds[i], (long long)ss[i], (long long)ln[i],
                         (long long)dlen, (long long)slen);
            goto fail;
        }
    }
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t i = 0; i < n; i++)
        if (ln[i]) memmove(dst + ds[i], src + ss[i], (size_t)ln[i]);
    Py_END_ALLOW_THREADS;
    release(b, 5);
    Py_RETURN_NONE;
fail:
    release(b, 5);
    return NULL;
}

/* ------------------------------------------------------------------ verify */
/* flag and enum values of netoffload.batch (checked from Python at import) */
enum {
    NEEDS_CSUM = 1,
    DATA_VALID = 2,
    X_ETHERNET = 2,
    X_PARSED = 4,
    V_GOOD = 1,
    V_BAD = 2,
    V_NONE = 3,
    V_PARTIAL = 4,
    R_TRUNCATED = 1,
    R_BAD_IP_VERSION = 2,
    R_BAD_IHL = 3,
    R_BAD_IP_LENGTH = 4,
    R_BAD_L4_LENGTH = 5,
    R_BAD_CSUM_OFFSETS = 7,
    R_BAD_CHECKSUM = 8,
    R_NOT_IP = 11,
};

enum { VA_BUF, VA_START, VA_LENGTH, VA_IDX, VA_VFLAGS, VA_XFLAGS, VA_L3OFF, VA_L4OFF,
       VA_HDRLEN, VA_L3PROTO, VA_L4PROTO, VA_VERDICT, VA_ERROR, VA_DEFER, VA_N };

/* one packet's layout, as soft/checksum.py's layout() finds it */
typedef struct {
    int reason;   /* 0, or the Reason */
    int ip_ok;    /* passed the IP-level checks (layout()'s "ip") */
    int tcp, udp; /* a TCP / UDP segment whose checksum can be done */
    int64_t l3o, l4o, v, proto, ihl, ip_end, l4_end; /* offsets from the packet start */
} Lay;

/*
 * The layout of one packet; returns 0 done, 1 left to Python (nothing written).
 * The parse is _fast_parse's (raw IP, IPv4 options allowed, IPv6 without walkable
 * extension headers; the layout is written into the extension as it does), the
 * checks are layout()'s. Parsed packets take the layout from the extension.
 */
static int layout_one(const uint8_t *buf, int64_t blen, int64_t base, int64_t plen,
                      uint8_t *xflags, int32_t *l3_off, int32_t *l4_off, int32_t *hdr_len,
                      uint8_t *l3_proto, uint8_t *l4_proto, Lay *L) {
    if (base < 0 || plen < 0 || base > blen || plen > blen - base) return 1;
    const uint8_t *pk = buf + base;
    uint8_t xf = *xflags;
    int64_t l3o, l4o, v, proto;
    if (xf & X_PARSED) {
        l3o = *l3_off;
        l4o = *l4_off;
        v = *l3_proto;
        proto = *l4_proto;
    } else {
        /* _fast_parse */
        if (xf & X_ETHERNET) return 1;
        if (plen < 20) return 1;
        int64_t ver = pk[0] >> 4, ihl = (pk[0] & 15) * 4, tot;
        int is4 = ver == 4, frag4 = 0;
        if (is4) {
            tot = rd16(pk + 2);
            proto = pk[9];
            l4o = ihl;
            frag4 = (rd16(pk + 6) & 0x3FFF) != 0;
            if (!(ihl >= 20 && ihl <= plen && tot >= ihl)) return 1;
        } else {
            int64_t nh6 = pk[6];
            tot = (int64_t)rd16(pk + 4) + 40;
            proto = nh6;
            l4o = 40;
            if (!(ver == 6 && plen >= 40 && nh6 != 0 && nh6 != 43 && nh6 != 60)) return 1;
            /* a fragment header is read (not walked): a cut one is parse_batch's TRUNCATED */
            if (nh6 == 44 && plen < 48) return 1;
        }
        if (tot > plen) return 1;
        int tcp = proto == 6 && !frag4, udp = proto == 17 && !frag4;
        int64_t hl = l4o;
        if (tcp) {
            if (l4o + 20 > plen) return 1;
            int64_t doff = (pk[l4o + 12] >> 4) * 4;
            if (doff < 20 || l4o + doff > plen) return 1;
            hl += doff;
        } else if (udp) {
            if (l4o + 8 > plen) return 1;
            hl += 8;
        }
        /* a parsed IPv6 packet with extension headers needs the routing-header walk:
           never the case here (l4o = 40), so writing the layout now is final */
        *l3_off = 0;
        *l3_proto = (uint8_t)ver;
        *l4_off = (int32_t)l4o;
        *l4_proto = (uint8_t)proto;
        *hdr_len = (int32_t)hl;
        *xflags = xf | X_PARSED;
        l3o = 0;
        v = ver;
    }
    /* layout()'s checks */
    int reason = 0, ip_ok = 0;
    int v4 = v == 4, v6 = v == 6, tcp = 0, udp = 0;
    int64_t ihl = 0, ip_end = 0, l4_end = 0;
    if (!v4 && !v6) {
        reason = R_NOT_IP;
    } else if (l3o < 0 || l3o + (v4 ? 20 : 40) > plen) {
        reason = R_TRUNCATED;
    } else {
        const uint8_t *l3 = pk + l3o;
        ihl = (l3[0] & 15) * 4;
        if ((l3[0] >> 4) != v) {
            reason = R_BAD_IP_VERSION;
        } else if (v4 && (ihl < 20 || l3o + ihl > plen)) {
            reason = R_BAD_IHL;
        } else {
            int64_t ip_len = v4 ? (int64_t)rd16(l3 + 2) : (int64_t)rd16(l3 + 4) + 40;
            ip_end = l3o + ip_len;
            if (ip_end > plen || (v4 && ip_len < ihl)) {
                reason = R_BAD_IP_LENGTH;
            } else {
                ip_ok = 1;
                int whole = !v4 || (rd16(l3 + 6) & 0x3FFF) == 0;
                tcp = whole && proto == 6 && l4o >= 0;
                udp = whole && proto == 17 && l4o >= 0;
                int64_t seg_len = ip_end - l4o;
                if ((tcp && seg_len < 20) || (udp && seg_len < 8) || ((tcp || udp) && l4o < l3o)) {
                    reason = R_TRUNCATED;
                    tcp = udp = 0;
                } else if (udp) {
                    int64_t ulen = rd16(pk + l4o + 4);
                    if (ulen < 8 || ulen > seg_len) {
                        reason = R_BAD_L4_LENGTH;
                        udp = 0;
                    } else {
                        l4_end = l4o + ulen;
                    }
                } else if (tcp) {
                    l4_end = ip_end;
                }
            }
        }
    }
    L->reason = reason;
    L->ip_ok = ip_ok;
    L->tcp = tcp;
    L->udp = udp;
    L->l3o = l3o;
    L->l4o = l4o;
    L->v = v;
    L->proto = proto;
    L->ihl = ihl;
    L->ip_end = ip_end;
    L->l4_end = l4_end;
    return 0;
}

/*
 * soft/checksum.py's verify() for one packet; returns 0 done, 1 left to Python.
 * Verdicts as verify()'s; a packet layout_one does not cover, or an IPv6 one with
 * extension headers (the routing-header walk), is left untouched for numpy.
 */
static int verify_one(const uint8_t *buf, int64_t blen, int64_t base, int64_t plen, uint8_t *vflags,
                      uint8_t *xflags, int32_t *l3_off, int32_t *l4_off, int32_t *hdr_len,
                      uint8_t *l3_proto, uint8_t *l4_proto, uint8_t *verdict, uint16_t *error) {
    uint8_t vf = *vflags;
    if (vf & DATA_VALID) {
        *verdict = V_GOOD;
        return 0;
    }
    if (vf & NEEDS_CSUM) {
        *verdict = V_PARTIAL;
        return 0;
    }
    Lay L;
    if (layout_one(buf, blen, base, plen, xflags, l3_off, l4_off, hdr_len, l3_proto, l4_proto,
                   &L))
        return 1;
    const uint8_t *pk = buf + base;
    int reason = L.reason, tcp = L.tcp, udp = L.udp, v4 = L.v == 4, v6 = L.v == 6;
    int64_t l3o = L.l3o, l4o = L.l4o, ihl = L.ihl, l4_end = L.l4_end, proto = L.proto;
    /* IPv6 with extension headers: the pseudo-header may name a routing header's
       final destination; the numpy path walks them (only reachable when parsed) */
    if (reason == 0 && v6 && (tcp || udp) && l4o > l3o + 40) return 1;
    if (reason != 0) {
        if (reason == R_NOT_IP) {
            *verdict = V_NONE;
        } else {
            *verdict = V_BAD;
            *error = (uint16_t)reason;
        }
        return 0;
    }
    int bad = 0;
    uint8_t vd = V_NONE;
    /* a sum is 0 mod 0xFFFF in either byte order: no swaps needed for the checks */
    if (v4 && mod16(small_sum(pk + l3o, (size_t)ihl)) != 0) bad = 1;
    if (tcp || udp) {
        const uint8_t *l4 = pk + l4o;
        uint32_t field = rd16(l4 + (udp ? 6 : 16));
        int64_t l4len = l4_end - l4o;
        uint64_t s = sum_native(l4, (size_t)l4len);
        s += v4 ? small_sum(pk + l3o + 12, 8) : small_sum(pk + l3o + 8, 32);
        s += native_of((uint64_t)proto + (uint64_t)l4len);
        int zero = field == 0;
        int none = udp && zero && v4;
        int l4bad = !none && (mod16(s) != 0 || (udp && zero));
        if (l4bad)
            bad = 1;
        else if (!none)
            vd = V_GOOD;
    }
    if (bad) {
        *verdict = V_BAD;
        *error = R_BAD_CHECKSUM;
    } else {
        *verdict = vd;
    }
    return 0;
}

static PyObject *py_verify(PyObject *self, PyObject *args) {
    static const Py_ssize_t isz[VA_N] = {1, 8, 8, 8, 1, 1, 4, 4, 4, 1, 1, 1, 2, 8};
    static const int wr[VA_N] = {0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    static const char *names[VA_N] = {"buf",     "start",    "length",   "idx",     "vflags",
                                      "xflags",  "l3_off",   "l4_off",   "hdr_len", "l3_proto",
                                      "l4_proto", "verdict", "error",    "defer"};
    PyObject *o[VA_N];
    Buf b[VA_N];
    memset(b, 0, sizeof b);
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOO:verify", &o[0], &o[1], &o[2], &o[3], &o[4],
                          &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &o[13]))
        return NULL;
    for (int k = 0; k < VA_N; k++)
        if (get_buf(o[k], &b[k], wr[k], isz[k], names[k]) < 0) goto fail;
    Py_ssize_t n = b[VA_START].view.len / 8, m = b[VA_IDX].view.len / 8;
    for (int k = VA_LENGTH; k < VA_N; k++) {
        if (k == VA_IDX) continue;
        if (need_items(&b[k], isz[k], k == VA_DEFER ? m : n, names[k]) < 0) goto fail;
    }
    const int64_t *idx = b[VA_IDX].view.buf;
    for (Py_ssize_t k = 0; k < m; k++) {
        if (idx[k] < 0 || idx[k] >= n) {
            PyErr_Format(PyExc_ValueError, "verify: packet index %lld out of range",
                         (long long)idx[k]);
            goto fail;
        }
    }
    const uint8_t *buf = b[VA_BUF].view.buf;
    int64_t blen = b[VA_BUF].view.len;
    const int64_t *start = b[VA_START].view.buf, *length = b[VA_LENGTH].view.buf;
    uint8_t *vflags = b[VA_VFLAGS].view.buf, *xflags = b[VA_XFLAGS].view.buf;
    int32_t *l3_off = b[VA_L3OFF].view.buf, *l4_off = b[VA_L4OFF].view.buf;
    int32_t *hdr_len = b[VA_HDRLEN].view.buf;
    uint8_t *l3_proto = b[VA_L3PROTO].view.buf, *l4_proto = b[VA_L4PROTO].view.buf;
    uint8_t *verdict = b[VA_VERDICT].view.buf;
    uint16_t *error = b[VA_ERROR].view.buf;
    int64_t *defer = b[VA_DEFER].view.buf;
    Py_ssize_t nd = 0;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t k = 0; k < m; k++) {
        int64_t i = idx[k];
        if (verify_one(buf, blen, start[i], length[i], vflags + i, xflags + i, l3_off + i,
                       l4_off + i, hdr_len + i, l3_proto + i, l4_proto + i, verdict + i,
                       error + i))
            defer[nd++] = i;
    }
    Py_END_ALLOW_THREADS;
    release(b, VA_N);
    return PyLong_FromSsize_t(nd);
fail:
    release(b, VA_N);
    return NULL;
}

/* ------------------------------------------------------------------ fill */
/*
 * soft/checksum.py's fill() for one packet; returns 0 done, 1 left to Python
 * (nothing written). The IPv4 header checksum of a packet whose layout is good;
 * a full packet's TCP/UDP checksum from scratch (pseudo-header included); a
 * partial one (NEEDS_CSUM) completed over [csum_start, end) into csum_start +
 * csum_offset, the flag cleared. A computed 0 goes out as 0xFFFF for UDP, and
 * for a partial packet not known to be TCP (as Linux does, CSUM_MANGLED_0).
 * Errors as fill(): a full packet that does not parse; partial offsets outside
 * the packet.
 */
static int fill_one(uint8_t *buf, int64_t blen, int64_t base, int64_t plen, uint8_t *vflags,
                    uint8_t *xflags, int32_t *l3_off, int32_t *l4_off, int32_t *hdr_len,
                    uint8_t *l3_proto, uint8_t *l4_proto, int64_t cs, int64_t co,
                    uint16_t *error) {
    Lay L;
    if (layout_one(buf, blen, base, plen, xflags, l3_off, l4_off, hdr_len, l3_proto, l4_proto,
                   &L))
        return 1;
    int partial = (*vflags & NEEDS_CSUM) != 0;
    int ok = L.reason == 0, v4 = L.v == 4, v6 = L.v == 6;
    /* IPv6 extension headers: a routing header's final destination is numpy's walk */
    if (ok && v6 && (L.tcp || L.udp) && L.l4o > L.l3o + 40) return 1;
    uint8_t *pk = buf + base;
    int err = (!partial && !ok && L.reason != R_NOT_IP) ? L.reason : 0;
    if (ok && v4) {
        uint8_t *h = pk + L.l3o;
        wr16(h + 10, 0);
        wr16(h + 10, (M16 - to_net(small_sum(h, (size_t)L.ihl))) % M16);
    }
    int bad_off = partial && (cs < 0 || co < 0 || cs + co + 2 > plen);
    if (bad_off) err = R_BAD_CSUM_OFFSETS;
    int part = partial && !bad_off;
    int full = !partial && (L.tcp || L.udp);
    if (part || full) {
        int64_t a, e, store;
        uint64_t s = 0;
        if (part) {
            a = cs;
            e = plen;
            store = cs + co;
        } else {
            a = L.l4o;
            e = L.l4_end;
            store = L.l4o + (L.udp ? 6 : 16);
            wr16(pk + store, 0);
            s += v4 ? small_sum(pk + L.l3o + 12, 8) : small_sum(pk + L.l3o + 8, 32);
            s += native_of((uint64_t)L.proto + (uint64_t)(L.l4_end - L.l4o));
        }
        s += sum_native(pk + a, (size_t)(e - a));
        uint32_t c = (M16 - to_net(s)) % M16;
        int mangle = full ? L.udp : !(ok && L.proto == 6);
        if (mangle && c == 0) c = M16;
        wr16(pk + store, c);
    }
    if (part) *vflags &= (uint8_t)~NEEDS_CSUM;
    if (err) *error = (uint16_t)err;
    return 0;
}

enum { FA_BUF, FA_START, FA_LENGTH, FA_IDX, FA_VFLAGS, FA_XFLAGS, FA_L3OFF, FA_L4OFF,
       FA_HDRLEN, FA_L3PROTO, FA_L4PROTO, FA_CSSTART, FA_CSOFF, FA_ERROR, FA_DEFER, FA_N };

static PyObject *py_fill(PyObject *self, PyObject *args) {
    static const Py_ssize_t isz[FA_N] = {1, 8, 8, 8, 1, 1, 4, 4, 4, 1, 1, 4, 4, 2, 8};
    static const int wr[FA_N] = {1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1};
    static const char *names[FA_N] = {"buf",      "start",    "length",      "idx",
                                      "vflags",   "xflags",   "l3_off",      "l4_off",
                                      "hdr_len",  "l3_proto", "l4_proto",    "csum_start",
                                      "csum_offset", "error", "defer"};
    PyObject *o[FA_N];
    Buf b[FA_N];
    memset(b, 0, sizeof b);
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOO:fill", &o[0], &o[1], &o[2], &o[3], &o[4],
                          &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &o[13],
                          &o[14]))
        return NULL;
    for (int k = 0; k < FA_N; k++)
        if (get_buf(o[k], &b[k], wr[k], isz[k], names[k]) < 0) goto fail;
    Py_ssize_t n = b[FA_START].view.len / 8, m = b[FA_IDX].view.len / 8;
    for (int k = FA_LENGTH; k < FA_N; k++) {
        if (k == FA_IDX) continue;
        if (need_items(&b[k], isz[k], k == FA_DEFER ? m : n, names[k]) < 0) goto fail;
    }
    const int64_t *idx = b[FA_IDX].view.buf;
    for (Py_ssize_t k = 0; k < m; k++) {
        if (idx[k] < 0 || idx[k] >= n) {
            PyErr_Format(PyExc_ValueError, "fill: packet index %lld out of range",
                         (long long)idx[k]);
            goto fail;
        }
    }
    uint8_t *buf = b[FA_BUF].view.buf;
    int64_t blen = b[FA_BUF].view.len;
    const int64_t *start = b[FA_START].view.buf, *length = b[FA_LENGTH].view.buf;
    uint8_t *vflags = b[FA_VFLAGS].view.buf, *xflags = b[FA_XFLAGS].view.buf;
    int32_t *l3_off = b[FA_L3OFF].view.buf, *l4_off = b[FA_L4OFF].view.buf;
    int32_t *hdr_len = b[FA_HDRLEN].view.buf;
    uint8_t *l3_proto = b[FA_L3PROTO].view.buf, *l4_proto = b[FA_L4PROTO].view.buf;
    const int32_t *cstart = b[FA_CSSTART].view.buf, *coff = b[FA_CSOFF].view.buf;
    uint16_t *error = b[FA_ERROR].view.buf;
    int64_t *defer = b[FA_DEFER].view.buf;
    Py_ssize_t nd = 0;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t k = 0; k < m; k++) {
        int64_t i = idx[k];
        if (fill_one(buf, blen, start[i], length[i], vflags + i, xflags + i, l3_off + i,
                     l4_off + i, hdr_len + i, l3_proto + i, l4_proto + i, cstart[i], coff[i],
                     error + i))
            defer[nd++] = i;
    }
    Py_END_ALLOW_THREADS;
    release(b, FA_N);
    return PyLong_FromSsize_t(nd);
fail:
    release(b, FA_N);
    return NULL;
}

/* ------------------------------------------------------------------ layout */
enum { LA_BUF, LA_START, LA_LENGTH, LA_IDX, LA_XFLAGS, LA_L3OFF, LA_L4OFF, LA_HDRLEN,
       LA_L3PROTO, LA_L4PROTO, LA_REASON, LA_L3, LA_V, LA_IHL, LA_L4, LA_PROTO, LA_L4END,
       LA_L4OK, LA_UDP, LA_FIELD, LA_DEFER, LA_N };

/* layout(): outputs per idx entry (absolute offsets), the extension written as parse
   does; returns how many packets were left (their indices in defer, in order) */
static PyObject *py_layout(PyObject *self, PyObject *args) {
    static const Py_ssize_t isz[LA_N] = {1, 8, 8, 8, 1, 4, 4, 4, 1, 1, 2,
                                         8, 8, 8, 8, 8, 8, 1, 1, 8, 8};
    static const char *names[LA_N] = {
        "buf",    "start",    "length", "idx", "xflags", "l3_off", "l4_off",
        "hdr_len", "l3_proto", "l4_proto", "reason", "l3", "v", "ihl",
        "l4",     "proto",    "l4_end", "l4_ok", "udp", "field", "defer"};
    PyObject *o[LA_N];
    Buf b[LA_N];
    memset(b, 0, sizeof b);
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOOOOOOOO:layout", &o[0], &o[1], &o[2], &o[3],
                          &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12],
                          &o[13], &o[14], &o[15], &o[16], &o[17], &o[18], &o[19], &o[20]))
        return NULL;
    for (int k = 0; k < LA_N; k++)
        if (get_buf(o[k], &b[k], k >= LA_XFLAGS, isz[k], names[k]) < 0) goto fail;
    Py_ssize_t n = b[LA_START].view.len / 8, m = b[LA_IDX].view.len / 8;
    if (need_items(&b[LA_LENGTH], 8, n, "length") < 0) goto fail;
    for (int k = LA_XFLAGS; k < LA_N; k++)
        if (need_items(&b[k], isz[k], k >= LA_REASON ? m : n, names[k]) < 0) goto fail;
    const int64_t *idx = b[LA_IDX].view.buf;
    for (Py_ssize_t k = 0; k < m; k++) {
        if (idx[k] < 0 || idx[k] >= n) {
            PyErr_Format(PyExc_ValueError, "layout: packet index %lld out of range",
                         (long long)idx[k]);
            goto fail;
        }
    }
    const uint8_t *buf = b[LA_BUF].view.buf;
    int64_t blen = b[LA_BUF].view.len;
    const int64_t *start = b[LA_START].view.buf, *length = b[LA_LENGTH].view.buf;
    uint8_t *xflags = b[LA_XFLAGS].view.buf;
    int32_t *l3_off = b[LA_L3OFF].view.buf, *l4_off = b[LA_L4OFF].view.buf;
    int32_t *hdr_len = b[LA_HDRLEN].view.buf;
    uint8_t *l3_proto = b[LA_L3PROTO].view.buf, *l4_proto = b[LA_L4PROTO].view.buf;
    uint16_t *reason = b[LA_REASON].view.buf;
    int64_t *o_l3 = b[LA_L3].view.buf, *o_v = b[LA_V].view.buf, *o_ihl = b[LA_IHL].view.buf;
    int64_t *o_l4 = b[LA_L4].view.buf, *o_proto = b[LA_PROTO].view.buf;
    int64_t *o_end = b[LA_L4END].view.buf, *o_field = b[LA_FIELD].view.buf;
    uint8_t *o_ok = b[LA_L4OK].view.buf, *o_udp = b[LA_UDP].view.buf;
    int64_t *defer = b[LA_DEFER].view.buf;
    Py_ssize_t nd = 0;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t k = 0; k < m; k++) {
        int64_t i = idx[k], base = start[i];
        Lay L;
        if (layout_one(buf, blen, base, length[i], xflags + i, l3_off + i, l4_off + i,
                       hdr_len + i, l3_proto + i, l4_proto + i, &L)) {
            defer[nd++] = k;
            L.reason = 0;
            L.ip_ok = L.tcp = L.udp = 0;
            L.l3o = L.l4o = L.proto = L.ihl = L.ip_end = L.l4_end = 0;
        }
        reason[k] = (uint16_t)L.reason;
        o_l3[k] = base + L.l3o;
        o_v[k] = L.ip_ok ? L.v : 0;
        o_ihl[k] = L.ihl;
        o_l4[k] = base + L.l4o;
        o_proto[k] = L.proto;
        o_end[k] = base + (L.udp ? L.l4_end : L.ip_end);
        o_ok[k] = (uint8_t)(L.tcp || L.udp);
        o_udp[k] = (uint8_t)L.udp;
        o_field[k] = base + L.l4o + (L.udp ? 6 : 16);
    }
    Py_END_ALLOW_THREADS;
    release(b, LA_N);
    return PyLong_FromSsize_t(nd);
fail:
    release(b, LA_N);
    return NULL;
}

/* ------------------------------------------------------------------ plan */
/* sizes and places of the segments of G super-packets (segment.py's output layout:
   each segment its input's headroom, `tail` bytes of tailroom, slots rounded up to
   `align`); returns the output buffer size */
static PyObject *py_plan(PyObject *self, PyObject *args) {
    static const char *names[9] = {"head", "hlen", "mss", "pay", "k",
                                   "start", "length", "slot_lo", "slot_hi"};
    PyObject *o[9];
    long long tail, align;
    Buf b[9];
    memset(b, 0, sizeof b);
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOLLOOOO:plan", &o[0], &o[1], &o[2], &o[3], &o[4], &tail,
                          &align, &o[5], &o[6], &o[7], &o[8]))
        return NULL;
    for (int k = 0; k < 9; k++)
        if (get_buf(o[k], &b[k], k >= 5, 8, names[k]) < 0) goto fail;
    Py_ssize_t g = b[0].view.len / 8, total = b[5].view.len / 8;
    for (int k = 1; k < 9; k++)
        if (need_items(&b[k], 8, k < 5 ? g : total, names[k]) < 0) goto fail;
    const int64_t *head = b[0].view.buf, *hlen = b[1].view.buf, *mss = b[2].view.buf;
    const int64_t *pay = b[3].view.buf, *kk = b[4].view.buf;
    int64_t *ostart = b[5].view.buf, *olen = b[6].view.buf;
    int64_t *lo = b[7].view.buf, *hi = b[8].view.buf;
    if (align <= 0 || tail < 0) {
        PyErr_SetString(PyExc_ValueError, "plan: bad tail or align");
        goto fail;
    }
    int64_t pos = 0;
    Py_ssize_t o_i = 0;
    for (Py_ssize_t q = 0; q < g; q++) {
        if (kk[q] < 1 || mss[q] <= 0 || o_i + kk[q] > total || head[q] < 0 || hlen[q] < 0) {
            PyErr_Format(PyExc_ValueError, "plan: super-packet %zd: bad geometry", q);
            goto fail;
        }
        for (int64_t j = 0; j < kk[q]; j++, o_i++) {
            int64_t sp = pay[q] - j * mss[q] < mss[q] ? pay[q] - j * mss[q] : mss[q];
            int64_t len = hlen[q] + sp;
            int64_t size = (head[q] + len + tail + align - 1) / align * align;
            lo[o_i] = pos;
            ostart[o_i] = pos + head[q];
            olen[o_i] = len;
            pos += size;
            hi[o_i] = pos;
        }
    }
    if (o_i != total) {
        PyErr_SetString(PyExc_ValueError, "plan: segment count mismatch");
        goto fail;
    }
    release(b, 9);
    return PyLong_FromLongLong(pos);
fail:
    release(b, 9);
    return NULL;
}

/* ------------------------------------------------------------------ segment */
enum { SA_IN, SA_OUT, SA_BASE, SA_HLEN, SA_MSS, SA_PAY, SA_K, SA_L3, SA_L4, SA_VER, SA_IHL,
       SA_FIXED, SA_FIRST, SA_OSTART, SA_N };

/*
 * soft/segment.py's _build for the segments of G super-packets: every segment gets
 * a copy of the headers and its payload slice (summed while copied), then IPv4
 * total length / ID / header checksum or IPv6 payload length, and TCP sequence
 * number / flags / checksum or UDP length / checksum, as Linux's software GSO.
 */
static PyObject *py_segment(PyObject *self, PyObject *args) {
    static const Py_ssize_t isz[SA_N] = {1, 1, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8};
    static const char *names[SA_N] = {"in", "out", "base", "hlen", "mss", "pay", "k",
                                      "l3", "l4", "ver", "ihl", "fixed", "first", "out_start"};
    PyObject *o[SA_N];
    int proto;
    Buf b[SA_N];
    memset(b, 0, sizeof b);
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOi:segment", &o[0], &o[1], &o[2], &o[3], &o[4],
                          &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &o[13],
                          &proto))
        return NULL;
    for (int k = 0; k < SA_N; k++)
        if (get_buf(o[k], &b[k], k == SA_OUT, isz[k], names[k]) < 0) goto fail;
    if (proto != 6 && proto != 17) {
        PyErr_SetString(PyExc_ValueError, "segment: proto must be 6 or 17");
        goto fail;
    }
    Py_ssize_t g = b[SA_BASE].view.len / 8, nout = b[SA_OSTART].view.len / 8;
    for (int k = SA_HLEN; k < SA_OSTART; k++)
        if (need_items(&b[k], 8, g, names[k]) < 0) goto fail;
    const uint8_t *in = b[SA_IN].view.buf;
    uint8_t *out = b[SA_OUT].view.buf;
    int64_t in_len = b[SA_IN].view.len, out_len = b[SA_OUT].view.len;
    const int64_t *base = b[SA_BASE].view.buf, *hlen = b[SA_HLEN].view.buf;
    const int64_t *mss = b[SA_MSS].view.buf, *pay = b[SA_PAY].view.buf, *kk = b[SA_K].view.buf;
    const int64_t *l3 = b[SA_L3].view.buf, *l4 = b[SA_L4].view.buf, *ver = b[SA_VER].view.buf;
    const int64_t *ihl = b[SA_IHL].view.buf, *fixed = b[SA_FIXED].view.buf;
    const int64_t *first = b[SA_FIRST].view.buf, *ostart = b[SA_OSTART].view.buf;
    int64_t min_thl = proto == 6 ? 20 : 8;
    /* check everything first: nothing is written unless all of it is in bounds */
    for (Py_ssize_t q = 0; q < g; q++) {
        int64_t h = hlen[q], m = mss[q], p = pay[q], k = kk[q];
        int ok = h >= 0 && m > 0 && p >= 0 && k >= 1 && (k - 1) * m < p + (p == 0) &&
                 k * m >= p && base[q] >= 0 && base[q] <= in_len && h + p <= in_len - base[q] &&
                 l3[q] >= 0 && l4[q] >= l3[q] && l4[q] + min_thl <= h &&
                 first[q] >= 0 && first[q] + k <= nout &&
                 (ver[q] == 4 ? ihl[q] >= 20 && l3[q] + ihl[q] <= l4[q]
                              : ver[q] == 6 && l3[q] + 40 <= l4[q]);
        if (ok) {
            for (int64_t j = 0; j < k; j++) {
                int64_t sp = p - j * m < m ? p - j * m : m;
                int64_t d = ostart[first[q] + j];
                if (d < 0 || d > out_len || h + sp > out_len - d) {
                    ok = 0;
                    break;
                }
            }
        }
        if (!ok) {
            PyErr_Format(PyExc_ValueError, "segment: super-packet %zd: bad geometry", q);
            goto fail;
        }
    }
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t q = 0; q < g; q++) {
        int64_t h = hlen[q], m = mss[q], p = pay[q], k = kk[q];
        int64_t o3 = l3[q], o4 = l4[q], thl = h - o4;
        const uint8_t *src = in + base[q];
        /* per super-packet: sums of the headers without the fields that change per
           segment (one's complement sums subtract), so that no segment's header is
           read back after its fields are written */
        uint64_t hbase = 0, asum;
        uint32_t id0 = rd16(src + o3 + 4);
        if (ver[q] == 4) {
            hbase = to_net(small_sum(src + o3, (size_t)ihl[q])) + 3 * M16 - rd16(src + o3 + 2) -
                    id0 - rd16(src + o3 + 10);
            asum = to_net(small_sum(src + o3 + 12, 8));
        } else {
            asum = to_net(small_sum(src + o3 + 8, 32));
        }
        uint64_t lsum = to_net(small_sum(src + o4, (size_t)thl)) + asum;
        uint32_t seq0 = ((uint32_t)rd16(src + o4 + 4) << 16) | rd16(src + o4 + 6);
        uint32_t w6 = rd16(src + o4 + 12); /* data offset and flags */
        uint8_t fl0 = src[o4 + 13];
        uint64_t l4base = proto == 6 ? lsum + 4 * M16 + 6 - (seq0 >> 16) - (seq0 & 0xFFFF) - w6 -
                                           rd16(src + o4 + 16)
                                     : lsum + 2 * M16 + 17 - rd16(src + o4 + 4) - rd16(src + o4 + 6);
        for (int64_t j = 0; j < k; j++) {
            int64_t sp = p - j * m < m ? p - j * m : m;
            uint8_t *d = out + ostart[first[q] + j];
            memcpy(d, src, (size_t)h);
            uint64_t paysum = to_net(copy_sum_native(d + h, src + h + j * m, (size_t)sp));
            uint8_t *d3 = d + o3, *d4 = d + o4;
            if (ver[q] == 4) {
                uint32_t tot = (uint32_t)((h - o3 + sp) & 0xFFFF);
                uint32_t id = fixed[q] ? id0 : (id0 + (uint32_t)j) & 0xFFFF;
                uint32_t c = M16 - (uint32_t)mod16(hbase + tot + id);
                wr16(d3 + 2, tot);
                wr16(d3 + 4, id);
                wr16(d3 + 10, c == M16 ? 0 : c);
            } else {
                wr16(d3 + 4, (uint32_t)((h - o3 - 40 + sp) & 0xFFFF));
            }
            uint64_t l4len = (uint64_t)(thl + sp);
            if (proto == 6) {
                uint32_t seq = seq0 + (uint32_t)(j * m);
                uint8_t fl = fl0;
                if (j != k - 1) fl &= (uint8_t)~(0x01 | 0x08); /* FIN, PSH on the last only */
                if (j != 0) fl &= (uint8_t)~0x80;              /* CWR on the first only */
                uint64_t s = l4base + l4len + (seq >> 16) + (seq & 0xFFFF) + ((w6 & 0xFF00) | fl) +
                             paysum;
                uint32_t c = M16 - (uint32_t)mod16(s);
                wr16(d4 + 4, seq >> 16);
                wr16(d4 + 6, seq & 0xFFFF);
                d4[13] = fl;
                wr16(d4 + 16, c == M16 ? 0 : c);
            } else {
                uint32_t c = M16 - (uint32_t)mod16(l4base + 2 * l4len + paysum);
                wr16(d4 + 4, (uint32_t)(l4len & 0xFFFF));
                wr16(d4 + 6, c == 0 ? M16 : c); /* a computed 0 is sent as 0xFFFF */
            }
        }
    }
    Py_END_ALLOW_THREADS;
    release(b, SA_N);
    Py_RETURN_NONE;
fail:
    release(b, SA_N);
    return NULL;
}

/* ------------------------------------------------------------------ engine scans */
/* The engine's bookkeeping per stage, in one pass instead of a handful of numpy
 * calls (each costs about a microsecond, which is most of what a batch of a few
 * hundred packets costs a fast task).
 *
 * want(tasks, done, error, verdict, length, bit, drop, out) -> (nwant, nbytes, ndead)
 *   out[i] = tasks[i] & bit and not done[i] & bit and error[i] == 0 and
 *   verdict[i] != drop; nbytes sums length over out; ndead counts the packets
 *   with error[i] != 0 or verdict[i] == drop.
 * mark(tasks, done, error, verdict, bit, drop) -> ndead
 *   done[i] |= tasks[i] & bit for every packet; ndead as above. */
enum { EW_TASKS, EW_DONE, EW_ERROR, EW_VERDICT, EW_LENGTH, EW_OUT, EW_N };

/* The want scan and the mark of a stage, branch-free so that the compiler
 * vectorises them, compiled twice on x86-64 (AVX2 picked at run time, as for
 * the sums): over a batch of 1024 the SSE2 loops cost as much as the rest of a
 * stage's bookkeeping. */
typedef struct {
    Py_ssize_t nwant, ndead;
    long long nbytes;
} ScanCount;

static inline __attribute__((always_inline)) ScanCount
want_scan_body(const uint16_t *tasks, const uint16_t *done, const uint16_t *error,
               const uint8_t *verdict, const int64_t *len, Py_ssize_t n, uint16_t m, uint8_t d,
               uint8_t *w) {
    /* counts in 32 bits (a batch has far fewer packets) and the bytes in a
     * second pass: widening every lane to 64 bits made the scan 40% slower */
    uint32_t nw = 0, nd = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t dead = (uint8_t)((error[i] != 0) | (verdict[i] == d));
        uint8_t wi = (uint8_t)((((tasks[i] & ~done[i]) & m) != 0) & (dead ^ 1));
        w[i] = wi;
        nw += wi;
        nd += dead;
    }
    long long nb = 0;
    if (nw == (uint32_t)n) {
        for (Py_ssize_t i = 0; i < n; i++) nb += len[i];
    } else if (nw) {
        for (Py_ssize_t i = 0; i < n; i++) nb += len[i] & -(int64_t)w[i];
    }
    ScanCount c = {(Py_ssize_t)nw, (Py_ssize_t)nd, nb};
    return c;
}

static inline __attribute__((always_inline)) Py_ssize_t
mark_body(const uint16_t *tasks, uint16_t *done, const uint16_t *error, const uint8_t *verdict,
          Py_ssize_t n, uint16_t m, uint8_t d) {
    uint32_t nd = 0; /* 32 bits: see want_scan_body */
    for (Py_ssize_t i = 0; i < n; i++) {
        done[i] |= tasks[i] & m;
        nd += (error[i] != 0) | (verdict[i] == d);
    }
    return (Py_ssize_t)nd;
}

static inline __attribute__((always_inline)) void number_body(int64_t *origin, Py_ssize_t n,
                                                              long long base) {
    for (Py_ssize_t i = 0; i < n; i++) origin[i] = (int64_t)(base + i);
}

#define NO_SCAN_ARGS                                                                        \
    const uint16_t *tasks, const uint16_t *done, const uint16_t *error, const uint8_t *verdict, \
        const int64_t *len, Py_ssize_t n, uint16_t m, uint8_t d, uint8_t *w
#define NO_MARK_ARGS                                                                    \
    const uint16_t *tasks, uint16_t *done, const uint16_t *error, const uint8_t *verdict, \
        Py_ssize_t n, uint16_t m, uint8_t d

static ScanCount want_scan_c(NO_SCAN_ARGS) {
    return want_scan_body(tasks, done, error, verdict, len, n, m, d, w);
}
static Py_ssize_t mark_c(NO_MARK_ARGS) { return mark_body(tasks, done, error, verdict, n, m, d); }
static void number_c(int64_t *origin, Py_ssize_t n, long long base) { number_body(origin, n, base); }
#if NO_X86_AVX2
__attribute__((target("avx2"))) static ScanCount want_scan_avx2(NO_SCAN_ARGS) {
    return want_scan_body(tasks, done, error, verdict, len, n, m, d, w);
}
__attribute__((target("avx2"))) static Py_ssize_t mark_avx2(NO_MARK_ARGS) {
    return mark_body(tasks, done, error, verdict, n, m, d);
}
__attribute__((target("avx2"))) static void number_avx2(int64_t *origin, Py_ssize_t n,
                                                        long long base) {
    number_body(origin, n, base);
}
#endif

/* the scan and the mark on raw arrays, AVX2 when there; in chunks of at most
 * INT32_MAX packets so that the 32-bit counts stay exact */
static ScanCount scan_raw(NO_SCAN_ARGS) {
    ScanCount t = {0, 0, 0};
    for (Py_ssize_t o = 0; o < n; o += INT32_MAX) {
        Py_ssize_t k = n - o < INT32_MAX ? n - o : INT32_MAX;
        ScanCount c;
#if NO_X86_AVX2
        if (use_avx2 && k >= 32)
            c = want_scan_avx2(tasks + o, done + o, error + o, verdict + o, len + o, k, m, d, w + o);
        else
#endif
            c = want_scan_c(tasks + o, done + o, error + o, verdict + o, len + o, k, m, d, w + o);
        t.nwant += c.nwant;
        t.ndead += c.ndead;
        t.nbytes += c.nbytes;
    }
    return t;
}

static Py_ssize_t mark_raw(NO_MARK_ARGS) {
    Py_ssize_t t = 0;
    for (Py_ssize_t o = 0; o < n; o += INT32_MAX) {
        Py_ssize_t k = n - o < INT32_MAX ? n - o : INT32_MAX;
#if NO_X86_AVX2
        if (use_avx2 && k >= 32)
            t += mark_avx2(tasks + o, done + o, error + o, verdict + o, k, m, d);
        else
#endif
            t += mark_c(tasks + o, done + o, error + o, verdict + o, k, m, d);
    }
    return t;
}

/* origin[i] = base + i */
static void number_raw(int64_t *origin, Py_ssize_t n, long long base) {
#if NO_X86_AVX2
    if (use_avx2 && n >= 32) {
        number_avx2(origin, n, base);
        return;
    }
#endif
    number_c(origin, n, base);
}

static PyObject *py_want(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[EW_N];
    Buf b[EW_N];
    unsigned int bit, drop;
    memset(b, 0, sizeof b);
    if (!PyArg_ParseTuple(args, "OOOOOIIO:want", &o[EW_TASKS], &o[EW_DONE], &o[EW_ERROR],
                          &o[EW_VERDICT], &o[EW_LENGTH], &bit, &drop, &o[EW_OUT]))
        return NULL;
    static const char *names[EW_N] = {"tasks", "done", "error", "verdict", "length", "out"};
    static const Py_ssize_t isz[EW_N] = {2, 2, 2, 1, 8, 1};
    for (int k = 0; k < EW_N; k++)
        if (get_buf(o[k], &b[k], k == EW_OUT, isz[k], names[k]) < 0) goto fail;
    Py_ssize_t n = b[EW_TASKS].view.len / 2;
    for (int k = 1; k < EW_N; k++)
        if (need_items(&b[k], isz[k], n, names[k]) < 0) goto fail;
    const uint16_t *tasks = b[EW_TASKS].view.buf, *done = b[EW_DONE].view.buf;
    const uint16_t *error = b[EW_ERROR].view.buf;
    const uint8_t *verdict = b[EW_VERDICT].view.buf;
    const int64_t *length = b[EW_LENGTH].view.buf;
    uint8_t *out = b[EW_OUT].view.buf;
    const uint16_t m = (uint16_t)bit;
    const uint8_t d = (uint8_t)drop;
    ScanCount c = scan_raw(tasks, done, error, verdict, length, n, m, d, out);
    release(b, EW_N);
    return Py_BuildValue("nLn", c.nwant, c.nbytes, c.ndead);
fail:
    release(b, EW_N);
    return NULL;
}

static PyObject *py_mark(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[4];
    Buf b[4];
    unsigned int bit, drop;
    memset(b, 0, sizeof b);
    if (!PyArg_ParseTuple(args, "OOOOII:mark", &o[0], &o[1], &o[2], &o[3], &bit, &drop))
        return NULL;
    static const char *names[4] = {"tasks", "done", "error", "verdict"};
    static const Py_ssize_t isz[4] = {2, 2, 2, 1};
    for (int k = 0; k < 4; k++)
        if (get_buf(o[k], &b[k], k == 1, isz[k], names[k]) < 0) goto fail;
    Py_ssize_t n = b[0].view.len / 2;
    for (int k = 1; k < 4; k++)
        if (need_items(&b[k], isz[k], n, names[k]) < 0) goto fail;
    const uint16_t *tasks = b[0].view.buf, *error = b[2].view.buf;
    uint16_t *done = b[1].view.buf;
    const uint8_t *verdict = b[3].view.buf;
    const uint16_t m = (uint16_t)bit;
    const uint8_t d = (uint8_t)drop;
    Py_ssize_t ndead = mark_raw(tasks, done, error, verdict, n, m, d);
    release(b, 4);
    return PyLong_FromSsize_t(ndead);
fail:
    release(b, 4);
    return NULL;
}

/* begin(origin, sub, base): origin[i] = base + i, sub[i] = 0 (a batch entering
 * the engine: its packets numbered, one call). */
static PyObject *py_begin(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[2];
    Buf b[2];
    long long base;
    memset(b, 0, sizeof b);
    if (!PyArg_ParseTuple(args, "OOL:begin", &o[0], &o[1], &base)) return NULL;
    if (get_buf(o[0], &b[0], 1, 8, "origin") < 0 || get_buf(o[1], &b[1], 1, 8, "sub") < 0)
        goto fail;
    Py_ssize_t n = b[0].view.len / 8;
    if (need_items(&b[1], 8, n, "sub") < 0) goto fail;
    int64_t *origin = b[0].view.buf;
    uint64_t *sub = b[1].view.buf;
    number_raw(origin, n, base);
    memset(sub, 0, (size_t)n * 8);
    release(b, 2);
    Py_RETURN_NONE;
fail:
    release(b, 2);
    return NULL;
}

/* soft_run(batch, base, plan, drop, acc, start): the stages of an engine with no
 * devices, in one call (the engine's Python glue around a fast task cost as
 * much as the checksum of 256 packets). plan: one (bit, process) per stage;
 * acc: int64 array of 3 per stage (packets, bytes, ns) the counts are added to.
 *
 *   start == 0: the batch enters first (see enter); NotImplemented, nothing
 *   written, when its extension is not plain contiguous arrays (or without
 *   numpy's headers): the engine's Python path does it all.
 *   Then from stage `start` on, per stage:
 *     want = the packets that want `bit`, have not had it and are alive
 *     nobody wants it             -> next stage
 *     bit == 0, a dead packet in the batch, arrays it cannot read
 *                                 -> (batch, i, -1, 0): stage i and on are the
 *                                    engine's (it counts drops by reason)
 *     out = process(batch, want), timed and counted, then marked done on out
 *     out changed size or has dead packets, or arrays it cannot read (dead -1)
 *                                 -> (out, i, n_before, dead): the engine
 *                                    finishes stage i (renumbering, drops) and
 *                                    goes on from i + 1
 *   every stage done              -> the batch out
 *
 * An exception raised by `process` propagates (its counts are not added). */
static PyObject *s_ext, *s_length, *s_tasks, *s_done, *s_error, *s_verdict;
static PyObject *s_origin, *s_sub, *s_offload;

static int intern_names(void) {
    s_ext = PyUnicode_InternFromString("ext");
    s_length = PyUnicode_InternFromString("length");
    s_tasks = PyUnicode_InternFromString("tasks");
    s_done = PyUnicode_InternFromString("done");
    s_error = PyUnicode_InternFromString("error");
    s_verdict = PyUnicode_InternFromString("filter_verdict");
    s_origin = PyUnicode_InternFromString("origin");
    s_sub = PyUnicode_InternFromString("sub");
    s_offload = PyUnicode_InternFromString("offload");
    return (s_ext && s_length && s_tasks && s_done && s_error && s_verdict && s_origin && s_sub &&
            s_offload)
               ? 0
               : -1;
}

#ifdef NO_NUMPY
/* the contiguous 1-D ndarray attribute `name` of `o` with n items of isz bytes
 * (new reference), NULL without an exception when it is not one */
static PyArrayObject *arr_attr(PyObject *o, PyObject *name, int isz, npy_intp n, int writable) {
    PyObject *a = PyObject_GetAttr(o, name);
    if (a == NULL) {
        PyErr_Clear();
        return NULL;
    }
    if (!PyArray_Check(a)) goto no;
    PyArrayObject *r = (PyArrayObject *)a;
    if (PyArray_NDIM(r) != 1 || !PyArray_IS_C_CONTIGUOUS(r) || PyArray_ITEMSIZE(r) != isz ||
        (n >= 0 && PyArray_DIM(r, 0) != n) || (writable && !PyArray_ISWRITEABLE(r)))
        goto no;
    return r;
no:
    Py_DECREF(a);
    return NULL;
}

/* the four extension arrays of a batch the scan and the mark read */
typedef struct {
    PyArrayObject *tasks, *done, *error, *verdict;
} ExtArrays;

static void ext_release(ExtArrays *x) {
    Py_XDECREF(x->tasks);
    Py_XDECREF(x->done);
    Py_XDECREF(x->error);
    Py_XDECREF(x->verdict);
    memset(x, 0, sizeof *x);
}

/* 0 and x filled, or -1 (x empty) when the batch's extension is not laid out
 * as plain contiguous arrays of its length */
static int ext_arrays(PyObject *batch, ExtArrays *x, npy_intp *n) {
    memset(x, 0, sizeof *x);
    PyObject *ext = PyObject_GetAttr(batch, s_ext);
    if (ext == NULL) {
        PyErr_Clear();
        return -1;
    }
    x->tasks = arr_attr(ext, s_tasks, 2, -1, 0);
    if (x->tasks != NULL) {
        npy_intp k = PyArray_DIM(x->tasks, 0);
        x->done = arr_attr(ext, s_done, 2, k, 1);
        x->error = arr_attr(ext, s_error, 2, k, 0);
        x->verdict = arr_attr(ext, s_verdict, 1, k, 0);
        *n = k;
    }
    Py_DECREF(ext);
    if (!x->tasks || !x->done || !x->error || !x->verdict) {
        ext_release(x);
        return -1;
    }
    return 0;
}

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* the clock of time.perf_counter_ns */
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
#endif


#ifdef NO_NUMPY
/* one want mask kept for the next batch of the same size: reused only when
 * nothing but this cache holds it (a task that kept its mask, or a nested
 * engine, gets a new one) */
static PyArrayObject *want_cache;

static PyArrayObject *want_array(npy_intp n) {
    PyArrayObject *c = want_cache;
    if (c != NULL && Py_REFCNT(c) == 1 && PyArray_DIM(c, 0) == n && PyArray_ISWRITEABLE(c)) {
        Py_INCREF(c);
        return c;
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_BOOL);
    if (a == NULL) return NULL;
    Py_INCREF(a);
    Py_XSETREF(want_cache, a);
    return a;
}

/* want[i] = packet i wants bit, has not had it and is alive; the counts */
static ScanCount want_scan(const ExtArrays *x, const int64_t *len, npy_intp n, uint16_t m,
                           uint8_t d, uint8_t *w) {
    const uint16_t *tasks = PyArray_DATA(x->tasks), *done = PyArray_DATA(x->done);
    const uint16_t *error = PyArray_DATA(x->error);
    const uint8_t *verdict = PyArray_DATA(x->verdict);
    return scan_raw(tasks, done, error, verdict, len, n, m, d, w);
}

/* mark bit done where asked; the number of dead packets */
static Py_ssize_t mark_done(const ExtArrays *x, npy_intp n, uint16_t m, uint8_t d) {
    const uint16_t *tasks = PyArray_DATA(x->tasks), *error = PyArray_DATA(x->error);
    uint16_t *done = PyArray_DATA(x->done);
    const uint8_t *verdict = PyArray_DATA(x->verdict);
    return mark_raw(tasks, done, error, verdict, n, m, d);
}

/* origin = base + i, sub = offload = 0; 0, or -1 when not plain arrays */
static int enter_batch(PyObject *batch, long long base) {
    PyObject *ext = PyObject_GetAttr(batch, s_ext);
    if (ext == NULL) {
        PyErr_Clear();
        return -1;
    }
    PyArrayObject *o = arr_attr(ext, s_origin, 8, -1, 1);
    PyArrayObject *sb = o ? arr_attr(ext, s_sub, 8, PyArray_DIM(o, 0), 1) : NULL;
    PyArrayObject *off = sb ? arr_attr(ext, s_offload, 2, PyArray_DIM(o, 0), 1) : NULL;
    Py_DECREF(ext);
    int ok = off != NULL;
    if (ok) {
        npy_intp n = PyArray_DIM(o, 0);
        int64_t *origin = PyArray_DATA(o);
        number_raw(origin, n, base);
        memset(PyArray_DATA(sb), 0, (size_t)n * 8);
        memset(PyArray_DATA(off), 0, (size_t)n * 2);
    }
    Py_XDECREF(o);
    Py_XDECREF(sb);
    Py_XDECREF(off);
    return ok ? 0 : -1;
}
#endif

static PyObject *py_soft_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6 || !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "soft_run(batch, base, plan: tuple, drop, acc, start)");
        return NULL;
    }
    long long base = PyLong_AsLongLong(args[1]);
    unsigned long drop = PyLong_AsUnsignedLong(args[3]);
    Py_ssize_t start = PyLong_AsSsize_t(args[5]);
    if (PyErr_Occurred()) return NULL;
#ifndef NO_NUMPY
    (void)base;
    (void)drop;
    (void)start;
    Py_RETURN_NOTIMPLEMENTED;
#else
    PyObject *plan = args[2];
    Py_ssize_t nst = PyTuple_GET_SIZE(plan);
    PyArrayObject *acc = PyArray_Check(args[4]) ? (PyArrayObject *)args[4] : NULL;
    if (acc == NULL || PyArray_NDIM(acc) != 1 || !PyArray_IS_C_CONTIGUOUS(acc) ||
        PyArray_TYPE(acc) != NPY_INT64 || !PyArray_ISWRITEABLE(acc) ||
        PyArray_DIM(acc, 0) < 3 * nst) {
        PyErr_SetString(PyExc_TypeError, "soft_run: acc must be a writable int64 array of 3 per stage");
        return NULL;
    }
    if (start < 0 || start > nst) {
        PyErr_SetString(PyExc_ValueError, "soft_run: start out of range");
        return NULL;
    }
    if (start == 0 && enter_batch(args[0], base) < 0) Py_RETURN_NOTIMPLEMENTED;
    int64_t *sums = PyArray_DATA(acc);
    const uint8_t d = (uint8_t)drop;
    PyObject *cur = args[0];
    Py_INCREF(cur);
    for (Py_ssize_t i = start; i < nst; i++) {
        PyObject *item = PyTuple_GET_ITEM(plan, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "soft_run: a plan entry is (bit, process)");
            goto fail;
        }
        unsigned long bit = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(item, 0));
        if (bit == (unsigned long)-1 && PyErr_Occurred()) goto fail;
        const uint16_t m = (uint16_t)bit;
        ExtArrays x;
        npy_intp n = 0;
        if (ext_arrays(cur, &x, &n) < 0) goto resume;
        if (n == 0) {
            ext_release(&x);
            break;
        }
        if (m == 0 || n > INT32_MAX) { /* counts of the scan are 32-bit */
            ext_release(&x);
            goto resume;
        }
        PyArrayObject *length = arr_attr(cur, s_length, 8, n, 0);
        if (length == NULL) {
            ext_release(&x);
            goto resume;
        }
        PyArrayObject *want = want_array(n);
        if (want == NULL) {
            ext_release(&x);
            Py_DECREF(length);
            goto fail;
        }
        ScanCount sc = want_scan(&x, PyArray_DATA(length), n, m, d, PyArray_DATA(want));
        Py_ssize_t nwant = sc.nwant, ndead = sc.ndead;
        long long nbytes = sc.nbytes;
        ext_release(&x);
        Py_DECREF(length);
        if (nwant == 0 || ndead > 0) {
            Py_DECREF(want);
            if (nwant == 0) continue;
            goto resume;
        }
        PyObject *call[2] = {cur, (PyObject *)want};
        int64_t t0 = now_ns();
        PyObject *out = PyObject_Vectorcall(PyTuple_GET_ITEM(item, 1), call, 2, NULL);
        int64_t dt = now_ns() - t0;
        Py_DECREF(want);
        if (out == NULL) goto fail;
        Py_DECREF(cur);
        cur = out;
        sums[3 * i] += nwant;
        sums[3 * i + 1] += nbytes;
        sums[3 * i + 2] += dt;
        Py_ssize_t dead = -1;
        npy_intp k = -1;
        if (ext_arrays(cur, &x, &k) == 0) {
            if (k <= INT32_MAX) dead = mark_done(&x, k, m, d); /* else the engine marks */
            ext_release(&x);
        }
        if (dead != 0 || k != n) return Py_BuildValue("(Nnnn)", cur, i, (Py_ssize_t)n, dead);
        continue;
    resume:
        return Py_BuildValue("(Nnnn)", cur, i, (Py_ssize_t)-1, (Py_ssize_t)0);
    }
    return cur;
fail:
    Py_DECREF(cur);
    return NULL;
#endif
}

/* enter(batch, base) -> bool: a batch entering an engine with no devices, in one
 * call: ext.origin[i] = base + i, ext.sub[i] = 0, ext.offload[i] = 0. False
 * (nothing written) when the extension is not plain contiguous arrays, or
 * without numpy's headers: the engine then does it with numpy. */
static PyObject *py_enter(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "enter(batch, base)");
        return NULL;
    }
    long long base = PyLong_AsLongLong(args[1]);
    if (base == -1 && PyErr_Occurred()) return NULL;
#ifndef NO_NUMPY
    Py_RETURN_FALSE;
#else
    return PyBool_FromLong(enter_batch(args[0], base) == 0);
#endif
}

static PyObject *py_simd(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyUnicode_FromString(use_avx2 ? "avx2" : "c");
}

static PyObject *py_set_simd(PyObject *self, PyObject *arg) {
    (void)self;
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
#if NO_X86_AVX2
    __builtin_cpu_init();
    use_avx2 = on && __builtin_cpu_supports("avx2");
#else
    use_avx2 = 0;
#endif
    return py_simd(self, NULL);
}

/* ------------------------------------------------------------------ gro */
/* TCP / UDP assembly (soft/assemble.py) for the common batch in two calls: gro_plan
 * runs Linux's per-flow merge rules packet by packet (gro_pure_python's state machine:
 * a held super-packet per flow, compatible segments appended, a mismatch starting
 * anew) and lays the output batch out; gro_build copies headers and payloads into the
 * output buffer and completes the merged packets' headers (the virtio partial form).
 *
 * Only batches whose every selected packet is simple are done here; anything else
 * (a parse reason other than NOT_IP, a link-layer header, IPv4 options or fragments,
 * IPv6 extension headers, padding after the IP packet, a UDP length or checksum GRO
 * refuses, a TCP header that does not fit) makes
 * gro_plan return status -1 with nothing of the batch changed, and the numpy code
 * does the whole batch. Packets of another protocol pass (NORMAL); a checksum not yet
 * known good is checked here, and a packet that fails passes unmerged (FLUSHED).
 *
 * gro_plan(buf, start, length, slot_lo, idx, l3, l4, v, l4proto, reason, trusted,
 *          proto, limit, tail, align,
 *          result, out_index, segs, out_rows, o_start, o_len, o_lo, o_hi, o_j,
 *          grp, hlen, pay, info) -> (status, n_out, total bytes)
 *   per row (n): result, out_index; per output (<= n): segs, out_rows, o_start,
 *   o_len, o_lo, o_hi, o_j (the selected index j of a merged head, else -1); per
 *   selected packet (m): grp (its head's j), hlen (header bytes), pay, info (at a
 *   head: bit 0 fixed IPv4 IDs, bit 1 CWR on the first, bits 8-15 FIN/PSH merged).
 *   status 0: planned; 1: fewer than two candidates (the batch passes unchanged,
 *   result filled); -1: not done here.
 * gro_build(in, start, out, o_start, o_len, out_rows, o_j, n_out, idx, result,
 *           grp, hlen, pay, info, l4, proto) */
enum { G_NORMAL = 0, G_HELD = 1, G_MERGED = 2, G_ALONE = 3, G_FLUSHED = 4 };
enum { T_FIN = 0x01, T_SYN = 0x02, T_RST = 0x04, T_PSH = 0x08, T_URG = 0x20, T_CWR = 0x80 };
#define T_CLOSE (T_URG | T_PSH | T_RST | T_SYN | T_FIN | T_CWR)
#define R_NOT_IP_G 11

static inline uint32_t rd32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

typedef struct {
    int64_t head;     /* j of the held packet, -1: none */
    int64_t rep;      /* j of a packet of this flow (the key) */
    int64_t cnt, size, mss;
    uint32_t next_seq;
    int closed, fixed;
} Flow;

/* the flow key of candidate j: (v, addresses, ports, IPv6 flow label) */
static inline uint64_t flow_hash(const uint8_t *buf, int64_t l3, int64_t l4, int v) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)v;
    const uint8_t *a = buf + l3 + (v == 4 ? 12 : 8);
    int na = v == 4 ? 8 : 32;
    for (int i = 0; i < na; i++) h = (h ^ a[i]) * 1099511628211ull;
    for (int i = 0; i < 4; i++) h = (h ^ buf[l4 + i]) * 1099511628211ull;
    if (v == 6) h = (h ^ (rd32(buf + l3) & 0xFFFFF)) * 1099511628211ull;
    return h ^ (h >> 29);
}

static inline int same_flow(const uint8_t *buf, int64_t a3, int64_t a4, int64_t b3, int64_t b4,
                            int v) {
    if (v == 4) {
        if (memcmp(buf + a3 + 12, buf + b3 + 12, 8) != 0) return 0;
    } else {
        if (memcmp(buf + a3 + 8, buf + b3 + 8, 32) != 0) return 0;
        if ((rd32(buf + a3) & 0xFFFFF) != (rd32(buf + b3) & 0xFFFFF)) return 0;
    }
    return memcmp(buf + a4, buf + b4, 4) == 0;
}

enum { GP_BUF, GP_START, GP_LENGTH, GP_SLOTLO, GP_IDX, GP_L3, GP_L4, GP_V, GP_L4P, GP_REASON,
       GP_TRUSTED, GP_PROTO, GP_LIMIT, GP_TAIL, GP_ALIGN, GP_RESULT, GP_OUTIDX, GP_SEGS,
       GP_OROWS, GP_OSTART, GP_OLEN, GP_OLO, GP_OHI, GP_OJ, GP_GRP, GP_HLEN, GP_PAY, GP_INFO,
       GP_N };

static PyObject *py_gro_plan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != GP_N) {
        PyErr_SetString(PyExc_TypeError, "gro_plan: wrong number of arguments");
        return NULL;
    }
    long long sc[4];
    for (int i = 0; i < 4; i++) {
        sc[i] = PyLong_AsLongLong(args[GP_PROTO + i]);
        if (sc[i] == -1 && PyErr_Occurred()) return NULL;
    }
    const int proto = (int)sc[0];
    const int64_t limit = sc[1], tail = sc[2], align = sc[3];
    if ((proto != 6 && proto != 17) || limit < 1 || tail < 0 || align < 1) {
        PyErr_SetString(PyExc_ValueError, "gro_plan: bad proto, limit, tail or align");
        return NULL;
    }
    /* buffers: buf, then arrays with their item sizes and writability */
    static const int isz[GP_N] = {1, 8, 8, 8, 8, 8, 8, 8, 8, 2, 1, 0, 0, 0, 0,
                                  1, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8};
    static const char *names[GP_N] = {
        "buf", "start", "length", "slot_lo", "idx", "l3", "l4", "v", "l4proto", "reason",
        "trusted", "", "", "", "", "result", "out_index", "segs", "out_rows", "o_start",
        "o_len", "o_lo", "o_hi", "o_j", "grp", "hlen", "pay", "info"};
    Buf b[GP_N];
    memset(b, 0, sizeof b);
    PyObject *res = NULL;
    Flow *flows = NULL;
    int64_t *table = NULL;
    for (int i = 0; i < GP_N; i++) {
        if (isz[i] == 0) continue;
        if (get_buf(args[i], &b[i], i >= GP_RESULT, isz[i], names[i]) < 0) goto done;
    }
    const Py_ssize_t n = b[GP_START].view.len / 8, m = b[GP_IDX].view.len / 8;
    for (int i = GP_LENGTH; i < GP_N; i++) {
        if (isz[i] == 0 || i == GP_BUF) continue;
        Py_ssize_t want = (i <= GP_SLOTLO || i == GP_RESULT || i == GP_OUTIDX ||
                           (i >= GP_SEGS && i <= GP_OJ))
                              ? n
                              : m;
        if (i == GP_IDX) continue;
        if (need_items(&b[i], isz[i], want, names[i]) < 0) goto done;
    }
    const uint8_t *buf = b[GP_BUF].view.buf;
    const int64_t blen = b[GP_BUF].view.len;
    const int64_t *start = b[GP_START].view.buf, *length = b[GP_LENGTH].view.buf;
    const int64_t *slot_lo = b[GP_SLOTLO].view.buf, *idx = b[GP_IDX].view.buf;
    const int64_t *L3 = b[GP_L3].view.buf, *L4 = b[GP_L4].view.buf, *V = b[GP_V].view.buf;
    const int64_t *L4P = b[GP_L4P].view.buf;
    const uint16_t *reason = b[GP_REASON].view.buf;
    const uint8_t *trusted = b[GP_TRUSTED].view.buf;
    uint8_t *result = b[GP_RESULT].view.buf;
    int64_t *out_index = b[GP_OUTIDX].view.buf, *segs = b[GP_SEGS].view.buf;
    int64_t *orows = b[GP_OROWS].view.buf, *ostart = b[GP_OSTART].view.buf;
    int64_t *olen = b[GP_OLEN].view.buf, *olo = b[GP_OLO].view.buf, *ohi = b[GP_OHI].view.buf;
    int64_t *oj = b[GP_OJ].view.buf, *grp = b[GP_GRP].view.buf, *hlen = b[GP_HLEN].view.buf;
    int64_t *pay = b[GP_PAY].view.buf, *info = b[GP_INFO].view.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (start[i] < 0 || length[i] < 0 || start[i] > blen - length[i] || slot_lo[i] > start[i]) {
            PyErr_SetString(PyExc_ValueError, "gro_plan: a packet outside the buffer");
            goto done;
        }
    }
    /* pass 1: which selected packets are candidates (else NORMAL, or not done here) */
    Py_ssize_t ncand = 0;
    int64_t prev = -1;
    for (Py_ssize_t j = 0; j < m; j++) {
        int64_t r = idx[j];
        if (r <= prev || r >= n) {
            PyErr_SetString(PyExc_ValueError, "gro_plan: idx must be increasing rows");
            goto done;
        }
        prev = r;
        grp[j] = -1; /* not a candidate */
        hlen[j] = pay[j] = info[j] = 0;
        if (reason[j] == R_NOT_IP_G) continue;
        if (reason[j] != 0) goto defer;
        if (L4P[j] != proto) continue;
        const int64_t base = start[r], end = base + length[r], l3 = L3[j], l4 = L4[j];
        const int v = (int)V[j];
        if (l3 != base) goto defer;
        int64_t ip_len;
        if (v == 4) {
            if (l4 != l3 + 20 || end - l3 < 20 || buf[l3] != 0x45) goto defer;
            if (rd16(buf + l3 + 6) & 0x3FFF) goto defer;
            ip_len = rd16(buf + l3 + 2);
        } else if (v == 6) {
            if (l4 != l3 + 40 || end - l3 < 40 || buf[l3 + 6] != proto) goto defer;
            ip_len = (int64_t)rd16(buf + l3 + 4) + 40;
        } else {
            goto defer;
        }
        if (l3 + ip_len != end) goto defer; /* padding (or short): numpy's rules */
        int64_t th;
        if (proto == 6) {
            if (end - l4 < 20) goto defer;
            th = (buf[l4 + 12] >> 4) * 4;
            if (th < 20 || l4 + th > end) goto defer;
        } else {
            if (end - l4 < 8) goto defer;
            int64_t ulen = rd16(buf + l4 + 4);
            if (ulen != end - l4 || ulen <= 8 || rd16(buf + l4 + 6) == 0) goto defer;
            th = 8;
        }
        if (!trusted[j]) { /* checksums not yet known good: GRO checks them */
            uint64_t cs = net_sum(buf + l4, (size_t)(end - l4));
            const uint8_t *ad = buf + l3 + (v == 4 ? 12 : 8);
            for (int w = 0; w < (v == 4 ? 8 : 32); w += 2) cs += rd16(ad + w);
            const uint64_t l4len = (uint64_t)(end - l4);
            cs += (uint64_t)proto + (l4len & 0xFFFF) + (l4len >> 16);
            int good = cs % M16 == 0;
            if (good && v == 4) good = net_sum(buf + l3, 20) == 0;
            if (!good) { /* flushed straight through, no part of its flow */
                grp[j] = -2;
                continue;
            }
        }
        grp[j] = j;
        hlen[j] = l4 + th - base;
        pay[j] = end - l4 - th;
        ncand++;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        result[i] = G_NORMAL;
        out_index[i] = i;
    }
    for (Py_ssize_t j = 0; j < m; j++)
        if (grp[j] != -1) result[idx[j]] = grp[j] >= 0 ? G_ALONE : G_FLUSHED;
    if (ncand < 2) {
        res = Py_BuildValue("(inn)", 1, (Py_ssize_t)0, (Py_ssize_t)0);
        goto done;
    }
    /* pass 2: the merge state machine, one flow table */
    Py_ssize_t cap = 16;
    while (cap < 2 * ncand) cap <<= 1;
    flows = PyMem_Malloc((size_t)ncand * sizeof(Flow));
    table = PyMem_Malloc((size_t)cap * sizeof(int64_t));
    if (flows == NULL || table == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t t = 0; t < cap; t++) table[t] = -1;
    Py_ssize_t nflows = 0;
    for (Py_ssize_t j = 0; j < m; j++) {
        if (grp[j] < 0) continue;
        const int64_t l3 = L3[j], l4 = L4[j];
        const int v = (int)V[j];
        uint64_t hv = flow_hash(buf, l3, l4, v);
        Py_ssize_t t = (Py_ssize_t)(hv & (uint64_t)(cap - 1));
        Flow *f = NULL;
        while (table[t] >= 0) {
            Flow *c = &flows[table[t]];
            int64_t q = c->rep;
            if (V[q] == v && same_flow(buf, L3[q], L4[q], l3, l4, v)) {
                f = c;
                break;
            }
            t = (t + 1) & (cap - 1);
        }
        const int64_t p = pay[j], hdr = hlen[j];
        const uint8_t flags = proto == 6 ? buf[l4 + 13] : 0;
        const uint32_t seq = proto == 6 ? rd32(buf + l4 + 4) : 0;
        int merge = 0;
        if (f != NULL && f->head >= 0 && !f->closed) {
            const int64_t j0 = f->head, a3 = L3[j0], a4 = L4[j0];
            int ok = 1, fixed = f->fixed;
            if (v == 4) {
                ok = buf[l3 + 8] == buf[a3 + 8] && buf[l3 + 1] == buf[a3 + 1] &&
                     ((buf[l3 + 6] ^ buf[a3 + 6]) & 0x40) == 0;
            } else {
                uint32_t w = rd32(buf + l3), w0 = rd32(buf + a3);
                ok = buf[l3 + 7] == buf[a3 + 7] && ((w >> 20) & 0xFF) == ((w0 >> 20) & 0xFF);
            }
            ok = ok && hdr == hlen[j0];
            if (ok && v == 4) {
                uint32_t off = (rd16(buf + l3 + 4) - rd16(buf + a3 + 4)) & 0xFFFF;
                if (f->cnt == 1) fixed = off == 0;
                ok = off == (fixed ? 0u : (uint32_t)(f->cnt & 0xFFFF));
            }
            ok = ok && p >= 1 && p <= f->mss && f->size + p <= 65535 && f->cnt + 1 <= limit;
            if (ok && proto == 6) {
                const uint32_t mask = ~((uint32_t)(T_CWR | T_FIN | T_PSH) << 16);
                const int64_t th = hdr - (l4 - l3);
                ok = !(flags & T_CWR) && ((rd32(buf + l4 + 12) ^ rd32(buf + a4 + 12)) & mask) == 0 &&
                     rd32(buf + l4 + 8) == rd32(buf + a4 + 8) && seq == f->next_seq &&
                     memcmp(buf + l4 + 20, buf + a4 + 20, (size_t)(th - 20)) == 0;
            }
            if (ok) {
                f->fixed = fixed;
                merge = 1;
            }
        }
        if (merge) {
            const int64_t j0 = f->head;
            grp[j] = j0;
            result[idx[j]] = G_MERGED;
            result[idx[j0]] = G_HELD;
            f->cnt++;
            f->size += p;
            f->next_seq = f->next_seq + (uint32_t)p;
            info[j0] |= (int64_t)(flags & (T_FIN | T_PSH)) << 8;
            if (f->cnt == 2 && v == 4 && f->fixed) info[j0] |= 1;
            if (p < f->mss || (flags & T_CLOSE)) f->closed = 1;
            if (proto == 17 && f->cnt >= limit) f->closed = 1;
            info[j0] = (info[j0] & 0xFFFF) | ((int64_t)f->size << 16); /* merged length */
            continue;
        }
        if (f == NULL) {
            f = &flows[nflows];
            f->rep = j;
            table[t] = nflows++;
        }
        f->head = j;
        f->mss = p;
        f->size = hdr + p;
        f->next_seq = seq + (uint32_t)p;
        f->closed = p == 0 || (flags & T_CLOSE);
        f->cnt = 1;
        f->fixed = 0;
        if (flags & T_CWR) info[j] |= 2;
    }
    /* pass 3: the output layout, rows in order, followers left out */
    Py_ssize_t k = 0, js = 0;
    int64_t total = 0;
    for (Py_ssize_t r = 0; r < n; r++) {
        int64_t jr = -1;
        while (js < m && idx[js] < r) js++;
        if (js < m && idx[js] == r) jr = js;
        if (jr >= 0 && result[r] == G_MERGED) {
            out_index[r] = out_index[idx[grp[jr]]];
            continue;
        }
        int64_t len = length[r], cnt = 1;
        oj[k] = -1;
        if (jr >= 0 && result[r] == G_HELD) {
            len = info[jr] >> 16;
            oj[k] = jr;
            cnt = 0;
        }
        const int64_t head = start[r] - slot_lo[r];
        int64_t size = (head + len + tail + align - 1) / align * align;
        orows[k] = r;
        olo[k] = total;
        ohi[k] = total + size;
        ostart[k] = total + head;
        olen[k] = len;
        segs[k] = cnt;
        out_index[r] = k;
        total += size;
        k++;
    }
    for (Py_ssize_t j = 0; j < m; j++) /* segment counts of the merged ones */
        if (grp[j] >= 0 && result[idx[j]] != G_NORMAL && result[idx[j]] != G_ALONE)
            segs[out_index[idx[j]]]++;
    res = Py_BuildValue("(inL)", 0, k, (long long)total);
    goto done;
defer:
    res = Py_BuildValue("(inn)", -1, (Py_ssize_t)0, (Py_ssize_t)0);
done:
    PyMem_Free(flows);
    PyMem_Free(table);
    release(b, GP_N);
    return res;
}

enum { GB_IN, GB_START, GB_OUT, GB_OSTART, GB_OLEN, GB_OROWS, GB_OJ, GB_NOUT, GB_IDX, GB_RESULT,
       GB_GRP, GB_HLEN, GB_PAY, GB_INFO, GB_L4, GB_PROTO, GB_N };

static PyObject *py_gro_build(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != GB_N) {
        PyErr_SetString(PyExc_TypeError, "gro_build: wrong number of arguments");
        return NULL;
    }
    Py_ssize_t nout = PyLong_AsSsize_t(args[GB_NOUT]);
    long proto = PyLong_AsLong(args[GB_PROTO]);
    if (PyErr_Occurred()) return NULL;
    if (nout < 0 || (proto != 6 && proto != 17)) {
        PyErr_SetString(PyExc_ValueError, "gro_build: bad n_out or proto");
        return NULL;
    }
    static const int isz[GB_N] = {1, 8, 1, 8, 8, 8, 8, 0, 8, 1, 8, 8, 8, 8, 8, 0};
    static const char *names[GB_N] = {"in", "start", "out", "o_start", "o_len", "out_rows",
                                      "o_j", "", "idx", "result", "grp", "hlen", "pay",
                                      "info", "l4", ""};
    Buf b[GB_N];
    memset(b, 0, sizeof b);
    PyObject *res = NULL;
    int64_t *wpos = NULL;
    for (int i = 0; i < GB_N; i++) {
        if (isz[i] == 0) continue;
        if (get_buf(args[i], &b[i], i == GB_OUT, isz[i], names[i]) < 0) goto done;
    }
    const Py_ssize_t n = b[GB_START].view.len / 8, m = b[GB_IDX].view.len / 8;
    if (need_items(&b[GB_OSTART], 8, nout, "o_start") < 0 ||
        need_items(&b[GB_OLEN], 8, nout, "o_len") < 0 ||
        need_items(&b[GB_OROWS], 8, nout, "out_rows") < 0 ||
        need_items(&b[GB_OJ], 8, nout, "o_j") < 0 || need_items(&b[GB_RESULT], 1, n, "result") < 0)
        goto done;
    for (int i = GB_GRP; i <= GB_L4; i++)
        if (need_items(&b[i], 8, m, names[i]) < 0) goto done;
    const uint8_t *in = b[GB_IN].view.buf;
    uint8_t *out = b[GB_OUT].view.buf;
    const int64_t inlen = b[GB_IN].view.len, outlen = b[GB_OUT].view.len;
    const int64_t *start = b[GB_START].view.buf, *ostart = b[GB_OSTART].view.buf;
    const int64_t *olen = b[GB_OLEN].view.buf, *orows = b[GB_OROWS].view.buf;
    const int64_t *oj = b[GB_OJ].view.buf, *idx = b[GB_IDX].view.buf;
    const uint8_t *result = b[GB_RESULT].view.buf;
    const int64_t *grp = b[GB_GRP].view.buf, *hlen = b[GB_HLEN].view.buf;
    const int64_t *pay = b[GB_PAY].view.buf, *info = b[GB_INFO].view.buf;
    const int64_t *L4 = b[GB_L4].view.buf;
    /* every range checked before anything is written */
    for (Py_ssize_t k = 0; k < nout; k++) {
        int64_t r = orows[k], j = oj[k];
        if (r < 0 || r >= n || j >= m || ostart[k] < 0 || olen[k] < 0 ||
            ostart[k] > outlen - olen[k])
            goto bad;
        int64_t first = j >= 0 ? hlen[j] + pay[j] : olen[k];
        if (first < 0 || first > olen[k] || start[r] < 0 || start[r] > inlen - first) goto bad;
        if (j >= 0) {
            const int64_t l4o = L4[j] - start[r];
            const int64_t l3min = (in[start[r]] >> 4) == 6 ? 40 : 20;
            if (l4o < l3min || l4o + (proto == 6 ? 20 : 8) > hlen[j] || olen[k] < hlen[j])
                goto bad;
        }
    }
    wpos = PyMem_Malloc((size_t)(m ? m : 1) * sizeof(int64_t));
    if (wpos == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < m; j++) wpos[j] = -1;
    for (Py_ssize_t k = 0; k < nout; k++) {
        int64_t j = oj[k], r = orows[k];
        int64_t first = j >= 0 ? hlen[j] + pay[j] : olen[k];
        memcpy(out + ostart[k], in + start[r], (size_t)first);
        if (j >= 0) wpos[j] = ostart[k] + first;
    }
    for (Py_ssize_t j = 0; j < m; j++) {
        if (idx[j] < 0 || idx[j] >= n || result[idx[j]] != G_MERGED) continue;
        int64_t h = grp[j], r = idx[j];
        if (h < 0 || h >= m || wpos[h] < 0) goto bad;
        int64_t src = start[r] + hlen[j];
        if (pay[j] < 0 || src < 0 || src > inlen - pay[j] || wpos[h] > outlen - pay[j]) goto bad;
        memcpy(out + wpos[h], in + src, (size_t)pay[j]);
        wpos[h] += pay[j];
    }
    /* headers of the merged packets: lengths, FIN/PSH, IPv4 header checksum, and the
     * L4 checksum field holding the folded pseudo-header sum (as tcp4_gro_complete) */
    for (Py_ssize_t k = 0; k < nout; k++) {
        int64_t j = oj[k];
        if (j < 0) continue;
        uint8_t *p = out + ostart[k];
        const int64_t ln = olen[k], l4o = L4[j] - start[orows[k]];
        const int v = p[0] >> 4;
        uint64_t asum = 0;
        if (v == 4) {
            wr16(p + 2, (uint32_t)ln);
        } else {
            wr16(p + 4, (uint32_t)(ln - 40));
        }
        if (proto == 6) {
            p[l4o + 13] |= (uint8_t)((info[j] >> 8) & (T_FIN | T_PSH));
        } else {
            wr16(p + l4o + 4, (uint32_t)(ln - l4o));
        }
        if (v == 4) {
            wr16(p + 10, 0);
            uint64_t hs = 0;
            for (int w = 0; w < 20; w += 2) hs += rd16(p + w);
            hs %= M16;
            wr16(p + 10, (uint32_t)((M16 - hs) % M16));
            for (int w = 12; w < 20; w += 2) asum += rd16(p + w);
        } else {
            for (int w = 8; w < 40; w += 2) asum += rd16(p + w);
        }
        asum %= M16;
        const uint64_t l4len = (uint64_t)(ln - l4o);
        uint64_t ps = (asum + (uint64_t)proto + (l4len & 0xFFFF) + (l4len >> 16)) % M16;
        wr16(p + l4o + (proto == 6 ? 16 : 6), ps == 0 ? 0xFFFF : (uint32_t)ps);
    }
    res = Py_NewRef(Py_None);
    goto done;
bad:
    PyErr_SetString(PyExc_ValueError, "gro_build: a range outside its buffer");
done:
    PyMem_Free(wpos);
    release(b, GB_N);
    return res;
}

/* ------------------------------------------------------------------ esp_trailer */
/* esp_trailer(buf, pos, P, ok, outer, ostride, reason, new_b1, iv, L, Lg, head)
 *
 * The decrypt task's checks after authentication (soft/crypto.py, the uniform path,
 * an SA without traffic selectors), for packets whose P plaintext bytes are at
 * buf[pos[i]:]: the ESP trailer (pad length, padding bytes 1, 2, ..., next header
 * matching the inner version: BAD_PADDING / BAD_ESP), an inner packet shorter than
 * its IP header (BAD_ESP), RFC 6040's decapsulation of the ECN field against the
 * outer header's first two bytes (outer[i*ostride:+2]: ECN_DROP, or new_b1[i] the
 * inner header's new second byte, -1: unchanged), and the inner packet's length
 * without TFC padding (Lg). Only packets with ok[i] are judged; a failing one gets
 * ok[i] = 0 and its reason. head[i] receives the first min(P, 40) plaintext bytes,
 * zeros after. Nothing is written into buf. */
enum { R_BAD_PADDING = 52, R_BAD_ESP = 53, R_ECN_DROP = 63 };
static const int8_t ecn_decap[16] = {0, 0, 0, -1, 1, 1, 1, 3, 2, 1, 2, 3, 3, 3, 3, 3};

static inline int tos_of(int b0, int b1) {
    return (b0 >> 4) == 4 ? b1 : (((b0 & 0xF) << 4) | (b1 >> 4));
}

enum { ET_BUF, ET_POS, ET_P, ET_OK, ET_OUTER, ET_OSTRIDE, ET_REASON, ET_NEWB1, ET_IV, ET_L,
       ET_LG, ET_HEAD, ET_N };

static PyObject *py_esp_trailer(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != ET_N) {
        PyErr_SetString(PyExc_TypeError, "esp_trailer: wrong number of arguments");
        return NULL;
    }
    Py_ssize_t P = PyLong_AsSsize_t(args[ET_P]), ostride = PyLong_AsSsize_t(args[ET_OSTRIDE]);
    if (PyErr_Occurred()) return NULL;
    if (P < 2 || ostride < 2) {
        PyErr_SetString(PyExc_ValueError, "esp_trailer: P and the outer stride must be >= 2");
        return NULL;
    }
    static const int isz[ET_N] = {1, 8, 0, 1, 1, 0, 2, 8, 8, 8, 8, 1};
    static const char *names[ET_N] = {"buf", "pos", "", "ok", "outer", "", "reason", "new_b1",
                                      "iv", "L", "Lg", "head"};
    Buf b[ET_N];
    memset(b, 0, sizeof b);
    PyObject *res = NULL;
    for (int i = 0; i < ET_N; i++) {
        if (isz[i] == 0) continue;
        int w = i == ET_OK || i >= ET_REASON;
        if (get_buf(args[i], &b[i], w, isz[i], names[i]) < 0) goto done;
    }
    const Py_ssize_t n = b[ET_POS].view.len / 8;
    if (need_items(&b[ET_OK], 1, n, "ok") < 0 || need_items(&b[ET_REASON], 2, n, "reason") < 0 ||
        need_items(&b[ET_NEWB1], 8, n, "new_b1") < 0 || need_items(&b[ET_IV], 8, n, "iv") < 0 ||
        need_items(&b[ET_L], 8, n, "L") < 0 || need_items(&b[ET_LG], 8, n, "Lg") < 0 ||
        need_items(&b[ET_HEAD], 1, 40 * n, "head") < 0)
        goto done;
    if (n > 0 && (n - 1) * ostride + 2 > b[ET_OUTER].view.len) {
        PyErr_SetString(PyExc_ValueError, "esp_trailer: outer rows outside their buffer");
        goto done;
    }
    const uint8_t *buf = b[ET_BUF].view.buf, *outer = b[ET_OUTER].view.buf;
    const int64_t *pos = b[ET_POS].view.buf;
    const int64_t blen = b[ET_BUF].view.len;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (pos[i] < 0 || pos[i] > blen - P) {
            PyErr_SetString(PyExc_ValueError, "esp_trailer: a packet outside the buffer");
            goto done;
        }
    }
    uint8_t *ok = b[ET_OK].view.buf, *head = b[ET_HEAD].view.buf;
    uint16_t *reason = b[ET_REASON].view.buf;
    int64_t *new_b1 = b[ET_NEWB1].view.buf, *ivs = b[ET_IV].view.buf;
    int64_t *Ls = b[ET_L].view.buf, *Lg = b[ET_LG].view.buf;
    const Py_ssize_t hn = P < 40 ? P : 40;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *p = buf + pos[i];
        uint8_t *h = head + 40 * i;
        memcpy(h, p, (size_t)hn);
        if (hn < 40) memset(h + hn, 0, (size_t)(40 - hn));
        const int64_t padl = p[P - 2], nh = p[P - 1], L = P - 2 - padl;
        const int64_t iv = L >= 1 ? (p[0] >> 4) : 0;
        Ls[i] = L;
        ivs[i] = iv;
        reason[i] = 0;
        new_b1[i] = -1;
        /* the inner packet's length without TFC padding (_ip_lengths_of) */
        int64_t tot = 0;
        if (L >= 1) {
            int ver = h[0] >> 4;
            if (ver == 4 && L >= 20)
                tot = ((int64_t)h[2] << 8) | h[3];
            else if (ver == 6 && L >= 40)
                tot = 40 + (((int64_t)h[4] << 8) | h[5]);
        }
        Lg[i] = (tot > 0 && tot <= L) ? tot : L;
        if (!ok[i]) continue;
        int bad_pad = L < 0;
        for (int64_t j = 0; !bad_pad && j < padl; j++) bad_pad = p[L + j] != (uint8_t)(j + 1);
        if (bad_pad) {
            reason[i] = R_BAD_PADDING;
            ok[i] = 0;
            continue;
        }
        if (!((nh == 4 && iv == 4) || (nh == 41 && iv == 6))) {
            reason[i] = R_BAD_ESP;
            ok[i] = 0;
            continue;
        }
        if ((iv == 4 ? 20 : 40) > L) {
            reason[i] = R_BAD_ESP;
            ok[i] = 0;
            continue;
        }
        const int b0 = h[0], b1 = h[1];
        const int inner = tos_of(b0, b1) & 3;
        const int out_ecn = tos_of(outer[i * ostride], outer[i * ostride + 1]) & 3;
        const int ecn = ecn_decap[inner * 4 + out_ecn];
        if (ecn < 0) {
            reason[i] = R_ECN_DROP;
            ok[i] = 0;
            continue;
        }
        if (ecn != inner) new_b1[i] = iv == 4 ? ((b1 & ~3) | ecn) : ((b1 & ~0x30) | (ecn << 4));
    }
    res = Py_NewRef(Py_None);
done:
    release(b, ET_N);
    return res;
}

/* ------------------------------------------------------------------ aead */
/* aead(fn, fail, nonce, noff, nstride, nlen, aad, aoff, astride, alen, buf, pos, slen, dlen,
 *      ok) -> number of packets that failed
 *
 * The per-packet loop of the encrypt and decrypt tasks, with no Python object made
 * per packet: for every i, one call
 *
 *     fn(nonce[i*nstride+noff : +nlen], buf[pos[i] : +slen[i]],
 *        aad[i*astride+aoff : +alen], buf[pos[i] : +dlen[i]])
 *
 * (an AEAD's encrypt_into / decrypt_into: in place in the batch buffer; dlen > slen
 * for encryption, the tag after the data, dlen < slen for decryption). The four
 * arguments are Span objects of this module: buffer exporters whose pointer and
 * length this loop sets before each call, four made per batch and reused as long as
 * nothing kept them (a kept one is replaced; each holds a reference to the memory's
 * owner, so a kept span never dangles). ok[i] = 1 when the call returned, 0 when it
 * raised `fail` (InvalidTag; None: nothing is caught); any other exception stops the
 * loop and propagates. slen/dlen may have one item (the same for every packet).
 * Every range is checked against its buffer before the first call. */
typedef struct {
    PyObject_HEAD
    PyObject *owner;
    char *ptr;
    Py_ssize_t len;
    Py_ssize_t exports;
    int readonly;
} Span;

static int span_getbuffer(PyObject *o, Py_buffer *view, int flags) {
    Span *s = (Span *)o;
    if (PyBuffer_FillInfo(view, o, s->ptr, s->len, s->readonly, flags) < 0) return -1;
    s->exports++;
    return 0;
}

static void span_releasebuffer(PyObject *o, Py_buffer *view) {
    (void)view;
    ((Span *)o)->exports--;
}

static void span_dealloc(PyObject *o) {
    Py_XDECREF(((Span *)o)->owner);
    Py_TYPE(o)->tp_free(o);
}

static PyBufferProcs span_as_buffer = {span_getbuffer, span_releasebuffer};

static PyTypeObject SpanType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "netoffload._native._kernel.Span",
    .tp_basicsize = sizeof(Span),
    .tp_dealloc = span_dealloc,
    .tp_as_buffer = &span_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "a window on a batch buffer that the aead loop moves from packet to packet",
};

static Span *span_new(PyObject *owner, int readonly) {
    Span *s = PyObject_New(Span, &SpanType);
    if (s == NULL) return NULL;
    Py_INCREF(owner);
    s->owner = owner;
    s->ptr = NULL;
    s->len = 0;
    s->exports = 0;
    s->readonly = readonly;
    return s;
}

/* point *sp at [ptr, +len): in place when nothing else holds it, else a new span */
static int span_at(Span **sp, PyObject *owner, int readonly, char *ptr, Py_ssize_t len) {
    Span *s = *sp;
    if (Py_REFCNT(s) != 1 || s->exports != 0) {
        Span *t = span_new(owner, readonly);
        if (t == NULL) return -1;
        Py_DECREF(s);
        *sp = s = t;
    }
    s->ptr = ptr;
    s->len = len;
    return 0;
}

enum { AE_FN, AE_FAIL, AE_NONCE, AE_NOFF, AE_NSTRIDE, AE_NLEN, AE_AAD, AE_AOFF, AE_ASTRIDE,
       AE_ALEN, AE_BUF, AE_POS, AE_SLEN, AE_DLEN, AE_OK, AE_N };

static PyObject *py_aead(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != AE_N) {
        PyErr_SetString(PyExc_TypeError,
                        "aead(fn, fail, nonce, noff, nstride, nlen, aad, aoff, astride, alen, "
                        "buf, pos, slen, dlen, ok)");
        return NULL;
    }
    PyObject *fn = args[AE_FN], *fail = args[AE_FAIL];
    if (fail == Py_None) fail = NULL;
    Py_ssize_t geo[6];
    const int gi[6] = {AE_NOFF, AE_NSTRIDE, AE_NLEN, AE_AOFF, AE_ASTRIDE, AE_ALEN};
    for (int j = 0; j < 6; j++) {
        geo[j] = PyLong_AsSsize_t(args[gi[j]]);
        if (geo[j] == -1 && PyErr_Occurred()) return NULL;
        if (geo[j] < 0) {
            PyErr_SetString(PyExc_ValueError, "aead: negative offset, stride or length");
            return NULL;
        }
    }
    Py_ssize_t noff = geo[0], nstride = geo[1], nlen = geo[2];
    Py_ssize_t aoff = geo[3], astride = geo[4], alen = geo[5];
    Buf b[6], okb;
    memset(b, 0, sizeof b);
    memset(&okb, 0, sizeof okb);
    Span *sp[4] = {NULL, NULL, NULL, NULL};
    PyObject *res = NULL;
    if (get_buf(args[AE_NONCE], &b[0], 0, 1, "nonce") < 0 ||
        get_buf(args[AE_AAD], &b[1], 0, 1, "aad") < 0 ||
        get_buf(args[AE_BUF], &b[2], 1, 1, "buf") < 0 ||
        get_buf(args[AE_POS], &b[3], 0, 8, "pos") < 0 ||
        get_buf(args[AE_SLEN], &b[4], 0, 8, "slen") < 0 ||
        get_buf(args[AE_DLEN], &b[5], 0, 8, "dlen") < 0)
        goto done;
    Py_ssize_t n = b[3].view.len / 8;
    Py_ssize_t ns = b[4].view.len / 8, nd = b[5].view.len / 8;
    if ((ns != 1 && ns != n) || (nd != 1 && nd != n)) {
        PyErr_SetString(PyExc_ValueError, "aead: slen and dlen need one item or one a packet");
        goto done;
    }
    if (n > 0 && ((n - 1) * nstride + noff + nlen > b[0].view.len ||
                  (n - 1) * astride + aoff + alen > b[1].view.len)) {
        PyErr_SetString(PyExc_ValueError, "aead: nonce or aad rows outside their buffer");
        goto done;
    }
    const int64_t *pos = b[3].view.buf, *sl = b[4].view.buf, *dl = b[5].view.buf;
    int64_t blen = b[2].view.len;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t a = sl[ns == 1 ? 0 : i], d = dl[nd == 1 ? 0 : i];
        if (pos[i] < 0 || a < 0 || d < 0 || pos[i] > blen - a || pos[i] > blen - d) {
            PyErr_Format(PyExc_ValueError, "aead: packet %zd [%lld, +%lld/%lld) outside [0, %lld)",
                         i, (long long)pos[i], (long long)a, (long long)d, (long long)blen);
            goto done;
        }
    }
    if (get_buf(args[AE_OK], &okb, 1, 1, "ok") < 0) goto done;
    if (need_items(&okb, 1, n, "ok") < 0) goto done;
    uint8_t *ok = okb.view.buf;
    PyObject *owners[4] = {args[AE_NONCE], args[AE_BUF], args[AE_AAD], args[AE_BUF]};
    const int ro[4] = {1, 0, 1, 0};
    for (int j = 0; j < 4; j++) {
        sp[j] = span_new(owners[j], ro[j]);
        if (sp[j] == NULL) {
            goto done;
        }
    }
    char *nb = b[0].view.buf, *ab = b[1].view.buf, *buf = b[2].view.buf;
    Py_ssize_t nfail = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (span_at(&sp[0], owners[0], 1, nb + i * nstride + noff, nlen) < 0 ||
            span_at(&sp[1], owners[1], 0, buf + pos[i], sl[ns == 1 ? 0 : i]) < 0 ||
            span_at(&sp[2], owners[2], 1, ab + i * astride + aoff, alen) < 0 ||
            span_at(&sp[3], owners[3], 0, buf + pos[i], dl[nd == 1 ? 0 : i]) < 0) {
            goto done;
        }
        PyObject *r = PyObject_Vectorcall(fn, (PyObject *const *)sp, 4, NULL);
        if (r != NULL) {
            Py_DECREF(r);
            ok[i] = 1;
        } else if (fail != NULL && PyErr_ExceptionMatches(fail)) {
            PyErr_Clear();
            ok[i] = 0;
            nfail++;
        } else {
            goto done;
        }
    }
    res = PyLong_FromSsize_t(nfail);
done:
    for (int j = 0; j < 4; j++) Py_XDECREF(sp[j]);
    release(&okb, 1);
    release(b, 6);
    return res;
}

static PyMethodDef methods[] = {
    {"copy_ranges", py_copy_ranges, METH_VARARGS,
     "copy_ranges(dst, dst_start, src, src_start, length): memmove each range"},
    {"range_sums", py_range_sums, METH_VARARGS,
     "range_sums(buf, a, b, out): out[i] = one's complement sum of buf[a[i]:b[i]] mod 0xFFFF"},
    {"verify", py_verify, METH_VARARGS,
     "verify(buf, start, length, idx, vflags, xflags, l3_off, l4_off, hdr_len, l3_proto, "
     "l4_proto, csum_verdict, error, defer) -> number of packets left in defer"},
    {"fill", py_fill, METH_VARARGS,
     "fill(buf, start, length, idx, vflags, xflags, l3_off, l4_off, hdr_len, l3_proto, "
     "l4_proto, csum_start, csum_offset, error, defer) -> number of packets left in defer"},
    {"segment", py_segment, METH_VARARGS,
     "segment(in, out, base, hlen, mss, pay, k, l3, l4, ver, ihl, fixed, first, out_start, "
     "proto): write every segment"},
    {"layout", py_layout, METH_VARARGS,
     "layout(buf, start, length, idx, xflags, l3_off, l4_off, hdr_len, l3_proto, l4_proto, "
     "reason, l3, v, ihl, l4, proto, l4_end, l4_ok, udp, field, defer) -> number left"},
    {"plan", py_plan, METH_VARARGS,
     "plan(head, hlen, mss, pay, k, tail, align, start, length, slot_lo, slot_hi) -> bytes"},
    {"want", py_want, METH_VARARGS,
     "want(tasks, done, error, verdict, length, bit, drop, out) -> (nwant, nbytes, ndead)"},
    {"mark", py_mark, METH_VARARGS, "mark(tasks, done, error, verdict, bit, drop) -> ndead"},
    {"begin", py_begin, METH_VARARGS, "begin(origin, sub, base): origin = base + i, sub = 0"},
    {"enter", (PyCFunction)(void (*)(void))py_enter, METH_FASTCALL,
     "enter(batch, base) -> bool: ext.origin = base + i, ext.sub = 0, ext.offload = 0"},
    {"soft_run", (PyCFunction)(void (*)(void))py_soft_run, METH_FASTCALL,
     "soft_run(batch, base, plan, drop, acc, start) -> batch | (batch, stage, n_before, dead) | "
     "NotImplemented"},
    {"aead", (PyCFunction)(void (*)(void))py_aead, METH_FASTCALL,
     "aead(fn, fail, nonce, noff, nstride, nlen, aad, aoff, astride, alen, buf, pos, slen, "
     "dlen, ok) -> nfail: fn(nonce_i, buf[pos_i:+slen_i], aad_i, buf[pos_i:+dlen_i]) for each i"},
    {"gro_plan", (PyCFunction)(void (*)(void))py_gro_plan, METH_FASTCALL,
     "gro_plan(buf, start, length, slot_lo, idx, l3, l4, v, l4proto, reason, trusted, proto, "
     "limit, tail, align, result, out_index, segs, out_rows, o_start, o_len, o_lo, o_hi, o_j, "
     "grp, hlen, pay, info) -> (status, n_out, total)"},
    {"gro_build", (PyCFunction)(void (*)(void))py_gro_build, METH_FASTCALL,
     "gro_build(in, start, out, o_start, o_len, out_rows, o_j, n_out, idx, result, grp, hlen, "
     "pay, info, l4, proto): copy and complete the merged packets"},
    {"esp_trailer", (PyCFunction)(void (*)(void))py_esp_trailer, METH_FASTCALL,
     "esp_trailer(buf, pos, P, ok, outer, ostride, reason, new_b1, iv, L, Lg, head): the "
     "decrypt task's trailer, inner header and ECN checks"},
    {"simd", py_simd, METH_NOARGS, "the sum loop in use: 'avx2' or 'c'"},
    {"set_simd", py_set_simd, METH_O, "use the SIMD loop when the CPU has it (tests)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernel", "RFC 1071 checksum kernels over whole batches", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernel(void) {
#if NO_X86_AVX2
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2");
#endif
#ifdef NO_NUMPY
    import_array();
#endif
    if (intern_names() < 0) return NULL;
    if (PyType_Ready(&SpanType) < 0) return NULL;
    return PyModule_Create(&module);
}
