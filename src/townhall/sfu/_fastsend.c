/* townhall.sfu._fastsend: the native piece of the packet path (see native.py).
 *
 *     send(fd, protect, [(srtp, packet, sockaddr), ...]) -> number sent
 *
 * protects plain RTP packets that Python built and writes them with one sendmmsg().
 *
 *     fanout(consumers, data, header, layer, codec_payload_type, descriptor, now) -> copies
 *
 * is a producer's whole fan-out of one received packet: for each consumer in the steady state
 * it rewrites the header (sequence number, timestamp, SSRC, payload type), adds the
 * transport-wide sequence number or abs-send-time block, rewrites the VP8 picture id and
 * TL0PICIDX, protects the copy with libsrtp and queues it; the queued copies leave in one
 * sendmmsg() per socket. The state stays in the Python objects (Consumer, SequenceRewriter,
 * TwccSender, PictureRewriter), read and updated here exactly as their Python methods do, so the
 * two paths mix freely. Anything else (a paused or switching consumer, RED, a first packet after
 * a restart, padding due, a late packet behind padding, a transport without a native route) is
 * handed to the consumer's own Python `send`.
 *
 *     receive(data, layers_by_ssrc, now) -> copies, or -1
 *
 * is Producer.forward for one received (unprotected) packet from its bytes: it reads the RTP
 * header, finds the layer by SSRC, updates the layer's reception statistics, packet cache and
 * byte count, reads the VP8 descriptor and a keyframe's size, or scores the audio level, and
 * fans the packet out as above. A packet it cannot read (malformed, an SSRC not in the table, a
 * VP8 payload without a descriptor) it leaves untouched and returns -1: the router's Python
 * path then does all of it, as it does without this module. The RtpHeader object that
 * consumers' own send() takes, and the Descriptor it reads (producer.descriptor), are made only
 * when one needs them.
 *
 *     twcc_feedback(data, history, state, parameters)
 *
 * (in _twcc.c) reads a consumer's transport feedback against TwccSender.history, which the
 * fan-out above writes one TwccSent record into per copy, and runs the send-side estimate.
 *
 * `protect` (set once with setup()) is the address of libsrtp's srtp_protect() and `srtp` the
 * address of an srtp_t, both from pylibsrtp's own cffi binding (its statically linked libsrtp:
 * the sessions aiortc keyed), `sockaddr` a packed struct sockaddr_in or sockaddr_in6. A transport's
 * route is (srtp, fd, sockaddr, session). Datagrams the socket cannot take now (EAGAIN) are lost,
 * as a full queue loses them; a packet libsrtp refuses is skipped. Both are counted (counts()).
 */

#include "_twcc.h"
#include "_bytes.h"
#include "_read.h"
#include "_audio.h"
#include "_fields.h"

#include <structmember.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_BATCH 256
#define PACKET_SIZE 1500
#define MAX_TRAILER 148

typedef int (*protect_fn)(void *session, void *packet, int *length);

/* Copies lost here, by send() and fanout(): the socket was full, the send failed, or libsrtp
 * refused the packet (counts()). */
static unsigned long long fan_unsent = 0;

static unsigned char buffers[MAX_BATCH][PACKET_SIZE];
static struct mmsghdr messages[MAX_BATCH];
static struct iovec vectors[MAX_BATCH];

static PyObject *fastsend_send(PyObject *self, PyObject *args) {
    int fd;
    unsigned long long protect_address;
    PyObject *items;
    if (!PyArg_ParseTuple(args, "iKO!", &fd, &protect_address, &PyList_Type, &items))
        return NULL;
    protect_fn protect = (protect_fn)(uintptr_t)protect_address;
    Py_ssize_t count = PyList_GET_SIZE(items);
    Py_ssize_t done = 0, sent = 0;
    while (done < count) {
        int batch = 0;
        while (done < count && batch < MAX_BATCH) {
            PyObject *item = PyList_GET_ITEM(items, done++);
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
                PyErr_SetString(PyExc_TypeError, "items are (srtp, packet, sockaddr) tuples");
                return NULL;
            }
            PyObject *session = PyTuple_GET_ITEM(item, 0);
            PyObject *packet = PyTuple_GET_ITEM(item, 1);
            PyObject *address = PyTuple_GET_ITEM(item, 2);
            if (!PyLong_Check(session) || !PyBytes_Check(packet) || !PyBytes_Check(address)) {
                PyErr_SetString(PyExc_TypeError, "items are (int, bytes, bytes)");
                return NULL;
            }
            void *srtp = PyLong_AsVoidPtr(session);
            Py_ssize_t length = PyBytes_GET_SIZE(packet);
            if (length > PACKET_SIZE - MAX_TRAILER) {
                fan_unsent++;
                continue;
            }
            memcpy(buffers[batch], PyBytes_AS_STRING(packet), (size_t)length);
            int protected_length = (int)length;
            if (protect(srtp, buffers[batch], &protected_length) != 0) {
                fan_unsent++;
                continue;
            }
            vectors[batch].iov_base = buffers[batch];
            vectors[batch].iov_len = (size_t)protected_length;
            memset(&messages[batch].msg_hdr, 0, sizeof(struct msghdr));
            messages[batch].msg_hdr.msg_name = PyBytes_AS_STRING(address);
            messages[batch].msg_hdr.msg_namelen = (socklen_t)PyBytes_GET_SIZE(address);
            messages[batch].msg_hdr.msg_iov = &vectors[batch];
            messages[batch].msg_hdr.msg_iovlen = 1;
            batch++;
        }
        int offset = 0;
        while (offset < batch) {
            int n = sendmmsg(fd, messages + offset, (unsigned int)(batch - offset), 0);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
                    /* the socket is full: these are lost, as a full queue loses them */
                    fan_unsent += (unsigned long long)(batch - offset);
                    break;
                }
                offset++;  /* this one datagram failed (say, unreachable); go on */
                fan_unsent++;
                continue;
            }
            offset += n;
            sent += n;
        }
    }
    return PyLong_FromSsize_t(sent);
}

/* --- fanout ------------------------------------------------------------------------------ */

