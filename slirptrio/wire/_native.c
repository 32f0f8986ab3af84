/* slirptrio.wire._native: the native fast path (see slirptrio/wire/fast.py).
 *
 * Every function here has a pure-Python twin in fast.py, which is the reference: both must
 * return identical results (and build identical bytes) for every input; a Hypothesis test
 * compares them. Nothing here keeps state, reads a clock, or touches the outside world.
 *
 * Checksums: the Internet checksum is byte-order independent (RFC 1071 section 2B), so
 * words are summed in the machine's order, eight bytes at a time with an end-around carry,
 * and the folded result is byte-swapped once at the end.
 *
 * The module refuses to load when SLIRPTRIO_PURE is set to anything but "" or "0": that is
 * how a user (or CI) forces the pure path, and why the choice is made once, at import.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KIND_TRUNCATED (-1)
#define KIND_OTHER 0
#define KIND_TCP 6
#define KIND_UDP 17

#define ETH_HLEN 14
#define IP4_HLEN 20
#define TCP_HLEN 20
#define MIN_FRAME 60
#define HEAD4_LEN (ETH_HLEN + IP4_HLEN)
#define IP6_HLEN 40
#define HEAD6_LEN (ETH_HLEN + IP6_HLEN)

/* ------------------------------------------------------------------------------ checksums */

/* The sum of n bytes as machine-order 64-bit words with end-around carry (not folded). An odd
 * last byte counts as the first byte of a zero-padded 16-bit word. */
static uint64_t
sum_bytes(const uint8_t *p, size_t n, uint64_t acc)
{
    uint64_t v;
    while (n >= 32) {
        uint64_t a, b, c, d;
        memcpy(&a, p, 8);
        memcpy(&b, p + 8, 8);
        memcpy(&c, p + 16, 8);
        memcpy(&d, p + 24, 8);
        acc += a;
        acc += (acc < a);
        acc += b;
        acc += (acc < b);
        acc += c;
        acc += (acc < c);
        acc += d;
        acc += (acc < d);
        p += 32;
        n -= 32;
    }
    while (n >= 8) {
        memcpy(&v, p, 8);
        acc += v;
        acc += (acc < v);
        p += 8;
        n -= 8;
    }
    v = 0;
    if (n) {
        memcpy(&v, p, n); /* the tail, zero-padded: the same words in machine order */
        acc += v;
        acc += (acc < v);
    }
    return acc;
}

/* Fold a machine-order sum to 16 bits (end-around carry) and return it in network order as a
 * number: 0 only when every byte was 0, else 1..0xffff. */
static uint32_t
fold_net(uint64_t acc)
{
    acc = (acc & 0xffffffffu) + (acc >> 32);
    acc = (acc & 0xffffffffu) + (acc >> 32);
    acc = (acc & 0xffffu) + (acc >> 16);
    acc = (acc & 0xffffu) + (acc >> 16);
    acc = (acc & 0xffffu) + (acc >> 16);
    uint16_t w = (uint16_t)acc;
#if PY_LITTLE_ENDIAN
    w = (uint16_t)((w >> 8) | (w << 8));
#endif
    return w;
}

/* End-around-carry fold of a non-negative number to 16 bits (as the Python reference does). */
static uint32_t
fold16(uint64_t x)
{
    while (x >> 16)
        x = (x & 0xffffu) + (x >> 16);
    return (uint32_t)x;
}

/* ones_sum(data, initial) of the reference: fold(initial + sum of data's BE words). */
static uint32_t
ones_sum_c(const uint8_t *p, size_t n, uint64_t initial)
{
    return fold16(initial + fold_net(sum_bytes(p, n, 0)));
}

/* The reference's unfolded IPv4 pseudo-header contribution for a TCP/UDP length. */
static uint64_t
pseudo4(const uint8_t *src, const uint8_t *dst, unsigned proto, size_t length)
{
    uint64_t s = ((uint64_t)src[0] << 24 | (uint64_t)src[1] << 16 | (uint64_t)src[2] << 8 | src[3])
        + ((uint64_t)dst[0] << 24 | (uint64_t)dst[1] << 16 | (uint64_t)dst[2] << 8 | dst[3]);
    return (s >> 16) + (s & 0xffff) + proto + length;
}

static inline unsigned
be16(const uint8_t *p)
{
    return ((unsigned)p[0] << 8) | p[1];
}

/* The reference's unfolded IPv6 pseudo-header contribution (RFC 8200 8.1): both addresses as
 * 16-bit words, the upper-layer length (below 2**16 here) and the next header. */
static uint64_t
pseudo6(const uint8_t *src, const uint8_t *dst, unsigned proto, size_t length)
{
    uint64_t s = proto + length;
    for (int i = 0; i < 16; i += 2)
        s += be16(src + i) + be16(dst + i);
    return s;
}

static inline uint32_t
be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void
put16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void
put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ----------------------------------------------------------------------- argument helpers */

static int
get_u64(PyObject *o, uint64_t max, const char *what, uint64_t *out)
{
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", what);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s out of range", what);
        return -1;
    }
    if (v > max) {
        PyErr_Format(PyExc_ValueError, "%s out of range", what);
        return -1;
    }
    *out = v;
    return 0;
}

