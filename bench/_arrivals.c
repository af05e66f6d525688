/* What the benchmark's raw consumers do with each datagram, in C (participants.Arrivals).
 *
 * At 27 rooms of 19 consumers the client receives some 63,000 datagrams a second; counting them
 * in Python took about a tenth of a core (1.6 µs each), and a client short of CPU sends its
 * producers' packets late and in bursts, which the server's delay figures then measure. Here a
 * consumer's hook (what its sockets call with each datagram) does what the Python did, with no
 * Python frame:
 *
 *   - RTP (RFC 7983: first byte 128-191, second byte not 192-223, 12 bytes or more) is counted
 *     by SSRC from its clear header, never decrypted: how many, the first and highest extended
 *     sequence numbers, and each jump forward past missing numbers (when, how many missing);
 *     packets with the padding bit (the server's probes) are counted apart as well;
 *   - where transport-wide congestion control was accepted (`twcc_id`), the transport-wide
 *     sequence number of each packet that carries one is noted with its arrival time, for the
 *     feedback the consumer sends every 100 ms (`take`);
 *   - RTCP is dropped; anything else (STUN, DTLS) goes on to the callable the hook wraps.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef struct {
    uint32_t ssrc;
    long long count, first, highest;
    PyObject *jumps; /* list of (time.monotonic(), missing), made at the first jump */
} Stream;

typedef struct {
    PyObject_HEAD
    Stream *streams;
    Py_ssize_t n_streams, cap_streams;
    long long padding;
    double first_at; /* time.monotonic() of the first RTP packet; 0: none yet */
    int twcc_id;     /* one-byte header extension id of the transport-wide number; 0: none */
    long long twcc_highest; /* the highest extended transport-wide number; -1: none yet */
    long long *arrivals;    /* pairs: extended transport-wide number, arrival in µs */
    Py_ssize_t n_arrivals, cap_arrivals;
} Arrivals;

typedef struct {
    PyObject_HEAD
    Arrivals *arrivals;
    PyObject *passed_on;
    vectorcallfunc vectorcall;
} Hook;

static PyTypeObject ArrivalsType;
static PyTypeObject HookType;

