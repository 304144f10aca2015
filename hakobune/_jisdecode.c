/* Fast path of hakobune.hl7.decode and of the SS-MIX2 reader's split: ISO-2022-JP text that uses only
 * ESC ( B (ASCII) and ESC $ B (JIS X 0208).
 *
 * This is an optimisation, not a second decoder: the character table comes from Python (built from the
 * same function the pure-Python decoder uses, hakobune.hl7._jis_pair), and anything outside the common case
 * -- another escape sequence, a byte >= 0x80, a broken or unmapped double-byte code, no table yet, a
 * message without the standard delimiters, a segment without fields, a cut last segment -- returns None,
 * and the caller takes the pure-Python path, which also words every error.  The tests compare both paths
 * on generated and hostile input.
 *
 * Bounds: every read of p[i + k] is guarded by i + k < n.  One input byte makes at most one character and
 * at most one mark, so the output buffer of n UCS-2 units (every JIS X 0208 character is in the BMP) and
 * the mark buffer of n entries cannot overflow.  The 16-byte ASCII step reads p[i .. i + 16) only when
 * i + 16 <= n and stores 16 characters at out[k ..] with k <= i; characters stored past the ASCII run are
 * overwritten by what follows it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define CELLS 94
#define TABLE_SIZE (CELLS * CELLS)
#define STACK_CHARS 4096

static Py_UCS2 table[TABLE_SIZE];
static int table_ready = 0;
static PyObject *empty_str = NULL;
static PyObject *bar_str = NULL;

static PyObject *
set_jis0208(PyObject *self, PyObject *arg)
{
    (void)self;
    if (!PyUnicode_Check(arg) || PyUnicode_GET_LENGTH(arg) != TABLE_SIZE) {
        PyErr_SetString(PyExc_ValueError, "the JIS X 0208 table must be a str of 94 x 94 characters");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < TABLE_SIZE; i++) {
        if (PyUnicode_READ_CHAR(arg, i) > 0xFFFF) {
            PyErr_SetString(PyExc_ValueError, "the JIS X 0208 table holds a character outside the BMP");
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < TABLE_SIZE; i++) {
        table[i] = (Py_UCS2)PyUnicode_READ_CHAR(arg, i);
    }
    table_ready = 1;
    Py_RETURN_NONE;
}

/* 1 = ESC ( B, 2 = ESC $ B, 0 = anything else (not handled here). */
static int
escape_at(const unsigned char *p, Py_ssize_t i, Py_ssize_t n)
{
    if (i + 2 >= n) {
        return 0;
    }
    if (p[i + 1] == '(' && p[i + 2] == 'B') {
        return 1;
    }
    if (p[i + 1] == '$' && p[i + 2] == 'B') {
        return 2;
    }
    return 0;
}

static inline int
is_mark(Py_UCS2 c)
{
    return c == '|' || c == '\r' || c == '\n';
}

/* Decode into out (room for n characters).  When marks is not NULL, the output position of every '|', CR
 * and LF is appended to it (room for n entries) and *nmarks set.  Returns the number of characters, or -1
 * when the message needs the pure-Python decoder. */