static int
get_ssize(PyObject *o, const char *what, Py_ssize_t *out)
{
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", what);
        return -1;
    }
    Py_ssize_t v = PyLong_AsSsize_t(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------------------- ones_sum */

PyDoc_STRVAR(ones_sum_doc,
"ones_sum(data, initial=0, /) -> int\n\n"
"The folded 16-bit one's-complement sum of data (odd length padded with a zero), plus initial.");

/* ``initial`` as a number the sum may add: itself when small, else a smaller one congruent to it
 * mod 0xffff and zero only when it is (all the fold depends on). Any size, never negative. */
static int
get_initial(PyObject *o, uint64_t *out)
{
    if (!PyLong_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "initial must be an int");
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        PyObject *zero = PyLong_FromLong(0);
        int negative = zero == NULL ? -1 : PyObject_RichCompareBool(o, zero, Py_LT);
        Py_XDECREF(zero);
        if (negative != 0) {
            if (negative > 0)
                PyErr_SetString(PyExc_ValueError, "initial must not be negative");
            return -1;
        }
        PyObject *m = PyLong_FromLong(0xffff);
        PyObject *r = m == NULL ? NULL : PyNumber_Remainder(o, m);
        Py_XDECREF(m);
        if (r == NULL)
            return -1;
        long rv = PyLong_AsLong(r);
        Py_DECREF(r);
        if (rv == -1 && PyErr_Occurred())
            return -1;
        *out = rv ? (uint64_t)rv : 0xffff; /* o > 2**64 > 0 */
        return 0;
    }
    if (v >= (1ULL << 48))
        v = v % 0xffff ? v % 0xffff : 0xffff;
    *out = v;
    return 0;
}

static PyObject *
py_ones_sum(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t initial = 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "ones_sum(data, initial=0)");
        return NULL;
    }
    if (nargs == 2 && get_initial(args[1], &initial) < 0)
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_SIMPLE) < 0)
        return NULL;
    uint32_t r = ones_sum_c((const uint8_t *)b.buf, (size_t)b.len, initial);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(r);
}

/* ---------------------------------------------------------------------------- frame parse */

static PyObject *
other_record(Py_ssize_t kind, Py_ssize_t start, Py_ssize_t end)
{
    return Py_BuildValue("(nnn)", kind, start, end);
}

/* A frame's description (see fast.py's records), pointing into the caller's buffer. */
typedef struct {
    int kind;
    Py_ssize_t start, end;
    const uint8_t *mac, *src, *dst;
    Py_ssize_t alen; /* address length: 4 (IPv4) or 16 (IPv6) */
    unsigned sport, dport, flags, window;
    uint32_t seq, ack;
    Py_ssize_t thl, ps, pe;
} rec_t;

/* The transport header of a frame at l4 (l4len bytes, at offset l4off of the buffer) into r, as
 * the reference does; pseudo is the unfolded pseudo-header sum less the length. Leaves r->kind
 * KIND_OTHER when it is not a well-formed TCP or UDP datagram. */
static void
parse_l4(const uint8_t *l4, Py_ssize_t l4len, Py_ssize_t l4off, unsigned proto, uint64_t pseudo,
         int ipv6, rec_t *r)
{
    if (proto == KIND_TCP) {
        if (l4len < TCP_HLEN)
            return;
        Py_ssize_t thl = (Py_ssize_t)(l4[12] >> 4) * 4;
        if (thl < TCP_HLEN || thl > l4len)
            return;
        if (fold16(pseudo + KIND_TCP + (uint64_t)l4len + fold_net(sum_bytes(l4, (size_t)l4len, 0)))
            != 0xffff)
            return;
        r->seq = be32(l4 + 4);
        r->ack = be32(l4 + 8);
        r->flags = l4[13];
        r->window = be16(l4 + 14);
        r->thl = thl;
        r->ps = l4off + thl;
        r->pe = l4off + l4len;
    }
    else if (proto == KIND_UDP) {
        if (l4len < 8)
            return;
        Py_ssize_t ulen = (Py_ssize_t)be16(l4 + 4);
        if (ulen < 8 || ulen > l4len)
            return;
        if (!(l4[6] | l4[7])) {
            if (ipv6) /* a zero checksum is invalid over IPv6 (RFC 8200 8.1) */
                return;
        }
        else if (fold16(fold16(pseudo + KIND_UDP + (uint64_t)ulen)
                        + fold_net(sum_bytes(l4, (size_t)ulen, 0))) != 0xffff)
            return;
        r->ps = l4off + 8;
        r->pe = l4off + ulen;
    }
    else {
        return;
    }
    r->kind = (int)proto;
    r->sport = be16(l4);
    r->dport = be16(l4 + 2);
}

/* Parse frame p[0:n] (at offset base of its buffer) as fast.py's pure_parse_frame does. */
static void
parse_rec(const uint8_t *p, Py_ssize_t n, Py_ssize_t base, rec_t *r)
{
    r->kind = KIND_OTHER;
    r->start = base;
    r->end = base + n;
    if (n < ETH_HLEN || (p[6] & 1))
        return;
    const uint8_t *ip = p + ETH_HLEN;
    Py_ssize_t avail = n - ETH_HLEN;
    if (p[12] == 0x08 && p[13] == 0x00) {
        if (avail < IP4_HLEN || ip[0] != 0x45) /* IPv4 without options only */
            return;
        Py_ssize_t total = (Py_ssize_t)be16(ip + 2);
        unsigned frag = be16(ip + 6);
        if (total < IP4_HLEN || total > avail || (frag & 0xbfff) != 0
            || ones_sum_c(ip, IP4_HLEN, 0) != 0xffff)
            return;
        parse_l4(ip + IP4_HLEN, total - IP4_HLEN, base + HEAD4_LEN, ip[9],
                 pseudo4(ip + 12, ip + 16, 0, 0), 0, r);
        r->alen = 4;
        r->src = ip + 12;
        r->dst = ip + 16;
    }
    else if (p[12] == 0x86 && p[13] == 0xdd) {
        /* IPv6 with TCP or UDP right after the fixed header (no extension headers). */
        if (avail < IP6_HLEN || (ip[0] >> 4) != 6)
            return;
        Py_ssize_t plen = (Py_ssize_t)be16(ip + 4);
        if (plen == 0 || plen > avail - IP6_HLEN)
            return;
        parse_l4(ip + IP6_HLEN, plen, base + HEAD6_LEN, ip[6], pseudo6(ip + 8, ip + 24, 0, 0), 1,
                 r);
        r->alen = 16;
        r->src = ip + 8;
        r->dst = ip + 24;
    }
    if (r->kind != KIND_OTHER)
        r->mac = p + 6;
}

