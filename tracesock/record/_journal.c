/* The compiled hot path of tracing: one send/recv record, numbered, formatted and copied
 * into the trace file's shared mapping in a single C call.
 *
 * Theory of operation. recorder.py does the same job in Python with a lock (numbering
 * and writing must be one step, so that "seq" is strictly increasing in the file), a
 * dict, base64 and orjson: about 1 us a call. Here the whole record is made while the
 * GIL is held and without running any Python code or allocating any Python object, so
 * no other thread can run in between: the GIL is the lock. Lines go straight into the
 * mapped window (MAP_SHARED pages of the trace file), so a killed process leaves every
 * finished line in the file, as with the Python path.
 *
 * Windows are mapped by Python (sink.py) and handed over with add_window(); they are
 * consecutive ranges of the file. Their pages may be handed over unready: the journal
 * then readies them (reserves and maps them writable) a step ahead of its writes, since
 * every page readied costs about as much whether a line lands on it or not. When the
 * current window is half used and no next one is there, the journal calls refill()
 * (Python) after finishing its write. A line that
 * does not fit is split across the current window and the next; if no next window is
 * ready it waits in a private buffer until add_window() (or detach(), for close).
 *
 * Anything the fast path does not handle (a held would-block event, TLS extras, args
 * other than small ints, a closed journal) goes to slow(), the Python path, with the
 * same arguments: nothing is written here then.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <time.h>

#define HEAD_MAX 1024
#define MAX_ARGS 8
#define NAME_MAX_LEN 48
#define GRAVE 16
/* Pages of a window handed over unready are made ready this many bytes at a time, a
 * step ahead of the writer: madvise(MADV_POPULATE_WRITE) reserves them (a full disk is
 * an error here, never a SIGBUS on a store) and maps them writable. */
#define READY_STEP (256 << 10)
/* A line this long goes into the file with pwrite() rather than through the mapping: the
 * kernel then fills fresh page cache pages with the line instead of zeroing them first
 * and mapping them, about half the cost per page. It is in the file the moment pwrite()
 * returns, as a line copied into the mapping is: a killed process loses neither. */
#define PWRITE_MIN 4096
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

typedef struct {
    PyObject_HEAD
    Py_buffer cur; /* current window; cur.obj == NULL when there is none */
    Py_ssize_t pos; /* write position in cur */
    Py_ssize_t end; /* cur's pages are ready (reserved, mapped writable) below this */
    Py_buffer next; /* the window after it, when ready */
    Py_ssize_t next_end;
    int prep_errno; /* why getting pages ready failed (a full disk): no more windows */
    int fd; /* the trace file, for long lines (-1: none) */
    long long written; /* bytes in the file so far (window bases + positions) */
    long long seq;
    long long t0; /* the trace's start, ns */
    int payload;
    int held; /* set by Python while a would-block event is held back */
    int closed; /* detached: no more windows, no more writes */
    int stopped; /* transfers go to slow() (close() is writing the end) */
    int asked; /* refill() called and not yet answered by add_window() */
    char *pend; /* bytes waiting for a window */
    Py_ssize_t pend_len, pend_cap;
    char *scratch;
    Py_ssize_t scratch_cap;
    long long lost; /* lines dropped because memory ran out */
    PyObject *retired[GRAVE]; /* used-up windows, kept alive until it is safe to unmap */
    int nretired;
    PyObject *slow;
    PyObject *refill;
} Journal;

static long mmap_page = 4096; /* sysconf(_SC_PAGESIZE), set at import */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Two base64 characters for each 12 bits, filled in at import: one lookup and one
 * 16-bit store per half of a 3-byte group (about twice the speed of one per character,
 * which matters for bulk payloads). */
static uint16_t B64_PAIRS[4096];

static void b64_init(void)
{
    for (unsigned i = 0; i < 4096; i++) {
        unsigned char pair[2] = {(unsigned char)B64[i >> 6], (unsigned char)B64[i & 63]};
        memcpy(&B64_PAIRS[i], pair, 2);
    }
}

static inline char *b64_group(char *out, const unsigned char *in)
{
    unsigned v = ((unsigned)in[0] << 16) | ((unsigned)in[1] << 8) | in[2];
    memcpy(out, &B64_PAIRS[v >> 12], 2);
    memcpy(out + 2, &B64_PAIRS[v & 0xFFF], 2);
    return out + 4;
}

static char *b64_encode(char *out, const unsigned char *in, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; i + 12 <= n; i += 12) {
        out = b64_group(out, in + i);
        out = b64_group(out, in + i + 3);
        out = b64_group(out, in + i + 6);
        out = b64_group(out, in + i + 9);
    }
    for (; i + 3 <= n; i += 3)
        out = b64_group(out, in + i);
    if (i < n) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)in[i + 1] << 8;
        out[0] = B64[v >> 18];
        out[1] = B64[(v >> 12) & 63];
        out[2] = (i + 1 < n) ? B64[(v >> 6) & 63] : '=';
        out[3] = '=';
        out += 4;
    }
    return out;
}