static Py_ssize_t
walk(const unsigned char *p, Py_ssize_t n, Py_UCS2 *out, Py_ssize_t *marks, Py_ssize_t *nmarks)
{
    Py_ssize_t i = 0, k = 0, m = 0;
    int jis = 0;
    while (i < n) {
#ifdef __SSE2__
        if (!jis) {
            /* ASCII runs (most of a message), 16 bytes at a time: widened to UCS-2 and the marks noted
             * from one compare mask, up to the first ESC or high byte, which the loop below handles. */
            const __m128i esc = _mm_set1_epi8(0x1B), bar = _mm_set1_epi8('|'), cr = _mm_set1_epi8('\r'),
                          lf = _mm_set1_epi8('\n'), zero = _mm_setzero_si128();
            while (i + 16 <= n) {
                __m128i v = _mm_loadu_si128((const __m128i *)(p + i));
                unsigned stop = (unsigned)(_mm_movemask_epi8(v) | _mm_movemask_epi8(_mm_cmpeq_epi8(v, esc)));
                unsigned good = stop ? (unsigned)__builtin_ctz(stop) : 16;
                _mm_storeu_si128((__m128i *)(out + k), _mm_unpacklo_epi8(v, zero));
                _mm_storeu_si128((__m128i *)(out + k + 8), _mm_unpackhi_epi8(v, zero));
                if (marks != NULL) {
                    __m128i is = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, bar), _mm_cmpeq_epi8(v, cr)),
                                              _mm_cmpeq_epi8(v, lf));
                    unsigned found = (unsigned)_mm_movemask_epi8(is) & ((1u << good) - 1u);
                    while (found) {
                        marks[m++] = k + __builtin_ctz(found);
                        found &= found - 1;
                    }
                }
                i += good;
                k += good;
                if (good < 16) {
                    break;
                }
            }
            if (i >= n) {
                break;
            }
        }
#endif
        unsigned char b = p[i];
        Py_UCS2 c;
        if (b == 0x1B) {
            int e = escape_at(p, i, n);
            if (e == 0) {
                return -1;
            }
            jis = (e == 2);
            i += 3;
            continue;
        }
        if (b >= 0x80) {
            return -1;
        }
        if (!jis || b < 0x21) {
            /* ASCII, and control bytes (CR, LF ...) inside a JIS run, pass through as themselves. */
            c = b;
            i++;
        } else {
            if (i + 1 >= n) {
                return -1;
            }
            unsigned char b2 = p[i + 1];
            if (b > 0x7E || b2 < 0x21 || b2 > 0x7E) {
                return -1;
            }
            c = table[(b - 0x21) * CELLS + (b2 - 0x21)];
            if (c == 0) {
                return -1;
            }
            i += 2;
        }
        if (marks != NULL && is_mark(c)) {
            marks[m++] = k;
        }
        out[k++] = c;
    }
    if (nmarks != NULL) {
        *nmarks = m;
    }
    return k;
}

/* Short fields repeat from message to message (codes, units, flags, value types, table ids): a
 * direct-mapped cache of CACHE_SLOTS strings of 2..CACHE_MAX_CHARS characters hands out the same str instead
 * of allocating (and later freeing) a new one, and the shared str keeps its hash for the mappers' code
 * caches.  Strings are immutable, so sharing is invisible; a slot holds one string and is overwritten on a
 * miss, so the cache never holds more than CACHE_SLOTS small strings (under 3 MB). */
#define CACHE_SLOTS 16384
#define CACHE_MAX_CHARS 48
static PyObject *cache[CACHE_SLOTS];
/* Fields looked up in the cache together (segment_fields). */
#define FIELD_RUN 32

static inline int
same_text(PyObject *s, const Py_UCS2 *chars, Py_ssize_t len)
{
    if (PyUnicode_GET_LENGTH(s) != len) {
        return 0;
    }
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    if (kind == PyUnicode_1BYTE_KIND) {
        const Py_UCS1 *d = data;
        for (Py_ssize_t i = 0; i < len; i++) {
            if (d[i] != chars[i]) {
                return 0;
            }
        }
        return 1;
    }
    return kind == PyUnicode_2BYTE_KIND && memcmp(data, chars, (size_t)len * sizeof(Py_UCS2)) == 0;
}

/* The cache slot of the short field chars [a, b) (2 .. CACHE_MAX_CHARS characters): a multiply-xorshift
 * hash over the UCS-2 units, four at a time (the slot's text is compared anyway: the hash only spreads the
 * fields over the slots). */
static inline Py_ssize_t
slot_of(const Py_UCS2 *buf, Py_ssize_t a, Py_ssize_t b)
{
    Py_ssize_t len = b - a;
    const Py_UCS2 *u = buf + a;
    uint64_t h = (uint64_t)len * 0x9E3779B97F4A7C15ull, w;
    Py_ssize_t i = 0;
    for (; i + 4 <= len; i += 4) {
        memcpy(&w, u + i, sizeof w);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 29;
    }
    w = 0;
    for (int t = 0; i < len; i++, t += 16) {
        w |= (uint64_t)u[i] << t;
    }
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 32;
    return (Py_ssize_t)(h & (CACHE_SLOTS - 1));
}

