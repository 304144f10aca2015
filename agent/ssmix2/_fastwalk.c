/* Compiled fast path of the SS-MIX2 reader's walk: one patient folder listed and its files read in C.
 *
 * A patient folder holds date folders, which hold data-type folders, which hold the message files; the tree
 * has about 1.5 folders per file.  In Python, listing them (os.scandir, DirEntry objects, sorting, is_dir
 * checks, path strings) and reading each file (os.open, fstat, read, close) costs ~25 us of user time per
 * file on top of what the kernel spends.  Here the same work is a few system calls per folder and per
 * file, relative to an open folder (openat), with no Python object but the results.
 *
 * It handles only the plain case: every entry is a folder where folders belong and a regular file where
 * files belong (as the directory entry's type says), every name is printable ASCII, every file reads back
 * at the size fstat gave.  Anything else -- a stray file or link, an entry type the file system does not
 * report, an unreadable folder or file, a file that changes while read -- gives None, and the reader's
 * Python walk takes the whole patient folder, which also words every quarantine reason.
 * tests/agent/test_fast_walk.py compares both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    char **names;
    size_t n, cap;
} Names;

static void
names_free(Names *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->names[i]);
    }
    free(l->names);
    l->names = NULL;
    l->n = l->cap = 0;
}

static int
by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int
printable_ascii(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7E) {
            return 0;
        }
    }
    return 1;
}

/* The entries of the open folder fd, sorted; 0, or -1 when the plain case does not hold (an entry of
 * another type than want, a name that is not printable ASCII, an error).  getdents64 on the folder itself
 * (no second descriptor, no DIR stream: three system calls fewer a folder than opendir's way; the folder's
 * read position moves, which openat relative to it does not mind). */
static int
list_folder(int fd, unsigned char want, Names *out)
{
    char buf[32768];
    for (;;) {
        ssize_t got = getdents64(fd, buf, sizeof(buf));
        if (got == 0) {
            break;
        }
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        for (ssize_t at = 0; at < got;) {
            struct dirent64 *e = (struct dirent64 *)(buf + at);
            at += e->d_reclen;
            const char *nm = e->d_name;
            if (nm[0] == '.' && (nm[1] == '\0' || (nm[1] == '.' && nm[2] == '\0'))) {
                continue;
            }
            if (e->d_type != want || !printable_ascii(nm)) {
                return -1;
            }
            if (out->n == out->cap) {
                size_t cap = out->cap ? out->cap * 2 : 16;
                char **grown = realloc(out->names, cap * sizeof(char *));
                if (grown == NULL) {
                    return -1;
                }
                out->names = grown;
                out->cap = cap;
            }
            if ((out->names[out->n] = strdup(nm)) == NULL) {
                return -1;
            }
            out->n++;
        }
    }
    if (out->n > 1) {
        qsort(out->names, out->n, sizeof(char *), by_name);
    }
    return 0;
}

static int
is_alnum(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static int
all_of(const char *s, size_t n, int (*ok)(char))
{
    for (size_t i = 0; i < n; i++) {
        if (!ok(s[i])) {
            return 0;
        }
    }
    return 1;
}

static int
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int
is_upper_or_digit(char c)
{
    return is_digit(c) || (c >= 'A' && c <= 'Z');
}

/* yyyyMMdd, a day of the proleptic Gregorian calendar from year 1 (what datetime.date accepts). */
static int
calendar_date(const char *s)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y = 0, m = 0, d = 0;
    for (int i = 0; i < 4; i++) {
        y = y * 10 + (s[i] - '0');
    }
    m = (s[4] - '0') * 10 + (s[5] - '0');
    d = (s[6] - '0') * 10 + (s[7] - '0');
    if (y < 1 || m < 1 || m > 12 || d < 1) {
        return 0;
    }
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return d <= days[m - 1] + (m == 2 && leap);
}

static int
same(const char *a, size_t n, const char *b)
{
    return strlen(b) == n && memcmp(a, b, n) == 0;
}

/* The 7 fields of file ``name`` (PID_date_type_order_timestamp_department_flag) as str, when the name is
 * well formed the way the reader's layout._NAME and its calendar check want it, and its patient ID, care
 * date and data type are the names of the folders it is in (``pid``, ``date``, ``dtype``); else None (the
 * Python checks then word the reason), or NULL on an error. */
