/* Compiled fast path of a bundle's lab results (restore.fhir.bundle: in_window, _Builder.labs, _Builder.lab
 * and the results section of _bundle), for the export's hot path (serialized_bundle).
 *
 * Lab results are most of a patient's records (~75 of ~113 in the bench hospital, ~38 of them in a
 * summary) and, in Python, most of a bundle's cost: decoding each with orjson (~7 us), choosing the most
 * recent per test (~3 us), shaping its Observation (~13 us).  Here the canonical encodings
 * (hakobune.records.encode) are read where they lie, without making dicts: the window, the choice per
 * test, the order of the section, the Specimens, the ids and the Observations filled into the same
 * templates the Python path uses.
 *
 * This is an optimisation, not a second builder: what needs Python stays in Python and is called from
 * here -- a lab result's shared parts and template (restore.fhir.bundle._fast_lab_parts), the Specimen
 * resource (_specimen_resource), SHA-1 (hashlib, for the ids).  Anything that is not the plain case (a lab
 * encoding not in canonical layout, an escape in a string, a key or time that is not ASCII, another
 * patient's record, a template that cannot be made) gives None for the whole bundle and the caller runs
 * the Python path.  tests/restore/test_fast_labs.py compares both on generated and hostile records.
 *
 * For a reader of the bundle that never parses it (the offline viewer's summary, made where the bundle is
 * built), the section also hands back each Observation as (its template's shape, its number's JSON or None,
 * its effective time): the shape is the makers' last answer, the same object for every Observation of the
 * template, so what the reader derives from it is derived once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* --- registered by restore.fhir.bundle --------------------------------------------------------------- */
static PyObject *lab_prefix;   /* bytes: {"kind":"lab","v":<FORMAT_VERSION>,"r":{"key":{"patient_id": */
static PyObject *lab_kind;     /* bytes: {"kind":"lab" (a line starting so is a lab result, or not plain) */
static PyObject *parts_maker;  /* (system, code, display, status, value_type, value, unit, flag, range) ->
                                  ((6 template pieces as bytes), narrative tail) | None */
static PyObject *number_parts_maker; /* (system, code, display, status, value_type, unit, flag, range) ->
                                        ((7 template pieces, the number's hole 4th), tail before the value,
                                        tail after it, as UTF-8) | None */
static PyObject *number_maker;   /* value text -> its JSON as a number (bytes) | None */
static PyObject *numbers;        /* value as encoded -> number_maker's answer */
#define NUMBERS_MAX 65536
static PyObject *specimen_maker; /* (id, identifier value, type text | None, patient url) -> resource */
static PyObject *fragment_type;  /* orjson.Fragment */
static PyObject *parts_cache;    /* the raw bytes of a result's code..status -> parts_maker's answer */
#define PARTS_CACHE_MAX 8192
static PyObject *empty_tuple, *s_copy, *s_update, *s_digest;

/* --- one lab result, read where its encoding lies ------------------------------------------------------ */
enum {
    PID, CARE, DTYPE, ORDER, ITEM,                        /* key */
    CODE, DISPLAY, SYSTEM,                                /* code */
    VTYPE, VALUE, UNIT, RANGE, FLAG, STATUS, OBSERVED,    /* values */
    SPEC_CODE, SPEC_DISPLAY, SPEC_SYSTEM,                 /* specimen */
    NF
};

typedef struct {
    const char *p;
    Py_ssize_t n;
} Str;

typedef struct {
    Str f[NF];
    int has_specimen;
    const char *parts;    /* the encoding of code .. status: equal bytes, equal shared parts */
    Py_ssize_t parts_n;
    char day[12];         /* the day it counts for (YYYY, YYYY-MM or YYYY-MM-DD), room for a space */
    int day_n;
    char effective[48];   /* fhir_datetime(observed_at), when it is one */
    int effective_n;
    Py_ssize_t code_n;    /* its code as encoded ("code":{…}, at ``parts``) */
    Py_ssize_t group;     /* its code as encoded, then its test (system, code or display); -1: dropped */
    Py_ssize_t seq;       /* position among the lab results in the window */
    char id[36];          /* its Observation's id */
} Lab;

static int
lit(const char **p, const char *end, const char *s, Py_ssize_t n)
{
    if (end - *p < n || memcmp(*p, s, (size_t)n) != 0) {
        return 0;
    }
    *p += n;
    return 1;
}
#define LIT(p, end, s) lit(p, end, s, (Py_ssize_t)(sizeof(s) - 1))

/* A JSON string without escapes (else not plain): its bytes between the quotes. */
static int
str(const char **p, const char *end, Str *out)
{
    const char *q = *p;
    if (q >= end || *q != '"') {
        return 0;
    }
    const char *s = ++q;
    for (; q < end; q++) {
        unsigned char c = (unsigned char)*q;
        if (c == '"') {
            out->p = s;
            out->n = q - s;
            *p = q + 1;
            return 1;
        }
        if (c == '\\' || c < 0x20) {
            return 0;
        }
    }
    return 0;
}

/* A Coding ({"code":…,"display":…,"system":…}) or null. */
static int
coding(const char **p, const char *end, Str *out, int *present)
{
    if (LIT(p, end, "null")) {
        *present = 0;
        return 1;
    }
    *present = 1;
    return LIT(p, end, "{\"code\":") && str(p, end, &out[0]) && LIT(p, end, ",\"display\":") &&
           str(p, end, &out[1]) && LIT(p, end, ",\"system\":") && str(p, end, &out[2]) && LIT(p, end, "}");
}

/* Strict UTF-8 (as Python decodes it: no overlong forms, no surrogates, nothing above U+10FFFF). */
static int
utf8_ok(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            while (n - i >= 8) { /* ASCII runs 8 bytes at a time */
                uint64_t w;
                memcpy(&w, s + i, 8);
                if (w & 0x8080808080808080ULL) {
                    break;
                }
                i += 8;
            }
            continue;
        }
        int len;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        }
        else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) {
                lo = 0xA0;
            }
            else if (c == 0xED) {
                hi = 0x9F;
            }
        }
        else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) {
                lo = 0x90;
            }
            else if (c == 0xF4) {
                hi = 0x8F;
            }
        }
        else {
            return 0;
        }
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi) {
            return 0;
        }
        for (int k = 2; k < len; k++) {
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) {
                return 0;
            }
        }
        i += len;
    }
    return 1;
}

