/* Compiled fast path of the SS-MIX2 mappers for lab results (agent.ssmix2.mapping._map_oul), prescription
 * orders (_map_rde_oral) and administrations (_map_ras_oral) and problems (_map_ppr01), and of record
 * construction.
 *
 * Lab files (OML-11) and prescriptions (OMP-01, OMP-11) hold most of a hospital's records: a lab file ~24
 * results.  In Python, building one LabResult costs ~3 us, a third of it in the two dataclass __init__
 * calls (LabResult, RecordKey).  This module does the same loops in C and stores each field at its slot's
 * offset, as the slot descriptor would (what pickle does for slotted objects: allocate, then set each
 * slot), which costs ~0.1 us.
 *
 * This is an optimisation, not a second mapper: every decision that needs Python stays in Python and is
 * called from here -- the coding cache and its parser (ctx.coding), HL7 unescaping (hakobune.hl7.unescape),
 * dates (hakobune.hl7.to_iso) -- and anything unexpected (a segment that is not a padded field list, an
 * order message without RXE) gives None, and the caller runs the Python mapper.
 * tests/agent/test_fast_map.py compares both on generated and hostile messages.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

/* The fields each mapper needs every segment to have (one more than the highest it reads; the reader pads
 * every segment to agent.ssmix2.message.PAD = 26). */
#define LAB_MIN_FIELDS 15 /* OBX-14 */
#define RX_MIN_FIELDS 20  /* RXE-19 */
#define RXA_MIN_FIELDS 21 /* RXA-20 */
#define PRB_MIN_FIELDS 19 /* PRB-18 */
/* The most fields a record type may have. */
#define MAX_FIELDS 20

/* A registered record type: the class and where in an instance each of its dataclass fields' slots is,
 * in field order (the offsets its slot descriptors hold). */
typedef struct {
    PyTypeObject *cls;
    Py_ssize_t n;
    Py_ssize_t offset[MAX_FIELDS];
} RecordType;

/* The record types register() is given, in this order, each with this many fields. */
enum { KEY_TYPE, LAB_TYPE, RX_TYPE, CONDITION_TYPE, N_TYPES };
static const Py_ssize_t type_fields[N_TYPES] = {5, 11, 17, 11};
static RecordType types[N_TYPES];
static int registered = 0;

static PyObject *empty_str, *order_str, *administration_str, *one_str, *display_str;
static const char *icd10_systems[] = {"I10", "ICD10"};

/* Item strings "b.o" for small b and o, and "n" for small n, made once. */
#define ITEM_B 8
#define ITEM_O 128
static PyObject *items[ITEM_B][ITEM_O];
static PyObject *numbers[ITEM_O];

static int
register_type(RecordType *t, PyObject *cls, PyObject *names)
{
    if (!PyType_Check(cls) || !PyTuple_Check(names) || PyTuple_GET_SIZE(names) > MAX_FIELDS) {
        PyErr_SetString(PyExc_TypeError, "register: a class and a tuple of at most 20 field names");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PyObject_GetAttr(cls, PyTuple_GET_ITEM(names, i));
        if (d == NULL) {
            return -1;
        }
        /* A __slots__ slot: a member descriptor of the class itself, an object slot, writable. */
        PyMemberDef *m = Py_IS_TYPE(d, &PyMemberDescr_Type) ? ((PyMemberDescrObject *)d)->d_member : NULL;
        int ok = m != NULL && ((PyDescrObject *)d)->d_type == (PyTypeObject *)cls && m->type == T_OBJECT_EX &&
                 !(m->flags & READONLY) && m->offset > 0 &&
                 m->offset + (Py_ssize_t)sizeof(PyObject *) <= ((PyTypeObject *)cls)->tp_basicsize;
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "register: field %R of %R is not a slot", PyTuple_GET_ITEM(names, i),
                         cls);
            return -1;
        }
        t->offset[i] = m->offset;
    }
    Py_XSETREF(t->cls, (PyTypeObject *)Py_NewRef(cls));
    t->n = n;
    return 0;
}

/* A new instance of t with its fields set to values[0..n) (borrowed references): stored into the slots as
 * the slot descriptors store them (the new instance's slots are all empty, so there is nothing to release).
 *
 * The instance is untracked by the cyclic garbage collector: a record refers only to strings, None and
 * other records, none of which can refer back to it, so it can never be part of a cycle (references from
 * an untracked object still count as outside references, so nothing it holds is ever collected while it
 * lives).  The reader pauses the collector while it builds a batch; when the pause ends, the first
 * collection walked every record of the batch once more (~15% of the reader's time). */
static PyObject *
make(RecordType *t, PyObject *const *values)
{
    PyObject *obj = t->cls->tp_alloc(t->cls, 0);
    if (obj == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < t->n; i++) {
        *(PyObject **)((char *)obj + t->offset[i]) = Py_NewRef(values[i]);
    }
    if (PyObject_IS_GC(obj)) {
        PyObject_GC_UnTrack(obj);
    }
    return obj;
}