enum {
    N_PAUSED, N_SLOT, N_PAYLOAD_TYPE, N_SSRC, N_ABS_SEND_TIME, N_TRANSPORT, N_ROUTE,
    N_REWRITER, N_PADDINGS, N_TWCC, N_HISTORY, N_SEQUENCES, N_PICTURES, N_OCTETS, N_SEND,
    N_MARKER, N_TIMESTAMP, N_CSRC_END, N_PAYLOAD_OFFSET, N_SIZE, N_PICTURE_ID,
    N_PICTURE_ID_BITS, N_TL0PICIDX, N_HEADER_SEQUENCE, N_PRODUCER, N_SIMULCAST, N_RECEPTION,
    N_CACHE, N_INDEX, N_WIDTH, N_HEIGHT, N_DESCRIPTOR, N_BASE, N_HIGHEST, N_CYCLES, N_RECEIVED,
    N_MASK, N_PACKETS_RING, N_LEVEL_EXTENSION, N_LEVEL_PACKETS, N_LOUDNESS, N_SELECTED,
    N_CONSUMERS, N_CODEC, N_START, N_KEYFRAME, N_TEMPORAL_ID, N_COUNT
};

static const char *name_texts[N_COUNT] = {
    "paused", "slot", "payload_type", "ssrc", "abs_send_time", "transport", "route",
    "rewriter", "_padding", "twcc", "history", "_sequences", "pictures", "octets", "send",
    "marker", "timestamp", "csrc_end", "payload_offset", "size", "picture_id",
    "picture_id_bits", "tl0picidx", "sequence", "producer", "simulcast", "reception", "cache",
    "index", "width", "height", "descriptor", "_base", "_highest", "_cycles", "_received",
    "_mask", "_packets", "level_extension", "level_packets", "loudness", "selected",
    "consumers", "codec", "start", "keyframe", "temporal_id",
};

static PyObject *names[N_COUNT];

static protect_fn fan_protect = NULL;
static unsigned long long fan_sent = 0;  /* copies sent since take_sent() */
static unsigned long long fan_native_total = 0;  /* copies made here */
static unsigned long long fan_python_total = 0;  /* consumers handed to their own send() */
static int fan_busy = 0;

/* The copies of one fan-out waiting for sendmmsg(): all for one socket. */
static int fan_batch = 0;
static int fan_fd = -1;
static unsigned char fan_buffers[MAX_BATCH][PACKET_SIZE];
static unsigned char fan_addresses[MAX_BATCH][32];
static struct mmsghdr fan_messages[MAX_BATCH];
static struct iovec fan_vectors[MAX_BATCH];

static void fan_flush(void) {
    int offset = 0;
    while (offset < fan_batch) {
        int n = sendmmsg(fan_fd, fan_messages + offset, (unsigned int)(fan_batch - offset), 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
                fan_unsent += (unsigned long long)(fan_batch - offset);
                break;
            }
            offset++;
            fan_unsent++;
            continue;
        }
        offset += n;
        fan_sent += (unsigned long long)n;
    }
    fan_batch = 0;
}

/* Attributes. The classes the fan-out reads declare __slots__: a slot's value sits at a fixed
 * offset in the object, found once per (attribute, type) from the type's member descriptor and
 * kept while the type's version tag says the type is unchanged. Anything else (a __dict__
 * attribute, a property, a changed class) goes through PyObject_GetAttr/SetAttr. */
typedef struct {
    PyTypeObject *type;
    unsigned int version;
    Py_ssize_t offset;  /* 0: not a writable object slot of this type */
} SlotPlace;

#define SLOT_PLACES 3  /* one name, several types: "payload_type" (a slot, a header, a codec) */
static SlotPlace slot_places[N_COUNT][SLOT_PLACES];

static PyObject **slot_of(PyObject *object, int name) {
    PyTypeObject *type = Py_TYPE(object);
    SlotPlace *places = slot_places[name];
    int i;
    for (i = 0; i < SLOT_PLACES; i++) {
        if (places[i].type == type && places[i].version == type->tp_version_tag &&
                PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG))
            return places[i].offset ? (PyObject **)((char *)object + places[i].offset) : NULL;
    }
    PyObject *descriptor = _PyType_Lookup(type, names[name]);  /* borrowed; assigns the tag */
    if (!PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG))
        return NULL;
    Py_ssize_t offset = 0;
    if (descriptor != NULL && Py_TYPE(descriptor) == &PyMemberDescr_Type) {
        PyMemberDef *member = ((PyMemberDescrObject *)descriptor)->d_member;
        if (member->type == T_OBJECT_EX && !(member->flags & READONLY))
            offset = member->offset;
    }
    for (i = 0; i < SLOT_PLACES - 1 && places[i].type != NULL && places[i].type != type; i++)
        ;
    places[i].type = type;
    places[i].version = type->tp_version_tag;
    places[i].offset = offset;
    return offset ? (PyObject **)((char *)object + offset) : NULL;
}

/* A new reference to the attribute, or NULL with an exception set. */
static PyObject *get_attr(PyObject *object, int name) {
    PyObject **slot = slot_of(object, name);
    if (slot != NULL && *slot != NULL) {
        Py_INCREF(*slot);
        return *slot;
    }
    return PyObject_GetAttr(object, names[name]);  /* an empty slot raises AttributeError */
}

/* Sets the attribute, taking the reference to `value`; -1 with an exception set on failure. */
static int set_attr(PyObject *object, int name, PyObject *value) {
    if (value == NULL)
        return -1;
    PyObject **slot = slot_of(object, name);
    if (slot != NULL) {
        PyObject *old = *slot;
        *slot = value;
        Py_XDECREF(old);
        return 0;
    }
    int status = PyObject_SetAttr(object, names[name], value);
    Py_DECREF(value);
    return status;
}

/* One attribute as a C long; -1 with an exception set if it is missing or no number. */
static int get_long(PyObject *object, int name, long *out) {
    PyObject *value = get_attr(object, name);
    if (value == NULL)
        return -1;
    long result = PyLong_AsLong(value);
    Py_DECREF(value);
    if (result == -1 && PyErr_Occurred())
        return -1;
    *out = result;
    return 0;
}

/* An attribute that may be None: 1 and the number, 0 for None, -1 on error. */
static int get_optional_long(PyObject *object, int name, long *out) {
    PyObject *value = get_attr(object, name);
    if (value == NULL)
        return -1;
    if (value == Py_None) {
        Py_DECREF(value);
        return 0;
    }
    long result = PyLong_AsLong(value);
    Py_DECREF(value);
    if (result == -1 && PyErr_Occurred())
        return -1;
    *out = result;
    return 1;
}