static int
ascii(Str s)
{
    for (Py_ssize_t i = 0; i < s.n; i++) {
        if ((unsigned char)s.p[i] >= 0x80) {
            return 0;
        }
    }
    return 1;
}

/* The canonical encoding of a LabResult (hakobune.records: fields in declaration order); 0 when it is not. */
static int
parse_lab(const char *p, const char *end, Lab *lab)
{
    Str *f = lab->f;
    Str battery[3];
    int has_battery;
    const char *prefix = PyBytes_AS_STRING(lab_prefix);
    if (!lit(&p, end, prefix, PyBytes_GET_SIZE(lab_prefix)) || !str(&p, end, &f[PID]) ||
        !LIT(&p, end, ",\"care_date\":") || !str(&p, end, &f[CARE]) || !LIT(&p, end, ",\"data_type\":") ||
        !str(&p, end, &f[DTYPE]) || !LIT(&p, end, ",\"order_no\":") || !str(&p, end, &f[ORDER]) ||
        !LIT(&p, end, ",\"item\":") || !str(&p, end, &f[ITEM]) || !LIT(&p, end, "},")) {
        return 0;
    }
    lab->parts = p;
    if (!LIT(&p, end, "\"code\":{\"code\":") || !str(&p, end, &f[CODE]) || !LIT(&p, end, ",\"display\":") ||
        !str(&p, end, &f[DISPLAY]) || !LIT(&p, end, ",\"system\":") || !str(&p, end, &f[SYSTEM]) ||
        !LIT(&p, end, "},\"value_type\":") || !str(&p, end, &f[VTYPE]) || !LIT(&p, end, ",\"value\":") ||
        !str(&p, end, &f[VALUE]) || !LIT(&p, end, ",\"unit\":") || !str(&p, end, &f[UNIT]) ||
        !LIT(&p, end, ",\"reference_range\":") || !str(&p, end, &f[RANGE]) || !LIT(&p, end, ",\"flag\":") ||
        !str(&p, end, &f[FLAG]) || !LIT(&p, end, ",\"status\":") || !str(&p, end, &f[STATUS])) {
        return 0;
    }
    lab->parts_n = p - lab->parts;
    if (!LIT(&p, end, ",\"observed_at\":") || !str(&p, end, &f[OBSERVED]) || !LIT(&p, end, ",\"specimen\":") ||
        !coding(&p, end, &f[SPEC_CODE], &lab->has_specimen) || !LIT(&p, end, ",\"battery\":") ||
        !coding(&p, end, battery, &has_battery) || !LIT(&p, end, "}}") || p != end) {
        return 0;
    }
    if (!lab->has_specimen) {
        f[SPEC_CODE].n = f[SPEC_DISPLAY].n = f[SPEC_SYSTEM].n = 0;
    }
    for (int i = PID; i <= ITEM; i++) {
        if (!ascii(f[i])) {
            return 0;
        }
    }
    return ascii(f[OBSERVED]);
}

/* --- dates: restore.fhir.bundle.fhir_datetime and _day, for ASCII text --------------------------------- */
static int
digits(const char *p, int n)
{
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return 0;
        }
    }
    return 1;
}