static PyObject *
register_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    registered = 0;
    if (nargs != 2 * N_TYPES) {
        PyErr_SetString(PyExc_TypeError,
                        "register(RecordKey, fields, LabResult, fields, Prescription, fields, Condition, fields)");
        return NULL;
    }
    for (int t = 0; t < N_TYPES; t++) {
        if (register_type(&types[t], args[2 * t], args[2 * t + 1]) < 0) {
            return NULL;
        }
        if (types[t].n != type_fields[t]) {
            PyErr_Format(PyExc_TypeError, "register: %R has %zd fields, not %zd", args[2 * t], types[t].n,
                         type_fields[t]);
            return NULL;
        }
    }
    registered = 1;
    Py_RETURN_NONE;
}

static inline int
is_sid(PyObject *s, const char *id)
{
    if (!PyUnicode_Check(s) || PyUnicode_GET_LENGTH(s) != 3) {
        return 0;
    }
    int kind = PyUnicode_KIND(s);
    const void *d = PyUnicode_DATA(s);
    return PyUnicode_READ(kind, d, 0) == (Py_UCS4)id[0] && PyUnicode_READ(kind, d, 1) == (Py_UCS4)id[1] &&
           PyUnicode_READ(kind, d, 2) == (Py_UCS4)id[2];
}

/* Index of the first ch in s, or -1. */
static inline Py_ssize_t
find_char(PyObject *s, Py_UCS4 ch, Py_ssize_t start)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (start >= n) {
        return -1;
    }
    return PyUnicode_FindChar(s, ch, start, n, 1);
}

/* The part of s before the first ch (a new reference; s itself when there is none). */
static PyObject *
before(PyObject *s, Py_UCS4 ch)
{
    Py_ssize_t at = find_char(s, ch, 0);
    if (at == -2) {
        return NULL;
    }
    if (at < 0) {
        return Py_NewRef(s);
    }
    return PyUnicode_Substring(s, 0, at);
}

/* Where s's second component is: 1 with [*start, *end) set, 0 when s has a single component, -1 on an
 * error. */
static int
second_component(PyObject *s, Py_UCS4 comp, Py_ssize_t *start, Py_ssize_t *end)
{
    Py_ssize_t first = find_char(s, comp, 0);
    if (first == -2) {
        return -1;
    }
    if (first < 0) {
        return 0;
    }
    Py_ssize_t second = find_char(s, comp, first + 1);
    if (second == -2) {
        return -1;
    }
    *start = first + 1;
    *end = second < 0 ? PyUnicode_GET_LENGTH(s) : second;
    return 1;
}

/* A CWE value's text as the mapper keeps it: component 2 when present and not empty, else component 1. */
static PyObject *
coded_value(PyObject *s, Py_UCS4 comp)
{
    Py_ssize_t start, end;
    int has = second_component(s, comp, &start, &end);
    if (has <= 0) {
        return has < 0 ? NULL : Py_NewRef(s);
    }
    return end > start ? PyUnicode_Substring(s, start, end) : PyUnicode_Substring(s, 0, start - 1);
}

/* OBX-2 value types whose value is coded (agent.ssmix2.mapping._CODED): CWE, CE, CNE. */
static inline int
is_coded(PyObject *vtype)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(vtype);
    if (n < 2 || n > 3 || PyUnicode_KIND(vtype) != PyUnicode_1BYTE_KIND) {
        return 0;
    }
    const Py_UCS1 *c = PyUnicode_1BYTE_DATA(vtype);
    if (n == 2) {
        return c[0] == 'C' && c[1] == 'E';
    }
    return c[0] == 'C' && ((c[1] == 'W' && c[2] == 'E') || (c[1] == 'N' && c[2] == 'E'));
}

static PyObject *
item_string(Py_ssize_t b, Py_ssize_t o)
{
    if (b < ITEM_B && o < ITEM_O) {
        if (items[b][o] == NULL) {
            items[b][o] = PyUnicode_FromFormat("%zd.%zd", b, o);
        }
        return Py_XNewRef(items[b][o]);
    }
    return PyUnicode_FromFormat("%zd.%zd", b, o);
}

static PyObject *
number_string(Py_ssize_t n)
{
    if (n < ITEM_O) {
        if (numbers[n] == NULL) {
            numbers[n] = PyUnicode_FromFormat("%zd", n);
        }
        return Py_XNewRef(numbers[n]);
    }
    return PyUnicode_FromFormat("%zd", n);
}

static inline int
has_backslash(PyObject *s)
{
    return find_char(s, '\\', 0) >= 0;
}

/* What every mapper checks of its call: want arguments, and the record types registered.  0, or -1 with
 * the exception set. */
static int
check_call(const char *name, Py_ssize_t nargs, Py_ssize_t want)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", name, want);
        return -1;
    }
    if (!registered) {
        PyErr_Format(PyExc_RuntimeError, "%s: record types not registered", name);
        return -1;
    }
    return 0;
}

/* What every mapper checks of its arguments: segments a list, key_head a 4-tuple, codings a dict, warnings
 * a list, and (comp not NULL) comp one character, stored in *sep.  0, or -1 with the exception set. */
static int
check_args(const char *name, PyObject *segments, PyObject *head, PyObject *codings, PyObject *warnings,
           PyObject *comp, Py_UCS4 *sep)
{
    if (!PyList_Check(segments) || !PyTuple_Check(head) || PyTuple_GET_SIZE(head) != 4 ||
        !PyDict_Check(codings) || !PyList_Check(warnings) ||
        (comp != NULL && (!PyUnicode_Check(comp) || PyUnicode_GET_LENGTH(comp) != 1))) {
        PyErr_Format(PyExc_TypeError, "%s: bad arguments", name);
        return -1;
    }
    if (comp != NULL) {
        *sep = PyUnicode_READ_CHAR(comp, 0);
    }
    return 0;
}