static int set_long(PyObject *object, int name, long value) {
    return set_attr(object, name, PyLong_FromLong(value));
}

/* Sets the attribute to a shared object (one made once per fan-out). */
static int set_shared(PyObject *object, int name, PyObject *value) {
    Py_INCREF(value);
    return set_attr(object, name, value);
}

static int set_item(PyObject *list, long index, PyObject *value) {
    if (value == NULL)
        return -1;
    return PyList_SetItem(list, index, value);  /* steals the reference */
}

/* A VP8 payload descriptor as parse_vp8() reads it: what vp8.parse reads. */
typedef struct {
    long size, picture_id, picture_id_bits, tl0picidx, temporal_id;
    int start, keyframe;
} Vp8;

/* What every copy of the received packet shares. */
typedef struct {
    const unsigned char *data;
    Py_ssize_t length;
    long layer, payload_type, sequence, timestamp, csrc_end, payload_offset;
    int marker, codec_payload_type;
    int has_descriptor;
    long descriptor_size, picture_id, picture_id_bits, tl0picidx;
    double now;
    /* receive(): the producer whose producer.descriptor is still to be set to the packet's
     * (`vp8`) before a consumer's own send() reads it; NULL once it is, or from fanout() */
    PyObject *producer;
    const Vp8 *vp8;
} Incoming;

static int set_descriptor(Incoming *in);

#define COPY_QUEUED 1
#define COPY_NOT_SENT 0
#define COPY_PYTHON (-2)
#define COPY_ERROR (-1)

/* The rewriter's, TWCC sender's and picture rewriter's state for one copy. */
typedef struct {
    PyObject *rewriter, *twcc, *pictures, *history;
} Parts;

static void parts_clear(Parts *parts) {
    Py_CLEAR(parts->rewriter);
    Py_CLEAR(parts->twcc);
    Py_CLEAR(parts->pictures);
    Py_CLEAR(parts->history);
}

/* One consumer's copy: queued, not sent, or COPY_PYTHON for the consumer's own send(). Reads
 * everything first and changes state only once the copy is certain to be made. */