/* A new tuple from items made by the caller (it steals them); NULL if any is NULL. */
static PyObject *
tuple_of(Py_ssize_t n, PyObject **items)
{
    PyObject *t = PyTuple_New(n);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (t == NULL || items[i] == NULL) {
            for (Py_ssize_t j = i; j < n; j++)
                Py_XDECREF(items[j]);
            Py_XDECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, items[i]);
    }
    return t;
}

/* The record tuple of r; new reference. */
static PyObject *
record_of(const rec_t *r)
{
    if (r->kind == KIND_OTHER || r->kind == KIND_TRUNCATED)
        return other_record(r->kind, r->start, r->end);
    PyObject *head[8] = {
        PyLong_FromLong(r->kind), PyLong_FromSsize_t(r->start), PyLong_FromSsize_t(r->end),
        PyBytes_FromStringAndSize((const char *)r->mac, 6),
        PyBytes_FromStringAndSize((const char *)r->src, r->alen),
        PyBytes_FromStringAndSize((const char *)r->dst, r->alen),
        PyLong_FromLong((long)r->sport), PyLong_FromLong((long)r->dport),
    };
    if (r->kind == KIND_UDP) {
        PyObject *items[10];
        memcpy(items, head, sizeof(head));
        items[8] = PyLong_FromSsize_t(r->ps);
        items[9] = PyLong_FromSsize_t(r->pe);
        return tuple_of(10, items);
    }
    PyObject *items[15];
    memcpy(items, head, sizeof(head));
    items[8] = PyLong_FromUnsignedLong(r->seq);
    items[9] = PyLong_FromUnsignedLong(r->ack);
    items[10] = PyLong_FromLong((long)r->flags);
    items[11] = PyLong_FromLong((long)r->window);
    items[12] = PyLong_FromSsize_t(r->thl);
    items[13] = PyLong_FromSsize_t(r->ps);
    items[14] = PyLong_FromSsize_t(r->pe);
    return tuple_of(15, items);
}

static PyObject *
parse_one(const uint8_t *p, Py_ssize_t n, Py_ssize_t base)
{
    rec_t r;
    parse_rec(p, n, base, &r);
    return record_of(&r);
}

PyDoc_STRVAR(parse_frame_doc,
"parse_frame(frame, /) -> tuple\n\n"
"Parse one Ethernet frame as IPv4 TCP or UDP, verifying both checksums (see fast.py).");

static PyObject *
py_parse_frame(PyObject *self, PyObject *frame)
{
    Py_buffer b;
    if (PyObject_GetBuffer(frame, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *r = parse_one((const uint8_t *)b.buf, b.len, 0);
    PyBuffer_Release(&b);
    return r;
}

PyDoc_STRVAR(scan_frames_doc,
"scan_frames(run, /) -> list[tuple]\n\n"
"parse_frame for every frame of a run of length-prefixed frames (see fast.py).");

static PyObject *
py_scan_frames(PyObject *self, PyObject *run)
{
    Py_buffer b;
    if (PyObject_GetBuffer(run, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *p = (const uint8_t *)b.buf;
    Py_ssize_t n = b.len, off = 0;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto fail;
    while (off + 4 <= n) {
        Py_ssize_t length = (Py_ssize_t)be32(p + off);
        Py_ssize_t start = off + 4;
        if (length > n - start)
            break;
        if (length) {
            PyObject *rec = parse_one(p + start, length, start);
            if (rec == NULL || PyList_Append(out, rec) < 0) {
                Py_XDECREF(rec);
                goto fail;
            }
            Py_DECREF(rec);
        }
        off = start + length;
    }
    if (off < n) {
        PyObject *rec = other_record(KIND_TRUNCATED, off, n);
        if (rec == NULL || PyList_Append(out, rec) < 0) {
            Py_XDECREF(rec);
            goto fail;
        }
        Py_DECREF(rec);
    }
    PyBuffer_Release(&b);
    return out;
fail:
    Py_XDECREF(out);
    PyBuffer_Release(&b);
    return NULL;
}

/* ----------------------------------------------------------------------------- frames_end */

PyDoc_STRVAR(frames_end_doc,
"frames_end(buf, n, max_frame, /) -> (end, count, oversized)\n\n"
"Where the whole length-prefixed frames in buf[:n] end (see fast.py).");

static PyObject *
py_frames_end(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t n, max_frame;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "frames_end(buf, n, max_frame)");
        return NULL;
    }
    if (get_ssize(args[1], "n", &n) < 0 || get_ssize(args[2], "max_frame", &max_frame) < 0)
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_SIMPLE) < 0)
        return NULL;
    if (n < 0 || n > b.len) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "n out of range");
        return NULL;
    }
    const uint8_t *p = (const uint8_t *)b.buf;
    Py_ssize_t off = 0, count = 0, oversized = 0;
    while (off + 4 <= n) {
        Py_ssize_t length = (Py_ssize_t)be32(p + off);
        if (length > max_frame) {
            oversized = length;
            break;
        }
        if (length > n - off - 4)
            break;
        if (length)
            count++;
        off += 4 + length;
    }
    PyBuffer_Release(&b);
    return Py_BuildValue("(nnn)", off, count, oversized);
}