/* "00" "01" ... "99": two digits per division. */
static const char DIGIT_PAIRS[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static char *put_uint(char *p, unsigned long long u)
{
    char tmp[20];
    char *q = tmp + sizeof(tmp);
    while (u >= 100) {
        q -= 2;
        memcpy(q, DIGIT_PAIRS + 2 * (u % 100), 2);
        u /= 100;
    }
    if (u >= 10) {
        q -= 2;
        memcpy(q, DIGIT_PAIRS + 2 * u, 2);
    }
    else {
        *--q = (char)('0' + u);
    }
    size_t n = (size_t)(tmp + sizeof(tmp) - q);
    memcpy(p, q, n);
    return p + n;
}

static char *put_int(char *p, long long v)
{
    if (v < 0) {
        *p++ = '-';
        return put_uint(p, (unsigned long long)(-(v + 1)) + 1);
    }
    return put_uint(p, (unsigned long long)v);
}

/* Nanoseconds as seconds, trailing zeros dropped: 0.000012345, 1.5, 3.0. Always a
 * JSON float. */
static char *put_seconds(char *p, long long ns)
{
    unsigned long long u;
    if (ns < 0) {
        *p++ = '-';
        u = (unsigned long long)(-(ns + 1)) + 1;
    }
    else {
        u = (unsigned long long)ns;
    }
    p = put_uint(p, u / 1000000000ULL);
    *p++ = '.';
    unsigned frac = (unsigned)(u % 1000000000ULL);
    if (frac == 0) {
        *p++ = '0';
        return p;
    }
    char d[9];
    d[0] = (char)('0' + frac / 100000000);
    memcpy(d + 1, DIGIT_PAIRS + 2 * (frac / 1000000 % 100), 2);
    memcpy(d + 3, DIGIT_PAIRS + 2 * (frac / 10000 % 100), 2);
    memcpy(d + 5, DIGIT_PAIRS + 2 * (frac / 100 % 100), 2);
    memcpy(d + 7, DIGIT_PAIRS + 2 * (frac % 100), 2);
    int last = 8;
    while (d[last] == '0') /* frac != 0: some digit is not */
        last--;
    memcpy(p, d, (size_t)last + 1);
    return p + last + 1;
}

/* CLOCK_MONOTONIC in nanoseconds: time.perf_counter()'s clock, as an integer. */
static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* perf_counter() seconds <-> nanoseconds, as time.perf_counter() converts them. */
static double ns_to_seconds(long long ns) { return (double)ns / 1e9; }

static long long seconds_to_ns(double s)
{
    /* NaN or absurd (a monotonic clock is not 126 years on): keep it a number, and the
     * difference of two of them within a long long */
    if (!(s == s) || s > 4.0e9 || s < -4.0e9)
        return 0;
    double ns = s * 1e9;
    return (long long)(ns < 0 ? ns - 0.5 : ns + 0.5);
}

/* threading.get_ident() of the calling thread, in digits: made once per thread (a
 * thread's ident never changes; a forked child's thread keeps its parent's). */
static _Thread_local char thread_digits[24];
static _Thread_local int thread_len;

static char *put_thread(char *p)
{
    if (thread_len == 0)
        thread_len = (int)(put_uint(thread_digits, PyThread_get_thread_ident()) - thread_digits);
    memcpy(p, thread_digits, (size_t)thread_len);
    return p + thread_len;
}

/* A name fit to write between quotes as it is: [A-Za-z0-9_], short. */
static const char *plain_name(PyObject *s, Py_ssize_t *len)
{
    if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_COMPACT_ASCII(s))
        return NULL;
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    const char *c = (const char *)PyUnicode_DATA(s);
    if (n == 0 || n > NAME_MAX_LEN)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        char ch = c[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_'))
            return NULL;
    }
    *len = n;
    return c;
}

/* -- windows ------------------------------------------------------------------------ */

/* Unmapping (mmap's dealloc) releases the GIL: another thread could then write in the
 * middle of a line. So a used-up window is only let go of here, which is called where
 * other threads may run anyway (before refill(), from add_window and detach). */
static void bury_retired(Journal *j)
{
    while (j->nretired > 0) {
        PyObject *w = j->retired[--j->nretired];
        Py_DECREF(w);
    }
}

static void drop_cur(Journal *j)
{
    if (j->cur.obj != NULL) {
        if (j->nretired < GRAVE) {
            Py_INCREF(j->cur.obj);
            j->retired[j->nretired++] = j->cur.obj;
        }
        PyBuffer_Release(&j->cur); /* ends the export; the reference above keeps it mapped */
    }
    j->cur.obj = NULL;
    j->pos = j->end = 0;
    if (j->next.obj != NULL) {
        j->cur = j->next;
        j->end = j->next_end;
        j->next.obj = NULL;
    }
}

/* Make the next step of cur's pages ready; -1 (and prep_errno set) when the system
 * refuses (no space): cur then ends where its ready pages do. */
static int ready_step(Journal *j)
{
    Py_ssize_t step = j->cur.len - j->end < READY_STEP ? j->cur.len - j->end : READY_STEP;
    if (j->prep_errno != 0)
        return -1;
    if (madvise((char *)j->cur.buf + j->end, (size_t)step, MADV_POPULATE_WRITE) != 0) {
        j->prep_errno = errno ? errno : EIO;
        return -1;
    }
    j->end += step;
    return 0;
}

/* Where writing in cur has to stop: its length, or the end of its ready pages when no
 * more can be made ready. */
static Py_ssize_t cur_limit(Journal *j)
{
    return j->prep_errno != 0 ? j->end : j->cur.len;
}

/* Bytes writable at pos now, up to ``want``: ready pages, made ready as needed. */
static Py_ssize_t writable(Journal *j, Py_ssize_t want)
{
    while (j->end - j->pos < want && j->end < j->cur.len && ready_step(j) == 0)
        ;
    return j->end - j->pos;
}

static int pend_append(Journal *j, const char *p, Py_ssize_t n)
{
    if (j->pend_len + n > j->pend_cap) {
        Py_ssize_t cap = j->pend_cap ? j->pend_cap : 65536;
        while (cap < j->pend_len + n)
            cap *= 2;
        char *grown = PyMem_RawRealloc(j->pend, (size_t)cap);
        if (grown == NULL)
            return -1;
        j->pend = grown;
        j->pend_cap = cap;
    }
    memcpy(j->pend + j->pend_len, p, (size_t)n);
    j->pend_len += n;
    return 0;
}

/* Write a long line with pwrite() at the file offset of pos, when it lies in the
 * current window (whose range of the file is there, reserved or sparse); 1 when done.
 * The pages it fills are then in the page cache, with their blocks: stores to them
 * cannot fault for want of space. The page it ends in is made ready like any other. */
static int put_through_file(Journal *j, const char *p, Py_ssize_t n)
{
    if (j->fd < 0 || j->pend_len != 0 || j->cur.obj == NULL || j->prep_errno != 0 ||
        j->pos + n > j->cur.len)
        return 0;
    Py_ssize_t done = 0;
    while (done < n) {
        ssize_t k = pwrite(j->fd, p + done, (size_t)(n - done), (off_t)(j->written + done));
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) { /* a full disk: the mapping's way will meet it too */
            j->prep_errno = k < 0 ? errno : EIO;
            return 0;
        }
        done += k;
    }
    j->pos += n;
    j->written += n;
    if (j->pos > j->end) {
        /* The pages the line filled are in the page cache; the one it ends in may not
         * be whole (a file system's blocks can be smaller than a page): made ready
         * like any other, or else the window ends with the line. */
        Py_ssize_t whole = j->pos / mmap_page * mmap_page;
        Py_ssize_t page_end = whole + mmap_page < j->cur.len ? whole + mmap_page : j->cur.len;
        if (whole == j->pos)
            j->end = j->pos;
        else if (madvise((char *)j->cur.buf + whole, (size_t)(page_end - whole),
                         MADV_POPULATE_WRITE) == 0)
            j->end = page_end;
        else {
            j->prep_errno = errno ? errno : EIO;
            j->end = j->pos;
        }
    }
    if (j->pos == cur_limit(j))
        drop_cur(j);
    return 1;
}