static PyObject *
name_fields(const char *name, const char *pid, const char *date, const char *dtype)
{
    const char *f[7];
    size_t n[7];
    int k = 0;
    const char *start = name;
    for (const char *p = name;; p++) {
        if (*p == '_' || *p == '\0') {
            if (k == 7) {
                Py_RETURN_NONE;
            }
            f[k] = start;
            n[k++] = (size_t)(p - start);
            if (*p == '\0') {
                break;
            }
            start = p + 1;
        }
    }
    if (k != 7) {
        Py_RETURN_NONE;
    }
    int dash = n[1] == 1 && f[1][0] == '-';
    int well_formed =
        n[0] > 0 && all_of(f[0], n[0], is_alnum) &&
        (dash || (n[1] == 8 && all_of(f[1], 8, is_digit) && calendar_date(f[1]))) &&
        (n[2] == 3 || (n[2] == 6 && f[2][3] == '-' && all_of(f[2] + 4, 2, is_upper_or_digit))) &&
        f[2][0] >= 'A' && f[2][0] <= 'Z' && all_of(f[2] + 1, 2, is_upper_or_digit) &&
        n[3] > 0 && all_of(f[3], n[3], is_alnum) &&
        n[4] >= 8 && n[4] <= 17 && all_of(f[4], n[4], is_digit) &&
        ((n[5] == 1 && f[5][0] == '-') || (n[5] > 0 && all_of(f[5], n[5], is_alnum))) &&
        n[6] == 1 && (f[6][0] == '1' || f[6][0] == '2' || f[6][0] == '0');
    if (!well_formed || !same(f[0], n[0], pid) || !same(f[1], n[1], date) || !same(f[2], n[2], dtype)) {
        Py_RETURN_NONE;
    }
    PyObject *out = PyTuple_New(7);
    for (int i = 0; out != NULL && i < 7; i++) {
        PyObject *text = PyUnicode_DecodeASCII(f[i], (Py_ssize_t)n[i], NULL);
        if (text == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, i, text);
    }
    return out;
}

static int
open_folder(int at, const char *name)
{
    return openat(at, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
}

/* The whole file at (fd, name) as bytes, with its size and mtime; its bytes are left out (None) when
 * wanted is 0 or the file is larger than max.  NULL without an exception: the plain case does not hold. */
static PyObject *
read_file(int dirfd, const char *name, int wanted, Py_ssize_t max, long long *size, long long *mtime_ns)
{
    if (!wanted) {
        struct stat st;
        if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode)) {
            return NULL;
        }
        *size = (long long)st.st_size;
        *mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
        return Py_NewRef(Py_None);
    }
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        return NULL;
    }
    struct stat st;
    PyObject *data = NULL;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        goto done;
    }
    *size = (long long)st.st_size;
    *mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    if (st.st_size > max) {
        data = Py_NewRef(Py_None);
        goto done;
    }
    Py_ssize_t want = (Py_ssize_t)st.st_size;
    data = PyBytes_FromStringAndSize(NULL, want + 1); /* one byte more: a file that grew is noticed */
    if (data == NULL) {
        PyErr_Clear();
        goto done;
    }
    char *buf = PyBytes_AS_STRING(data);
    Py_ssize_t got = 0;
    while (got < want + 1) {
        ssize_t r = read(fd, buf + got, (size_t)(want + 1 - got));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;
        }
        got += r;
        if (got == want) {
            /* a read of a regular file stops short only at its end: this is all of it (no second read
             * to see it end; one byte more would have come had it grown) */
            break;
        }
    }
    if (got != want || _PyBytes_Resize(&data, want) < 0) {
        PyErr_Clear();
        Py_CLEAR(data); /* it changed while read (or a read failed): the Python walk reads it again */
    }
done:
    close(fd);
    return data;
}

/* read_patient(path, in_scope, max_bytes): the files below a patient folder, sorted by (date, type,
 * name), as (date, type, name, data, size, mtime_ns, fields) tuples; data is None for data types not in
 * in_scope (not read) and for files larger than max_bytes; fields is name_fields' answer.  None when the
 * plain case does not hold. */