static int fan_copy(PyObject *consumer, const Incoming *in, Parts *parts) {
    if (!fields_is(consumer, &ConsumerFieldsType, FIELDS_KNOWN_CONSUMER))
        return COPY_PYTHON;  /* its numbers are not in C (see _fields.c) */
    ConsumerFields *numbers = (ConsumerFields *)consumer;
    if (numbers->paused)
        return COPY_NOT_SENT;
    if (numbers->layer != in->layer)  /* a switch, or not its layer */
        return numbers->target == in->layer ? COPY_PYTHON : COPY_NOT_SENT;
    if (in->payload_type != in->codec_payload_type)
        return COPY_PYTHON;  /* RED */
    if (numbers->padding && in->marker)
        return COPY_PYTHON;  /* padding follows this packet */

    PyObject *slot = get_attr(consumer, N_SLOT);
    if (slot == NULL)
        return COPY_ERROR;
    long payload_type = 0, ssrc = 0, abs_send_time = 0;
    int has_payload_type = get_optional_long(slot, N_PAYLOAD_TYPE, &payload_type);
    int has_abs_send_time = 0, status = has_payload_type;
    if (has_payload_type > 0) {
        has_abs_send_time = get_optional_long(slot, N_ABS_SEND_TIME, &abs_send_time);
        status = has_abs_send_time < 0 ? -1 : get_long(slot, N_SSRC, &ssrc);
    }
    Py_DECREF(slot);
    if (status < 0)
        return COPY_ERROR;
    if (!has_payload_type)
        return COPY_NOT_SENT;

    /* the transport's native route: (srtp, fd, sockaddr, session) */
    PyObject *transport = get_attr(consumer, N_TRANSPORT);
    if (transport == NULL)
        return COPY_ERROR;
    PyObject *route = get_attr(transport, N_ROUTE);
    Py_DECREF(transport);
    if (route == NULL)
        return COPY_ERROR;
    if (!PyTuple_Check(route) || PyTuple_GET_SIZE(route) < 3 ||
            !PyBytes_Check(PyTuple_GET_ITEM(route, 2)) ||
            PyBytes_GET_SIZE(PyTuple_GET_ITEM(route, 2)) > 32) {
        Py_DECREF(route);
        return COPY_PYTHON;
    }
    void *srtp = PyLong_AsVoidPtr(PyTuple_GET_ITEM(route, 0));
    long fd = PyLong_AsLong(PyTuple_GET_ITEM(route, 1));
    PyObject *address = PyTuple_GET_ITEM(route, 2);
    Py_ssize_t address_length = PyBytes_GET_SIZE(address);
    unsigned char address_bytes[32];
    memcpy(address_bytes, PyBytes_AS_STRING(address), (size_t)address_length);
    Py_DECREF(route);
    if (PyErr_Occurred())
        return COPY_ERROR;

    /* the sequence rewriter (SequenceRewriter.rewrite) */
    PyObject *rewriter = parts->rewriter = get_attr(consumer, N_REWRITER);
    if (rewriter == NULL)
        return COPY_ERROR;
    if (!fields_is(rewriter, &SequenceFieldsType, FIELDS_KNOWN_SEQUENCE))
        return COPY_PYTHON;
    SequenceFields *rewriting = (SequenceFields *)rewriter;
    if (!rewriting->started)
        return COPY_PYTHON;  /* a new run starts: offsets to work out */
    PyObject *object = get_attr(rewriter, N_PADDINGS);
    if (object == NULL)
        return COPY_ERROR;
    Py_ssize_t paddings = PyObject_Length(object);
    Py_DECREF(object);
    if (paddings < 0)
        return COPY_ERROR;
    if (paddings && ((in->sequence - rewriting->last_in_seq) & 0xFFFF) >= 0x8000)
        return COPY_PYTHON;  /* a late packet behind padding */

    /* transport-wide sequence number, or abs-send-time */
    PyObject *twcc = parts->twcc = get_attr(consumer, N_TWCC);
    if (twcc == NULL)
        return COPY_ERROR;
    long twcc_sequence = 0, twcc_id = 0;
    Py_ssize_t history = 0;
    if (twcc != Py_None) {
        if (!fields_is(twcc, &TwccFieldsType, FIELDS_KNOWN_TWCC))
            return COPY_PYTHON;
        twcc_sequence = ((TwccFields *)twcc)->sequence;
        twcc_id = ((TwccFields *)twcc)->extension_id;
        parts->history = get_attr(twcc, N_HISTORY);
        if (parts->history == NULL)
            return COPY_ERROR;
        history = twcc_history_size(parts->history);
        if (history == 0)
            return COPY_PYTHON;
    }

    /* the VP8 picture id and TL0PICIDX (PictureRewriter.rewrite) */
    PyObject *pictures = parts->pictures = get_attr(consumer, N_PICTURES);
    if (pictures == NULL)
        return COPY_ERROR;
    PictureFields *picture = NULL;
    if (pictures != Py_None) {
        if (!in->has_descriptor ||
                !fields_is(pictures, &PictureFieldsType, FIELDS_KNOWN_PICTURE))
            return COPY_PYTHON;
        picture = (PictureFields *)pictures;
        if (!picture->started)
            return COPY_PYTHON;
    }

    Py_ssize_t extension_length = twcc != Py_None || has_abs_send_time ? 8 : 0;
    Py_ssize_t payload_length = in->length - in->payload_offset;
    Py_ssize_t length = in->csrc_end + extension_length + payload_length;
    if (length > PACKET_SIZE - MAX_TRAILER || fan_protect == NULL)
        return COPY_PYTHON;  /* the Python path says why it cannot send it */

    /* everything is known: build the copy */
    if (fan_batch > 0 && fan_fd != fd)
        fan_flush();
    fan_fd = (int)fd;
    unsigned char *out = fan_buffers[fan_batch];
    long out_sequence = (in->sequence + rewriting->seq_offset) & 0xFFFF;
    unsigned long out_timestamp =
        (unsigned long)((in->timestamp + rewriting->ts_offset) & 0xFFFFFFFFL);
    out[0] = (unsigned char)(0x80 | (in->data[0] & 0x2F) | (extension_length ? 0x10 : 0));
    out[1] = (unsigned char)((in->marker ? 0x80 : 0) | (payload_type & 0x7F));
    put16(out + 2, out_sequence);
    put32(out + 4, out_timestamp);
    put32(out + 8, (unsigned long)ssrc);
    Py_ssize_t pos = 12;
    memcpy(out + pos, in->data + 12, (size_t)(in->csrc_end - 12));
    pos = in->csrc_end;
    if (twcc != Py_None) {
        pos += put16(out + pos, 0xBEDE);
        pos += put16(out + pos, 1);
        out[pos++] = (unsigned char)((twcc_id << 4) | 1);
        pos += put16(out + pos, twcc_sequence);
        out[pos++] = 0;
    } else if (has_abs_send_time) {
        unsigned long send_time = (unsigned long)(long long)(in->now * 262144.0) & 0xFFFFFF;
        pos += put16(out + pos, 0xBEDE);
        pos += put16(out + pos, 1);
        out[pos++] = (unsigned char)((abs_send_time << 4) | 2);
        out[pos++] = (unsigned char)(send_time >> 16);
        pos += put16(out + pos, (long)(send_time & 0xFFFF));
    }
    Py_ssize_t payload_at = pos;
    memcpy(out + pos, in->data + in->payload_offset, (size_t)payload_length);
    pos += payload_length;

    long out_picture = -1, out_tl0 = -1;
    if (picture != NULL) {
        long mask = in->picture_id_bits == 15 ? 0x7FFF : 0x7F;
        out_picture = in->picture_id >= 0 ?
            (in->picture_id + picture->picture_offset) & mask : -1;
        out_tl0 = in->tl0picidx >= 0 ? (in->tl0picidx + picture->tl0_offset) & 0xFF : -1;
        if (picture->active && in->descriptor_size >= 2) {
            /* vp8.write: the descriptor's length never changes */
            unsigned char *descriptor = out + payload_at;
            long at = 2;
            if (in->picture_id_bits == 15) {
                descriptor[2] = (unsigned char)(0x80 | ((out_picture >> 8) & 0x7F));
                descriptor[3] = (unsigned char)(out_picture & 0xFF);
                at = 4;
            } else if (in->picture_id_bits == 7) {
                descriptor[2] = (unsigned char)(out_picture & 0x7F);
                at = 3;
            }
            if (in->tl0picidx >= 0 && at < in->descriptor_size)
                descriptor[at] = (unsigned char)(out_tl0 & 0xFF);
        }
        if (out_picture >= 0 && (picture->last_picture_id < 0 ||
                ((out_picture - picture->last_picture_id) & mask) < (mask >> 1)))
            picture->last_picture_id = out_picture;
        if (out_tl0 >= 0 && (picture->last_tl0 < 0 ||
                ((out_tl0 - picture->last_tl0) & 0xFF) < 0x80))
            picture->last_tl0 = out_tl0;
    }

    /* the rewriter's and TWCC sender's state, as their Python methods leave it */
    if (((out_sequence - rewriting->last_out_seq) & 0xFFFF) < 0x8000 ||
            rewriting->last_sent_at == 0.0) {
        rewriting->last_out_seq = out_sequence;
        rewriting->last_out_ts = (long)out_timestamp;
        rewriting->last_in_seq = in->sequence;
    }
    rewriting->last_sent_at = in->now;
    if (twcc != Py_None) {
        long index = twcc_sequence & (long)(history - 1);
        ((TwccFields *)twcc)->sequence = (twcc_sequence + 1) & 0xFFFF;
        TwccSent *record = (TwccSent *)PyByteArray_AS_STRING(parts->history) + index;
        record->sent_at = in->now;
        record->size = (int32_t)in->length;
        record->sequence = (int32_t)twcc_sequence;
    }

    int protected_length = (int)pos;
    if (fan_protect(srtp, out, &protected_length) != 0) {
        fan_unsent++;  /* numbered and recorded for feedback, but never sent */
        return COPY_NOT_SENT;
    }
    numbers->packets++;
    numbers->octets += payload_length;
    memcpy(fan_addresses[fan_batch], address_bytes, (size_t)address_length);
    fan_vectors[fan_batch].iov_base = out;
    fan_vectors[fan_batch].iov_len = (size_t)protected_length;
    memset(&fan_messages[fan_batch].msg_hdr, 0, sizeof(struct msghdr));
    fan_messages[fan_batch].msg_hdr.msg_name = fan_addresses[fan_batch];
    fan_messages[fan_batch].msg_hdr.msg_namelen = (socklen_t)address_length;
    fan_messages[fan_batch].msg_hdr.msg_iov = &fan_vectors[fan_batch];
    fan_messages[fan_batch].msg_hdr.msg_iovlen = 1;
    fan_batch++;
    if (fan_batch == MAX_BATCH)
        fan_flush();
    return COPY_QUEUED;
}