/* Copy n bytes to the end of the file: the current window, the next ones, or the
 * private buffer when there is no window (always after what is already waiting). */
static int put(Journal *j, const char *p, Py_ssize_t n)
{
    if (n >= PWRITE_MIN && put_through_file(j, p, n))
        return 0;
    while (n > 0 && j->pend_len == 0 && j->cur.obj != NULL) {
        Py_ssize_t room = writable(j, n);
        Py_ssize_t k = n < room ? n : room;
        memcpy((char *)j->cur.buf + j->pos, p, (size_t)k);
        j->pos += k;
        j->written += k;
        p += k;
        n -= k;
        if (j->pos == cur_limit(j))
            drop_cur(j);
    }
    if (n > 0)
        return pend_append(j, p, n);
    return 0;
}

static int needs_window(Journal *j)
{
    if (j->closed || j->next.obj != NULL)
        return 0;
    return j->cur.obj == NULL || (cur_limit(j) - j->pos) < j->cur.len / 2;
}

static int wants_window(Journal *j)
{
    return !j->asked && needs_window(j);
}

static void ask_refill(Journal *j)
{
    j->asked = 1; /* other threads, running while refill() does, do not ask again */
    bury_retired(j);
    PyObject *r = PyObject_CallNoArgs(j->refill);
    if (r == NULL)
        PyErr_WriteUnraisable(j->refill);
    Py_XDECREF(r);
    j->asked = 0; /* answered, or to be asked again by the next write */
}

/* After each write: ask for the next window when this one is half used. (Pages are
 * made ready when a line needs them, not ahead: the next lines may be long ones, which
 * go through pwrite() and need none.) */
static void after_write(Journal *j)
{
    if (wants_window(j))
        ask_refill(j);
}

/* Room for a line being formatted: in the window when it fits there, else scratch. */
static char *line_buffer(Journal *j, Py_ssize_t total, int *direct)
{
    if (total < PWRITE_MIN && j->pend_len == 0 && j->cur.obj != NULL &&
        writable(j, total) >= total) {
        *direct = 1;
        return (char *)j->cur.buf + j->pos;
    }
    *direct = 0;
    if (total > j->scratch_cap) {
        Py_ssize_t cap = j->scratch_cap ? j->scratch_cap : 4096;
        while (cap < total)
            cap *= 2;
        char *grown = PyMem_RawRealloc(j->scratch, (size_t)cap);
        if (grown == NULL)
            return NULL;
        j->scratch = grown;
        j->scratch_cap = cap;
    }
    return j->scratch;
}

static void commit(Journal *j, char *line, Py_ssize_t total, int direct)
{
    if (direct) {
        j->pos += total;
        j->written += total;
        if (j->pos == cur_limit(j))
            drop_cur(j);
    }
    else if (put(j, line, total) < 0) {
        j->lost++;
    }
}

/* -- one record: the hot path ---------------------------------------------------------- */

typedef struct {
    const char *key;
    Py_ssize_t klen;
    long long val;
} Arg;

/* Number, format and write one send/recv record. ``data`` is NULL when no payload is to
 * be recorded; otherwise it holds at least ``nbytes`` bytes (the caller checked). */
static void journal_record(Journal *j, long long sock, const char *op, Py_ssize_t oplen,
                           long long start, long long end, long long nbytes, const Py_buffer *data,
                           const Arg *kv, int nkv)
{
    char head[HEAD_MAX];
    char *p = head;
#define LIT(s) (memcpy(p, s, sizeof(s) - 1), p += sizeof(s) - 1)
    LIT("{\"type\":\"call\",\"seq\":");
    p = put_int(p, ++j->seq);
    LIT(",\"t\":");
    p = put_seconds(p, start - j->t0);
    LIT(",\"dur\":");
    p = put_seconds(p, end - start);
    LIT(",\"sock\":");
    p = put_int(p, sock);
    LIT(",\"op\":\"");
    memcpy(p, op, (size_t)oplen);
    p += oplen;
    LIT("\",\"thread\":");
    p = put_thread(p);
    LIT(",\"args\":{");
    for (int i = 0; i < nkv; i++) {
        if (i)
            *p++ = ',';
        *p++ = '"';
        memcpy(p, kv[i].key, (size_t)kv[i].klen);
        p += kv[i].klen;
        *p++ = '"';
        *p++ = ':';
        p = put_int(p, kv[i].val);
    }
    LIT("},\"nbytes\":");
    p = put_int(p, nbytes);
    Py_ssize_t b64len = 0;
    if (data != NULL) {
        b64len = (Py_ssize_t)((nbytes + 2) / 3) * 4;
        LIT(",\"data\":\"");
    }
#undef LIT
    Py_ssize_t headlen = p - head;
    Py_ssize_t total = headlen + (data != NULL ? b64len + 3 : 2);
    int direct;
    char *line = line_buffer(j, total, &direct);
    if (line == NULL) {
        j->seq--;
        j->lost++;
        return;
    }
    memcpy(line, head, (size_t)headlen);
    char *q = line + headlen;
    if (data != NULL) {
        q = b64_encode(q, (const unsigned char *)data->buf, (Py_ssize_t)nbytes);
        *q++ = '"';
    }
    *q++ = '}';
    *q++ = '\n';
    commit(j, line, total, direct);
    after_write(j);
}

static PyObject *decline(Journal *j, PyObject *const *args, Py_ssize_t nargs)
{
    PyErr_Clear();
    return PyObject_Vectorcall(j->slow, args, (size_t)nargs, NULL);
}

/* transfer(sock, op, start, nbytes, data, args, extra=None): Recorder.transfer's
 * signature, for the Python callers (TLS, UDP...); the socket methods below call
 * journal_record directly. */