static int
number(const char *p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* _is_iso_day: a year, a month (01-12) or a day of the calendar (datetime.date accepts it). */
static int
iso_day(const char *t, Py_ssize_t n)
{
    if (n == 4) {
        return digits(t, 4);
    }
    if (n == 7) {
        if (!digits(t, 4) || t[4] != '-' || !digits(t + 5, 2)) {
            return 0;
        }
        int mo = number(t + 5, 2);
        return mo >= 1 && mo <= 12;
    }
    if (n == 10) {
        if (!digits(t, 4) || t[4] != '-' || !digits(t + 5, 2) || t[7] != '-' || !digits(t + 8, 2)) {
            return 0;
        }
        int y = number(t, 4), mo = number(t + 5, 2), d = number(t + 8, 2);
        static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
        if (y < 1 || mo < 1 || mo > 12 || d < 1) {
            return 0;
        }
        int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        return d <= days[mo - 1] + (mo == 2 && leap);
    }
    return 0;
}

/* fhir_datetime of ASCII text into out (at least 48 bytes): its length, or -1 when it is no date. */
static int
fhir_datetime(const char *t, Py_ssize_t n, char *out)
{
    if (n <= 10) {
        if (!iso_day(t, n)) {
            return -1;
        }
        memcpy(out, t, (size_t)n);
        return (int)n;
    }
    /* T(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)? after a whole day */
    const char *s = t + 10;
    Py_ssize_t m = n - 10;
    if (!iso_day(t, 10) || m < 6 || s[0] != 'T' || !digits(s + 1, 2) || s[3] != ':' || !digits(s + 4, 2)) {
        return -1;
    }
    Py_ssize_t frac = 0;
    if (m > 6) {
        if (m < 9 || s[6] != ':' || !digits(s + 7, 2)) {
            return -1;
        }
        if (m > 9) {
            frac = m - 9; /* ".d…": a point and 1 to 9 digits */
            if (frac < 2 || frac > 10 || s[9] != '.' || !digits(s + 10, (int)(frac - 1))) {
                return -1;
            }
        }
        if (number(s + 7, 2) > 59) {
            return -1;
        }
    }
    if (number(s + 1, 2) > 23 || number(s + 4, 2) > 59) {
        return -1;
    }
    char *o = out;
    memcpy(o, t, 16); /* YYYY-MM-DDTHH:MM */
    o += 16;
    if (m > 6) {
        memcpy(o, s + 6, (size_t)(3 + frac));
        o += 3 + frac;
    }
    else {
        memcpy(o, ":00", 3);
        o += 3;
    }
    memcpy(o, "+09:00", 6);
    o += 6;
    return (int)(o - out);
}

/* The day a result counts for: the observation time when it is a date, else the care date (YYYYMMDD). */
static void
lab_day(Lab *lab)
{
    Str obs = lab->f[OBSERVED], care = lab->f[CARE];
    lab->effective_n = obs.n ? fhir_datetime(obs.p, obs.n, lab->effective) : -1;
    if (lab->effective_n >= 0) {
        lab->day_n = (int)(obs.n < 10 ? obs.n : 10);
        memcpy(lab->day, obs.p, (size_t)lab->day_n);
    }
    else if (care.n == 8 && digits(care.p, 8)) {
        memcpy(lab->day, care.p, 4);
        lab->day[4] = '-';
        memcpy(lab->day + 5, care.p + 4, 2);
        lab->day[7] = '-';
        memcpy(lab->day + 8, care.p + 6, 2);
        lab->day_n = 10;
    }
    else {
        lab->day_n = 0;
    }
    lab->day[lab->day_n] = '\0';
}

/* --- order: the builder's sort keys ------------------------------------------------------------------ */
static int
cmp_bytes(const char *a, Py_ssize_t an, const char *b, Py_ssize_t bn)
{
    int c = memcmp(a, b, (size_t)(an < bn ? an : bn));
    return c ? c : (an > bn) - (an < bn);
}

static int
cmp_str(Str a, Str b)
{
    return cmp_bytes(a.p, a.n, b.p, b.n);
}

/* Two non-negative decimal numbers as text (any length). */
static int
cmp_number(const char *a, Py_ssize_t an, const char *b, Py_ssize_t bn)
{
    while (an > 1 && *a == '0') {
        a++, an--;
    }
    while (bn > 1 && *b == '0') {
        b++, bn--;
    }
    if (an != bn) {
        return an < bn ? -1 : 1;
    }
    int c = memcmp(a, b, (size_t)an);
    return (c > 0) - (c < 0);
}

/* _item_numbers: an item's dot-separated parts, each (int, "") when all digits, else (1 << 30, part). */
static int
cmp_item(Str a, Str b)
{
    static const char big[] = "1073741824";
    const char *pa = a.p, *ea = a.p + a.n, *pb = b.p, *eb = b.p + b.n;
    for (;;) {
        const char *qa = memchr(pa, '.', (size_t)(ea - pa)), *qb = memchr(pb, '.', (size_t)(eb - pb));
        Py_ssize_t na = (qa ? qa : ea) - pa, nb = (qb ? qb : eb) - pb;
        int da = na > 0 && digits(pa, (int)na), db = nb > 0 && digits(pb, (int)nb);
        int c = cmp_number(da ? pa : big, da ? na : 10, db ? pb : big, db ? nb : 10);
        if (c == 0) {
            c = cmp_bytes(pa, da ? 0 : na, pb, db ? 0 : nb);
        }
        if (c != 0) {
            return c;
        }
        if (!qa || !qb) {
            return (qa != NULL) - (qb != NULL); /* the shorter tuple first */
        }
        pa = qa + 1;
        pb = qb + 1;
    }
}

/* _key_order, then the key's text: pid/care/type/order/item, of which only the items can still differ. */
static int
cmp_key(const Lab *a, const Lab *b)
{
    int c;
    for (int i = PID; i < ITEM; i++) {
        if ((c = cmp_str(a->f[i], b->f[i])) != 0) {
            return c;
        }
    }
    if ((c = cmp_item(a->f[ITEM], b->f[ITEM])) != 0) {
        return c;
    }
    return cmp_str(a->f[ITEM], b->f[ITEM]);
}

/* Within a test: (day, observed_at, key order, key text) descending; else their order in the window. */
static int
cmp_in_test(const Lab *a, const Lab *b)
{
    int c = cmp_bytes(b->day, b->day_n, a->day, a->day_n);
    if (!c && !(c = cmp_str(b->f[OBSERVED], a->f[OBSERVED])) && !(c = cmp_key(b, a))) {
        c = (a->seq > b->seq) - (a->seq < b->seq);
    }
    return c;
}

/* Days, latest first. */
static int
cmp_day(const Lab *a, const Lab *b)
{
    return cmp_bytes(b->day, b->day_n, a->day, a->day_n);
}

/* The section: (day, key order, key text) descending; else the order they were added in. */
static int
cmp_in_section(const Lab *a, const Lab *b)
{
    int c = cmp_bytes(b->day, b->day_n, a->day, a->day_n);
    return c ? c : cmp_key(b, a);
}

typedef int (*Cmp)(const Lab *, const Lab *);

/* Stable merge sort of pointers. */
static void
merge_sort(Lab **v, Lab **tmp, Py_ssize_t n, Cmp cmp)
{
    if (n < 2) {
        return;
    }
    Py_ssize_t h = n / 2;
    merge_sort(v, tmp, h, cmp);
    merge_sort(v + h, tmp, n - h, cmp);
    Py_ssize_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        tmp[k++] = cmp(v[j], v[i]) < 0 ? v[j++] : v[i++];
    }
    while (i < h) {
        tmp[k++] = v[i++];
    }
    while (j < n) {
        tmp[k++] = v[j++];
    }
    memcpy(v, tmp, (size_t)n * sizeof(Lab *));
}

/* --- output ------------------------------------------------------------------------------------------- */
static const char HEX[] = "0123456789abcdef";

/* restore.fhir.bundle.make_id: a UUIDv5 from the hash of namespace and hospital|Kind| (``base``) and name. */
static int
make_id(PyObject *base, const char *name, Py_ssize_t n, char out[36])
{
    PyObject *h = PyObject_CallMethodNoArgs(base, s_copy);
    if (h == NULL) {
        return -1;
    }
    PyObject *b = PyBytes_FromStringAndSize(name, n);
    PyObject *r = b ? PyObject_CallMethodOneArg(h, s_update, b) : NULL;
    Py_XDECREF(b);
    PyObject *d = r ? PyObject_CallMethodNoArgs(h, s_digest) : NULL;
    Py_XDECREF(r);
    Py_DECREF(h);
    if (d == NULL) {
        return -1;
    }
    if (!PyBytes_Check(d) || PyBytes_GET_SIZE(d) < 16) {
        Py_DECREF(d);
        PyErr_SetString(PyExc_TypeError, "an id's hash gave no digest");
        return -1;
    }
    char x[32];
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(d);
    for (int i = 0; i < 16; i++) {
        x[2 * i] = HEX[s[i] >> 4];
        x[2 * i + 1] = HEX[s[i] & 15];
    }
    Py_DECREF(d);
    /* x[:8]-x[8:12]-5x[13:16]-{89ab}x[17:20]-x[20:32] */
    memcpy(out, x, 8);
    out[8] = '-';
    memcpy(out + 9, x + 8, 4);
    out[13] = '-';
    out[14] = '5';
    memcpy(out + 15, x + 13, 3);
    out[18] = '-';
    int v = x[16] <= '9' ? x[16] - '0' : x[16] - 'a' + 10;
    out[19] = "89ab"[v & 3];
    memcpy(out + 20, x + 17, 3);
    out[23] = '-';
    memcpy(out + 24, x + 20, 12);
    return 0;
}