/* -------------------------------------------------------------------------------- tcp_run */

/* What tcp_run and tcp_frames take: the arguments after out, checked. */
typedef struct {
    Py_buffer hb, pb;
    int v6;
    Py_ssize_t hlen, start, length, count, size;
    uint64_t ident, sport, dport, seq, ack, window, mss, flags, last_flags;
} TcpArgs;

/* Parse and check args[0..12] (head ... last_flags); on success the two buffers are held and
 * ta->size is the exact length of the run. -1 with an exception set (nothing held). */
static int
tcp_args(PyObject *const *args, TcpArgs *ta)
{
    if (get_u64(args[1], 0xffff, "ident", &ta->ident) < 0
        || get_u64(args[2], 0xffff, "sport", &ta->sport) < 0
        || get_u64(args[3], 0xffff, "dport", &ta->dport) < 0
        || get_u64(args[4], 0xffffffffu, "seq", &ta->seq) < 0
        || get_u64(args[5], 0xffffffffu, "ack", &ta->ack) < 0
        || get_u64(args[6], 0xffff, "window", &ta->window) < 0
        || get_ssize(args[8], "start", &ta->start) < 0
        || get_ssize(args[9], "length", &ta->length) < 0
        || get_u64(args[10], 0xffff, "mss", &ta->mss) < 0
        || get_u64(args[11], 0xff, "flags", &ta->flags) < 0
        || get_u64(args[12], 0xff, "last_flags", &ta->last_flags) < 0)
        return -1;
    if (ta->mss == 0) {
        PyErr_SetString(PyExc_ValueError, "mss out of range");
        return -1;
    }
    if (PyObject_GetBuffer(args[0], &ta->hb, PyBUF_SIMPLE) < 0)
        return -1;
    const uint8_t *head = (const uint8_t *)ta->hb.buf;
    int v6 = ta->v6 = ta->hb.len == HEAD6_LEN;
    if (v6 ? (head[12] != 0x86 || head[13] != 0xdd || (head[14] >> 4) != 6
              || head[20] != KIND_TCP)
           : (ta->hb.len != HEAD4_LEN || head[12] != 0x08 || head[13] != 0x00 || head[14] != 0x45
              || head[23] != KIND_TCP || (be16(head + 20) & 0xbfff) != 0)) {
        PyBuffer_Release(&ta->hb);
        PyErr_SetString(PyExc_ValueError,
                        "head must be an Ethernet + IPv4 or IPv6 TCP header template");
        return -1;
    }
    ta->hlen = v6 ? HEAD6_LEN : HEAD4_LEN;
    if (PyObject_GetBuffer(args[7], &ta->pb, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&ta->hb);
        return -1;
    }
    Py_ssize_t start = ta->start, length = ta->length, mss = (Py_ssize_t)ta->mss;
    if (start < 0 || length < 0 || start > ta->pb.len || length > ta->pb.len - start) {
        PyErr_SetString(PyExc_ValueError, "payload range out of bounds");
        goto fail;
    }
    Py_ssize_t biggest = length < mss ? length : mss;
    if ((v6 ? 0 : IP4_HLEN) + TCP_HLEN + biggest > 0xffff) {
        PyErr_SetString(PyExc_ValueError, v6 ? "IPv6 payload too long" : "IPv4 datagram too long");
        goto fail;
    }
    /* Every frame's prefix and headers, the data, and the padding of frames below 60 bytes:
     * the last frame's, and the others' when the MSS is that small. */
    Py_ssize_t count = ta->count = length ? (length + mss - 1) / mss : 1;
    Py_ssize_t full = ta->hlen + TCP_HLEN + mss;
    Py_ssize_t last = ta->hlen + TCP_HLEN + (length - (count - 1) * mss);
    ta->size = count * (4 + ta->hlen + TCP_HLEN) + length
               + (count - 1) * (full < MIN_FRAME ? MIN_FRAME - full : 0)
               + (last < MIN_FRAME ? MIN_FRAME - last : 0);
    return 0;
fail:
    PyBuffer_Release(&ta->pb);
    PyBuffer_Release(&ta->hb);
    return -1;
}

/* Copy n bytes (n < 2**32) from p to d and return acc plus their sum, which folds as
 * sum_bytes(d, n, 0) does: one pass over the data, the sum read from registers instead of from
 * the copy. The 32-bit halves of every 64-bit word add up apart, without carries to chase (a
 * 64-bit word is the sum of its halves modulo 2**16 - 1, as 2**32 is 1 there), so the loop
 * vectorizes. */
static uint64_t
copy_sum(uint8_t *d, const uint8_t *p, size_t n, uint64_t acc)
{
    uint64_t lo = 0, hi = 0, v;
    while (n >= 8) {
        memcpy(&v, p, 8);
        memcpy(d, &v, 8);
        lo += v & 0xffffffffu;
        hi += v >> 32;
        p += 8;
        d += 8;
        n -= 8;
    }
    v = 0;
    if (n) {
        memcpy(&v, p, n); /* the tail, zero-padded, as in sum_bytes */
        memcpy(d, p, n);
    }
    lo += (v & 0xffffffffu) + hi + (v >> 32); /* below 2**64: n < 2**32 */
    acc += lo;
    acc += (acc < lo);
    return acc;
}