static inline int
cached_length(Py_ssize_t len)
{
    return len >= 2 && len <= CACHE_MAX_CHARS;
}

/* A str of chars [a, b) of buf, in the narrowest kind that holds it; ``slot``: its cache slot (slot_of)
 * when cached_length(b - a). */
static inline PyObject *
slice(const Py_UCS2 *buf, Py_ssize_t a, Py_ssize_t b, Py_ssize_t slot)
{
    Py_ssize_t len = b - a;
    if (len == 0) {
        return Py_NewRef(empty_str);
    }
    if (len == 1) { /* a Latin-1 character is a CPython singleton already */
        return PyUnicode_FromOrdinal(buf[a]);
    }
    if (!cached_length(len)) {
        return PyUnicode_FromKindAndData(PyUnicode_2BYTE_KIND, buf + a, len);
    }
    PyObject **at = &cache[slot];
    if (*at != NULL && same_text(*at, buf + a, len)) {
        return Py_NewRef(*at);
    }
    PyObject *s = PyUnicode_FromKindAndData(PyUnicode_2BYTE_KIND, buf + a, len);
    if (s != NULL) {
        Py_XSETREF(*at, Py_NewRef(s));
    }
    return s;
}

/* A field no mapper reads (see split's masks): it is left "" instead of made. */
#define SLOT_UNWANTED (-2)
#define ALL_FIELDS (~(uint64_t)0)

/* Whether the j-th '|'-separated part of a segment (0: its ID) is wanted: bit n of wanted is field n as HL7
 * numbers it (for MSH, part j >= 1 is field j + 1, since the separator itself is MSH-1).  The segment ID is
 * always made; fields past 63 only when every field is wanted. */
static inline int
is_wanted(uint64_t wanted, Py_ssize_t j, int is_msh)
{
    Py_ssize_t n = j + (is_msh && j >= 1 ? 1 : 0);
    if (j == 0 || wanted == ALL_FIELDS) {
        return 1;
    }
    return n < 64 && ((wanted >> n) & 1u);
}

/* Fields of one segment: chars [a, b) of buf, whose '|' positions are marks[first .. last).  Padded with ""
 * to at least pad entries; for MSH the separator itself is MSH-1, as HL7 numbers it.  Fields not in wanted
 * are "".  None when the segment has no field (the Python path words that error). */
static PyObject *
segment_fields(const Py_UCS2 *buf, Py_ssize_t a, Py_ssize_t b, const Py_ssize_t *marks, Py_ssize_t first,
               Py_ssize_t last, Py_ssize_t pad, int is_msh, uint64_t wanted)
{
    Py_ssize_t nf = last - first + 1;
    if (nf == 1) {
        return Py_NewRef(Py_None);
    }
    Py_ssize_t total = nf + (is_msh ? 1 : 0);
    PyObject *list = PyList_New(total > pad ? total : pad);
    if (list == NULL) {
        return NULL;
    }
    /* The cache's slots and strings lie all over memory, and looking one up is waiting for it: so, a run
     * of fields at a time, the slots are found first and fetched, then the strings they hold, then each
     * field is made (the waits overlap instead of following one another). */
    Py_ssize_t k = 0, start = a;
    for (Py_ssize_t j0 = first; j0 <= last; j0 += FIELD_RUN) {
        Py_ssize_t n = (last - j0 + 1 < FIELD_RUN ? last - j0 + 1 : FIELD_RUN);
        Py_ssize_t stops[FIELD_RUN], slots[FIELD_RUN]; /* each field's end, its cache slot or -1 */
        for (Py_ssize_t i = 0, from = start; i < n; i++) {
            stops[i] = j0 + i < last ? marks[j0 + i] : b;
            if (!is_wanted(wanted, j0 - first + i, is_msh)) {
                slots[i] = SLOT_UNWANTED;
                from = stops[i] + 1;
                continue;
            }
            slots[i] = cached_length(stops[i] - from) ? slot_of(buf, from, stops[i]) : -1;
            if (slots[i] >= 0) {
                __builtin_prefetch(&cache[slots[i]]);
            }
            from = stops[i] + 1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            if (slots[i] >= 0 && cache[slots[i]] != NULL) {
                __builtin_prefetch(cache[slots[i]]);
            }
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *field =
                slots[i] == SLOT_UNWANTED ? Py_NewRef(empty_str) : slice(buf, start, stops[i], slots[i]);
            if (field == NULL) {
                Py_DECREF(list);
                return NULL;
            }
            PyList_SET_ITEM(list, k++, field);
            if (is_msh && k == 1) {
                PyList_SET_ITEM(list, k++, Py_NewRef(bar_str));
            }
            start = stops[i] + 1;
        }
    }
    for (; k < PyList_GET_SIZE(list); k++) {
        PyList_SET_ITEM(list, k, Py_NewRef(empty_str));
    }
    return list;
}