static double monotonic(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

static long long monotonic_us(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

/* -- counting ------------------------------------------------------------------------------ */

static Stream *stream_for(Arrivals *self, uint32_t ssrc, long long sequence) {
    for (Py_ssize_t i = 0; i < self->n_streams; i++)
        if (self->streams[i].ssrc == ssrc)
            return &self->streams[i];
    if (self->n_streams == self->cap_streams) {
        Py_ssize_t cap = self->cap_streams ? 2 * self->cap_streams : 4;
        Stream *grown = PyMem_Realloc(self->streams, (size_t)cap * sizeof(Stream));
        if (grown == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        self->streams = grown;
        self->cap_streams = cap;
    }
    Stream *stream = &self->streams[self->n_streams++];
    stream->ssrc = ssrc;
    stream->count = 0;
    stream->first = stream->highest = sequence;
    stream->jumps = NULL;
    if (self->first_at == 0.0)
        self->first_at = monotonic();
    return stream;
}

/* A jump forward: noted in the stream's list (an error here is dropped with the note). */
static void note_jump(Stream *stream, long long missing) {
    if (stream->jumps == NULL && (stream->jumps = PyList_New(0)) == NULL) {
        PyErr_Clear();
        return;
    }
    PyObject *jump = Py_BuildValue("(dL)", monotonic(), missing);
    if (jump == NULL || PyList_Append(stream->jumps, jump) < 0)
        PyErr_Clear();
    Py_XDECREF(jump);
}

static void note_twcc(Arrivals *self, const unsigned char *data, Py_ssize_t length) {
    Py_ssize_t offset = 12 + 4 * (data[0] & 0x0F);
    if (length < offset + 4 || data[offset] != 0xBE || data[offset + 1] != 0xDE)
        return;
    Py_ssize_t end = offset + 4 + 4 * ((data[offset + 2] << 8) | data[offset + 3]);
    Py_ssize_t pos = offset + 4;
    while (pos < end && pos < length) {
        unsigned char byte = data[pos];
        if (byte == 0) {
            pos++;
            continue;
        }
        if (byte >> 4 == self->twcc_id && pos + 2 < length) {
            long long sequence = (data[pos + 1] << 8) | data[pos + 2];
            long long extended;
            if (self->twcc_highest < 0) {
                extended = sequence;
            } else {
                long long delta = (sequence - self->twcc_highest) & 0xFFFF;
                extended = self->twcc_highest + (delta < 0x8000 ? delta : delta - 0x10000);
            }
            if (extended > self->twcc_highest)
                self->twcc_highest = extended;
            if (self->n_arrivals == self->cap_arrivals) {
                Py_ssize_t cap = self->cap_arrivals ? 2 * self->cap_arrivals : 256;
                long long *grown = PyMem_Realloc(self->arrivals, (size_t)cap * 2 * sizeof(long long));
                if (grown == NULL)
                    return; /* this arrival goes unreported, as a lost packet would */
                self->arrivals = grown;
                self->cap_arrivals = cap;
            }
            self->arrivals[2 * self->n_arrivals] = extended;
            self->arrivals[2 * self->n_arrivals + 1] = monotonic_us();
            self->n_arrivals++;
            return;
        }
        pos += 2 + (byte & 0x0F);
    }
}

static int count(Arrivals *self, const unsigned char *data, Py_ssize_t length) {
    if ((data[0] & 0x10) && self->twcc_id)
        note_twcc(self, data, length);
    if (data[0] & 0x20)
        self->padding++;
    uint32_t ssrc = ((uint32_t)data[8] << 24) | ((uint32_t)data[9] << 16) |
                    ((uint32_t)data[10] << 8) | data[11];
    long long sequence = (data[2] << 8) | data[3];
    Stream *stream = stream_for(self, ssrc, sequence);
    if (stream == NULL)
        return -1;
    stream->count++;
    long long delta = (sequence - stream->highest) & 0xFFFF;
    if (delta < 0x8000) {
        if (delta > 1)
            note_jump(stream, delta - 1);
        stream->highest += delta;
    }
    return 0;
}

/* -- the hook ------------------------------------------------------------------------------ */

static PyObject *hook_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames) {
    Hook *hook = (Hook *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs == 2 && kwnames == NULL && PyBytes_CheckExact(args[0])) {
        const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
        Py_ssize_t length = PyBytes_GET_SIZE(args[0]);
        if (length > 0 && data[0] > 127 && data[0] < 192) {
            if (!(data[1] > 191 && data[1] < 224) && length >= 12 &&
                count(hook->arrivals, data, length) < 0)
                return NULL;
            Py_RETURN_NONE;
        }
    }
    return PyObject_Vectorcall(hook->passed_on, args, nargsf, kwnames);
}

static int hook_traverse(Hook *self, visitproc visit, void *arg) {
    Py_VISIT(self->arrivals);
    Py_VISIT(self->passed_on);
    return 0;
}

static int hook_clear(Hook *self) {
    Py_CLEAR(self->arrivals);
    Py_CLEAR(self->passed_on);
    return 0;
}

static void hook_dealloc(Hook *self) {
    PyObject_GC_UnTrack(self);
    hook_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject HookType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_arrivals.Hook",
    .tp_doc = "datagram_received(data, where) of one socket: counts media, passes on the rest",
    .tp_basicsize = sizeof(Hook),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Hook, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = (traverseproc)hook_traverse,
    .tp_clear = (inquiry)hook_clear,
    .tp_dealloc = (destructor)hook_dealloc,
};

/* -- Arrivals ------------------------------------------------------------------------------ */

static PyObject *arrivals_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Arrivals", keywords))
        return NULL;
    Arrivals *self = (Arrivals *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->twcc_highest = -1;
    return (PyObject *)self;
}

static void arrivals_dealloc(Arrivals *self) {
    for (Py_ssize_t i = 0; i < self->n_streams; i++)
        Py_XDECREF(self->streams[i].jumps);
    PyMem_Free(self->streams);
    PyMem_Free(self->arrivals);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *arrivals_hook(Arrivals *self, PyObject *passed_on) {
    if (!PyCallable_Check(passed_on)) {
        PyErr_SetString(PyExc_TypeError, "hook() needs what to pass other datagrams on to");
        return NULL;
    }
    Hook *hook = PyObject_GC_New(Hook, &HookType);
    if (hook == NULL)
        return NULL;
    Py_INCREF(self);
    hook->arrivals = self;
    Py_INCREF(passed_on);
    hook->passed_on = passed_on;
    hook->vectorcall = hook_vectorcall;
    PyObject_GC_Track(hook);
    return (PyObject *)hook;
}

static PyObject *arrivals_streams(Arrivals *self, PyObject *unused) {
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->n_streams; i++) {
        Stream *s = &self->streams[i];
        PyObject *jumps = s->jumps ? PyList_GetSlice(s->jumps, 0, PY_SSIZE_T_MAX) : PyList_New(0);
        PyObject *ssrc = PyLong_FromUnsignedLong(s->ssrc);
        PyObject *value = jumps ? Py_BuildValue("(LLLN)", s->count, s->first, s->highest, jumps)
                                : NULL;
        if (ssrc == NULL || value == NULL || PyDict_SetItem(out, ssrc, value) < 0) {
            Py_XDECREF(ssrc);
            Py_XDECREF(value);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(ssrc);
        Py_DECREF(value);
    }
    return out;
}

static PyObject *arrivals_take(Arrivals *self, PyObject *unused) {
    PyObject *out = PyList_New(self->n_arrivals);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->n_arrivals; i++) {
        PyObject *pair = Py_BuildValue("(LL)", self->arrivals[2 * i], self->arrivals[2 * i + 1]);
        if (pair == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, pair);
    }
    self->n_arrivals = 0;
    return out;
}

static PyObject *arrivals_restart(Arrivals *self, PyObject *unused) {
    self->twcc_highest = -1;
    self->n_arrivals = 0;
    Py_RETURN_NONE;
}

static PyObject *arrivals_get_padding(Arrivals *self, void *closure) {
    return PyLong_FromLongLong(self->padding);
}

static PyObject *arrivals_get_first_at(Arrivals *self, void *closure) {
    if (self->first_at == 0.0)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(self->first_at);
}

static PyObject *arrivals_get_twcc_id(Arrivals *self, void *closure) {
    return PyLong_FromLong(self->twcc_id);
}

static int arrivals_set_twcc_id(Arrivals *self, PyObject *value, void *closure) {
    long id = value == NULL || value == Py_None ? 0 : PyLong_AsLong(value);
    if (id == -1 && PyErr_Occurred())
        return -1;
    if (id < 0 || id > 14) {
        PyErr_Format(PyExc_ValueError, "a one-byte header extension id is 1-14, not %ld", id);
        return -1;
    }
    self->twcc_id = (int)id;
    return 0;
}

static PyMethodDef arrivals_methods[] = {
    {"hook", (PyCFunction)arrivals_hook, METH_O,
     "hook(passed_on): a datagram_received(data, where) that counts here, passes the rest on"},
    {"streams", (PyCFunction)arrivals_streams, METH_NOARGS,
     "streams() -> {ssrc: (count, first, highest, [(monotonic, missing), ...])}"},
    {"take", (PyCFunction)arrivals_take, METH_NOARGS,
     "take() -> [(extended transport-wide number, arrival µs), ...] since the last take"},
    {"restart", (PyCFunction)arrivals_restart, METH_NOARGS,
     "restart(): a new connection: transport-wide numbers start again"},
    {NULL},
};

static PyGetSetDef arrivals_getset[] = {
    {"padding", (getter)arrivals_get_padding, NULL, "RTP packets with the padding bit", NULL},
    {"first_at", (getter)arrivals_get_first_at, NULL,
     "time.monotonic() of the first RTP packet, None before it", NULL},
    {"twcc_id", (getter)arrivals_get_twcc_id, (setter)arrivals_set_twcc_id,
     "header extension id of transport-wide numbers (0: none noted)", NULL},
    {NULL},
};

static PyTypeObject ArrivalsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_arrivals.Arrivals",
    .tp_doc = "One consumer's received RTP, counted by SSRC, and its transport-wide arrivals",
    .tp_basicsize = sizeof(Arrivals),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = arrivals_new,
    .tp_dealloc = (destructor)arrivals_dealloc,
    .tp_methods = arrivals_methods,
    .tp_getset = arrivals_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_arrivals", "The benchmark's consumers' receiving in C", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__arrivals(void) {
    if (PyType_Ready(&ArrivalsType) < 0 || PyType_Ready(&HookType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ArrivalsType);
    if (PyModule_AddObject(m, "Arrivals", (PyObject *)&ArrivalsType) < 0) {
        Py_DECREF(&ArrivalsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