/* A growable byte buffer on the stack's budget. */
typedef struct {
    char *p;
    Py_ssize_t n, cap;
} Buf;

static int
put(Buf *b, const char *s, Py_ssize_t n)
{
    if (n == 0) {
        return 0;
    }
    if (b->n + n > b->cap) {
        Py_ssize_t cap = (b->cap + n) * 2;
        char *p = PyMem_Realloc(b->p, (size_t)cap);
        if (p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, (size_t)n);
    b->n += n;
    return 0;
}

/* The key's text, pid/care/type/order/item (``upto_group``: item only up to its first dot, the OBR). */
static int
key_text(Buf *b, const Lab *lab, int upto_group)
{
    b->n = 0;
    for (int i = PID; i <= ITEM; i++) {
        Str s = lab->f[i];
        if (i == ITEM && upto_group) {
            const char *dot = memchr(s.p, '.', (size_t)s.n);
            if (dot) {
                s.n = dot - s.p;
            }
        }
        if ((i > PID && put(b, "/", 1) < 0) || put(b, s.p, s.n) < 0) {
            return -1;
        }
    }
    return 0;
}

/* "urn:uuid:" and an id (ASCII). */
static PyObject *
make_url(const char u[36])
{
    PyObject *url = PyUnicode_New(45, 127);
    if (url != NULL) {
        memcpy(PyUnicode_DATA(url), "urn:uuid:", 9);
        memcpy((char *)PyUnicode_DATA(url) + 9, u, 36);
    }
    return url;
}

static PyObject *
make_str(const char *s, Py_ssize_t n)
{
    return PyUnicode_DecodeUTF8(s, n, "strict");
}

/* Whether ``t`` is a tuple of ``pieces`` bytes followed by ``texts`` objects of ``text_type`` and the
 * template's shape (any object: handed back with each Observation made of it, see results()). */
static int
parts_shape(PyObject *t, Py_ssize_t pieces, Py_ssize_t texts, PyTypeObject *text_type)
{
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2 + texts || !PyTuple_Check(PyTuple_GET_ITEM(t, 0)) ||
        PyTuple_GET_SIZE(PyTuple_GET_ITEM(t, 0)) != pieces) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < pieces; i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(PyTuple_GET_ITEM(t, 0), i))) {
            return 0;
        }
    }
    for (Py_ssize_t i = 1; i <= texts; i++) {
        if (!PyObject_TypeCheck(PyTuple_GET_ITEM(t, i), text_type)) {
            return 0;
        }
    }
    return 1;
}

/* What a maker may answer, besides None. */
static int
lab_parts_shape(PyObject *t)
{
    return parts_shape(t, 6, 1, &PyUnicode_Type); /* ((6 pieces), tail, shape) */
}

static int
number_parts_shape(PyObject *t)
{
    return parts_shape(t, 7, 2, &PyBytes_Type); /* ((7 pieces, the number 4th), before, after, shape) */
}

static int
number_shape(PyObject *t)
{
    return PyBytes_Check(t);
}

/* ``maker`` of the given fields, remembered in ``cache`` under ``key`` (a new reference, taken), the table
 * starting again when it holds ``max`` answers: the answer, Py_None or NULL (an error; also when the
 * maker answers something ``valid`` refuses, which ``what`` describes). */
static PyObject *
cached_call(PyObject *cache, Py_ssize_t max, PyObject *key, PyObject *maker, const Lab *lab, const int *fields,
            int n_fields, int (*valid)(PyObject *), const char *what)
{
    if (key == NULL) {
        return NULL;
    }
    PyObject *found = PyDict_GetItemWithError(cache, key);
    if (found != NULL || PyErr_Occurred()) {
        Py_DECREF(key);
        Py_XINCREF(found);
        return found;
    }
    PyObject *args[9];
    int made = 0;
    for (; made < n_fields; made++) {
        Str s = lab->f[fields[made]];
        if ((args[made] = make_str(s.p, s.n)) == NULL) {
            break;
        }
    }
    PyObject *answer = made == n_fields ? PyObject_Vectorcall(maker, args, (size_t)n_fields, NULL) : NULL;
    while (made > 0) {
        Py_DECREF(args[--made]);
    }
    if (answer != NULL && answer != Py_None && !valid(answer)) {
        Py_CLEAR(answer);
        PyErr_Format(PyExc_TypeError, "expected %s or None", what);
    }
    if (answer != NULL) {
        if (PyDict_GET_SIZE(cache) >= max) {
            PyDict_Clear(cache);
        }
        if (PyDict_SetItem(cache, key, answer) < 0) {
            Py_CLEAR(answer);
        }
    }
    Py_DECREF(key);
    return answer;
}

/* parts_maker's answer for this result: ((6 pieces), tail, shape), Py_None (no template: not plain) or NULL. */
static PyObject *
parts_of(const Lab *lab)
{
    static const int fields[9] = {SYSTEM, CODE, DISPLAY, STATUS, VTYPE, VALUE, UNIT, FLAG, RANGE};
    PyObject *key = PyBytes_FromStringAndSize(lab->parts, lab->parts_n);
    return cached_call(parts_cache, PARTS_CACHE_MAX, key, parts_maker, lab, fields, 9, lab_parts_shape,
                       "lab parts: ((6 pieces as bytes), tail, shape)");
}

