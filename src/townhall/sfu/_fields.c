/* townhall.sfu._fastsend's base classes for the state the fan-out reads and writes per copy.
 *
 * SequenceRewriter, PictureRewriter, TwccSender and Consumer keep the numbers the fan-out
 * (_fastsend.c, fan_copy()) reads and updates for every copy as fields of a C struct: their
 * base class (fields.py picks these when the native piece is built). Python reads and writes
 * them as attributes with the same names, through member descriptors; the fan-out reads and
 * writes the struct directly. Kept in __slots__, each was a pointer to an int object of its
 * own: twenty or so objects per copy to find, read, make and free, most of them no longer in
 * the processor's caches when the next packet comes. The socket's reader (_read.c) keeps what
 * it writes or reads at every datagram or wake-up the same way: the router's Counters and the
 * ICE connection's count it adds to (tally()), the UDP socket's flag that says it is reading,
 * and when the beat it rides (beat.Wakeups) is due.
 *
 * The members hold what the Python code stores: a bool (T_BOOL), an int that fits a C long
 * (T_LONG, T_LONGLONG) or a float (T_DOUBLE); anything else raises TypeError when stored, as
 * such a value would be a mistake (and, as CPython's members do, leaves -1 in a number). No
 * member is an object, so the types need no part in the garbage collector; a subclass with
 * __slots__ or a __dict__ of its own takes part as any does.
 */

#include "_fields.h"

#include <stddef.h>
#include <string.h>
#include <structmember.h>

static PyMemberDef sequence_members[] = {
    {"_started", T_BOOL, offsetof(SequenceFields, started), 0, NULL},
    {"_seq_offset", T_LONG, offsetof(SequenceFields, seq_offset), 0, NULL},
    {"_ts_offset", T_LONG, offsetof(SequenceFields, ts_offset), 0, NULL},
    {"_last_in_seq", T_LONG, offsetof(SequenceFields, last_in_seq), 0, NULL},
    {"_last_out_seq", T_LONG, offsetof(SequenceFields, last_out_seq), 0, NULL},
    {"_last_out_ts", T_LONG, offsetof(SequenceFields, last_out_ts), 0, NULL},
    {"_last_sent_at", T_DOUBLE, offsetof(SequenceFields, last_sent_at), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMemberDef picture_members[] = {
    {"_started", T_BOOL, offsetof(PictureFields, started), 0, NULL},
    {"active", T_BOOL, offsetof(PictureFields, active), 0, NULL},
    {"_picture_offset", T_LONG, offsetof(PictureFields, picture_offset), 0, NULL},
    {"_tl0_offset", T_LONG, offsetof(PictureFields, tl0_offset), 0, NULL},
    {"_last_picture_id", T_LONG, offsetof(PictureFields, last_picture_id), 0, NULL},
    {"_last_tl0", T_LONG, offsetof(PictureFields, last_tl0), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMemberDef twcc_members[] = {
    {"_sequence", T_LONG, offsetof(TwccFields, sequence), 0, NULL},
    {"extension_id", T_LONG, offsetof(TwccFields, extension_id), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMemberDef consumer_members[] = {
    {"paused", T_BOOL, offsetof(ConsumerFields, paused), 0, NULL},
    {"layer", T_LONG, offsetof(ConsumerFields, layer), 0, NULL},
    {"target", T_LONG, offsetof(ConsumerFields, target), 0, NULL},
    {"padding", T_LONG, offsetof(ConsumerFields, padding), 0, NULL},
    {"packets", T_LONGLONG, offsetof(ConsumerFields, packets), 0, NULL},
    {"octets", T_LONGLONG, offsetof(ConsumerFields, octets), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMemberDef received_members[] = {
    {"received", T_LONGLONG, offsetof(ReceivedFields, received), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMemberDef holding_members[] = {
    {"_holding", T_BOOL, offsetof(HoldingFields, holding), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMemberDef wakeups_members[] = {
    {"due", T_DOUBLE, offsetof(WakeupsFields, due), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMemberDef counters_members[] = {
    {"packets_received", T_LONGLONG, offsetof(CountersFields, packets_received), 0, NULL},
    {"packets_forwarded", T_LONGLONG, offsetof(CountersFields, packets_forwarded), 0, NULL},
    {"bytes_forwarded", T_LONGLONG, offsetof(CountersFields, bytes_forwarded), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

#define FIELDS_TYPE(variable, name, struct_type, members, doc) \
    PyTypeObject variable = { \
        PyVarObject_HEAD_INIT(NULL, 0) \
        .tp_name = "townhall.sfu._fastsend." name, \
        .tp_doc = doc, \
        .tp_basicsize = sizeof(struct_type), \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, \
        .tp_new = PyType_GenericNew, \
        .tp_members = members, \
    }

FIELDS_TYPE(SequenceFieldsType, "SequenceFields", SequenceFields, sequence_members,
            "SequenceRewriter's numbers, as the fan-out reads them (see _fields.c).");
FIELDS_TYPE(PictureFieldsType, "PictureFields", PictureFields, picture_members,
            "PictureRewriter's numbers, as the fan-out reads them (see _fields.c).");
FIELDS_TYPE(TwccFieldsType, "TwccFields", TwccFields, twcc_members,
            "TwccSender's numbers, as the fan-out reads them (see _fields.c).");
FIELDS_TYPE(ConsumerFieldsType, "ConsumerFields", ConsumerFields, consumer_members,
            "Consumer's numbers, as the fan-out reads them (see _fields.c).");
FIELDS_TYPE(CountersFieldsType, "CountersFields", CountersFields, counters_members,
            "The router's counts the socket's reader adds to (see _fields.c).");
FIELDS_TYPE(ReceivedFieldsType, "ReceivedFields", ReceivedFields, received_members,
            "An ICE connection's count the socket's reader adds to (see _fields.c).");
FIELDS_TYPE(HoldingFieldsType, "HoldingFields", HoldingFields, holding_members,
            "Whether a UDP socket's reader is reading, as it sets it (see _fields.c).");
FIELDS_TYPE(WakeupsFieldsType, "WakeupsFields", WakeupsFields, wakeups_members,
            "When the beat a socket's reader rides is due, as it reads it (see _fields.c).");

PyTypeObject *fields_known[FIELDS_KNOWN_COUNT];

int fields_add_types(PyObject *module) {
    PyTypeObject *types[] = {&SequenceFieldsType, &PictureFieldsType, &TwccFieldsType,
                             &ConsumerFieldsType, &CountersFieldsType, &ReceivedFieldsType,
                             &HoldingFieldsType, &WakeupsFieldsType};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        if (PyType_Ready(types[i]) < 0)
            return -1;
        const char *name = strrchr(types[i]->tp_name, '.') + 1;
        if (PyModule_AddObjectRef(module, name, (PyObject *)types[i]) < 0)
            return -1;
    }
    return 0;
}