/* The received packet's RtpHeader, for consumers left to their own send(): the caller's, or
 * one made from the fields the first time a consumer needs it. */
typedef struct {
    PyObject *object;  /* owned, or NULL until made */
    unsigned long ssrc;
    long extension_offset;
} Header;

static PyObject *header_type = NULL;      /* rtp.RtpHeader */
static PyObject *descriptor_type = NULL;  /* vp8.Descriptor */
static long speaking_level = 0;           /* producer.SPEAKING_LEVEL */

static PyObject *header_of(Header *header, const Incoming *in) {
    if (header->object == NULL)
        header->object = PyObject_CallFunction(
            header_type, "(Nllkklll)", PyBool_FromLong(in->marker), in->payload_type,
            in->sequence, (unsigned long)in->timestamp, header->ssrc, header->extension_offset,
            in->payload_offset, in->csrc_end);
    return header->object;
}

/* consumer.send(data, header, layer) -> 1 if it sent, 0 if not, -1 on an exception. */
static int python_send(PyObject *consumer, PyObject *data, PyObject *header, PyObject *layer) {
    if (header == NULL)
        return -1;
    PyObject *result = PyObject_CallMethodObjArgs(consumer, names[N_SEND], data, header, layer,
                                                  NULL);
    if (result == NULL)
        return -1;
    int sent = PyObject_IsTrue(result);
    Py_DECREF(result);
    return sent;
}

static int read_header(PyObject *header, Incoming *in) {
    long marker;
    if (get_long(header, N_MARKER, &marker) < 0 ||
            get_long(header, N_PAYLOAD_TYPE, &in->payload_type) < 0 ||
            get_long(header, N_HEADER_SEQUENCE, &in->sequence) < 0 ||
            get_long(header, N_TIMESTAMP, &in->timestamp) < 0 ||
            get_long(header, N_CSRC_END, &in->csrc_end) < 0 ||
            get_long(header, N_PAYLOAD_OFFSET, &in->payload_offset) < 0)
        return -1;
    in->marker = marker != 0;
    if (in->csrc_end < 12 || in->csrc_end > in->length || in->payload_offset < in->csrc_end ||
            in->payload_offset > in->length) {
        PyErr_SetString(PyExc_ValueError, "header does not fit the packet");
        return -1;
    }
    return 0;
}

static int read_descriptor(PyObject *descriptor, Incoming *in) {
    in->has_descriptor = descriptor != Py_None;
    if (!in->has_descriptor)
        return 0;
    if (get_long(descriptor, N_SIZE, &in->descriptor_size) < 0 ||
            get_long(descriptor, N_PICTURE_ID, &in->picture_id) < 0 ||
            get_long(descriptor, N_PICTURE_ID_BITS, &in->picture_id_bits) < 0 ||
            get_long(descriptor, N_TL0PICIDX, &in->tl0picidx) < 0)
        return -1;
    if (in->descriptor_size > in->length - in->payload_offset)
        in->has_descriptor = 0;  /* cannot be: leave such a packet to Python */
    return 0;
}

/* Every consumer's copy of the packet `in` describes; the number sent, or -1 with an
 * exception set (a consumer's own send() raised). */
static Py_ssize_t fan_all(PyObject *consumers, PyObject *data, Incoming *in, PyObject *layer,
                          Header *header) {
    /* Python that a consumer's own send() runs may come back here (another thread's loop):
     * that fan-out goes all the Python way, leaving this one's batch alone. */
    int native = !fan_busy;
    fan_busy = 1;
    Py_ssize_t copies = 0;
    int failed = 0;
    Py_INCREF(consumers);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(consumers); i++) {
        PyObject *consumer = PyList_GET_ITEM(consumers, i);
        Py_INCREF(consumer);
        int result = COPY_PYTHON;
        if (native) {
            Parts parts = {NULL, NULL, NULL, NULL};
            result = fan_copy(consumer, in, &parts);
            parts_clear(&parts);
            if (result == COPY_ERROR) {
                PyErr_Clear();  /* the consumer's own send() says what is wrong */
                result = COPY_PYTHON;
            }
        }
        if (result == COPY_QUEUED)
            fan_native_total++;
        if (result == COPY_PYTHON) {
            fan_python_total++;
            result = set_descriptor(in) < 0 ? -1 :
                python_send(consumer, data, header_of(header, in), layer);
            if (result < 0) {
                Py_DECREF(consumer);
                failed = 1;
                break;
            }
        }
        copies += result;
        Py_DECREF(consumer);
    }
    Py_DECREF(consumers);
    if (native) {
        if (fan_batch > 0)
            fan_flush();
        fan_busy = 0;
    }
    return failed ? -1 : copies;
}

static PyObject *fastsend_fanout(PyObject *self, PyObject *args) {
    PyObject *consumers, *data, *header_object, *layer, *descriptor;
    int codec_payload_type;
    double now;
    if (!PyArg_ParseTuple(args, "O!O!OO!iOd", &PyList_Type, &consumers, &PyBytes_Type, &data,
                          &header_object, &PyLong_Type, &layer, &codec_payload_type,
                          &descriptor, &now))
        return NULL;
    Incoming in;
    memset(&in, 0, sizeof in);
    in.data = (const unsigned char *)PyBytes_AS_STRING(data);
    in.length = PyBytes_GET_SIZE(data);
    in.layer = PyLong_AsLong(layer);
    in.codec_payload_type = codec_payload_type;
    in.now = now;
    if ((in.layer == -1 && PyErr_Occurred()) || read_header(header_object, &in) < 0 ||
            read_descriptor(descriptor, &in) < 0)
        return NULL;
    Py_INCREF(header_object);
    Header header = {header_object, 0, 0};
    Py_ssize_t copies = fan_all(consumers, data, &in, layer, &header);
    Py_DECREF(header_object);
    return copies < 0 ? NULL : PyLong_FromSsize_t(copies);
}

/* --- receive ----------------------------------------------------------------------------- */