static inline int
is_line_end(Py_UCS2 c)
{
    return c == '\r' || c == '\n';
}

/* Whether chars [a, b) are a segment ID as agent.ssmix2.message._is_segment_id has it (three ASCII
 * letters or digits, the first an upper-case letter), other than MSH (a second message). */
static inline int
other_segment_id(const Py_UCS2 *buf, Py_ssize_t a, Py_ssize_t b)
{
    if (b - a != 3 || buf[a] < 'A' || buf[a] > 'Z') {
        return 0;
    }
    for (Py_ssize_t i = a + 1; i < b; i++) {
        Py_UCS2 c = buf[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
            return 0;
        }
    }
    return !(buf[a] == 'M' && buf[a + 1] == 'S' && buf[a + 2] == 'H');
}

/* The fields wanted of the segment whose ID is chars [a, b): from masks (split's packed table: the mask of
 * segments not named, then entries of a 3-character ID and its mask, each mask 8 bytes little-endian), or
 * every field when masks is NULL. */
static uint64_t
wanted_of(const unsigned char *masks, Py_ssize_t len, const Py_UCS2 *buf, Py_ssize_t a, Py_ssize_t b)
{
    if (masks == NULL) {
        return ALL_FIELDS;
    }
    const unsigned char *found = masks;
    if (b - a == 3) {
        for (Py_ssize_t e = 8; e + 11 <= len; e += 11) {
            if (buf[a] == masks[e] && buf[a + 1] == masks[e + 1] && buf[a + 2] == masks[e + 2]) {
                found = masks + e + 3;
                break;
            }
        }
    }
    uint64_t m = 0;
    for (int i = 7; i >= 0; i--) {
        m = (m << 8) | found[i];
    }
    return m;
}

/* Segments of a decoded message with the standard delimiters (MSH|^~\&), or None (also when a segment
 * after MSH does not start with a segment ID, or is a second MSH: the Python path words why). */