/* The JSON of the result's value when it is a number (bytes), Py_None when it is not, or NULL. */
static PyObject *
number_of(const Lab *lab)
{
    static const int fields[1] = {VALUE};
    PyObject *key = PyBytes_FromStringAndSize(lab->f[VALUE].p, lab->f[VALUE].n);
    return cached_call(numbers, NUMBERS_MAX, key, number_maker, lab, fields, 1, number_shape,
                       "a number's JSON as bytes");
}

/* number_parts_maker's answer for this result (whose value is a number), keyed by all it is made of:
 * ((7 pieces), before, after, shape), Py_None (no template) or NULL. */
static PyObject *
number_parts_of(const Lab *lab)
{
    static const int fields[8] = {SYSTEM, CODE, DISPLAY, STATUS, VTYPE, UNIT, FLAG, RANGE};
    /* the encoding of code .. status without the value's text, after a 'N' */
    Py_ssize_t before = lab->f[VALUE].p - lab->parts, after = lab->parts_n - before - lab->f[VALUE].n;
    PyObject *key = PyBytes_FromStringAndSize(NULL, 1 + lab->parts_n - lab->f[VALUE].n);
    if (key != NULL) {
        char *k = PyBytes_AS_STRING(key);
        k[0] = 'N';
        memcpy(k + 1, lab->parts, (size_t)before);
        memcpy(k + 1 + before, lab->f[VALUE].p + lab->f[VALUE].n, (size_t)after);
    }
    return cached_call(parts_cache, PARTS_CACHE_MAX, key, number_parts_maker, lab, fields, 8, number_parts_shape,
                       "lab number parts: ((7 pieces as bytes), before, after, shape)");
}

/* The Observation: the template's pieces with the values of its holes between them (JSON strings, quoted
 * here, unless ``raw`` says the value is JSON already), as an orjson.Fragment. */
static PyObject *
observation(PyObject *pieces, const char *const *hole, const Py_ssize_t *hole_n, const int *raw, const char *id)
{
    /* as the bundle's entry: {"fullUrl":"urn:uuid:<id>","resource":<the Observation>} */
    static const char head[] = "{\"fullUrl\":\"urn:uuid:", middle[] = "\",\"resource\":";
    Py_ssize_t holes = PyTuple_GET_SIZE(pieces) - 1, n = sizeof(head) - 1 + 36 + sizeof(middle) - 1 + 1;
    for (Py_ssize_t i = 0; i <= holes; i++) {
        n += PyBytes_GET_SIZE(PyTuple_GET_ITEM(pieces, i));
    }
    for (Py_ssize_t i = 0; i < holes; i++) {
        n += hole_n[i] + (raw[i] ? 0 : 2);
    }
    PyObject *data = PyBytes_FromStringAndSize(NULL, n);
    if (data == NULL) {
        return NULL;
    }
    char *o = PyBytes_AS_STRING(data);
    memcpy(o, head, sizeof(head) - 1);
    o += sizeof(head) - 1;
    memcpy(o, id, 36);
    o += 36;
    memcpy(o, middle, sizeof(middle) - 1);
    o += sizeof(middle) - 1;
    for (Py_ssize_t i = 0; i <= holes; i++) {
        PyObject *piece = PyTuple_GET_ITEM(pieces, i);
        memcpy(o, PyBytes_AS_STRING(piece), (size_t)PyBytes_GET_SIZE(piece));
        o += PyBytes_GET_SIZE(piece);
        if (i < holes) {
            if (!raw[i]) {
                *o++ = '"';
            }
            memcpy(o, hole[i], (size_t)hole_n[i]);
            o += hole_n[i];
            if (!raw[i]) {
                *o++ = '"';
            }
        }
    }
    *o = '}';
    PyObject *fragment = PyObject_CallOneArg(fragment_type, data);
    Py_DECREF(data);
    return fragment;
}

typedef struct {
    Buf sk;      /* specimen keys seen, NUL-separated */
    PyObject *urls; /* their urls, in the same order */
} Specimens;

/* The url of the specimen of this result's OBR: made (and added to ``out``) for the first result of it. */
static PyObject *
specimen(Specimens *seen, Buf *sk, const Lab *lab, PyObject *base, PyObject *prefix, PyObject *patient_url,
         PyObject *out)
{
    Py_ssize_t at = 0, i = 0;
    while (at < seen->sk.n) {
        const char *s = seen->sk.p + at;
        Py_ssize_t n = (Py_ssize_t)strlen(s);
        if (n == sk->n && memcmp(s, sk->p, (size_t)n) == 0) {
            return Py_NewRef(PyList_GET_ITEM(seen->urls, i));
        }
        at += n + 1;
        i++;
    }
    char u[36];
    if (make_id(base, sk->p, sk->n, u) < 0) {
        return NULL;
    }
    PyObject *url = make_url(u);
    PyObject *id = PyUnicode_FromStringAndSize(u, 36);
    PyObject *tail = NULL; /* the identifier's value: instance prefix, OBR key, /specimen */
    Buf t = {NULL, 0, 0};
    Py_ssize_t prefix_n;
    const char *p = PyUnicode_AsUTF8AndSize(prefix, &prefix_n);
    if (p != NULL && put(&t, p, prefix_n) == 0 && put(&t, sk->p, sk->n) == 0 && put(&t, "/specimen", 9) == 0) {
        tail = make_str(t.p, t.n);
    }
    PyMem_Free(t.p);
    PyObject *text = NULL;
    if (url && id && tail) {
        Str t = lab->f[SPEC_DISPLAY].n ? lab->f[SPEC_DISPLAY] : lab->f[SPEC_CODE];
        text = t.n ? make_str(t.p, t.n) : Py_NewRef(Py_None);
    }
    PyObject *res = NULL;
    if (text) {
        PyObject *args[4] = {id, tail, text, patient_url};
        res = PyObject_Vectorcall(specimen_maker, args, 4, NULL);
    }
    Py_XDECREF(id);
    Py_XDECREF(tail);
    Py_XDECREF(text);
    PyObject *entry = res ? PyTuple_Pack(2, url, res) : NULL;
    Py_XDECREF(res);
    if (entry == NULL || PyList_Append(out, entry) < 0 || PyList_Append(seen->urls, url) < 0 ||
        put(&seen->sk, sk->p, sk->n) < 0 || put(&seen->sk, "", 1) < 0) {
        Py_XDECREF(entry);
        Py_XDECREF(url);
        return NULL;
    }
    Py_DECREF(entry);
    return url;
}