static PyObject *Journal_transfer(Journal *j, PyObject *const *args, Py_ssize_t nargs)
{
    long long end = now_ns();
    if (nargs < 6 || nargs > 7)
        return decline(j, args, nargs);
    if (j->closed || j->stopped || j->held || (nargs == 7 && args[6] != Py_None))
        return decline(j, args, nargs);
    PyObject *o_sock = args[0], *o_op = args[1], *o_start = args[2], *o_n = args[3];
    PyObject *o_data = args[4], *o_args = args[5];
    if (!PyLong_CheckExact(o_sock) || !PyFloat_CheckExact(o_start) || !PyLong_CheckExact(o_n) ||
        !PyDict_CheckExact(o_args))
        return decline(j, args, nargs);
    int overflow = 0;
    long long sock = PyLong_AsLongLongAndOverflow(o_sock, &overflow);
    if (overflow)
        return decline(j, args, nargs);
    long long nbytes = PyLong_AsLongLongAndOverflow(o_n, &overflow);
    if (overflow || nbytes < 0)
        return decline(j, args, nargs);
    Py_ssize_t oplen;
    const char *op = plain_name(o_op, &oplen);
    if (op == NULL || PyDict_GET_SIZE(o_args) > MAX_ARGS)
        return decline(j, args, nargs);
    Arg kv[MAX_ARGS];
    int nkv = 0;
    Py_ssize_t it = 0;
    PyObject *key, *value;
    while (PyDict_Next(o_args, &it, &key, &value)) {
        kv[nkv].key = plain_name(key, &kv[nkv].klen);
        if (kv[nkv].key == NULL || !PyLong_CheckExact(value))
            return decline(j, args, nargs);
        kv[nkv].val = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow)
            return decline(j, args, nargs);
        nkv++;
    }
    Py_buffer data;
    int have_data = 0;
    if (o_data != Py_None && j->payload) {
        if (PyObject_GetBuffer(o_data, &data, PyBUF_SIMPLE) < 0)
            return decline(j, args, nargs);
        if (nbytes > data.len) {
            PyBuffer_Release(&data);
            return decline(j, args, nargs);
        }
        have_data = 1;
    }
    journal_record(j, sock, op, oplen, seconds_to_ns(PyFloat_AS_DOUBLE(o_start)), end, nbytes,
                   have_data ? &data : NULL, kv, nkv);
    if (have_data)
        PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

/* -- the slow paths' writes ----------------------------------------------------------- */

static const char CALL_PREFIX[] = "{\"type\":\"call\",\"seq\":0,";

/* append_call(line) -> seq: ``line`` is orjson's encoding of a call record whose "type"
 * and "seq" come first with seq 0; it is written with the next number instead. */
static PyObject *Journal_append_call(Journal *j, PyObject *arg)
{
    const Py_ssize_t plen = sizeof(CALL_PREFIX) - 1;
    if (!PyBytes_Check(arg) || PyBytes_GET_SIZE(arg) <= plen ||
        memcmp(PyBytes_AS_STRING(arg), CALL_PREFIX, (size_t)plen) != 0) {
        PyErr_SetString(PyExc_ValueError, "append_call needs a call record with seq 0 first");
        return NULL;
    }
    if (j->closed) {
        PyErr_SetString(PyExc_ValueError, "the journal is closed");
        return NULL;
    }
    char head[48];
    char *p = head;
    memcpy(p, CALL_PREFIX, (size_t)plen - 2);
    p += plen - 2;
    p = put_int(p, ++j->seq);
    *p++ = ',';
    if (put(j, head, p - head) < 0 ||
        put(j, PyBytes_AS_STRING(arg) + plen, PyBytes_GET_SIZE(arg) - plen) < 0) {
        return PyErr_NoMemory();
    }
    long long seq = j->seq;
    after_write(j);
    return PyLong_FromLongLong(seq);
}

/* append_raw(line): a line written as it is (header, end record). */
static PyObject *Journal_append_raw(Journal *j, PyObject *arg)
{
    Py_buffer b;
    if (j->closed) {
        PyErr_SetString(PyExc_ValueError, "the journal is closed");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    int r = put(j, (const char *)b.buf, b.len);
    PyBuffer_Release(&b);
    if (r < 0)
        return PyErr_NoMemory();
    after_write(j);
    Py_RETURN_NONE;
}

/* add_window(buffer, pos=0, ready=-1): the next range of the file, writable, right
 * after the last one; its pages are ready (reserved and mapped writable) below
 * ``ready`` (the whole buffer when -1), and the journal readies the rest itself, a step
 * at a time (a mapping, page-aligned). Waiting bytes go into it first. */
static PyObject *Journal_add_window(Journal *j, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t pos = 0, ready = -1;
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "add_window(buffer, pos=0, ready=-1)");
        return NULL;
    }
    if (nargs >= 2) {
        pos = PyLong_AsSsize_t(args[1]);
        if (pos == -1 && PyErr_Occurred())
            return NULL;
    }
    if (nargs == 3) {
        ready = PyLong_AsSsize_t(args[2]);
        if (ready == -1 && PyErr_Occurred())
            return NULL;
    }
    bury_retired(j);
    if (j->closed) {
        PyErr_SetString(PyExc_ValueError, "the journal is closed");
        return NULL;
    }
    if (j->next.obj != NULL) {
        PyErr_SetString(PyExc_ValueError, "a next window is already waiting");
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_WRITABLE) < 0)
        return NULL;
    if (ready < 0 || ready > b.len)
        ready = b.len;
    if (pos < 0 || pos > ready || (ready < b.len && ready % mmap_page != 0) ||
        (ready < b.len && ((uintptr_t)b.buf % (uintptr_t)mmap_page) != 0)) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError,
                        "pos outside the ready part, or a window not ready to the page");
        return NULL;
    }
    j->asked = 0;
    if (j->cur.obj == NULL) {
        j->cur = b;
        j->end = ready;
        j->pos = pos;
        j->written += pos;
        if (j->pos == j->cur.len)
            drop_cur(j);
        if (j->pend_len) { /* flush what waited, in order */
            char *w = j->pend;
            Py_ssize_t n = j->pend_len;
            j->pend = NULL;
            j->pend_len = 0;
            j->pend_cap = 0;
            int r = put(j, w, n);
            PyMem_RawFree(w);
            if (r < 0)
                return PyErr_NoMemory();
        }
    }
    else {
        j->next = b;
        j->next_end = ready;
    }
    after_write(j);
    Py_RETURN_NONE;
}

/* detach() -> (written, waiting): let go of every window; ``written`` is the file's
 * length in lines so far, ``waiting`` the bytes that had no window yet (to be written at
 * that offset). The journal is closed afterwards. */