static PyObject *
read_patient(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3 || !PyAnySet_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "read_patient(path, in_scope, max_bytes)");
        return NULL;
    }
    PyObject *in_scope = args[1];
    Py_ssize_t max = PyLong_AsSsize_t(args[2]);
    if (max < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "max_bytes must not be negative");
        }
        return NULL;
    }
    PyObject *path = NULL;
    if (!PyUnicode_FSConverter(args[0], &path)) {
        return NULL;
    }
    /* what is open or held at any point; released at the end whichever way it ends */
    PyObject *out = NULL, *result = NULL, *date = NULL, *dtype = NULL;
    Names dates = {0}, types = {0}, files = {0};
    int dfd = -1, tfd = -1;
    const char *pid = strrchr(PyBytes_AS_STRING(path), '/');
    pid = pid != NULL ? pid + 1 : PyBytes_AS_STRING(path); /* the patient folder's name */
    int pfd = open(PyBytes_AS_STRING(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (pfd < 0 || list_folder(pfd, DT_DIR, &dates) < 0) {
        goto plain_case_fails;
    }
    if ((out = PyList_New(0)) == NULL) {
        goto error;
    }
    for (size_t i = 0; i < dates.n; i++) {
        dfd = open_folder(pfd, dates.names[i]);
        if (dfd < 0 || list_folder(dfd, DT_DIR, &types) < 0) {
            goto plain_case_fails;
        }
        if ((date = PyUnicode_DecodeASCII(dates.names[i], (Py_ssize_t)strlen(dates.names[i]), NULL)) == NULL) {
            goto error;
        }
        for (size_t j = 0; j < types.n; j++) {
            int wanted;
            if ((dtype = PyUnicode_DecodeASCII(types.names[j], (Py_ssize_t)strlen(types.names[j]), NULL)) == NULL ||
                (wanted = PySet_Contains(in_scope, dtype)) < 0) {
                goto error;
            }
            tfd = open_folder(dfd, types.names[j]);
            if (tfd < 0 || list_folder(tfd, DT_REG, &files) < 0) {
                goto plain_case_fails;
            }
            for (size_t k = 0; k < files.n; k++) {
                long long size = 0, mtime = 0;
                PyObject *data = read_file(tfd, files.names[k], wanted, max, &size, &mtime);
                if (data == NULL) {
                    goto plain_case_fails;
                }
                PyObject *fields = name_fields(files.names[k], pid, dates.names[i], types.names[j]);
                if (fields == NULL) {
                    Py_DECREF(data);
                    goto error;
                }
                PyObject *entry = Py_BuildValue("(OOsNLLN)", date, dtype, files.names[k], data, size, mtime, fields);
                int appended = entry != NULL && PyList_Append(out, entry) == 0;
                Py_XDECREF(entry);
                if (!appended) {
                    goto error;
                }
            }
            names_free(&files);
            close(tfd);
            tfd = -1;
            Py_CLEAR(dtype);
        }
        names_free(&types);
        close(dfd);
        dfd = -1;
        Py_CLEAR(date);
    }
    result = Py_NewRef(out);
    goto done;
plain_case_fails:
    result = Py_NewRef(Py_None);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(out);
    Py_XDECREF(date);
    Py_XDECREF(dtype);
    names_free(&dates);
    names_free(&types);
    names_free(&files);
    if (tfd >= 0) {
        close(tfd);
    }
    if (dfd >= 0) {
        close(dfd);
    }
    if (pfd >= 0) {
        close(pfd);
    }
    Py_DECREF(path);
    return result;
}

static PyMethodDef methods[] = {
    {"read_patient", (PyCFunction)(void (*)(void))read_patient, METH_FASTCALL,
     "read_patient(path, in_scope, max_bytes): the files of a patient folder as sorted (date, type, name,\n"
     "data, size, mtime_ns, fields) tuples, data None where not read, fields the name's 7 fields when it is\n"
     "well formed and filed where it belongs (else None); None when the Python walk must take it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastwalk", "Fast path of the SS-MIX2 reader's walk (see the C source).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__fastwalk(void)
{
    return PyModule_Create(&module);
}