/* What rtp.parse_header checks; 0 if the packet is well formed, -1 if not. */
static int parse_rtp(const unsigned char *p, Py_ssize_t size, Incoming *in, Header *header) {
    if (size < 12 || p[0] >> 6 != 2)
        return -1;
    Py_ssize_t offset = 12 + 4 * (p[0] & 0x0F);
    in->csrc_end = (long)offset;
    header->extension_offset = -1;
    if (p[0] & 0x10) {
        if (size < offset + 4)
            return -1;
        header->extension_offset = (long)offset;
        offset += 4 + 4 * ((p[offset + 2] << 8) | p[offset + 3]);
    }
    if (offset > size)
        return -1;
    if (p[0] & 0x20) {
        unsigned char padding = p[size - 1];
        if (padding == 0 || offset + padding > size)
            return -1;
    }
    in->marker = p[1] >> 7;
    in->payload_type = p[1] & 0x7F;
    in->sequence = (p[2] << 8) | p[3];
    in->timestamp = (long)get32(p + 4);
    header->ssrc = get32(p + 8);
    in->payload_offset = (long)offset;
    return 0;
}

/* Reads the VP8 payload descriptor at `offset` as vp8.parse does; 0, or -1 if it is empty or
 * truncated. */
static int parse_vp8(const unsigned char *p, Py_ssize_t offset, Py_ssize_t end, Vp8 *out) {
    if (offset >= end)
        return -1;
    unsigned char first = p[offset];
    Py_ssize_t pos = offset + 1;
    out->picture_id = out->tl0picidx = out->temporal_id = -1;
    out->picture_id_bits = 0;
    if (first & 0x80) {
        if (pos >= end)
            return -1;
        unsigned char extended = p[pos++];
        if (extended & 0x80) {
            if (pos >= end)
                return -1;
            if (p[pos] & 0x80) {
                if (pos + 1 >= end)
                    return -1;
                out->picture_id = ((p[pos] & 0x7F) << 8) | p[pos + 1];
                out->picture_id_bits = 15;
                pos += 2;
            } else {
                out->picture_id = p[pos];
                out->picture_id_bits = 7;
                pos += 1;
            }
        }
        if (extended & 0x40) {
            if (pos >= end)
                return -1;
            out->tl0picidx = p[pos++];
        }
        if (extended & 0x30) {
            if (pos >= end)
                return -1;
            if (extended & 0x20)
                out->temporal_id = p[pos] >> 6;
            pos += 1;
        }
    }
    out->start = (first & 0x1F) == 0x10;
    out->keyframe = out->start && pos < end && !(p[pos] & 0x01);
    out->size = (long)(pos - offset);
    return 0;
}

/* A vp8.Descriptor with these fields: written straight into its slots (it is a frozen
 * dataclass with __slots__, so its fields are all slots or none is), or made by calling the
 * class if they are not. */
static PyObject *make_descriptor(const Vp8 *d) {
    PyTypeObject *type = (PyTypeObject *)descriptor_type;
    PyObject *made = type->tp_alloc(type, 0);
    if (made == NULL)
        return NULL;
    if (slot_of(made, N_SIZE) == NULL) {
        Py_DECREF(made);
        return PyObject_CallFunction(descriptor_type, "(lOOllll)", d->size,
                                     d->start ? Py_True : Py_False,
                                     d->keyframe ? Py_True : Py_False, d->picture_id,
                                     d->picture_id_bits, d->tl0picidx, d->temporal_id);
    }
    if (set_long(made, N_SIZE, d->size) == 0 &&
            set_shared(made, N_START, d->start ? Py_True : Py_False) == 0 &&
            set_shared(made, N_KEYFRAME, d->keyframe ? Py_True : Py_False) == 0 &&
            set_long(made, N_PICTURE_ID, d->picture_id) == 0 &&
            set_long(made, N_PICTURE_ID_BITS, d->picture_id_bits) == 0 &&
            set_long(made, N_TL0PICIDX, d->tl0picidx) == 0 &&
            set_long(made, N_TEMPORAL_ID, d->temporal_id) == 0)
        return made;
    Py_DECREF(made);
    return NULL;
}

/* rtp.audio_level_at: the RFC 6464 level in extension `id`, or -1. */
static long audio_level(const unsigned char *p, long offset, long end, long id) {
    if (offset < 0)
        return -1;
    long pos = offset + 4;
    if (p[offset] == 0xBE && p[offset + 1] == 0xDE) {
        while (pos < end) {
            unsigned char byte = p[pos];
            if (byte == 0) {
                pos++;
                continue;
            }
            long found = byte >> 4;
            if (found == 15 || pos + 2 + (byte & 0x0F) > end)
                return -1;
            if (found == id)
                return p[pos + 1] & 0x7F;
            pos += 2 + (byte & 0x0F);
        }
        return -1;
    }
    if (p[offset] == 0x10 && (p[offset + 1] & 0xF0) == 0) {
        while (pos + 1 < end) {
            long found = p[pos];
            if (found == 0) {
                pos++;
                continue;
            }
            long length = p[pos + 1];
            if (pos + 2 + length > end)
                return -1;
            if (found == id)
                return length ? (p[pos + 2] & 0x7F) : -1;
            pos += 2 + length;
        }
    }
    return -1;
}

/* Adds `amount` to an int attribute. */
static int add_long(PyObject *object, int name, long amount) {
    long value;
    if (get_long(object, name, &value) < 0)
        return -1;
    return set_long(object, name, value + amount);
}

/* ReceptionStats.add(sequence) */
static int reception_add(PyObject *reception, long sequence, PyObject *sequence_object) {
    long base, highest;
    if (get_long(reception, N_BASE, &base) < 0 || get_long(reception, N_HIGHEST, &highest) < 0)
        return -1;
    if (base < 0) {
        if (set_shared(reception, N_BASE, sequence_object) < 0 ||
                set_shared(reception, N_HIGHEST, sequence_object) < 0)
            return -1;
    } else if (((sequence - highest) & 0xFFFF) < 0x8000) {
        if (sequence < highest && add_long(reception, N_CYCLES, 0x10000) < 0)
            return -1;
        if (set_shared(reception, N_HIGHEST, sequence_object) < 0)
            return -1;
    }
    return add_long(reception, N_RECEIVED, 1);
}