/* Whether every segment is a list of at least min_fields entries whose segment ID is a str, as the reader
 * makes them (the fields a mapper reads are checked where it reads them). */
static int
plain_segments(PyObject *segments, Py_ssize_t min_fields)
{
    Py_ssize_t nseg = PyList_GET_SIZE(segments);
    for (Py_ssize_t i = 0; i < nseg; i++) {
        PyObject *seg = PyList_GET_ITEM(segments, i);
        if (!PyList_Check(seg) || PyList_GET_SIZE(seg) < min_fields ||
            !PyUnicode_CheckExact(PyList_GET_ITEM(seg, 0))) {
            return 0;
        }
    }
    return 1;
}

/* The index of the first ORC when the segments are plain (plain_segments) and at least one item segment
 * follows that ORC; -1 otherwise (the Python mapper takes the message, and words the error when there is no
 * item segment). */
static Py_ssize_t
first_order(PyObject *segments, Py_ssize_t min_fields, const char *item)
{
    if (!plain_segments(segments, min_fields)) {
        return -1;
    }
    Py_ssize_t nseg = PyList_GET_SIZE(segments), start = -1, items = 0;
    for (Py_ssize_t i = 0; i < nseg; i++) {
        PyObject *sid = PyList_GET_ITEM(PyList_GET_ITEM(segments, i), 0);
        if (start < 0 && is_sid(sid, "ORC")) {
            start = i;
        }
        if (start >= 0 && is_sid(sid, item)) {
            items++;
        }
    }
    return items > 0 ? start : -1;
}

/* The end of the order group that starts at segment at (the next ORC, or the end). */
static Py_ssize_t
group_end(PyObject *segments, Py_ssize_t at)
{
    Py_ssize_t nseg = PyList_GET_SIZE(segments), end = at + 1;
    while (end < nseg && !is_sid(PyList_GET_ITEM(PyList_GET_ITEM(segments, end), 0), "ORC")) {
        end++;
    }
    return end;
}

/* Append to out a new record of type t: its key a new RecordKey(*head, item) (values[0] is set to it here),
 * its other fields values[1..].  0, or -1 on an error. */
static int
append_record(PyObject *out, RecordType *t, PyObject *head, PyObject *item, PyObject **values)
{
    PyObject *kv[5] = {PyTuple_GET_ITEM(head, 0), PyTuple_GET_ITEM(head, 1), PyTuple_GET_ITEM(head, 2),
                       PyTuple_GET_ITEM(head, 3), item};
    PyObject *key = make(&types[KEY_TYPE], kv);
    if (key == NULL) {
        return -1;
    }
    values[0] = key;
    PyObject *rec = make(t, values);
    Py_DECREF(key);
    int rc = rec == NULL ? -1 : PyList_Append(out, rec);
    Py_XDECREF(rec);
    return rc;
}

/* Append a warning; -1 on an error. */
static int
warn(PyObject *warnings, const char *text)
{
    PyObject *w = PyUnicode_FromString(text);
    int rc = w == NULL ? -1 : PyList_Append(warnings, w);
    Py_XDECREF(w);
    return rc;
}

/* Give up on a message part-way: drop what was built and the warnings added since there were warned;
 * None (the Python mapper takes the message), or NULL on an error. */
static PyObject *
step_aside(PyObject *out, PyObject *warnings, Py_ssize_t warned)
{
    Py_XDECREF(out);
    if (PyList_SetSlice(warnings, warned, PyList_GET_SIZE(warnings), NULL) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ctx.coding(value) (or, with sep, ctx.coding(value, sep)), its cache read here first: None for an empty
 * value, the cached Coding (or None) when codings holds value, else what Python's coding() makes (and
 * caches). */
static PyObject *
cached_coding(PyObject *codings, PyObject *coding, PyObject *value, PyObject *sep)
{
    if (PyUnicode_GET_LENGTH(value) == 0) {
        return Py_NewRef(Py_None);
    }
    PyObject *hit = PyDict_GetItemWithError(codings, value);
    if (hit != NULL) {
        return Py_NewRef(hit);
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (sep == NULL) {
        return PyObject_CallOneArg(coding, value);
    }
    PyObject *call[2] = {value, sep};
    return PyObject_Vectorcall(coding, call, 2, NULL);
}

/* An item's code (cached_coding), the warning missing added when it has none.  1 with *code set (a new
 * reference), 0 when it has none, -1 on an error. */
static int
item_code(PyObject *codings, PyObject *coding, PyObject *value, PyObject *warnings, const char *missing,
          PyObject **code)
{
    PyObject *c = cached_coding(codings, coding, value, NULL);
    if (c == NULL) {
        return -1;
    }
    if (c == Py_None) {
        Py_DECREF(c);
        return warn(warnings, missing) < 0 ? -1 : 0;
    }
    *code = c;
    return 1;
}

static const Py_ssize_t obx_fields[] = {2, 3, 5, 6, 7, 8, 11, 14}, spm_fields[] = {4}, obr_fields[] = {4, 7};

static inline int
fields_are_str(PyObject *seg, const Py_ssize_t *which, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!PyUnicode_CheckExact(PyList_GET_ITEM(seg, which[i]))) {
            return 0;
        }
    }
    return 1;
}