/* Write the run of ta's segments at w (ta->size bytes) and release ta's buffers. */
static void
tcp_build(TcpArgs *ta, uint8_t *w)
{
#ifndef NDEBUG
    uint8_t *end = w + ta->size;
#endif
    const uint8_t *head = (const uint8_t *)ta->hb.buf;
    int v6 = ta->v6;
    Py_ssize_t hlen = ta->hlen, count = ta->count, mss = (Py_ssize_t)ta->mss;
    const uint8_t *data = (const uint8_t *)ta->pb.buf + ta->start;
    const uint8_t *src = head + ETH_HLEN + (v6 ? 8 : 12), *dst = src + (v6 ? 16 : 4);
    Py_ssize_t left = ta->length;
    uint32_t s = (uint32_t)ta->seq;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t seg = left < mss ? left : mss;
        Py_ssize_t flen = hlen + TCP_HLEN + seg;
        Py_ssize_t padded = flen < MIN_FRAME ? MIN_FRAME : flen;
        put32(w, (uint32_t)padded);
        uint8_t *f = w + 4;
        memcpy(f, head, (size_t)hlen);
        uint8_t *ip = f + ETH_HLEN;
        uint8_t *t = f + hlen;
        uint64_t pseudo;
        if (v6) {
            put16(ip + 4, (unsigned)(TCP_HLEN + seg));
            pseudo = pseudo6(src, dst, KIND_TCP, (size_t)(TCP_HLEN + seg));
        }
        else {
            put16(ip + 2, (unsigned)(IP4_HLEN + TCP_HLEN + seg));
            put16(ip + 4, (unsigned)((ta->ident + (uint64_t)i) & 0xffff));
            ip[10] = ip[11] = 0;
            put16(ip + 10, ~ones_sum_c(ip, IP4_HLEN, 0) & 0xffff);
            pseudo = pseudo4(src, dst, KIND_TCP, (size_t)(TCP_HLEN + seg));
        }
        put16(t, (unsigned)ta->sport);
        put16(t + 2, (unsigned)ta->dport);
        put32(t + 4, s);
        put32(t + 8, (uint32_t)ta->ack);
        t[12] = 0x50;
        t[13] = (uint8_t)(i == count - 1 ? ta->last_flags : ta->flags);
        put16(t + 14, (unsigned)ta->window);
        t[16] = t[17] = t[18] = t[19] = 0;
        /* the header and the data summed apart: the data starts at an even offset, so the
         * 16-bit words the checksum is made of are the same */
        uint64_t acc = copy_sum(t + TCP_HLEN, data, (size_t)seg, sum_bytes(t, TCP_HLEN, 0));
        uint32_t sum = fold16(pseudo + fold_net(acc));
        put16(t + 16, ~sum & 0xffff);
        if (padded > flen)
            memset(f + flen, 0, (size_t)(padded - flen));
        w = f + padded;
        data += seg;
        left -= seg;
        s += (uint32_t)seg;
    }
    assert(w == end);
    PyBuffer_Release(&ta->pb);
    PyBuffer_Release(&ta->hb);
}

PyDoc_STRVAR(tcp_run_doc,
"tcp_run(out, head, ident, sport, dport, seq, ack, window, payload, start, length, mss,\n"
"        flags, last_flags, /) -> int\n\n"
"Append TCP segments of payload[start:start+length] as length-prefixed frames to the\n"
"bytearray out; return how many (see fast.py).");

static PyObject *
py_tcp_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "tcp_run takes 14 arguments");
        return NULL;
    }
    PyObject *out = args[0];
    if (!PyByteArray_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "out must be a bytearray");
        return NULL;
    }
    TcpArgs ta;
    if (tcp_args(args + 1, &ta) < 0)
        return NULL;
    Py_ssize_t old = PyByteArray_GET_SIZE(out);
    if (PyByteArray_Resize(out, old + ta.size) < 0) {
        PyBuffer_Release(&ta.pb);
        PyBuffer_Release(&ta.hb);
        return NULL;
    }
    tcp_build(&ta, (uint8_t *)PyByteArray_AS_STRING(out) + old);
    return PyLong_FromSsize_t(ta.count);
}

PyDoc_STRVAR(tcp_frames_doc,
"tcp_frames(head, ident, sport, dport, seq, ack, window, payload, start, length, mss,\n"
"           flags, last_flags, /) -> bytes\n\n"
"The run tcp_run would append to an empty bytearray, as bytes built in place.");

static PyObject *
py_tcp_frames(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "tcp_frames takes 13 arguments");
        return NULL;
    }
    TcpArgs ta;
    if (tcp_args(args, &ta) < 0)
        return NULL;
    PyObject *run = PyBytes_FromStringAndSize(NULL, ta.size);
    if (run == NULL) {
        PyBuffer_Release(&ta.pb);
        PyBuffer_Release(&ta.hb);
        return NULL;
    }
    tcp_build(&ta, (uint8_t *)PyBytes_AS_STRING(run));
    return run;
}

/* ----------------------------------------------------------------------------- gro_scan */

#define ACK 0x10
#define PSH 0x08

typedef struct {
    const uint8_t *mac, *src, *dst; /* mac: the source MAC; mac - 6 the destination MAC */
    Py_ssize_t alen;
    unsigned sport, dport, flags, window;
    uint32_t seq, next_seq, ack, last_off;
    Py_ssize_t count;
    Py_ssize_t *parts; /* (start, end) pairs of payloads in the run */
    Py_ssize_t nparts, cap;
} batch_t;

typedef struct {
    batch_t *items; /* in the order the batches began */
    Py_ssize_t n, cap;
} batches_t;

static int
same_flow(const batch_t *b, const rec_t *r)
{
    return b->sport == r->sport && b->dport == r->dport && b->alen == r->alen
        && memcmp(b->src, r->src, (size_t)r->alen) == 0
        && memcmp(b->dst, r->dst, (size_t)r->alen) == 0;
}