static PyObject *Journal_detach(Journal *j, PyObject *Py_UNUSED(ignored))
{
    bury_retired(j);
    if (j->cur.obj != NULL)
        PyBuffer_Release(&j->cur);
    if (j->next.obj != NULL)
        PyBuffer_Release(&j->next);
    j->cur.obj = j->next.obj = NULL;
    j->pos = j->end = j->next_end = 0;
    j->closed = 1;
    PyObject *waiting = PyBytes_FromStringAndSize(j->pend ? j->pend : "", j->pend_len);
    PyMem_RawFree(j->pend);
    j->pend = NULL;
    j->pend_len = j->pend_cap = 0;
    PyMem_RawFree(j->scratch);
    j->scratch = NULL;
    j->scratch_cap = 0;
    if (j->fd >= 0) {
        close(j->fd);
        j->fd = -1;
    }
    if (waiting == NULL)
        return NULL;
    return Py_BuildValue("(LN)", j->written, waiting);
}

/* stop(): from now on every transfer goes to slow(), which writes (if at all) through
 * append_call under the recorder's lock: so close() can write the last records and the
 * end knowing the count. */
static PyObject *Journal_stop(Journal *j, PyObject *Py_UNUSED(ignored))
{
    j->stopped = 1;
    Py_RETURN_NONE;
}

/* -- TracedSocket's send, sendall, recv and recv_into -------------------------------------
 *
 * The same methods as sockets.py writes in Python, for a socket whose recorder has a
 * journal: clock, the real call, and the record, with no Python frame in between. For
 * any other recorder, or arguments out of the ordinary (keywords, non-int sizes), they
 * call the Python method instead, before doing anything; a failed call is recorded by
 * the Python function ``failed`` and the exception re-raised unchanged. */

enum { OP_SEND, OP_SENDALL, OP_RECV, OP_RECV_INTO, N_OPS };
static const char *const OP_NAMES[N_OPS] = {"send", "sendall", "recv", "recv_into"};
static PyObject *real_methods[N_OPS]; /* socket.socket's own */
static PyObject *py_methods[N_OPS]; /* sockets.py's TracedSocket methods */
static PyObject *failed_hook; /* failed(sock, op, start, exc, args) */
static PyObject *str_ts_rec, *str_ts_id, *str_ts_jnl, *str_transfer;
static PyTypeObject *traced_type; /* TracedSocket: its slots are read in place */
static Py_ssize_t rec_offset, id_offset, jnl_offset; /* of the _ts_rec, _ts_id, _ts_jnl slots */
static PyTypeObject JournalType;

/* The journal of ``self``'s recorder (a new reference), with the socket's id; NULL
 * (without an exception) when the recorder has none.
 *
 * The answer is kept in the socket's _ts_jnl slot. A recorder only ever lets go of its
 * journal by detaching it (close, or a forked child's copy), which closes it; so a kept
 * journal that is not closed is still the one its recorder writes through, and the
 * lookup of recorder.transfer is made once per socket, not once per call. */
static Journal *journal_of(PyObject *self, long long *sock)
{
    if (traced_type == NULL || !PyObject_TypeCheck(self, traced_type))
        return NULL;
    PyObject *id = *(PyObject **)((char *)self + id_offset);
    int overflow = 0;
    *sock = id != NULL && PyLong_CheckExact(id) ? PyLong_AsLongLongAndOverflow(id, &overflow) : -1;
    if (*sock < 0 || overflow) {
        PyErr_Clear();
        return NULL;
    }
    PyObject **kept = (PyObject **)((char *)self + jnl_offset);
    if (*kept != NULL) {
        if (Py_IS_TYPE(*kept, &JournalType) && !((Journal *)*kept)->closed) {
            Py_INCREF(*kept);
            return (Journal *)*kept;
        }
        Py_CLEAR(*kept); /* a journal let go of: the socket does not keep it alive */
    }
    PyObject *rec = *(PyObject **)((char *)self + rec_offset);
    if (rec == NULL)
        return NULL;
    PyObject *tr = PyObject_GetAttr(rec, str_transfer);
    if (tr == NULL) {
        PyErr_Clear();
        return NULL;
    }
    Journal *j = NULL;
    if (PyCFunction_Check(tr) && PyCFunction_GET_FUNCTION(tr) == (PyCFunction)(void (*)(void))Journal_transfer) {
        PyObject *owner = PyCFunction_GET_SELF(tr);
        if (owner != NULL && Py_IS_TYPE(owner, &JournalType) && !((Journal *)owner)->closed) {
            j = (Journal *)owner;
            Py_INCREF(j); /* the caller's */
            Py_INCREF(j); /* the slot's */
            Py_XSETREF(*kept, (PyObject *)j);
        }
    }
    Py_DECREF(tr);
    return j;
}

static PyObject *python_method(int op, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    PyObject *stack[4];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 3) { /* let the Python method word the error */
        PyObject *all = PyTuple_New(nargs + nkw + 1);
        if (all == NULL)
            return NULL;
        Py_INCREF(self);
        PyTuple_SET_ITEM(all, 0, self);
        for (Py_ssize_t i = 0; i < nargs + nkw; i++) {
            Py_INCREF(args[i]);
            PyTuple_SET_ITEM(all, i + 1, args[i]);
        }
        PyObject *r = PyObject_Vectorcall(py_methods[op], &PyTuple_GET_ITEM(all, 0),
                                          (size_t)(nargs + 1), kwnames);
        Py_DECREF(all);
        return r;
    }
    stack[0] = self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++)
        stack[i + 1] = args[i];
    return PyObject_Vectorcall(py_methods[op], stack, (size_t)(nargs + 1), kwnames);
}

/* Record the exception being raised by the real call, then leave it set, unchanged. */
static void record_failure(Journal *j, int op, long long sock, long long start, PyObject *self,
                           PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *call_args = PyTuple_New(nargs);
    PyObject *o_start = PyFloat_FromDouble(ns_to_seconds(start));
    PyObject *o_sock = PyLong_FromLongLong(sock);
    PyObject *o_op = PyUnicode_FromString(OP_NAMES[op]);
    if (call_args && o_start && o_sock && o_op && value) {
        for (Py_ssize_t i = 0; i < nargs; i++) {
            Py_INCREF(args[i]);
            PyTuple_SET_ITEM(call_args, i, args[i]);
        }
        PyObject *stack[7] = {NULL, self, o_sock, o_op, o_start, value, call_args};
        PyObject *r = PyObject_Vectorcall(failed_hook, stack + 1, 6, NULL);
        if (r == NULL)
            PyErr_WriteUnraisable(failed_hook);
        Py_XDECREF(r);
    }
    else {
        PyErr_Clear();
    }
    Py_XDECREF(call_args);
    Py_XDECREF(o_start);
    Py_XDECREF(o_sock);
    Py_XDECREF(o_op);
    PyErr_Restore(type, value, tb);
}