static PyObject *
split_decoded(const Py_UCS2 *buf, Py_ssize_t count, const Py_ssize_t *marks, Py_ssize_t nmarks,
              Py_ssize_t pad, const unsigned char *masks, Py_ssize_t masks_len)
{
    static const char header[] = "MSH|^~\\&";
    Py_ssize_t start = 0, end = count;
    if (count == 0) {
        return Py_NewRef(Py_None);
    }
    Py_UCS2 last = buf[count - 1];
    if (last != 0x1C && !is_line_end(last)) {
        return Py_NewRef(Py_None); /* truncated: the Python path says so */
    }
    if (buf[0] == 0x0B) {
        start = 1;
    }
    while (end > start && (buf[end - 1] == 0x1C || is_line_end(buf[end - 1]))) {
        end--;
    }
    if (end - start < 8) {
        return Py_NewRef(Py_None);
    }
    for (int i = 0; i < 8; i++) {
        if (buf[start + i] != (Py_UCS2)header[i]) {
            return Py_NewRef(Py_None);
        }
    }
    PyObject *segments = PyList_New(0);
    if (segments == NULL) {
        return NULL;
    }
    /* Walk the marks in order: '|' marks collect into the current segment; a line end closes it. */
    Py_ssize_t a = start, first = 0;
    for (Py_ssize_t j = 0; j <= nmarks; j++) {
        Py_ssize_t pos = j < nmarks ? marks[j] : end;
        if (pos > end) {
            pos = end; /* marks in the stripped tail */
        }
        if (j < nmarks && pos < end && !is_line_end(buf[pos])) {
            continue; /* a '|' inside the current segment */
        }
        if (pos > a) {
            Py_ssize_t id_end = first < j ? marks[first] : pos;
            if (PyList_GET_SIZE(segments) > 0 && !other_segment_id(buf, a, id_end)) {
                Py_DECREF(segments);
                return Py_NewRef(Py_None);
            }
            PyObject *fields = segment_fields(buf, a, pos, marks, first, j, pad, PyList_GET_SIZE(segments) == 0,
                                              wanted_of(masks, masks_len, buf, a, id_end));
            if (fields == NULL || fields == Py_None) {
                Py_DECREF(segments);
                return fields;
            }
            int rc = PyList_Append(segments, fields);
            Py_DECREF(fields);
            if (rc < 0) {
                Py_DECREF(segments);
                return NULL;
            }
        }
        if (pos >= end) {
            break;
        }
        a = pos + 1;
        first = j + 1;
    }
    return segments;
}

/* Decode raw; with want_segments, split it too.  None when the pure-Python path must take it. */
static PyObject *
run(PyObject *arg, int want_segments, Py_ssize_t pad, const unsigned char *masks, Py_ssize_t masks_len)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_UCS2 small[STACK_CHARS];
    Py_ssize_t small_marks[STACK_CHARS];
    Py_UCS2 *out = small;
    Py_ssize_t *marks = want_segments ? small_marks : NULL;
    Py_ssize_t nmarks = 0;
    if (!table_ready) {
        goto fallback;
    }
    if (view.len > STACK_CHARS) {
        out = PyMem_Malloc((size_t)view.len * sizeof(Py_UCS2));
        if (want_segments) {
            marks = PyMem_Malloc((size_t)view.len * sizeof(Py_ssize_t));
        }
        if (out == NULL || (want_segments && marks == NULL)) {
            PyErr_NoMemory();
            goto done;
        }
    }
    Py_ssize_t count = walk((const unsigned char *)view.buf, view.len, out, marks, &nmarks);
    if (count < 0) {
        goto fallback;
    }
    if (want_segments) {
        result = split_decoded(out, count, marks, nmarks, pad, masks, masks_len);
    } else {
        /* FromKindAndData narrows to the smallest kind that holds the text (ASCII without JIS). */
        result = PyUnicode_FromKindAndData(PyUnicode_2BYTE_KIND, out, count);
    }
    goto done;
fallback:
    result = Py_NewRef(Py_None);
done:
    if (out != small) {
        PyMem_Free(out);
    }
    if (marks != small_marks && marks != NULL) {
        PyMem_Free(marks);
    }
    PyBuffer_Release(&view);
    return result;
}

static PyObject *
decode(PyObject *self, PyObject *arg)
{
    (void)self;
    return run(arg, 0, 0, NULL, 0);
}

static PyObject *
split(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "split(raw, pad, masks=None) takes two or three arguments");
        return NULL;
    }
    const unsigned char *masks = NULL;
    Py_ssize_t masks_len = 0;
    if (nargs == 3 && args[2] != Py_None) {
        if (!PyBytes_Check(args[2]) || PyBytes_GET_SIZE(args[2]) < 8 || (PyBytes_GET_SIZE(args[2]) - 8) % 11 != 0) {
            PyErr_SetString(PyExc_ValueError, "masks must be bytes: 8, then entries of 3 + 8 (hl7.field_masks)");
            return NULL;
        }
        masks = (const unsigned char *)PyBytes_AS_STRING(args[2]);
        masks_len = PyBytes_GET_SIZE(args[2]);
    }
    Py_ssize_t pad = PyLong_AsSsize_t(args[1]);
    if (pad < 0 || pad > 1024) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "pad must be 0..1024");
        }
        return NULL;
    }
    return run(args[0], 1, pad, masks, masks_len);
}