/* --- the call ----------------------------------------------------------------------------------------- */
typedef struct {
    const char *system, *code;
    Py_ssize_t system_n, code_n;
    Py_ssize_t count;
} Test;

static PyObject *
results(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    const char *usage = "results(encoded, patient_id, as_of, cut, keep_n, instance_prefix, patient_url, "
                        "observation_hash, specimen_hash)";
    if (lab_prefix == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "results: register() first");
        return NULL;
    }
    if (nargs != 9 || !PyUnicode_Check(args[1]) || !PyUnicode_Check(args[2]) || !PyUnicode_Check(args[3]) ||
        !PyLong_Check(args[4]) || !PyUnicode_Check(args[5]) || !PyUnicode_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    Py_ssize_t pid_n, as_of_n, cut_n, prefix_n, url_n;
    const char *pid = PyUnicode_AsUTF8AndSize(args[1], &pid_n);
    const char *as_of = PyUnicode_AsUTF8AndSize(args[2], &as_of_n);
    const char *cut = PyUnicode_AsUTF8AndSize(args[3], &cut_n);
    const char *prefix = PyUnicode_AsUTF8AndSize(args[5], &prefix_n);
    const char *patient_url = PyUnicode_AsUTF8AndSize(args[6], &url_n);
    Py_ssize_t keep_n = PyLong_AsSsize_t(args[4]);
    if (!pid || !as_of || !cut || !prefix || !patient_url || (keep_n == -1 && PyErr_Occurred())) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], usage);
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t total = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    const char *kind = PyBytes_AS_STRING(lab_kind);
    Py_ssize_t kind_n = PyBytes_GET_SIZE(lab_kind);

    PyObject *result = NULL, *others = NULL, *section = NULL, *specimens = NULL;
    Lab *labs = PyMem_Malloc(sizeof(Lab) * (size_t)(total ? total : 1));
    Lab **order = PyMem_Malloc(sizeof(Lab *) * (size_t)(2 * (total ? total : 1)));
    Test *tests = PyMem_Malloc(sizeof(Test) * (size_t)(total ? total : 1));
    Buf sk = {NULL, 0, 0};
    Specimens seen = {{NULL, 0, 0}, NULL};
    if (labs == NULL || order == NULL || tests == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if ((others = PyList_New(0)) == NULL) {
        goto done;
    }
    /* 1. the lab results in the window; the other records go back as they are */
    Py_ssize_t n = 0, n_tests = 0;
    for (Py_ssize_t i = 0; i < total; i++) {
        PyObject *e = items[i];
        if (!PyBytes_Check(e)) {
            PyErr_SetString(PyExc_TypeError, usage);
            goto done;
        }
        const char *p = PyBytes_AS_STRING(e);
        Py_ssize_t len = PyBytes_GET_SIZE(e);
        if (len < kind_n || memcmp(p, kind, (size_t)kind_n) != 0) {
            if (PyList_Append(others, e) < 0) {
                goto done;
            }
            continue;
        }
        Lab *lab = &labs[n];
        if (!parse_lab(p, p + len, lab) || !utf8_ok((const unsigned char *)p, len) ||
            cmp_bytes(lab->f[PID].p, lab->f[PID].n, pid, pid_n) != 0) {
            result = Py_NewRef(Py_None); /* not plain: the Python path */
            goto done;
        }
        lab_day(lab);
        if (lab->day_n == 0 || cmp_bytes(lab->day, lab->day_n, as_of, as_of_n) > 0 ||
            cmp_bytes(lab->day, lab->day_n, cut, cut_n) < 0) {
            continue;
        }
        lab->code_n = lab->f[SYSTEM].p + lab->f[SYSTEM].n + 1 - lab->parts; /* "code":{…} */
        lab->seq = n++;
    }
    /* in_window's rule: per code as encoded, nothing older than its n-th latest day (the builder would not
     * keep it; dropping it first decides which test comes first, as in the Python path) */
    if (keep_n > 0) {
        Py_ssize_t n_codes = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t c = 0;
            for (; c < n_codes; c++) {
                if (tests[c].code_n == labs[i].code_n && memcmp(tests[c].code, labs[i].parts, (size_t)labs[i].code_n) == 0) {
                    break;
                }
            }
            if (c == n_codes) {
                tests[n_codes++] = (Test){NULL, labs[i].parts, 0, labs[i].code_n, 0};
            }
            tests[c].count++;
            labs[i].group = c;
        }
        for (Py_ssize_t c = 0; c < n_codes; c++) {
            if (tests[c].count <= keep_n) {
                continue;
            }
            Py_ssize_t m = 0;
            for (Py_ssize_t i = 0; i < n; i++) {
                if (labs[i].group == c) {
                    order[m++] = &labs[i];
                }
            }
            merge_sort(order, order + total, m, cmp_day);
            Lab *floor = order[keep_n - 1];
            for (Py_ssize_t i = 0; i < m; i++) {
                if (cmp_bytes(order[i]->day, order[i]->day_n, floor->day, floor->day_n) < 0) {
                    order[i]->day_n = 0; /* dropped */
                }
            }
        }
    }
    /* the tests, in the order they first appear */
    for (Py_ssize_t i = 0; i < n; i++) {
        Lab *lab = &labs[i];
        if (lab->day_n == 0) {
            lab->group = -1;
            continue;
        }
        Str code = lab->f[CODE].n ? lab->f[CODE] : lab->f[DISPLAY];
        Py_ssize_t t = 0;
        for (; t < n_tests; t++) {
            if (tests[t].code_n == code.n && tests[t].system_n == lab->f[SYSTEM].n &&
                memcmp(tests[t].code, code.p, (size_t)code.n) == 0 &&
                memcmp(tests[t].system, lab->f[SYSTEM].p, (size_t)lab->f[SYSTEM].n) == 0) {
                break;
            }
        }
        if (t == n_tests) {
            tests[t] = (Test){lab->f[SYSTEM].p, code.p, lab->f[SYSTEM].n, code.n, 0};
            n_tests++;
        }
        tests[t].count++;
        lab->group = t;
    }
    /* 2. per test (in the order the tests first appear), its most recent results */
    Py_ssize_t kept = 0;
    {
        Py_ssize_t *start = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n_tests + 1));
        if (start == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        start[0] = 0;
        for (Py_ssize_t t = 0; t < n_tests; t++) {
            start[t + 1] = start[t] + tests[t].count;
            tests[t].count = 0;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t t = labs[i].group;
            if (t >= 0) {
                order[start[t] + tests[t].count++] = &labs[i];
            }
        }
        for (Py_ssize_t t = 0; t < n_tests; t++) {
            Lab **g = order + start[t];
            Py_ssize_t m = tests[t].count;
            merge_sort(g, order + n, m, cmp_in_test);
            if (keep_n > 0 && m > keep_n) {
                m = keep_n;
            }
            memmove(order + kept, g, (size_t)m * sizeof(Lab *));
            kept += m;
        }
        PyMem_Free(start);
    }
    /* 3. each kept result's Observation and Specimen, in that order (the first result of an OBR names its
     * specimen's type); then the section's order */
    if ((specimens = PyList_New(0)) == NULL || (seen.urls = PyList_New(0)) == NULL) {
        goto done;
    }
    PyObject **built = PyMem_Calloc((size_t)(kept ? kept : 1), sizeof(PyObject *)); /* entries */
    PyObject **lines = PyMem_Calloc((size_t)(kept ? kept : 1), sizeof(PyObject *));  /* their lines, UTF-8 */
    PyObject **rows = PyMem_Calloc((size_t)(kept ? kept : 1), sizeof(PyObject *));   /* (shape, number, time) */
    if (built == NULL || lines == NULL || rows == NULL) {
        PyMem_Free(built);
        PyMem_Free(lines);
        PyMem_Free(rows);
        PyErr_NoMemory();
        goto done;
    }
    int plain = 1, failed = 0;
    Buf instance = {NULL, 0, 0}, text = {NULL, 0, 0};
    for (Py_ssize_t i = 0; i < kept && plain && !failed; i++) {
        Lab *lab = order[i];
        lab->seq = i; /* now: the order it was added to the section */
        /* a number (the Python path's valueQuantity): one template for every value of the test */
        PyObject *number = NULL, *parts = NULL;
        Str vt = lab->f[VTYPE];
        if (vt.n == 0 || (vt.n == 2 && (memcmp(vt.p, "NM", 2) == 0 || memcmp(vt.p, "SN", 2) == 0))) {
            if ((number = number_of(lab)) == NULL) {
                failed = 1;
                break;
            }
            if (number != Py_None && (parts = number_parts_of(lab)) == NULL) {
                Py_DECREF(number);
                failed = 1;
                break;
            }
            if (parts == Py_None || number == Py_None) {
                Py_CLEAR(parts);
                Py_CLEAR(number);
            }
        }
        if (parts == NULL) {
            if ((parts = parts_of(lab)) == NULL) {
                failed = 1;
                break;
            }
            if (parts == Py_None) {
                Py_DECREF(parts);
                plain = 0;
                break;
            }
        }
        PyObject *spec_url = NULL;
        char *u = lab->id;
        if (key_text(&sk, lab, 1) < 0 ||
            (spec_url = specimen(&seen, &sk, lab, args[8], args[5], args[6], specimens)) == NULL ||
            key_text(&sk, lab, 0) < 0 || make_id(args[7], sk.p, sk.n, u) < 0) {
            failed = 1;
        }
        else {
            Py_ssize_t spec_n;
            const char *spec = PyUnicode_AsUTF8AndSize(spec_url, &spec_n);
            instance.n = 0;
            text.n = 0;
            if (spec == NULL || put(&instance, prefix, prefix_n) < 0 || put(&instance, sk.p, sk.n) < 0 ||
                put(&text, lab->day, lab->day_n) < 0 || put(&text, " ", 1) < 0) {
                failed = 1;
            }
            else {
                const char *effective = lab->effective_n >= 0 ? lab->effective : lab->day;
                Py_ssize_t effective_n = lab->effective_n >= 0 ? lab->effective_n : lab->day_n;
                int ok;
                if (number != NULL) {
                    const char *hole[6] = {instance.p, patient_url, effective, PyBytes_AS_STRING(number), spec, u};
                    Py_ssize_t hole_n[6] = {instance.n, url_n, effective_n, PyBytes_GET_SIZE(number), spec_n, 36};
                    static const int raw[6] = {0, 0, 0, 1, 0, 0};
                    built[i] = observation(PyTuple_GET_ITEM(parts, 0), hole, hole_n, raw, u);
                    /* the line: "day " + the tail before the value + the value as written + the tail after it */
                    PyObject *before = PyTuple_GET_ITEM(parts, 1), *after = PyTuple_GET_ITEM(parts, 2);
                    ok = put(&text, PyBytes_AS_STRING(before), PyBytes_GET_SIZE(before)) == 0 &&
                         put(&text, lab->f[VALUE].p, lab->f[VALUE].n) == 0 &&
                         put(&text, PyBytes_AS_STRING(after), PyBytes_GET_SIZE(after)) == 0;
                }
                else {
                    const char *hole[5] = {instance.p, patient_url, effective, spec, u};
                    Py_ssize_t hole_n[5] = {instance.n, url_n, effective_n, spec_n, 36};
                    static const int raw[5] = {0, 0, 0, 0, 0};
                    built[i] = observation(PyTuple_GET_ITEM(parts, 0), hole, hole_n, raw, u);
                    Py_ssize_t tail_n;
                    const char *tail = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(parts, 1), &tail_n);
                    ok = tail != NULL && put(&text, tail, tail_n) == 0;
                }
                if (ok && built[i] != NULL) {
                    lines[i] = PyBytes_FromStringAndSize(text.p, text.n);
                }
                if (lines[i] != NULL) {
                    PyObject *time = make_str(effective, effective_n);
                    if (time != NULL) {
                        rows[i] = PyTuple_Pack(3, PyTuple_GET_ITEM(parts, PyTuple_GET_SIZE(parts) - 1),
                                               number != NULL ? number : Py_None, time);
                        Py_DECREF(time);
                    }
                }
                failed = rows[i] == NULL;
            }
        }
        Py_XDECREF(spec_url);
        Py_XDECREF(number);
        Py_DECREF(parts);
    }
    if (plain && !failed && kept == 0) {
        result = PyTuple_Pack(3, others, Py_None, specimens);
    }
    else if (plain && !failed) {
        /* the section's order; then its entries' references, its entries and its narrative (each line
         * escaped as _escape does, joined as _xhtml joins them) */
        Lab **by_section = order + kept;
        memcpy(by_section, order, (size_t)kept * sizeof(Lab *));
        merge_sort(by_section, order, kept, cmp_in_section);
        static const char ref[] = "{\"reference\":\"urn:uuid:";
        Buf refs = {NULL, 0, 0}, inner = {NULL, 0, 0};
        PyObject *entries = PyList_New(kept), *shapes = PyList_New(kept), *refs_bytes = NULL,
                 *refs_fragment = NULL, *div = NULL;
        int ok = entries != NULL && shapes != NULL && put(&refs, "[", 1) == 0;
        for (Py_ssize_t i = 0; ok && i < kept; i++) {
            Py_ssize_t at = by_section[i]->seq;
            PyList_SET_ITEM(entries, i, built[at]);
            built[at] = NULL;
            PyList_SET_ITEM(shapes, i, rows[at]);
            rows[at] = NULL;
            ok = (i == 0 || (put(&refs, ",", 1) == 0 && put(&inner, "</li><li>", 9) == 0)) &&
                 put(&refs, ref, (Py_ssize_t)sizeof(ref) - 1) == 0 && put(&refs, by_section[i]->id, 36) == 0 &&
                 put(&refs, "\"}", 2) == 0;
            const char *line = PyBytes_AS_STRING(lines[at]);
            Py_ssize_t line_n = PyBytes_GET_SIZE(lines[at]), from = 0;
            for (Py_ssize_t k = 0; ok && k <= line_n; k++) {
                char c = k < line_n ? line[k] : '\0';
                const char *esc = c == '&' ? "&amp;" : c == '<' ? "&lt;" : c == '>' ? "&gt;" : NULL;
                if (esc != NULL || k == line_n) {
                    ok = put(&inner, line + from, k - from) == 0 && (esc == NULL || put(&inner, esc, (Py_ssize_t)strlen(esc)) == 0);
                    from = k + 1;
                }
            }
        }
        if (ok && put(&refs, "]", 1) == 0 && (refs_bytes = PyBytes_FromStringAndSize(refs.p, refs.n)) != NULL &&
            (refs_fragment = PyObject_CallOneArg(fragment_type, refs_bytes)) != NULL &&
            (div = make_str(inner.p, inner.n)) != NULL &&
            (section = PyTuple_Pack(4, refs_fragment, entries, div, shapes)) != NULL) {
            result = PyTuple_Pack(3, others, section, specimens);
        }
        Py_XDECREF(entries);
        Py_XDECREF(shapes);
        Py_XDECREF(refs_bytes);
        Py_XDECREF(refs_fragment);
        Py_XDECREF(div);
        PyMem_Free(refs.p);
        PyMem_Free(inner.p);
    }
    else if (!failed) {
        result = Py_NewRef(Py_None);
    }
    for (Py_ssize_t i = 0; i < kept; i++) {
        Py_XDECREF(built[i]);
        Py_XDECREF(lines[i]);
        Py_XDECREF(rows[i]);
    }
    PyMem_Free(rows);
    PyMem_Free(lines);
    PyMem_Free(built);
    PyMem_Free(instance.p);
    PyMem_Free(text.p);