/* The record of a call the journal does not take now (a held would-block event, a
 * stopped journal, a buffer it cannot read as plain bytes): handed to slow(), the Python
 * path, with what the Python method would have passed it. The payload goes as
 * buffer_bytes() gives it: a byte-wise view of the buffer, or None. */
static void record_slow(Journal *j, int op, long long sock, long long start, long long nbytes,
                        PyObject *payload, const Arg *kv, int nkv)
{
    PyObject *o_args = PyDict_New(), *o_sock = PyLong_FromLongLong(sock);
    PyObject *o_op = PyUnicode_FromString(OP_NAMES[op]), *o_start = PyFloat_FromDouble(ns_to_seconds(start));
    PyObject *data = NULL;
    if (payload != NULL) {
        PyObject *view = PyMemoryView_FromObject(payload);
        data = view ? PyObject_CallMethod(view, "cast", "s", "B") : NULL;
        Py_XDECREF(view);
        if (data == NULL) {
            PyErr_Clear();
            data = Py_NewRef(Py_None);
        }
        if (nbytes < 0)
            nbytes = PyMemoryView_Check(data) ? PyMemoryView_GET_BUFFER(data)->len : 0;
    }
    PyObject *o_n = PyLong_FromLongLong(nbytes < 0 ? 0 : nbytes);
    int ok = o_args && o_sock && o_op && o_start && o_n;
    for (int i = 0; ok && i < nkv; i++) {
        PyObject *v = PyLong_FromLongLong(kv[i].val);
        ok = v != NULL && PyDict_SetItemString(o_args, kv[i].key, v) == 0;
        Py_XDECREF(v);
    }
    if (ok) {
        PyObject *stack[6] = {o_sock, o_op, o_start, o_n, data ? data : Py_None, o_args};
        PyObject *r = PyObject_Vectorcall(j->slow, stack, 6, NULL);
        Py_XDECREF(r);
        ok = r != NULL;
    }
    if (!ok)
        PyErr_WriteUnraisable(j->slow); /* tracing never changes the program */
    Py_XDECREF(data);
    Py_XDECREF(o_args);
    Py_XDECREF(o_sock);
    Py_XDECREF(o_op);
    Py_XDECREF(o_start);
    Py_XDECREF(o_n);
}

/* After the real call succeeded: write the record. ``payload`` is the buffer that moved
 * (its first ``nbytes`` bytes), or NULL; ``nbytes`` < 0 means the whole buffer (sendall).
 * The buffer is read once, for its length and its bytes alike. */
static void record_success(Journal *j, int op, long long sock, long long start, long long nbytes,
                           PyObject *payload, const Arg *kv, int nkv)
{
    long long end = now_ns();
    Py_buffer data;
    int need_buffer = payload != NULL && (j->payload || nbytes < 0);
    if (j->closed || j->stopped || j->held) {
        record_slow(j, op, sock, start, nbytes, payload, kv, nkv);
        return;
    }
    if (need_buffer) {
        if (PyObject_GetBuffer(payload, &data, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            record_slow(j, op, sock, start, nbytes, payload, kv, nkv);
            return;
        }
        if (nbytes < 0)
            nbytes = data.len;
        if (data.len < nbytes) {
            PyBuffer_Release(&data);
            record_slow(j, op, sock, start, nbytes, payload, kv, nkv);
            return;
        }
    }
    journal_record(j, sock, OP_NAMES[op], (Py_ssize_t)strlen(OP_NAMES[op]), start, end, nbytes,
                   need_buffer && j->payload ? &data : NULL, kv, nkv);
    if (need_buffer)
        PyBuffer_Release(&data);
}

static PyObject *call_real(int op, PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *stack[4];
    stack[0] = self;
    for (Py_ssize_t i = 0; i < nargs; i++)
        stack[i + 1] = args[i];
    return PyObject_Vectorcall(real_methods[op], stack, (size_t)(nargs + 1), NULL);
}

/* What every traced method shares: find the journal (or leave the whole call to the
 * Python method), time the real call, record it if it raised. On return *jp holds the
 * journal (a new reference) when the caller is to record the result; when it is NULL,
 * the result (or NULL for an exception) is the caller's to return as it is. */
static PyObject *timed_call(int op, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kw, Journal **jp, long long *sock, long long *start)
{
    *jp = NULL;
    Journal *j = journal_of(self, sock);
    if (j == NULL)
        return python_method(op, self, args, nargs, kw);
    *start = now_ns();
    PyObject *result = call_real(op, self, args, nargs);
    if (result == NULL) {
        record_failure(j, op, *sock, *start, self, args, nargs);
        Py_DECREF(j);
        return NULL;
    }
    *jp = j;
    return result;
}

static int small_int(PyObject *o, long long *out)
{
    int overflow = 0;
    if (!PyLong_CheckExact(o))
        return 0;
    *out = PyLong_AsLongLongAndOverflow(o, &overflow);
    return !overflow && !(*out == -1 && PyErr_Occurred());
}

/* send(data[, flags]) and sendall(data[, flags]) */
static PyObject *traced_send_common(int op, PyObject *self, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames)
{
    long long sock, flags = 0;
    long long start;
    Journal *j;
    if (kwnames != NULL || nargs < 1 || nargs > 2 || (nargs == 2 && !small_int(args[1], &flags)))
        return python_method(op, self, args, nargs, kwnames);
    PyObject *result = timed_call(op, self, args, nargs, kwnames, &j, &sock, &start);
    if (j == NULL)
        return result;
    long long nbytes = -1; /* sendall: the whole buffer */
    if (op == OP_SEND && !small_int(result, &nbytes))
        nbytes = 0;
    Arg kv[1] = {{"flags", 5, flags}};
    record_success(j, op, sock, start, nbytes, args[0], kv, flags ? 1 : 0);
    Py_DECREF(j);
    return result;
}

static PyObject *traced_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    return traced_send_common(OP_SEND, self, args, nargs, kw);
}