static int
add_part(batch_t *b, Py_ssize_t ps, Py_ssize_t pe)
{
    if (b->nparts == b->cap) {
        Py_ssize_t cap = b->cap ? b->cap * 2 : 8;
        Py_ssize_t *parts = PyMem_Realloc(b->parts, (size_t)cap * 2 * sizeof(Py_ssize_t));
        if (parts == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->parts = parts;
        b->cap = cap;
    }
    b->parts[2 * b->nparts] = ps;
    b->parts[2 * b->nparts + 1] = pe;
    b->nparts++;
    return 0;
}

/* _Batch.takes of the reference. */
static int
batch_takes(batch_t *b, const rec_t *r, Py_ssize_t plen)
{
    if (memcmp(b->mac - 6, r->mac - 6, 12) != 0) /* both MACs */
        return 0;
    uint32_t step = r->ack - b->ack;
    if (b->nparts) {
        if (!plen || (r->flags & ~(unsigned)PSH) != ACK || r->seq != b->next_seq
            || step >= 0x80000000u)
            return 0;
        if (add_part(b, r->ps, r->pe) < 0)
            return -1;
        b->last_off = r->seq - b->seq;
        b->next_seq += (uint32_t)plen;
        b->flags |= r->flags;
    }
    else if (plen || r->flags != ACK || r->seq != b->seq || step == 0 || step >= 0x80000000u) {
        return 0;
    }
    b->ack = r->ack;
    b->window = r->window;
    b->count++;
    return 1;
}

/* The item of a segment: (KIND_TCP, mac, src, dst, sport, dport, seq, ack, flags, window,
 * payload, count, last_off, dst_mac), the payload gathered from parts of buf; mac is the
 * source MAC inside a frame, the destination MAC the 6 bytes before it. */
static PyObject *
tcp_item(const uint8_t *buf, const uint8_t *mac, const uint8_t *src, const uint8_t *dst,
         Py_ssize_t alen, unsigned sport, unsigned dport, uint32_t seq, uint32_t ack, unsigned flags,
         unsigned window, const Py_ssize_t *parts, Py_ssize_t nparts, Py_ssize_t count,
         uint32_t last_off)
{
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < nparts; i++)
        total += parts[2 * i + 1] - parts[2 * i];
    PyObject *payload = PyBytes_FromStringAndSize(NULL, total);
    if (payload != NULL) {
        char *w = PyBytes_AS_STRING(payload);
        for (Py_ssize_t i = 0; i < nparts; i++) {
            Py_ssize_t len = parts[2 * i + 1] - parts[2 * i];
            memcpy(w, buf + parts[2 * i], (size_t)len);
            w += len;
        }
    }
    PyObject *items[14] = {
        PyLong_FromLong(KIND_TCP),
        PyBytes_FromStringAndSize((const char *)mac, 6),
        PyBytes_FromStringAndSize((const char *)src, alen),
        PyBytes_FromStringAndSize((const char *)dst, alen),
        PyLong_FromLong((long)sport), PyLong_FromLong((long)dport),
        PyLong_FromUnsignedLong(seq), PyLong_FromUnsignedLong(ack),
        PyLong_FromLong((long)flags), PyLong_FromLong((long)window),
        payload, PyLong_FromSsize_t(count), PyLong_FromUnsignedLong(last_off),
        PyBytes_FromStringAndSize((const char *)mac - 6, 6),
    };
    return tuple_of(14, items);
}

static int
append_new(PyObject *out, PyObject *item)
{
    if (item == NULL)
        return -1;
    int rc = PyList_Append(out, item);
    Py_DECREF(item);
    return rc;
}

static int
flush_batch(PyObject *out, const uint8_t *buf, batch_t *b)
{
    PyObject *item = tcp_item(buf, b->mac, b->src, b->dst, b->alen, b->sport, b->dport, b->seq, b->ack,
                              b->flags, b->window, b->parts, b->nparts, b->count, b->last_off);
    PyMem_Free(b->parts);
    b->parts = NULL;
    return append_new(out, item);
}

static int
flush_all(PyObject *out, const uint8_t *buf, batches_t *bs)
{
    int rc = 0;
    for (Py_ssize_t i = 0; i < bs->n; i++) {
        if (rc == 0)
            rc = flush_batch(out, buf, &bs->items[i]);
        else {
            PyMem_Free(bs->items[i].parts);
            bs->items[i].parts = NULL;
        }
    }
    bs->n = 0;
    return rc;
}

PyDoc_STRVAR(gro_scan_doc,
"gro_scan(run, /) -> list[tuple]\n\n"
"The frames of a run as the stack takes them, each TCP flow's segments coalesced (see\n"
"fast.py).");