done:
    Py_XDECREF(others);
    Py_XDECREF(section);
    Py_XDECREF(specimens);
    Py_XDECREF(seen.urls);
    PyMem_Free(seen.sk.p);
    PyMem_Free(sk.p);
    PyMem_Free(labs);
    PyMem_Free(order);
    PyMem_Free(tests);
    Py_DECREF(seq);
    return result;
}

static PyObject *
register_(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 6 || !PyBytes_Check(args[0]) || PyBytes_GET_SIZE(args[0]) < 14 || !PyCallable_Check(args[1]) ||
        !PyCallable_Check(args[2]) || !PyCallable_Check(args[3]) || !PyCallable_Check(args[4]) ||
        !PyType_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "register(lab_prefix, lab_parts, number_parts, number_json, specimen, Fragment)");
        return NULL;
    }
    if ((parts_cache == NULL && (parts_cache = PyDict_New()) == NULL) ||
        (numbers == NULL && (numbers = PyDict_New()) == NULL)) {
        return NULL;
    }
    PyObject *kind = PyBytes_FromStringAndSize(PyBytes_AS_STRING(args[0]), 13); /* {"kind":"lab" */
    if (kind == NULL) {
        return NULL;
    }
    Py_XSETREF(lab_kind, kind);
    Py_XSETREF(lab_prefix, Py_NewRef(args[0]));
    Py_XSETREF(parts_maker, Py_NewRef(args[1]));
    Py_XSETREF(number_parts_maker, Py_NewRef(args[2]));
    Py_XSETREF(number_maker, Py_NewRef(args[3]));
    Py_XSETREF(specimen_maker, Py_NewRef(args[4]));
    Py_XSETREF(fragment_type, Py_NewRef(args[5]));
    PyDict_Clear(parts_cache);
    PyDict_Clear(numbers);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"register", (PyCFunction)(void (*)(void))register_, METH_FASTCALL,
     "register(lab_prefix, lab_parts, number_parts, number_json, specimen, Fragment): what results() calls "
     "back."},
    {"results", (PyCFunction)(void (*)(void))results, METH_FASTCALL,
     "results(encoded, patient_id, as_of, cut, keep_n, instance_prefix, patient_url, observation_hash, "
     "specimen_hash) -> (other encodings, results section items, specimen entries) | None (not plain)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastlabs", "Fast path of a bundle's lab results (see the C source).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__fastlabs(void)
{
    if ((empty_tuple = PyTuple_New(0)) == NULL || (s_copy = PyUnicode_InternFromString("copy")) == NULL ||
        (s_update = PyUnicode_InternFromString("update")) == NULL ||
        (s_digest = PyUnicode_InternFromString("digest")) == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