/* map_lab(segments, key_head, comp, codings, coding, to_iso, unescape, warnings): the LabResults of an OUL
 * message's segments, as agent.ssmix2.mapping._map_oul builds them; None when a segment is not a list of at
 * least LAB_MIN_FIELDS str (the Python mapper then takes the message). */
static PyObject *
map_lab(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (check_call("map_lab", nargs, 8) < 0) {
        return NULL;
    }
    PyObject *segments = args[0], *head = args[1], *codings = args[3], *coding = args[4], *to_iso = args[5],
             *unescape = args[6], *warnings = args[7];
    Py_UCS4 comp;
    if (check_args("map_lab", segments, head, codings, warnings, args[2], &comp) < 0) {
        return NULL;
    }
    if (!plain_segments(segments, LAB_MIN_FIELDS)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t nseg = PyList_GET_SIZE(segments);
    /* The fields read below are checked where they are read (not all fields of all segments up front: a
     * message's strings are mostly out of the CPU's caches by now); on a field that is not a str, what was
     * done is undone (the warnings added) and the Python mapper takes the message. */
    Py_ssize_t warned = PyList_GET_SIZE(warnings);
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    /* Owned references, released at the end. */
    PyObject *specimen = Py_NewRef(Py_None), *battery = Py_NewRef(Py_None), *obr_time = Py_NewRef(empty_str);
    PyObject *last_obs = Py_NewRef(empty_str), *last_iso = Py_NewRef(empty_str);
    Py_ssize_t b = 0, o = 0;
    for (Py_ssize_t i = 0; i < nseg; i++) {
        PyObject *seg = PyList_GET_ITEM(segments, i);
        PyObject *sid = PyList_GET_ITEM(seg, 0);
        if (is_sid(sid, "OBX")) {
            if (!fields_are_str(seg, obx_fields, sizeof obx_fields / sizeof obx_fields[0])) {
                goto not_here;
            }
            o++;
            PyObject *code; /* OBX-3 observation identifier (JLAC10) */
            int has = item_code(codings, coding, PyList_GET_ITEM(seg, 3), warnings,
                                "OBX without an observation code", &code);
            if (has <= 0) {
                if (has < 0) {
                    goto error;
                }
                continue;
            }
            PyObject *vtype = PyList_GET_ITEM(seg, 2); /* OBX-2 value type */
            PyObject *value = PyList_GET_ITEM(seg, 5); /* OBX-5 observation value */
            value = is_coded(vtype) ? coded_value(value, comp) : Py_NewRef(value);
            PyObject *unit = value == NULL ? NULL : before(PyList_GET_ITEM(seg, 6), comp); /* OBX-6 units */
            PyObject *ref = Py_NewRef(PyList_GET_ITEM(seg, 7));                        /* OBX-7 range */
            PyObject *flag = unit == NULL ? NULL : before(PyList_GET_ITEM(seg, 8), comp); /* OBX-8 flags */
            PyObject *item = flag == NULL ? NULL : item_string(b == 0 ? 1 : b, o);
            int ok = 0;
            if (item == NULL) {
                goto done_obx;
            }
            if (has_backslash(value) || has_backslash(unit) || has_backslash(ref)) {
                PyObject *u;
                if ((u = PyObject_CallOneArg(unescape, value)) == NULL) {
                    goto done_obx;
                }
                Py_SETREF(value, u);
                if ((u = PyObject_CallOneArg(unescape, unit)) == NULL) {
                    goto done_obx;
                }
                Py_SETREF(unit, u);
                if ((u = PyObject_CallOneArg(unescape, ref)) == NULL) {
                    goto done_obx;
                }
                Py_SETREF(ref, u);
            }
            PyObject *observed = PyList_GET_ITEM(seg, 14); /* OBX-14 date/time of the observation */
            if (PyUnicode_Compare(observed, last_obs) != 0) {
                if (PyErr_Occurred()) {
                    goto done_obx;
                }
                PyObject *iso = PyObject_CallOneArg(to_iso, observed);
                if (iso == NULL) {
                    goto done_obx;
                }
                Py_SETREF(last_iso, iso);
                Py_SETREF(last_obs, Py_NewRef(observed));
            }
            int truthy = PyObject_IsTrue(last_iso);
            if (truthy < 0) {
                goto done_obx;
            }
            PyObject *lv[11] = {
                NULL,  code, vtype, value, unit, ref, flag, /* (the key) */
                PyList_GET_ITEM(seg, 11),                  /* OBX-11 observation result status */
                truthy ? last_iso : obr_time,
                specimen, battery,
            };
            ok = append_record(out, &types[LAB_TYPE], head, item, lv) == 0;
        done_obx:
            Py_XDECREF(item);
            Py_XDECREF(flag);
            Py_XDECREF(ref);
            Py_XDECREF(unit);
            Py_XDECREF(value);
            Py_DECREF(code);
            if (!ok) {
                goto error;
            }
        } else if (is_sid(sid, "SPM")) {
            if (!fields_are_str(seg, spm_fields, 1)) {
                goto not_here;
            }
            PyObject *c = cached_coding(codings, coding, PyList_GET_ITEM(seg, 4), NULL); /* SPM-4 specimen */
            if (c == NULL) {
                goto error;
            }
            Py_SETREF(specimen, c);
        } else if (is_sid(sid, "OBR")) {
            if (!fields_are_str(seg, obr_fields, 2)) {
                goto not_here;
            }
            b++;
            o = 0;
            PyObject *c = cached_coding(codings, coding, PyList_GET_ITEM(seg, 4), NULL); /* OBR-4 service */
            if (c == NULL) {
                goto error;
            }
            Py_SETREF(battery, c);
            PyObject *t = PyObject_CallOneArg(to_iso, PyList_GET_ITEM(seg, 7)); /* OBR-7 observation time */
            if (t == NULL) {
                goto error;
            }
            Py_SETREF(obr_time, t);
        }
    }
    goto finish;
not_here:
    out = step_aside(out, warnings, warned);
    goto finish;
error:
    Py_CLEAR(out);
finish:
    Py_DECREF(specimen);
    Py_DECREF(battery);
    Py_DECREF(obr_time);
    Py_DECREF(last_obs);
    Py_DECREF(last_iso);
    return out;
}

static const Py_ssize_t orc_fields[] = {4, 9}, tq1_fields[] = {3, 6, 7, 8}, rxr_fields[] = {1},
                        rxe_fields[] = {2, 3, 5, 6, 10, 11, 19};

/* The first segment with ID sid among segments [from, to), or NULL. */
static PyObject *
first_in(PyObject *segments, Py_ssize_t from, Py_ssize_t to, const char *sid)
{
    for (Py_ssize_t i = from; i < to; i++) {
        PyObject *seg = PyList_GET_ITEM(segments, i);
        if (is_sid(PyList_GET_ITEM(seg, 0), sid)) {
            return seg;
        }
    }
    return NULL;
}

/* TQ1-6 service duration n^d: n when the unit is exactly "d", else "". */
static PyObject *
days_of(PyObject *duration, Py_UCS4 comp)
{
    Py_ssize_t start, end;
    int has = second_component(duration, comp, &start, &end);
    if (has < 0) {
        return NULL;
    }
    if (has && end == start + 1 && PyUnicode_READ_CHAR(duration, start) == 'd') {
        return PyUnicode_Substring(duration, 0, start - 1);
    }
    return Py_NewRef(empty_str);
}

/* map_rx_order(segments, key_head, comp, sub, codings, sub_codings, coding, to_iso, warnings): the
 * Prescriptions of an RDE message (OMP-01), as agent.ssmix2.mapping._map_rde_oral builds them (codings and
 * sub_codings: ctx.coding's caches for the component and subcomponent forms); None when a segment is not a
 * list of at least RX_MIN_FIELDS str, or when there is no RXE in an order group (the Python mapper then
 * says so). */
static PyObject *
map_rx_order(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (check_call("map_rx_order", nargs, 9) < 0) {
        return NULL;
    }
    PyObject *segments = args[0], *head = args[1], *sub = args[3], *codings = args[4], *sub_codings = args[5],
             *coding = args[6], *to_iso = args[7], *warnings = args[8];
    Py_UCS4 comp;
    if (check_args("map_rx_order", segments, head, codings, warnings, args[2], &comp) < 0) {
        return NULL;
    }
    if (!PyDict_Check(sub_codings)) {
        PyErr_SetString(PyExc_TypeError, "map_rx_order: bad arguments");
        return NULL;
    }
    Py_ssize_t nseg = PyList_GET_SIZE(segments), start = first_order(segments, RX_MIN_FIELDS, "RXE");
    if (start < 0) {
        Py_RETURN_NONE;
    }
    Py_ssize_t warned = PyList_GET_SIZE(warnings), n = 0;
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t g = start; g < nseg;) {
        Py_ssize_t end = group_end(segments, g);
        PyObject *orc = PyList_GET_ITEM(segments, g);
        PyObject *tq1 = first_in(segments, g, end, "TQ1"), *rxr = first_in(segments, g, end, "RXR");
        if (!fields_are_str(orc, orc_fields, 2) || (tq1 != NULL && !fields_are_str(tq1, tq1_fields, 4)) ||
            (rxr != NULL && !fields_are_str(rxr, rxr_fields, 1))) {
            goto not_here;
        }
        /* The group's parts (owned), released at the end of the group. */
        PyObject *route = NULL, *ordered_at = NULL, *usage = NULL, *days = NULL, *from = NULL, *until = NULL;
        int failed = 1;
        route = rxr != NULL ? cached_coding(codings, coding, PyList_GET_ITEM(rxr, 1), NULL) : Py_NewRef(Py_None);
        if (route == NULL || (ordered_at = PyObject_CallOneArg(to_iso, PyList_GET_ITEM(orc, 9))) == NULL) {
            goto group_done; /* RXR-1 route, ORC-9 date/time of transaction */
        }
        if (tq1 == NULL) {
            usage = Py_NewRef(Py_None);
            days = Py_NewRef(empty_str);
            from = Py_NewRef(empty_str);
            until = Py_NewRef(empty_str);
        } else {
            PyObject *pattern = before(PyList_GET_ITEM(tq1, 3), comp); /* TQ1-3 repeat pattern (JAMI usage) */
            if (pattern == NULL) {
                goto group_done;
            }
            usage = cached_coding(sub_codings, coding, pattern, sub);
            Py_DECREF(pattern);
            if (usage == NULL || (days = days_of(PyList_GET_ITEM(tq1, 6), comp)) == NULL ||
                (from = PyObject_CallOneArg(to_iso, PyList_GET_ITEM(tq1, 7))) == NULL ||
                (until = PyObject_CallOneArg(to_iso, PyList_GET_ITEM(tq1, 8))) == NULL) {
                goto group_done;
            }
        }
        for (Py_ssize_t i = g; i < end; i++) {
            PyObject *seg = PyList_GET_ITEM(segments, i);
            if (!is_sid(PyList_GET_ITEM(seg, 0), "RXE")) {
                continue;
            }
            if (!fields_are_str(seg, rxe_fields, sizeof rxe_fields / sizeof rxe_fields[0])) {
                failed = 2;
                goto group_done;
            }
            n++;
            PyObject *drug; /* RXE-2 give code (HOT9) */
            int has =
                item_code(codings, coding, PyList_GET_ITEM(seg, 2), warnings, "RXE without a drug code", &drug);
            if (has <= 0) {
                if (has < 0) {
                    goto group_done;
                }
                continue;
            }
            PyObject *unit = NULL, *form = NULL, *total = NULL, *dunit = NULL, *item = NULL;
            int ok = 0;
            if ((unit = cached_coding(codings, coding, PyList_GET_ITEM(seg, 5), NULL)) != NULL && /* RXE-5 */
                (form = cached_coding(codings, coding, PyList_GET_ITEM(seg, 6), NULL)) != NULL && /* RXE-6 */
                (total = before(PyList_GET_ITEM(seg, 19), comp)) != NULL &&              /* RXE-19 daily dose */
                (dunit = cached_coding(codings, coding, PyList_GET_ITEM(seg, 11), NULL)) != NULL && /* RXE-11 */
                (item = number_string(n)) != NULL) {
                PyObject *rv[17] = {
                    NULL,  order_str, drug, PyList_GET_ITEM(seg, 3), /* (the key), RXE-3 give amount - minimum */
                    unit,  form,      total,
                    PyList_GET_ITEM(seg, 10), /* RXE-10 dispense amount */
                    dunit, usage,     days,   route, from, until, ordered_at,
                    PyList_GET_ITEM(orc, 4), /* ORC-4 placer group number (Rp) */
                    empty_str,
                };
                ok = append_record(out, &types[RX_TYPE], head, item, rv) == 0;
            }
            Py_XDECREF(item);
            Py_XDECREF(dunit);
            Py_XDECREF(total);
            Py_XDECREF(form);
            Py_XDECREF(unit);
            Py_DECREF(drug);
            if (!ok) {
                goto group_done;
            }
        }
        failed = 0;
    group_done:
        Py_XDECREF(route);
        Py_XDECREF(ordered_at);
        Py_XDECREF(usage);
        Py_XDECREF(days);
        Py_XDECREF(from);
        Py_XDECREF(until);
        if (failed == 2) {
            goto not_here;
        }
        if (failed) {
            Py_DECREF(out);
            return NULL;
        }
        g = end;
    }
    return out;
not_here:
    return step_aside(out, warnings, warned);
}