static PyObject *
py_gro_scan(PyObject *self, PyObject *run)
{
    Py_buffer b;
    if (PyObject_GetBuffer(run, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *p = (const uint8_t *)b.buf;
    Py_ssize_t n = b.len, off = 0;
    batches_t bs = {NULL, 0, 0};
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto fail;
    for (;;) {
        rec_t r;
        if (off + 4 > n)
            break;
        Py_ssize_t length = (Py_ssize_t)be32(p + off);
        Py_ssize_t start = off + 4;
        if (length > n - start)
            break;
        off = start + length;
        if (!length)
            continue;
        parse_rec(p + start, length, start, &r);
        if (r.kind != KIND_TCP || r.thl != TCP_HLEN) {
            if (flush_all(out, p, &bs) < 0
                || append_new(out, other_record(KIND_OTHER, r.start, r.end)) < 0)
                goto fail;
            continue;
        }
        Py_ssize_t plen = r.pe - r.ps;
        Py_ssize_t i;
        for (i = 0; i < bs.n && !same_flow(&bs.items[i], &r); i++)
            ;
        if (i < bs.n) {
            int took = batch_takes(&bs.items[i], &r, plen);
            if (took < 0)
                goto fail;
            if (took)
                continue;
            batch_t done = bs.items[i];
            memmove(&bs.items[i], &bs.items[i + 1], (size_t)(bs.n - i - 1) * sizeof(batch_t));
            bs.n--;
            if (flush_batch(out, p, &done) < 0)
                goto fail;
        }
        if (r.flags == ACK || (plen && r.flags == (ACK | PSH))) {
            if (bs.n == bs.cap) {
                Py_ssize_t cap = bs.cap ? bs.cap * 2 : 8;
                batch_t *items = PyMem_Realloc(bs.items, (size_t)cap * sizeof(batch_t));
                if (items == NULL) {
                    PyErr_NoMemory();
                    goto fail;
                }
                bs.items = items;
                bs.cap = cap;
            }
            batch_t *nb = &bs.items[bs.n++];
            memset(nb, 0, sizeof(*nb));
            nb->mac = r.mac;
            nb->src = r.src;
            nb->dst = r.dst;
            nb->alen = r.alen;
            nb->sport = r.sport;
            nb->dport = r.dport;
            nb->seq = r.seq;
            nb->next_seq = r.seq + (uint32_t)plen;
            nb->ack = r.ack;
            nb->flags = r.flags;
            nb->window = r.window;
            nb->count = 1;
            if (plen && add_part(nb, r.ps, r.pe) < 0)
                goto fail;
        }
        else {
            Py_ssize_t part[2] = {r.ps, r.pe};
            if (append_new(out, tcp_item(p, r.mac, r.src, r.dst, r.alen, r.sport, r.dport, r.seq, r.ack,
                                         r.flags, r.window, part, 1, 1, 0)) < 0)
                goto fail;
        }
    }
    if (flush_all(out, p, &bs) < 0)
        goto fail;
    if (off < n && append_new(out, other_record(KIND_TRUNCATED, off, n)) < 0)
        goto fail;
    PyMem_Free(bs.items);
    PyBuffer_Release(&b);
    return out;
fail:
    for (Py_ssize_t i = 0; i < bs.n; i++)
        PyMem_Free(bs.items[i].parts);
    PyMem_Free(bs.items);
    Py_XDECREF(out);
    PyBuffer_Release(&b);
    return NULL;
}

/* ----------------------------------------------------------------------------- pcap_run */

static inline void
put32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

PyDoc_STRVAR(pcap_run_doc,
"pcap_run(out, run, ts_ns, snaplen, /) -> int\n\n"
"Append a nanosecond pcap record for every frame of the run to the bytearray out; return\n"
"how many (see fast.py).");

static PyObject *
py_pcap_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "pcap_run(out, run, ts_ns, snaplen)");
        return NULL;
    }
    PyObject *out = args[0];
    if (!PyByteArray_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "out must be a bytearray");
        return NULL;
    }
    uint64_t ts, snaplen;
    if (get_u64(args[2], ((uint64_t)0xffffffffu + 1) * 1000000000ULL - 1, "ts_ns", &ts) < 0
        || get_u64(args[3], 0xffffffffu, "snaplen", &snaplen) < 0)
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[1], &b, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *p = (const uint8_t *)b.buf;
    Py_ssize_t n = b.len, off = 0, count = 0, need = 0;
    /* First pass: how much room (a 16-byte record header per frame, captured bytes). */
    while (off + 4 <= n) {
        Py_ssize_t length = (Py_ssize_t)be32(p + off);
        if (length > n - off - 4)
            break;
        if (length) {
            need += 16 + (length < (Py_ssize_t)snaplen ? length : (Py_ssize_t)snaplen);
            count++;
        }
        off += 4 + length;
    }
    Py_ssize_t old = PyByteArray_GET_SIZE(out);
    if (PyByteArray_Resize(out, old + need) < 0) {
        PyBuffer_Release(&b);
        return NULL;
    }
    uint8_t *w = (uint8_t *)PyByteArray_AS_STRING(out) + old;
    uint32_t sec = (uint32_t)(ts / 1000000000ULL), ns = (uint32_t)(ts % 1000000000ULL);
    off = 0;
    while (off + 4 <= n) {
        Py_ssize_t length = (Py_ssize_t)be32(p + off);
        if (length > n - off - 4)
            break;
        if (length) {
            Py_ssize_t cap = length < (Py_ssize_t)snaplen ? length : (Py_ssize_t)snaplen;
            put32le(w, sec);
            put32le(w + 4, ns);
            put32le(w + 8, (uint32_t)cap);
            put32le(w + 12, (uint32_t)length);
            memcpy(w + 16, p + off + 4, (size_t)cap);
            w += 16 + cap;
        }
        off += 4 + length;
    }
    PyBuffer_Release(&b);
    return PyLong_FromSsize_t(count);
}

/* --------------------------------------------------------------------------- pcap_parts */

/* Write the records of the non-empty frames of p[from:to) (whole frames, as pcap_run) at w;
 * return the end. */
static uint8_t *
pcap_fill(uint8_t *w, const uint8_t *p, Py_ssize_t from, Py_ssize_t to, uint32_t sec,
          uint32_t ns, Py_ssize_t snaplen)
{
    Py_ssize_t off = from;
    while (off < to) {
        Py_ssize_t length = (Py_ssize_t)be32(p + off);
        if (length) {
            Py_ssize_t cap = length < snaplen ? length : snaplen;
            put32le(w, sec);
            put32le(w + 4, ns);
            put32le(w + 8, (uint32_t)cap);
            put32le(w + 12, (uint32_t)length);
            memcpy(w + 16, p + off + 4, (size_t)cap);
            w += 16 + cap;
        }
        off += 4 + length;
    }
    return w;
}

/* Append to parts one bytes object: the records of the frames of p[from:to), then (head_len
 * 16 or 0) the header of a frame whose bytes follow as a view. */