/* PacketCache.store(sequence, data) */
static int cache_store(PyObject *cache, long sequence, PyObject *sequence_object,
                       PyObject *data) {
    long mask;
    if (get_long(cache, N_MASK, &mask) < 0)
        return -1;
    PyObject *packets = get_attr(cache, N_PACKETS_RING);
    if (packets == NULL)
        return -1;
    PyObject *sequences = get_attr(cache, N_SEQUENCES);
    int status = -1;
    long index = sequence & mask;
    if (sequences != NULL && PyList_Check(packets) && PyList_Check(sequences) &&
            index < PyList_GET_SIZE(packets) && index < PyList_GET_SIZE(sequences)) {
        Py_INCREF(data);
        Py_INCREF(sequence_object);
        status = set_item(packets, index, data) < 0 ? -1 :
                 set_item(sequences, index, sequence_object);
    } else if (sequences != NULL) {
        PyErr_SetString(PyExc_TypeError, "packet cache is not two lists of its size");
    }
    Py_DECREF(packets);
    Py_XDECREF(sequences);
    return status;
}

/* The receive side of Producer.forward for a layer: reception, cache, bytes, VP8 descriptor
 * and keyframe size, audio level. 1 to fan out, 0 not to, -1 on error. */
static int take_in(PyObject *layer, PyObject *producer, PyObject *data, Incoming *in,
                   const Header *header, int simulcast, const Vp8 *vp8) {
    PyObject *sequence_object = PyLong_FromLong(in->sequence);
    if (sequence_object == NULL)
        return -1;
    PyObject *reception = get_attr(layer, N_RECEPTION);
    int status = reception == NULL ? -1 : reception_add(reception, in->sequence, sequence_object);
    Py_XDECREF(reception);
    if (status == 0) {
        PyObject *cache = get_attr(layer, N_CACHE);
        status = cache == NULL ? -1 : cache_store(cache, in->sequence, sequence_object, data);
        Py_XDECREF(cache);
    }
    Py_DECREF(sequence_object);
    if (status < 0 || add_long(layer, N_OCTETS, (long)in->length - in->payload_offset) < 0)
        return -1;
    if (simulcast) {
        /* producer.descriptor is made only for a consumer's own send(), which reads it: most
         * packets have no copy made in Python (set_descriptor()) */
        in->producer = producer;
        in->vp8 = vp8;
        in->has_descriptor = 1;
        in->descriptor_size = vp8->size;
        in->picture_id = vp8->picture_id;
        in->picture_id_bits = vp8->picture_id_bits;
        in->tl0picidx = vp8->tl0picidx;
        long frame = in->payload_offset + vp8->size;
        const unsigned char *p = in->data;
        if (vp8->keyframe && in->length >= frame + 10 && p[frame + 3] == 0x9d &&
                p[frame + 4] == 0x01 && p[frame + 5] == 0x2a) {
            if (set_long(layer, N_WIDTH, (p[frame + 6] | (p[frame + 7] << 8)) & 0x3FFF) < 0 ||
                    set_long(layer, N_HEIGHT, (p[frame + 8] | (p[frame + 9] << 8)) & 0x3FFF) < 0)
                return -1;
        }
    } else {
        long id;
        int has_id = get_optional_long(producer, N_LEVEL_EXTENSION, &id);
        if (has_id < 0)
            return -1;
        if (has_id && header->extension_offset >= 0) {
            long level = audio_level(in->data, header->extension_offset, in->payload_offset, id);
            if (level >= 0) {
                if (add_long(producer, N_LEVEL_PACKETS, 1) < 0)
                    return -1;
                if (level <= speaking_level &&
                        add_long(producer, N_LOUDNESS, speaking_level + 1 - level) < 0)
                    return -1;
            }
        }
    }
    PyObject *object = get_attr(producer, N_PAUSED);
    if (object == NULL)
        return -1;
    int paused = PyObject_IsTrue(object);
    Py_DECREF(object);
    if (paused)
        return paused < 0 ? -1 : 0;
    object = get_attr(producer, N_SELECTED);
    if (object == NULL)
        return -1;
    int selected = PyObject_IsTrue(object);
    Py_DECREF(object);
    return selected;
}

/* Sets producer.descriptor to the descriptor of the packet being received, the first time a
 * copy of it goes to a consumer's own send(); 0, or -1 with an exception. */
static int set_descriptor(Incoming *in) {
    if (in->producer == NULL)
        return 0;
    PyObject *producer = in->producer;
    in->producer = NULL;
    return set_attr(producer, N_DESCRIPTOR, make_descriptor(in->vp8));
}

/* receive(data, layers_by_ssrc, now) -> copies sent, or -1 when the packet is left to Python
 * (malformed, an SSRC not in the table, a VP8 payload without a readable descriptor). */
/* Producer.forward for one received packet: copies sent, RECEIVE_PYTHON (-1) to leave it to the
 * Python path, or RECEIVE_ERROR (-2) with an exception set. */
Py_ssize_t receive_packet(PyObject *data, PyObject *layers, double now) {
    if (header_type == NULL || descriptor_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "setup() has not been called");
        return RECEIVE_ERROR;
    }
    Incoming in;
    memset(&in, 0, sizeof in);
    in.data = (const unsigned char *)PyBytes_AS_STRING(data);
    in.length = PyBytes_GET_SIZE(data);
    in.now = now;
    Header header = {NULL, 0, -1};
    if (parse_rtp(in.data, in.length, &in, &header) < 0)
        return RECEIVE_PYTHON;
    PyObject *key = PyLong_FromUnsignedLong(header.ssrc);
    if (key == NULL)
        return RECEIVE_ERROR;
    PyObject *layer = PyDict_GetItemWithError(layers, key);  /* borrowed */
    Py_DECREF(key);
    if (layer == NULL)
        return PyErr_Occurred() ? RECEIVE_ERROR : RECEIVE_PYTHON;
    Py_INCREF(layer);
    PyObject *producer = get_attr(layer, N_PRODUCER);
    PyObject *index = NULL, *codec = NULL, *consumers = NULL, *object = NULL;
    Py_ssize_t result = RECEIVE_ERROR;
    Vp8 vp8 = {0, 0, 0, 0, 0, 0, 0};
    long payload_type;
    int simulcast, go;
    if (producer == NULL || (object = get_attr(producer, N_SIMULCAST)) == NULL)
        goto done;
    simulcast = PyObject_IsTrue(object);
    Py_DECREF(object);
    if (simulcast < 0)
        goto done;
    if (simulcast && parse_vp8(in.data, in.payload_offset, in.length, &vp8) < 0) {
        result = RECEIVE_PYTHON;  /* Python counts it and forwards nothing */
        goto done;
    }
    if ((index = get_attr(layer, N_INDEX)) == NULL ||
            ((in.layer = PyLong_AsLong(index)) == -1 && PyErr_Occurred()) ||
            (codec = get_attr(producer, N_CODEC)) == NULL ||
            get_long(codec, N_PAYLOAD_TYPE, &payload_type) < 0 ||
            (consumers = get_attr(producer, N_CONSUMERS)) == NULL)
        goto done;
    if (!PyList_Check(consumers)) {
        PyErr_SetString(PyExc_TypeError, "producer.consumers is not a list");
        goto done;
    }
    in.codec_payload_type = (int)payload_type;
    go = take_in(layer, producer, data, &in, &header, simulcast, &vp8);
    if (go < 0)
        goto done;
    result = go ? fan_all(consumers, data, &in, index, &header) : 0;
    if (result < 0)
        result = RECEIVE_ERROR;