static PyObject *traced_sendall(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kw)
{
    return traced_send_common(OP_SENDALL, self, args, nargs, kw);
}

/* recv(bufsize[, flags]) */
static PyObject *traced_recv(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    long long sock, bufsize, flags = 0;
    long long start;
    Journal *j;
    if (kw != NULL || nargs < 1 || nargs > 2 || !small_int(args[0], &bufsize) ||
        (nargs == 2 && !small_int(args[1], &flags)))
        return python_method(OP_RECV, self, args, nargs, kw);
    PyObject *result = timed_call(OP_RECV, self, args, nargs, kw, &j, &sock, &start);
    if (j == NULL)
        return result;
    Arg kv[2] = {{"bufsize", 7, bufsize}, {"flags", 5, flags}};
    long long n = PyBytes_Check(result) ? PyBytes_GET_SIZE(result) : 0;
    record_success(j, OP_RECV, sock, start, n, result, kv, flags ? 2 : 1);
    Py_DECREF(j);
    return result;
}

/* recv_into(buffer[, nbytes[, flags]]) */
static PyObject *traced_recv_into(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kw)
{
    long long sock, want = 0, flags = 0;
    long long start;
    Journal *j;
    if (kw != NULL || nargs < 1 || nargs > 3 || (nargs >= 2 && !small_int(args[1], &want)) ||
        (nargs == 3 && !small_int(args[2], &flags)))
        return python_method(OP_RECV_INTO, self, args, nargs, kw);
    long long bufsize = want;
    if (!bufsize) {
        Py_buffer b;
        if (PyObject_GetBuffer(args[0], &b, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            return python_method(OP_RECV_INTO, self, args, nargs, kw);
        }
        bufsize = b.len;
        PyBuffer_Release(&b);
    }
    PyObject *result = timed_call(OP_RECV_INTO, self, args, nargs, kw, &j, &sock, &start);
    if (j == NULL)
        return result;
    long long n = 0;
    if (!small_int(result, &n))
        n = 0;
    Arg kv[2] = {{"bufsize", 7, bufsize}, {"flags", 5, flags}};
    record_success(j, OP_RECV_INTO, sock, start, n, args[0], kv, flags ? 2 : 1);
    Py_DECREF(j);
    return result;
}

static PyMethodDef traced_defs[N_OPS] = {
    {"send", (PyCFunction)(void (*)(void))traced_send, METH_FASTCALL | METH_KEYWORDS,
     "send($self, data, flags=0, /)\n--\n\nsocket.send, traced."},
    {"sendall", (PyCFunction)(void (*)(void))traced_sendall, METH_FASTCALL | METH_KEYWORDS,
     "sendall($self, data, flags=0, /)\n--\n\nsocket.sendall, traced."},
    {"recv", (PyCFunction)(void (*)(void))traced_recv, METH_FASTCALL | METH_KEYWORDS,
     "recv($self, bufsize, flags=0, /)\n--\n\nsocket.recv, traced."},
    {"recv_into", (PyCFunction)(void (*)(void))traced_recv_into, METH_FASTCALL | METH_KEYWORDS,
     "recv_into($self, buffer, nbytes=0, flags=0, /)\n--\n\nsocket.recv_into, traced."},
};

/* socket_methods(socket_type, real, python, failed) -> {name: method descriptor}.
 * ``real`` and ``python`` map each of send, sendall, recv, recv_into to socket.socket's
 * method and to sockets.py's; ``failed(self, sock, op, start, exc, args)`` records a
 * call that raised. */
static PyObject *socket_methods(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyType_Check(args[0]) || !PyDict_Check(args[1]) || !PyDict_Check(args[2]) ||
        !PyCallable_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "socket_methods(traced_type, real, python, failed)");
        return NULL;
    }
    PyTypeObject *tt = (PyTypeObject *)args[0];
    Py_ssize_t offsets[3];
    PyObject *names[3] = {str_ts_rec, str_ts_id, str_ts_jnl};
    for (int i = 0; i < 3; i++) { /* __slots__ members: PyMemberDescr with an offset */
        PyObject *d = PyDict_GetItemWithError(tt->tp_dict, names[i]);
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "%s has no slot %U", tt->tp_name, names[i]);
            return NULL;
        }
        offsets[i] = ((PyMemberDescrObject *)d)->d_member->offset;
    }
    Py_INCREF(tt);
    Py_XSETREF(traced_type, tt);
    rec_offset = offsets[0];
    id_offset = offsets[1];
    jnl_offset = offsets[2];
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    for (int op = 0; op < N_OPS; op++) {
        PyObject *real = PyDict_GetItemString(args[1], OP_NAMES[op]);
        PyObject *py = PyDict_GetItemString(args[2], OP_NAMES[op]);
        if (real == NULL || py == NULL) {
            Py_DECREF(out);
            PyErr_Format(PyExc_KeyError, "socket_methods: no %s", OP_NAMES[op]);
            return NULL;
        }
        Py_INCREF(real);
        Py_XSETREF(real_methods[op], real);
        Py_INCREF(py);
        Py_XSETREF(py_methods[op], py);
        /* A descriptor of the type the real method belongs to (the C socket type), as
         * socket.socket's own: copied onto another socket class (a library borrowing
         * the method while tracing), it binds there and, on a self that is not traced,
         * calls the Python method, which calls the real one (record/borrowing.py). */
        PyTypeObject *owner = Py_IS_TYPE(real, &PyMethodDescr_Type)
                                  ? ((PyMethodDescrObject *)real)->d_common.d_type : tt;
        PyObject *descr = PyDescr_NewMethod(owner, &traced_defs[op]);
        if (descr == NULL || PyDict_SetItemString(out, OP_NAMES[op], descr) < 0) {
            Py_XDECREF(descr);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(descr);
    }
    Py_INCREF(args[3]);
    Py_XSETREF(failed_hook, args[3]);
    return out;
}

static PyMethodDef module_methods[] = {
    {"socket_methods", (PyCFunction)(void (*)(void))socket_methods, METH_FASTCALL,
     "socket_methods(socket_type, real, python, failed) -> {name: method}"},
    {NULL},
};

/* -- the type --------------------------------------------------------------------------- */