static int
pcap_block(PyObject *parts, const uint8_t *p, Py_ssize_t from, Py_ssize_t to, Py_ssize_t need,
           uint32_t sec, uint32_t ns, Py_ssize_t snaplen, Py_ssize_t cap, Py_ssize_t length,
           int head)
{
    PyObject *block = PyBytes_FromStringAndSize(NULL, need);
    if (block == NULL)
        return -1;
    uint8_t *w = pcap_fill((uint8_t *)PyBytes_AS_STRING(block), p, from, to, sec, ns, snaplen);
    if (head) {
        put32le(w, sec);
        put32le(w + 4, ns);
        put32le(w + 8, (uint32_t)cap);
        put32le(w + 12, (uint32_t)length);
    }
    int r = PyList_Append(parts, block);
    Py_DECREF(block);
    return r;
}

PyDoc_STRVAR(pcap_parts_doc,
"pcap_parts(parts, run, ts_ns, snaplen, ref_over, /) -> (frames, nbytes)\n\n"
"Append the nanosecond pcap records of every frame of the run to the list parts, frames of\n"
"ref_over bytes or more as views of run (bytes only), the rest copied; see pcap.py.");

static PyObject *
py_pcap_parts(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "pcap_parts(parts, run, ts_ns, snaplen, ref_over)");
        return NULL;
    }
    PyObject *parts = args[0], *run = args[1];
    if (!PyList_Check(parts)) {
        PyErr_SetString(PyExc_TypeError, "parts must be a list");
        return NULL;
    }
    uint64_t ts, snaplen64, ref_over64;
    if (get_u64(args[2], ((uint64_t)0xffffffffu + 1) * 1000000000ULL - 1, "ts_ns", &ts) < 0
        || get_u64(args[3], 0xffffffffu, "snaplen", &snaplen64) < 0
        || get_u64(args[4], (uint64_t)PY_SSIZE_T_MAX, "ref_over", &ref_over64) < 0)
        return NULL;
    /* Only bytes are immutable: any other buffer is copied whole. */
    int ref = PyBytes_CheckExact(run);
    Py_ssize_t snaplen = (Py_ssize_t)snaplen64, ref_over = (Py_ssize_t)ref_over64;
    Py_buffer b;
    if (PyObject_GetBuffer(run, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *p = (const uint8_t *)b.buf;
    uint32_t sec = (uint32_t)(ts / 1000000000ULL), ns = (uint32_t)(ts % 1000000000ULL);
    Py_ssize_t n = b.len, off = 0, count = 0, total = 0, from = 0, need = 0;
    PyObject *view = NULL, *result = NULL;
    while (off + 4 <= n) {
        Py_ssize_t length = (Py_ssize_t)be32(p + off);
        if (length > n - off - 4)
            break;
        if (length) {
            Py_ssize_t cap = length < snaplen ? length : snaplen;
            count++;
            total += 16 + cap;
            if (ref && cap >= ref_over) {
                if (pcap_block(parts, p, from, off, need + 16, sec, ns, snaplen, cap, length, 1)
                    < 0)
                    goto done;
                if (view == NULL && (view = PyMemoryView_FromObject(run)) == NULL)
                    goto done;
                PyObject *start = PyLong_FromSsize_t(off + 4);
                PyObject *stop = PyLong_FromSsize_t(off + 4 + cap);
                PyObject *slice = (start && stop) ? PySlice_New(start, stop, NULL) : NULL;
                Py_XDECREF(start);
                Py_XDECREF(stop);
                if (slice == NULL)
                    goto done;
                PyObject *frame = PyObject_GetItem(view, slice);
                Py_DECREF(slice);
                if (frame == NULL)
                    goto done;
                int r = PyList_Append(parts, frame);
                Py_DECREF(frame);
                if (r < 0)
                    goto done;
                from = off + 4 + length;
                need = 0;
            } else {
                need += 16 + cap;
            }
        }
        off += 4 + length;
    }
    if (need && pcap_block(parts, p, from, off, need, sec, ns, snaplen, 0, 0, 0) < 0)
        goto done;
    result = Py_BuildValue("(nn)", count, total);
done:
    Py_XDECREF(view);
    PyBuffer_Release(&b);
    return result;
}

/* ------------------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"ones_sum", (PyCFunction)(void (*)(void))py_ones_sum, METH_FASTCALL, ones_sum_doc},
    {"parse_frame", py_parse_frame, METH_O, parse_frame_doc},
    {"scan_frames", py_scan_frames, METH_O, scan_frames_doc},
    {"frames_end", (PyCFunction)(void (*)(void))py_frames_end, METH_FASTCALL, frames_end_doc},
    {"tcp_run", (PyCFunction)(void (*)(void))py_tcp_run, METH_FASTCALL, tcp_run_doc},
    {"tcp_frames", (PyCFunction)(void (*)(void))py_tcp_frames, METH_FASTCALL, tcp_frames_doc},
    {"pcap_run", (PyCFunction)(void (*)(void))py_pcap_run, METH_FASTCALL, pcap_run_doc},
    {"pcap_parts", (PyCFunction)(void (*)(void))py_pcap_parts, METH_FASTCALL, pcap_parts_doc},
    {"gro_scan", py_gro_scan, METH_O, gro_scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native",
    "The native fast path of slirptrio.wire (C); slirptrio.wire.fast is its interface.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    const char *pure = getenv("SLIRPTRIO_PURE");
    if (pure != NULL && pure[0] != '\0' && strcmp(pure, "0") != 0) {
        PyErr_SetString(PyExc_ImportError, "the native path is disabled by SLIRPTRIO_PURE");
        return NULL;
    }
    return PyModule_Create(&module);
}