static const Py_ssize_t rxa_fields[] = {3, 4, 5, 6, 7, 20};

/* map_rx_given(segments, key_head, codings, coding, to_iso, warnings): the Prescriptions of an RAS message
 * (OMP-11, administrations), as agent.ssmix2.mapping._map_ras_oral builds them; None when a segment is not a
 * list of at least RXA_MIN_FIELDS str, or when there is no RXA in an order group (the Python mapper then
 * says so). */
static PyObject *
map_rx_given(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (check_call("map_rx_given", nargs, 6) < 0) {
        return NULL;
    }
    PyObject *segments = args[0], *head = args[1], *codings = args[2], *coding = args[3], *to_iso = args[4],
             *warnings = args[5];
    if (check_args("map_rx_given", segments, head, codings, warnings, NULL, NULL) < 0) {
        return NULL;
    }
    Py_ssize_t nseg = PyList_GET_SIZE(segments), start = first_order(segments, RXA_MIN_FIELDS, "RXA");
    if (start < 0) {
        Py_RETURN_NONE;
    }
    Py_ssize_t warned = PyList_GET_SIZE(warnings), g = 0;
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t at = start; at < nseg;) {
        Py_ssize_t end = group_end(segments, at);
        g++;
        PyObject *orc = PyList_GET_ITEM(segments, at), *rxr = first_in(segments, at, end, "RXR");
        if (!fields_are_str(orc, orc_fields, 2) || (rxr != NULL && !fields_are_str(rxr, rxr_fields, 1))) {
            goto not_here;
        }
        int failed = 1;
        Py_ssize_t r = 0;
        PyObject *ordered_at = NULL;
        PyObject *route = rxr != NULL ? cached_coding(codings, coding, PyList_GET_ITEM(rxr, 1), NULL)
                                      : Py_NewRef(Py_None); /* RXR-1 route */
        if (route == NULL || (ordered_at = PyObject_CallOneArg(to_iso, PyList_GET_ITEM(orc, 9))) == NULL) {
            goto group_done; /* ORC-9 date/time of transaction */
        }
        for (Py_ssize_t i = at; i < end; i++) {
            PyObject *seg = PyList_GET_ITEM(segments, i);
            if (!is_sid(PyList_GET_ITEM(seg, 0), "RXA")) {
                continue;
            }
            if (!fields_are_str(seg, rxa_fields, sizeof rxa_fields / sizeof rxa_fields[0])) {
                failed = 2;
                goto group_done;
            }
            r++;
            PyObject *drug; /* RXA-5 administered code (HOT9) */
            int has =
                item_code(codings, coding, PyList_GET_ITEM(seg, 5), warnings, "RXA without a drug code", &drug);
            if (has <= 0) {
                if (has < 0) {
                    goto group_done;
                }
                continue;
            }
            PyObject *unit = NULL, *from = NULL, *until = NULL, *item = NULL;
            int ok = 0;
            if ((unit = cached_coding(codings, coding, PyList_GET_ITEM(seg, 7), NULL)) != NULL && /* RXA-7 */
                (from = PyObject_CallOneArg(to_iso, PyList_GET_ITEM(seg, 3))) != NULL &&        /* RXA-3 */
                (until = PyObject_CallOneArg(to_iso, PyList_GET_ITEM(seg, 4))) != NULL &&       /* RXA-4 */
                (item = item_string(g, r)) != NULL) {
                PyObject *rv[17] = {
                    NULL,      administration_str, drug, PyList_GET_ITEM(seg, 6), /* (the key), RXA-6 amount */
                    unit,      Py_None,            empty_str,                     /* dosage form, total daily */
                    empty_str, Py_None,            Py_None,                       /* dispensed, unit, usage */
                    empty_str, route,              from, until, ordered_at,       /* days, route, times */
                    PyList_GET_ITEM(orc, 4),  /* ORC-4 placer group number (Rp) */
                    PyList_GET_ITEM(seg, 20), /* RXA-20 completion status */
                };
                ok = append_record(out, &types[RX_TYPE], head, item, rv) == 0;
            }
            Py_XDECREF(item);
            Py_XDECREF(until);
            Py_XDECREF(from);
            Py_XDECREF(unit);
            Py_DECREF(drug);
            if (!ok) {
                goto group_done;
            }
        }
        failed = 0;
    group_done:
        Py_XDECREF(route);
        Py_XDECREF(ordered_at);
        if (failed == 2) {
            goto not_here;
        }
        if (failed) {
            Py_DECREF(out);
            return NULL;
        }
        at = end;
    }
    return out;