static int Journal_init(Journal *j, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"slow", "refill", "t0", "payload", "fd", "offset", NULL};
    PyObject *slow, *refill;
    double t0;
    int payload = 1, fd = -1;
    long long offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOd|piL", kwlist, &slow, &refill, &t0,
                                     &payload, &fd, &offset))
        return -1;
    if (offset < 0) {
        PyErr_SetString(PyExc_ValueError, "offset must not be negative");
        return -1;
    }
    if (j->slow != NULL) { /* its file offsets and windows are not to be reset */
        PyErr_SetString(PyExc_RuntimeError, "a Journal is initialized once");
        return -1;
    }
    if (!PyCallable_Check(slow) || !PyCallable_Check(refill)) {
        PyErr_SetString(PyExc_TypeError, "slow and refill must be callable");
        return -1;
    }
    Py_INCREF(slow);
    Py_XSETREF(j->slow, slow);
    Py_INCREF(refill);
    Py_XSETREF(j->refill, refill);
    j->t0 = seconds_to_ns(t0);
    j->payload = payload;
    j->written = offset;
    /* A copy of its own: the program closing the sink's descriptor number behind its
     * back (os.closerange) cannot turn it into some other file. Without one (no
     * descriptor left), long lines go through the mapping like the others. */
    j->fd = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    return 0;
}

static PyObject *Journal_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Journal *j = (Journal *)PyType_GenericNew(type, args, kwds);
    if (j != NULL)
        j->fd = -1;
    return (PyObject *)j;
}

static int Journal_traverse(Journal *j, visitproc visit, void *arg)
{
    Py_VISIT(j->slow);
    Py_VISIT(j->refill);
    return 0;
}

static int Journal_clear(Journal *j)
{
    Py_CLEAR(j->slow);
    Py_CLEAR(j->refill);
    return 0;
}

static void Journal_dealloc(Journal *j)
{
    PyObject_GC_UnTrack(j);
    bury_retired(j);
    if (j->cur.obj != NULL)
        PyBuffer_Release(&j->cur);
    if (j->next.obj != NULL)
        PyBuffer_Release(&j->next);
    PyMem_RawFree(j->pend);
    PyMem_RawFree(j->scratch);
    if (j->fd >= 0)
        close(j->fd);
    Journal_clear(j);
    Py_TYPE(j)->tp_free((PyObject *)j);
}

static PyObject *get_seq(Journal *j, void *c) { return PyLong_FromLongLong(j->seq); }
static PyObject *get_lost(Journal *j, void *c) { return PyLong_FromLongLong(j->lost); }
static PyObject *get_closed(Journal *j, void *c) { return PyBool_FromLong(j->closed); }
static PyObject *get_held(Journal *j, void *c) { return PyBool_FromLong(j->held); }
static PyObject *get_needs(Journal *j, void *c) { return PyBool_FromLong(needs_window(j)); }
static PyObject *get_waiting(Journal *j, void *c) { return PyLong_FromSsize_t(j->pend_len); }
static PyObject *get_failure(Journal *j, void *c) { return PyLong_FromLong(j->prep_errno); }

static int set_held(Journal *j, PyObject *v, void *c)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete held");
        return -1;
    }
    int t = PyObject_IsTrue(v);
    if (t < 0)
        return -1;
    j->held = t;
    return 0;
}

static PyGetSetDef Journal_getset[] = {
    {"seq", (getter)get_seq, NULL, "the last number given", NULL},
    {"lost", (getter)get_lost, NULL, "lines dropped for want of memory", NULL},
    {"closed", (getter)get_closed, NULL, "detached", NULL},
    {"held", (getter)get_held, (setter)set_held, "send every transfer to slow()", NULL},
    {"needs_window", (getter)get_needs, NULL, "whether add_window() is due", NULL},
    {"waiting", (getter)get_waiting, NULL, "bytes of lines waiting for a window", NULL},
    {"failure", (getter)get_failure, NULL,
     "errno of a failure to make pages ready (no space), or 0", NULL},
    {NULL},
};

static PyMethodDef Journal_methods[] = {
    {"transfer", (PyCFunction)(void (*)(void))Journal_transfer, METH_FASTCALL,
     "transfer(sock, op, start, nbytes, data, args, extra=None)"},
    {"append_call", (PyCFunction)Journal_append_call, METH_O, "append_call(line) -> seq"},
    {"append_raw", (PyCFunction)Journal_append_raw, METH_O, "append_raw(line)"},
    {"add_window", (PyCFunction)(void (*)(void))Journal_add_window, METH_FASTCALL,
     "add_window(buffer, pos=0, ready=-1)"},
    {"detach", (PyCFunction)Journal_detach, METH_NOARGS, "detach() -> (written, waiting)"},
    {"stop", (PyCFunction)Journal_stop, METH_NOARGS, "stop(): every later transfer to slow()"},
    {NULL},
};

static PyTypeObject JournalType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tracesock.record._journal.Journal",
    .tp_basicsize = sizeof(Journal),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Numbers, formats and writes trace lines into mapped windows of the file.",
    .tp_new = Journal_new,
    .tp_init = (initproc)Journal_init,
    .tp_dealloc = (destructor)Journal_dealloc,
    .tp_traverse = (traverseproc)Journal_traverse,
    .tp_clear = (inquiry)Journal_clear,
    .tp_methods = Journal_methods,
    .tp_getset = Journal_getset,
};

static struct PyModuleDef journal_module = {
    PyModuleDef_HEAD_INIT, "_journal", "The compiled hot path of tracing.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__journal(void)
{
#ifdef Py_GIL_DISABLED
    /* Free-threaded CPython: the GIL is not there to serve as the lock. */
    PyErr_SetString(PyExc_ImportError, "the compiled journal needs the GIL");
    return NULL;
#endif
    if (PyType_Ready(&JournalType) < 0)
        return NULL;
    b64_init();
    mmap_page = sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096;
    str_ts_rec = PyUnicode_InternFromString("_ts_rec");
    str_ts_id = PyUnicode_InternFromString("_ts_id");
    str_ts_jnl = PyUnicode_InternFromString("_ts_jnl");
    str_transfer = PyUnicode_InternFromString("transfer");
    if (str_ts_rec == NULL || str_ts_id == NULL || str_ts_jnl == NULL || str_transfer == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&journal_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&JournalType);
    if (PyModule_AddObject(m, "Journal", (PyObject *)&JournalType) < 0) {
        Py_DECREF(&JournalType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