done:
    Py_XDECREF(header.object);
    Py_XDECREF(consumers);
    Py_XDECREF(codec);
    Py_XDECREF(index);
    Py_XDECREF(producer);
    Py_DECREF(layer);
    return result;
}

static PyObject *fastsend_receive(PyObject *self, PyObject *args) {
    PyObject *data, *layers;
    double now;
    if (!PyArg_ParseTuple(args, "O!O!d", &PyBytes_Type, &data, &PyDict_Type, &layers, &now))
        return NULL;
    Py_ssize_t copies = receive_packet(data, layers, now);
    return copies == RECEIVE_ERROR ? NULL : PyLong_FromSsize_t(copies);
}

static PyObject *fastsend_setup(PyObject *self, PyObject *args) {
    unsigned long long protect_address;
    PyObject *header = NULL, *descriptor = NULL;
    long level = 0;
    if (!PyArg_ParseTuple(args, "K|O!O!l", &protect_address, &PyType_Type, &header,
                          &PyType_Type, &descriptor, &level))
        return NULL;
    fan_protect = (protect_fn)(uintptr_t)protect_address;
    if (header != NULL && descriptor != NULL) {
        Py_INCREF(header);
        Py_INCREF(descriptor);
        Py_XSETREF(header_type, header);
        Py_XSETREF(descriptor_type, descriptor);
        speaking_level = level;
    }
    Py_RETURN_NONE;
}

static PyObject *fastsend_counts(PyObject *self, PyObject *args) {
    return Py_BuildValue("(KKK)", fan_native_total, fan_python_total, fan_unsent);
}

unsigned long long take_fan_sent(void) {
    unsigned long long sent = fan_sent;
    fan_sent = 0;
    return sent;
}

static PyObject *fastsend_take_sent(PyObject *self, PyObject *args) {
    return PyLong_FromUnsignedLongLong(take_fan_sent());
}

static PyMethodDef methods[] = {
    {"send", fastsend_send, METH_VARARGS,
     "send(fd, protect, [(srtp, packet, sockaddr), ...]) -> sent: protect each packet and "
     "send them all with sendmmsg()."},
    {"fanout", fastsend_fanout, METH_VARARGS,
     "fanout(consumers, data, header, layer, codec_payload_type, descriptor, now) -> copies: "
     "one received packet to every consumer (see the top of _fastsend.c)."},
    {"receive", fastsend_receive, METH_VARARGS,
     "receive(data, layers_by_ssrc, now) -> copies, or -1 to leave the packet to Python: "
     "Producer.forward for one received packet (see the top of _fastsend.c)."},
    {"setup", fastsend_setup, METH_VARARGS,
     "setup(protect[, RtpHeader, Descriptor, speaking_level]): libsrtp's srtp_protect address; "
     "the classes and the level receive() needs."},
    {"counts", fastsend_counts, METH_NOARGS,
     "counts() -> (copies made in C, consumers left to Python, copies lost unsent) since "
     "the start."},
    {"take_sent", fastsend_take_sent, METH_NOARGS,
     "take_sent() -> copies fanout() sent since the last call."},
    {"read", (PyCFunction)(void (*)(void))media_read, METH_FASTCALL,
     "read(fd, unprotect, unprotect_rtcp, routes, by_address, deliver, failed, held, flush, "
     "delay, holder) -> datagrams: read what waits on the shared UDP socket and take each "
     "SRTP datagram with a route to the fan-out or the router (see the top of _read.c)."},
    {"read_counts", media_read_counts, METH_NOARGS,
     "read_counts() -> (datagrams longer than the read buffer, datagrams libsrtp refused, "
     "feedback packets sent to publishers, and not sent): "
     "what read() dropped since the start."},
    {"twcc_feedback", twcc_feedback, METH_VARARGS,
     "twcc_feedback(data, history, state, parameters) -> estimate or None: one transport "
     "feedback packet into the send-side estimate (see _twcc.c)."},
    {"twcc_take", twcc_take, METH_VARARGS,
     "twcc_take(arrivals, now) -> [packets]: the transport feedback due to a publisher, its "
     "state in the arrivals' header (see _twcc.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastsend", "libsrtp protect + sendmmsg for many packets.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__fastsend(void) {
    for (int i = 0; i < N_COUNT; i++) {
        if (names[i] == NULL && (names[i] = PyUnicode_InternFromString(name_texts[i])) == NULL)
            return NULL;
    }
    PyObject *made = PyModule_Create(&module);
    if (made != NULL && PyModule_AddIntConstant(made, "TWCC_STATE_SIZE", twcc_state_size) < 0)
        Py_CLEAR(made);
    /* the option whose control message the reader looks for (SCM_TIMESTAMPNS): the number
     * differs between architectures and, on 32-bit ones, with the size of time_t */
    if (made != NULL && PyModule_AddIntConstant(made, "SO_TIMESTAMPNS", SO_TIMESTAMPNS) < 0)
        Py_CLEAR(made);
    if (made != NULL && audio_add_type(made) < 0)  /* AudioTick: see _audio.c */
        Py_CLEAR(made);
    if (made != NULL && fields_add_types(made) < 0)  /* the fan-out's numbers: see _fields.c */
        Py_CLEAR(made);
    return made;
}