not_here:
    return step_aside(out, warnings, warned);
}

/* Whether component 3 of s (between its 2nd and 3rd comp, or to the end) is one of the ICD-10 table ids
 * _map_ppr01 accepts; 0 also when s has fewer than 3 components.  -1 on an error. */
static int
third_component_is_icd10(PyObject *s, Py_UCS4 comp, int *components_3)
{
    Py_ssize_t first = find_char(s, comp, 0), second = -1, third = -1;
    *components_3 = 0;
    if (first == -2 || first < 0) {
        return first == -2 ? -1 : 0;
    }
    if ((second = find_char(s, comp, first + 1)) < 0) {
        return second == -2 ? -1 : 0;
    }
    *components_3 = 1;
    if ((third = find_char(s, comp, second + 1)) == -2) {
        return -1;
    }
    Py_ssize_t start = second + 1, end = third < 0 ? PyUnicode_GET_LENGTH(s) : third;
    int kind = PyUnicode_KIND(s);
    const void *d = PyUnicode_DATA(s);
    for (size_t k = 0; k < sizeof icd10_systems / sizeof icd10_systems[0]; k++) {
        const char *want = icd10_systems[k];
        Py_ssize_t n = (Py_ssize_t)strlen(want), i = 0;
        if (end - start != n) {
            continue;
        }
        while (i < n && PyUnicode_READ(kind, d, start + i) == (Py_UCS4)(unsigned char)want[i]) {
            i++;
        }
        if (i == n) {
            return 1;
        }
    }
    return 0;
}

