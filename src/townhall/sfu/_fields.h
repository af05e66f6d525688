/* Shared by _fastsend.c, _read.c and _fields.c: the numbers the fan-out and the socket's reader
 * read and write for every copy or datagram, as fields of C structs (see _fields.c and
 * fields.py). */

#ifndef TOWNHALL_FIELDS_H
#define TOWNHALL_FIELDS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* SequenceRewriter's (sequence.py) */
typedef struct {
    PyObject_HEAD
    char started;
    long seq_offset, ts_offset, last_in_seq, last_out_seq, last_out_ts;
    double last_sent_at;
} SequenceFields;

/* PictureRewriter's (vp8.py) */
typedef struct {
    PyObject_HEAD
    char started, active;
    long picture_offset, tl0_offset, last_picture_id, last_tl0;
} PictureFields;

/* TwccSender's (twcc.py) */
typedef struct {
    PyObject_HEAD
    long sequence, extension_id;
} TwccFields;

/* Consumer's (consumer.py) */
typedef struct {
    PyObject_HEAD
    char paused;
    long layer, target, padding;
    long long packets, octets;
} ConsumerFields;

/* Counters' (router.py): what the socket's reader adds to as it handles each datagram */
typedef struct {
    PyObject_HEAD
    long long packets_received, packets_forwarded, bytes_forwarded;
} CountersFields;

/* The ICE connection's (ice.py, _MuxProtocol): datagrams routed to it, which the reader adds
 * to as it handles each one */
typedef struct {
    PyObject_HEAD
    long long received;
} ReceivedFields;

/* The UDP socket's (ice.py, _UdpSocket): whether its reader is reading now */
typedef struct {
    PyObject_HEAD
    char holding;
} HoldingFields;

/* beat.Wakeups': the earliest beat anyone sleeps until, which the reader compares with the
 * clock at every wake-up */
typedef struct {
    PyObject_HEAD
    double due;
} WakeupsFields;

extern PyTypeObject SequenceFieldsType, PictureFieldsType, TwccFieldsType, ConsumerFieldsType,
    CountersFieldsType, ReceivedFieldsType, HoldingFieldsType, WakeupsFieldsType;

/* Adds the eight types to the module; -1 with an exception set on failure. */
int fields_add_types(PyObject *module);

/* The subclass of each type last found to be one (owned, so that its address cannot come to
 * name another type), by FIELDS_KNOWN_* index. */
enum {
    FIELDS_KNOWN_SEQUENCE, FIELDS_KNOWN_PICTURE, FIELDS_KNOWN_TWCC, FIELDS_KNOWN_CONSUMER,
    FIELDS_KNOWN_COUNTERS, FIELDS_KNOWN_RECEIVED, FIELDS_KNOWN_HOLDING, FIELDS_KNOWN_WAKEUPS,
    FIELDS_KNOWN_COUNT
};
extern PyTypeObject *fields_known[FIELDS_KNOWN_COUNT];

/* PyObject_TypeCheck(object, type), quicker for the subclass the type is used with: where
 * that is not the type itself, PyType_IsSubtype walks its MRO, for every copy. */
static inline int fields_is(PyObject *object, PyTypeObject *type, int known) {
    PyTypeObject *actual = Py_TYPE(object);
    if (actual == type || actual == fields_known[known])
        return 1;
    if (!PyType_IsSubtype(actual, type))
        return 0;
    Py_INCREF(actual);
    Py_XSETREF(fields_known[known], actual);
    return 1;
}

#endif