/* hakobune.hl7.to_iso_python: what to_iso gives for anything but the forms below. */
static PyObject *iso_fallback = NULL;

static PyObject *
set_iso_fallback(PyObject *self, PyObject *arg)
{
    (void)self;
    if (!PyCallable_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "the fallback must be callable");
        return NULL;
    }
    Py_XSETREF(iso_fallback, Py_NewRef(arg));
    Py_RETURN_NONE;
}

static inline int
ascii_digits(const Py_UCS1 *d, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (d[i] < '0' || d[i] > '9') {
            return 0;
        }
    }
    return 1;
}

/* hakobune.hl7.to_iso for the forms nearly every date in a message takes -- "" and 8, 12 or 14 ASCII
 * digits whose month is 01..12 and day 01..31 (the hour and minute are copied as they are, as the Python
 * code does) -- and the Python code (to_iso_python) for everything else.  Tests compare the two. */
static PyObject *
to_iso(PyObject *self, PyObject *arg)
{
    (void)self;
    if (PyUnicode_CheckExact(arg) && PyUnicode_KIND(arg) == PyUnicode_1BYTE_KIND) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
        const Py_UCS1 *d = PyUnicode_1BYTE_DATA(arg);
        if (n == 0) {
            return Py_NewRef(empty_str);
        }
        if ((n == 8 || n == 12 || n == 14) && ascii_digits(d, n)) {
            int month = (d[4] - '0') * 10 + (d[5] - '0'), day = (d[6] - '0') * 10 + (d[7] - '0');
            if (month >= 1 && month <= 12 && day >= 1 && day <= 31) {
                char out[19] = {(char)d[0], (char)d[1], (char)d[2], (char)d[3], '-', (char)d[4], (char)d[5], '-',
                                (char)d[6], (char)d[7]};
                Py_ssize_t len = 10;
                if (n >= 12) {
                    const char tail[9] = {'T', (char)d[8], (char)d[9], ':', (char)d[10], (char)d[11], ':',
                                          (char)(n == 14 ? d[12] : 0), (char)(n == 14 ? d[13] : 0)};
                    memcpy(out + 10, tail, sizeof tail);
                    len = n == 14 ? 19 : 16;
                }
                return PyUnicode_FromStringAndSize(out, len);
            }
        }
    }
    if (iso_fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "to_iso: no fallback set (set_iso_fallback)");
        return NULL;
    }
    return PyObject_CallOneArg(iso_fallback, arg);
}

static PyMethodDef methods[] = {
    {"set_jis0208", set_jis0208, METH_O, "Install the JIS X 0208 table (94 x 94 characters, NUL = unmapped)."},
    {"decode", decode, METH_O,
     "Text of an ISO-2022-JP message using only ESC ( B and ESC $ B, or None when it needs the full decoder."},
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL,
     "split(raw, pad, masks=None): decode, then segments as field lists padded to pad (MSH-1 is the\n"
     "separator), for a message with the standard delimiters MSH|^~\\& ending in CR, LF or FS; None when it\n"
     "needs the full path.  masks (hakobune.hl7.field_masks): the fields to make, the others left \"\"."},
    {"set_iso_fallback", set_iso_fallback, METH_O, "Install hakobune.hl7.to_iso_python, which to_iso defers to."},
    {"to_iso", to_iso, METH_O, "hakobune.hl7.to_iso: HL7 DT/DTM to ISO 8601 text (see the C source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jisdecode", "Fast path of hakobune.hl7.decode (see the C source).", -1, methods, NULL,
    NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__jisdecode(void)
{
    empty_str = PyUnicode_FromStringAndSize("", 0);
    bar_str = PyUnicode_FromStringAndSize("|", 1);
    if (empty_str == NULL || bar_str == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