static const Py_ssize_t prb_fields[] = {1, 3, 4, 7, 9, 10, 14, 16, 17, 18};

/* map_condition(segments, key_head, comp, codings, coding, to_iso, unescape, warnings): the Conditions of a
 * PPR message (PPR-01), as agent.ssmix2.mapping._map_ppr01 builds them; None when a segment is not a list
 * of at least PRB_MIN_FIELDS entries, or a field it reads is not a str (the Python mapper then takes the
 * message). */
static PyObject *
map_condition(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (check_call("map_condition", nargs, 8) < 0) {
        return NULL;
    }
    PyObject *segments = args[0], *head = args[1], *codings = args[3], *coding = args[4], *to_iso = args[5],
             *unescape = args[6], *warnings = args[7];
    Py_UCS4 comp;
    if (check_args("map_condition", segments, head, codings, warnings, args[2], &comp) < 0) {
        return NULL;
    }
    if (!plain_segments(segments, PRB_MIN_FIELDS)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t nseg = PyList_GET_SIZE(segments), warned = PyList_GET_SIZE(warnings), n = 0;
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nseg; i++) {
        PyObject *seg = PyList_GET_ITEM(segments, i);
        if (!is_sid(PyList_GET_ITEM(seg, 0), "PRB")) {
            continue;
        }
        if (!fields_are_str(seg, prb_fields, sizeof prb_fields / sizeof prb_fields[0])) {
            return step_aside(out, warnings, warned);
        }
        n++;
        PyObject *code; /* PRB-3 problem ID (MEDIS disease exchange code) */
        int has = item_code(codings, coding, PyList_GET_ITEM(seg, 3), warnings, "PRB without a problem code", &code);
        if (has <= 0) {
            if (has < 0) {
                Py_DECREF(out);
                return NULL;
            }
            continue;
        }
        PyObject *icd10 = NULL, *name = NULL, *onset = NULL, *recorded = NULL, *resolved = NULL, *outcome = NULL,
                 *ranking = NULL, *item = NULL;
        int ok = 0, three, is_icd10;
        /* PRB-10 problem classification (ICD-10^^I10): component 1 when there are fewer than 3 components
         * or the 3rd names ICD-10, else "" */
        PyObject *pclass = PyList_GET_ITEM(seg, 10);
        if ((is_icd10 = third_component_is_icd10(pclass, comp, &three)) < 0) {
            goto done;
        }
        icd10 = (!three || is_icd10) ? before(pclass, comp) : Py_NewRef(empty_str);
        /* name: PRB-17 onset text (the disease name), else the code's display */
        PyObject *text = PyList_GET_ITEM(seg, 17);
        name = has_backslash(text) ? PyObject_CallOneArg(unescape, text) : Py_NewRef(text);
        if (icd10 == NULL || name == NULL) {
            goto done;
        }
        if (PyUnicode_Check(name) && PyUnicode_GET_LENGTH(name) == 0) {
            Py_SETREF(name, PyObject_GetAttr(code, display_str));
            if (name == NULL) {
                goto done;
            }
        }
        if ((onset = PyObject_CallOneArg(to_iso, PyList_GET_ITEM(seg, 16))) == NULL ||    /* PRB-16 onset */
            (recorded = PyObject_CallOneArg(to_iso, PyList_GET_ITEM(seg, 7))) == NULL ||  /* PRB-7 established */
            (resolved = PyObject_CallOneArg(to_iso, PyList_GET_ITEM(seg, 9))) == NULL ||  /* PRB-9 resolution */
            (outcome = cached_coding(codings, coding, PyList_GET_ITEM(seg, 14), NULL)) == NULL || /* PRB-14 */
            (ranking = before(PyList_GET_ITEM(seg, 18), comp)) == NULL ||                /* PRB-18 ranking */
            (item = number_string(n)) == NULL) {
            goto done;
        }
        int main = PyUnicode_Compare(ranking, one_str) == 0; /* 1 = main diagnosis */
        if (PyErr_Occurred()) {
            goto done;
        }
        PyObject *cv[11] = {
            NULL,     code,     icd10,   name, onset, recorded, resolved, /* (the key) */
            outcome,  main ? Py_True : Py_False,
            PyList_GET_ITEM(seg, 1), /* action: PRB-1 action code */
            PyList_GET_ITEM(seg, 4), /* instance_id: PRB-4 problem instance ID */
        };
        ok = append_record(out, &types[CONDITION_TYPE], head, item, cv) == 0;
    done:
        Py_XDECREF(item);
        Py_XDECREF(ranking);
        Py_XDECREF(outcome);
        Py_XDECREF(resolved);
        Py_XDECREF(recorded);
        Py_XDECREF(onset);
        Py_XDECREF(name);
        Py_XDECREF(icd10);
        Py_DECREF(code);
        if (!ok) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

static PyMethodDef methods[] = {
    {"register", (PyCFunction)(void (*)(void))register_records, METH_FASTCALL,
     "register(RecordKey, fields, LabResult, fields, Prescription, fields, Condition, fields): the record\n"
     "classes, fields in order."},
    {"map_lab", (PyCFunction)(void (*)(void))map_lab, METH_FASTCALL,
     "map_lab(segments, key_head, comp, codings, coding, to_iso, unescape, warnings): the LabResults of an\n"
     "OUL message, as agent.ssmix2.mapping._map_oul builds them, or None."},
    {"map_rx_order", (PyCFunction)(void (*)(void))map_rx_order, METH_FASTCALL,
     "map_rx_order(segments, key_head, comp, sub, codings, sub_codings, coding, to_iso, warnings): the\n"
     "Prescriptions of an RDE message (OMP-01), as agent.ssmix2.mapping._map_rde_oral builds them, or None."},
    {"map_rx_given", (PyCFunction)(void (*)(void))map_rx_given, METH_FASTCALL,
     "map_rx_given(segments, key_head, codings, coding, to_iso, warnings): the Prescriptions of an RAS\n"
     "message (OMP-11), as agent.ssmix2.mapping._map_ras_oral builds them, or None."},
    {"map_condition", (PyCFunction)(void (*)(void))map_condition, METH_FASTCALL,
     "map_condition(segments, key_head, comp, codings, coding, to_iso, unescape, warnings): the Conditions\n"
     "of a PPR message (PPR-01), as agent.ssmix2.mapping._map_ppr01 builds them, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastmap", "Fast path of the SS-MIX2 lab, prescription and problem mappers (see the C source).", -1,
    methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__fastmap(void)
{
    empty_str = PyUnicode_FromStringAndSize("", 0);
    order_str = PyUnicode_InternFromString("order");
    administration_str = PyUnicode_InternFromString("administration");
    one_str = PyUnicode_InternFromString("1");
    display_str = PyUnicode_InternFromString("display");
    if (empty_str == NULL || order_str == NULL || administration_str == NULL || one_str == NULL ||
        display_str == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
