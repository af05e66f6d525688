/* townhall.sfu._fastsend.read: the shared UDP socket's reader (see native.py and ice.py).
 *
 *     read(fd, unprotect, unprotect_rtcp, routes, by_address, deliver, failed, held, flush,
 *          delay, holder, wakeups) -> datagrams
 *
 * is the event loop's reader callback of the socket `fd` itself (no Python frame in between):
 * it reads what is waiting with one recvmmsg() (at most READ_BATCH datagrams; the event loop
 * calls it again while more wait) and handles each datagram in turn:
 *
 * - An SRTP or SRTCP datagram from a remote address that has a route, whose ICE connection is
 *   still the one bound to that address (`by_address`, the demultiplexing table's; a route is
 *   there only while its connection's media receiver is the route's, see MediaPath.receive in
 *   ice.py): it is unprotected in place with the route's libsrtp session
 *   (`unprotect` and `unprotect_rtcp` are the addresses of libsrtp's srtp_unprotect() and
 *   srtp_unprotect_rtcp()). RTP then goes to receive_packet(), with the router's counters
 *   updated as Router.rtp_received does, or, when that leaves the packet to Python, to the
 *   route's `rtp(data)` (Router.rtp_received); RTCP goes to the route's `rtcp(data)`
 *   (Router.rtcp_received). A packet libsrtp refuses is dropped and counted (read_counts()), as
 *   the Python path drops it.
 * - Anything else (STUN, DTLS, an address without a route): deliver(data, address), the
 *   socket's own datagram_received.
 *
 * `routes` maps a packed sockaddr (as NativeSend.sockaddr makes it) to a route: (address,
 * target, receiver, srtp, layers, counters, clock, rtp, rtcp, video, estimated, arrivals,
 * feedback): the (host, port) address, the ICE connection, its media receiver, the address of the receiving
 * libsrtp session, the transport's layers by SSRC, the router's counters, the router's clock,
 * Router.rtp_received and Router.rtcp_received for that transport, its VideoAllocation and
 * what takes a new estimate of its bandwidth, and the transport's arrivals
 * (TwccReceiver.arrivals: a bytearray, see record_arrival(); the socket has SO_TIMESTAMPNS on
 * so that an arrival is the kernel's receive time). An RTCP datagram that is one transport
 * feedback packet alone (as browsers send them, ten or more a second per receiver) is read
 * here: once the transport numbers its packets (`video.twcc`) and runs its estimate in C, the
 * feedback is matched and the estimate run (_twcc.c) and only an estimate that is news goes
 * to Python, `estimated(bit/s)` (twcc_news: a fall, a rise of REPORT_RISE or more, or any once
 * the last handed is REPORT_REFRESH old). So is a publisher's compound of sender reports and
 * source descriptions alone (read_sender_reports_here()): each report is noted on its layer in
 * C; and a REMB alone once the transport numbers its packets (read_remb_here()), which Python
 * would ignore.
 * With `feedback` (a native.FeedbackSender; None: not), the reader also sends the publisher
 * its transport feedback itself (send_feedback()), and the router's tick does not.
 *
 * While it runs, `holder._holding` (the socket's) is true, so that Python code sending on the
 * socket queues its copies in `held`; they are sent (`flush()`) after each datagram. The counts
 * the router and the ICE connections keep are added up in C and added to theirs once per call
 * (`received`, `packets_received`, `packets_forwarded`, `bytes_forwarded`). Where the holder,
 * the router's Counters, the connections and `wakeups` are of the C types of _fields.c (as
 * with the native piece built they are), the flag, the counts and the beat's due time are
 * their fields, written and read in place, the counts as each datagram is handled. With
 * `delay` (a ForwardingDelay), the kernel's receive time of each datagram is delay.arrived_ns
 * while it is handled, and the copies the fan-out sent for
 * it go to delay.sent_many(). It raises nothing once its arguments are read: an exception while
 * handling one datagram drops that datagram only, failed(address, exception) is told and the
 * rest are handled (failed(None, exception) for a failure of the read itself).
 */

#include "_read.h"
#include "_fields.h"
#include "_twcc.h"
#include "_bytes.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define READ_BATCH 32
#define READ_SIZE 4096

typedef int (*unprotect_fn)(void *session, void *packet, int *length);

static unsigned char read_buffers[READ_BATCH][READ_SIZE];
static struct sockaddr_storage read_names[READ_BATCH];
static char read_controls[READ_BATCH][CMSG_SPACE(sizeof(struct timespec))];
static struct mmsghdr read_messages[READ_BATCH];
static struct iovec read_vectors[READ_BATCH];
/* The messages point at their buffers once and for all; recvmmsg() changes only the lengths
 * and flags of those it fills, which reset_messages() sets back. */
static int read_messages_ready = 0;

static void reset_messages(int count) {
    for (int i = 0; i < count; i++) {
        struct msghdr *header = &read_messages[i].msg_hdr;
        header->msg_namelen = sizeof read_names[i];
        header->msg_controllen = sizeof read_controls[i];
        header->msg_flags = 0;
    }
}

/* Datagrams read() dropped: longer than READ_SIZE, or refused by libsrtp. */
static unsigned long long read_truncated = 0, read_unprotect_failed = 0;
/* Transport feedback packets the reader sent publishers itself, and those it could not
 * (libsrtp refused to protect one, or the socket to take it). */
static unsigned long long feedback_sent = 0, feedback_unsent = 0;
/* Room libsrtp may add to an RTCP packet it protects (SRTCP index and tag, and a margin). */
#define FEEDBACK_TRAILER 148

enum {
    R_RECEIVED, R_PACKETS_RECEIVED, R_PACKETS_FORWARDED, R_BYTES_FORWARDED,
    R_ARRIVED_NS, R_SENT_MANY, R_HOLDING, R_TWCC, R_HISTORY, R_NATIVE_STATE, R_PARAMETERS,
    R_DUE, R_RIDE, R_SENDER_REPORT, R_RECEPTION, R_LAST_SR, R_LAST_SR_AT, R_COUNT
};
static const char *read_name_texts[R_COUNT] = {
    "received", "packets_received", "packets_forwarded", "bytes_forwarded",
    "arrived_ns", "sent_many", "_holding", "twcc", "history", "native_state", "parameters",
    "due", "ride", "sender_report", "reception", "last_sr", "last_sr_at",
};
static PyObject *read_names_interned[R_COUNT];

/* time.monotonic: a route whose clock it is reads CLOCK_MONOTONIC itself, as it does. */
static PyObject *monotonic = NULL;

static int intern_names(void) {
    for (int i = 0; i < R_COUNT; i++) {
        if (read_names_interned[i] == NULL &&
                (read_names_interned[i] = PyUnicode_InternFromString(read_name_texts[i])) == NULL)
            return -1;
    }
    if (monotonic == NULL) {
        PyObject *time_module = PyImport_ImportModule("time");
        if (time_module == NULL)
            return -1;
        monotonic = PyObject_GetAttrString(time_module, "monotonic");
        Py_DECREF(time_module);
        if (monotonic == NULL)
            return -1;
    }
    return 0;
}

/* The route's clock now: -1.0 with an exception if calling it failed. */
static double clock_now(PyObject *clock) {
    if (clock == monotonic) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
    }
    PyObject *now_object = PyObject_CallNoArgs(clock);
    if (now_object == NULL)
        return -1.0;
    double now = PyFloat_AsDouble(now_object);
    Py_DECREF(now_object);
    return now;
}

/* Counts added up over one read() and added to the Python objects at its end: a router's
 * counters (packets received, packets forwarded, bytes forwarded) or an ICE connection's
 * `received`. Where those are of the C types of _fields.c, as they are with the native piece
 * built, the counts are added to their fields at once instead. */
#define TALLIES 16
typedef struct {
    PyObject *object;  /* owned while tallied */
    int kind;          /* TALLY_COUNTERS or TALLY_RECEIVED */
    long long amounts[3];
} Tally;
enum { TALLY_COUNTERS, TALLY_RECEIVED };
static Tally tallies[TALLIES];
static int tally_count = 0;

static int add_to(PyObject *object, int name, long long amount);

/* Adds every tally to its object; -1 with an exception if one could not be (the others are
 * added all the same). */
static int tallies_apply(void) {
    int failed = 0;
    for (int i = 0; i < tally_count; i++) {
        Tally *t = &tallies[i];
        if (!failed) {
            if (t->kind == TALLY_RECEIVED)
                failed = add_to(t->object, R_RECEIVED, t->amounts[0]) < 0;
            else
                failed = add_to(t->object, R_PACKETS_RECEIVED, t->amounts[0]) < 0 ||
                         add_to(t->object, R_PACKETS_FORWARDED, t->amounts[1]) < 0 ||
                         add_to(t->object, R_BYTES_FORWARDED, t->amounts[2]) < 0;
        }
        Py_CLEAR(t->object);
    }
    tally_count = 0;
    return failed ? -1 : 0;
}

static int tally(PyObject *object, int kind, long long a, long long b, long long c) {
    /* the C types of _fields.c: in place at once */
    if (kind == TALLY_RECEIVED &&
            fields_is(object, &ReceivedFieldsType, FIELDS_KNOWN_RECEIVED)) {
        ((ReceivedFields *)object)->received += a;
        return 0;
    }
    if (kind == TALLY_COUNTERS &&
            fields_is(object, &CountersFieldsType, FIELDS_KNOWN_COUNTERS)) {
        CountersFields *counts = (CountersFields *)object;
        counts->packets_received += a;
        counts->packets_forwarded += b;
        counts->bytes_forwarded += c;
        return 0;
    }
    Tally *t = NULL;
    for (int i = 0; i < tally_count; i++) {
        if (tallies[i].object == object && tallies[i].kind == kind) {
            t = &tallies[i];
            break;
        }
    }
    if (t == NULL) {
        if (tally_count == TALLIES && tallies_apply() < 0)
            return -1;
        t = &tallies[tally_count++];
        t->object = Py_NewRef(object);
        t->kind = kind;
        t->amounts[0] = t->amounts[1] = t->amounts[2] = 0;
    }
    t->amounts[0] += a;
    t->amounts[1] += b;
    t->amounts[2] += c;
    return 0;
}

/* object.<name> += amount, for attributes kept in an instance's dict or slots alike. */
static int add_to(PyObject *object, int name, long long amount) {
    PyObject *value = PyObject_GetAttr(object, read_names_interned[name]);
    if (value == NULL)
        return -1;
    PyObject *delta = PyLong_FromLongLong(amount);
    PyObject *sum = delta == NULL ? NULL : PyNumber_Add(value, delta);
    Py_DECREF(value);
    Py_XDECREF(delta);
    if (sum == NULL)
        return -1;
    int result = PyObject_SetAttr(object, read_names_interned[name], sum);
    Py_DECREF(sum);
    return result;
}

/* The key made last: datagrams of one batch mostly come from one address. */
static PyObject *last_key = NULL;

/* `key` (`size` bytes) as a bytes object: the last one made if it is the same. */
static PyObject *key_object(const void *key, Py_ssize_t size) {
    if (last_key != NULL && PyBytes_GET_SIZE(last_key) == size &&
            memcmp(PyBytes_AS_STRING(last_key), key, (size_t)size) == 0)
        return Py_NewRef(last_key);
    PyObject *made = PyBytes_FromStringAndSize((const char *)key, size);
    if (made != NULL)
        Py_XSETREF(last_key, Py_NewRef(made));
    return made;
}

/* The route key of a remote address: its sockaddr with only the family, port and address set.
 * NULL without an exception for a family that has none. */
static PyObject *address_key(const struct sockaddr_storage *name, socklen_t length) {
    if (name->ss_family == AF_INET && length >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *from = (const struct sockaddr_in *)name;
        struct sockaddr_in key;
        memset(&key, 0, sizeof key);
        key.sin_family = AF_INET;
        key.sin_port = from->sin_port;
        key.sin_addr = from->sin_addr;
        return key_object(&key, sizeof key);
    }
    if (name->ss_family == AF_INET6 && length >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *from = (const struct sockaddr_in6 *)name;
        struct sockaddr_in6 key;
        memset(&key, 0, sizeof key);
        key.sin6_family = AF_INET6;
        key.sin6_port = from->sin6_port;
        key.sin6_addr = from->sin6_addr;
        return key_object(&key, sizeof key);
    }
    return NULL;
}

/* The address as the event loop gives it to datagram_received: (host, port) for IPv4,
 * (host, port, flowinfo, scope_id) for IPv6; None for any other family. */
static PyObject *address_tuple(const struct sockaddr_storage *name, socklen_t length) {
    char host[INET6_ADDRSTRLEN];
    if (name->ss_family == AF_INET && length >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *from = (const struct sockaddr_in *)name;
        if (inet_ntop(AF_INET, &from->sin_addr, host, sizeof host) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", host, (int)ntohs(from->sin_port));
    }
    if (name->ss_family == AF_INET6 && length >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *from = (const struct sockaddr_in6 *)name;
        if (inet_ntop(AF_INET6, &from->sin6_addr, host, sizeof host) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siII)", host, (int)ntohs(from->sin6_port),
                             (unsigned int)ntohl(from->sin6_flowinfo),
                             (unsigned int)from->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

/* Whether an RTCP packet is one transport feedback packet and nothing else (twcc.alone). */
static int feedback_alone(const unsigned char *packet, Py_ssize_t length) {
    return length >= 4 && packet[1] == 205 && (packet[0] & 0x1F) == 15 &&
           ((Py_ssize_t)((packet[2] << 8) | packet[3]) + 1) * 4 == length;
}

/* A transport feedback packet for the transport whose VideoAllocation is `video`, matched and
 * run through its estimate in C (twcc_estimate) as TwccSender.feedback does; an estimate that
 * is news at the route's `clock` (twcc_news) goes to `estimated(bit/s)`, which returns False
 * if it did not take it (then the next one is news too). 1 if handled here, 0 if it is for
 * Python's rtcp() (no transport-wide sequence numbers yet, the estimate in Python, or a
 * malformed packet, which rtcp() counts and logs), -1 with an exception. */
static int read_feedback_here(PyObject *video, PyObject *estimated, PyObject *clock,
                              const unsigned char *packet, Py_ssize_t length) {
    PyObject *twcc = PyObject_GetAttr(video, read_names_interned[R_TWCC]);
    if (twcc == NULL)
        return -1;
    PyObject *history = NULL, *state = NULL, *parameters = NULL;
    int result = 0;
    if (twcc == Py_None)
        goto done;
    state = PyObject_GetAttr(twcc, read_names_interned[R_NATIVE_STATE]);
    if (state == NULL || state == Py_None) {
        result = state == NULL ? -1 : 0;
        goto done;
    }
    history = PyObject_GetAttr(twcc, read_names_interned[R_HISTORY]);
    parameters = history == NULL ? NULL :
        PyObject_GetAttr(twcc, read_names_interned[R_PARAMETERS]);
    if (parameters == NULL) {
        result = -1;
        goto done;
    }
    if (!PyBytes_Check(parameters)) {
        PyErr_SetString(PyExc_TypeError, "TwccSender.parameters is bytes");
        result = -1;
        goto done;
    }
    double estimate;
    int found = twcc_estimate(packet, length, history, state, PyBytes_AS_STRING(parameters),
                              PyBytes_GET_SIZE(parameters), &estimate);
    if (found < 0) {
        if (PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();  /* malformed: rtcp() reads it again, counts and logs the drop */
            result = 0;
        } else {
            result = -1;
        }
        goto done;
    }
    result = 1;
    double now = found > 0 ? clock_now(clock) : 0.0;
    if (now == -1.0 && PyErr_Occurred()) {
        result = -1;
        goto done;
    }
    if (found > 0 && twcc_news(state, estimate, now)) {
        PyObject *value = PyFloat_FromDouble(estimate);
        PyObject *returned = value == NULL ? NULL : PyObject_CallOneArg(estimated, value);
        Py_XDECREF(value);
        /* not taken (ignored for now, or the taking failed): hand the next one */
        if (returned == NULL || returned == Py_False)
            twcc_unreported(state);
        if (returned == NULL)
            result = -1;
        Py_XDECREF(returned);
    }
done:
    Py_DECREF(twcc);
    Py_XDECREF(state);
    Py_XDECREF(history);
    Py_XDECREF(parameters);
    return result;
}

/* Whether an RTCP packet is one well-formed REMB and nothing else (as a receiver that
 * estimates its own bandwidth sends one a second): payload-specific feedback of format 15
 * whose "REMB" application data holds as many SSRCs as it counts (rtcp.parse reads it so). */
static int remb_alone(const unsigned char *packet, Py_ssize_t length) {
    if (length < 20 || (packet[0] >> 6) != 2 || (packet[0] & 0x20) || packet[1] != 206 ||
            (packet[0] & 0x1F) != 15 ||
            ((Py_ssize_t)((packet[2] << 8) | packet[3]) + 1) * 4 != length)
        return 0;
    return memcmp(packet + 12, "REMB", 4) == 0 && 20 + 4 * (Py_ssize_t)packet[16] <= length;
}

/* A REMB alone for the transport whose VideoAllocation is `video`: once the transport's own
 * feedback is used (`video.twcc`), VideoAllocation.remb ignores it, and so does the reader.
 * 1 if handled here, 0 if it is for Python's rtcp(), -1 with an exception. */
static int read_remb_here(PyObject *video) {
    PyObject *twcc = PyObject_GetAttr(video, read_names_interned[R_TWCC]);
    if (twcc == NULL)
        return -1;
    int ignored = twcc != Py_None;
    Py_DECREF(twcc);
    return ignored;
}

/* Sender reports one compound RTCP packet holds at most for the reader to take them. */
#define SENDER_REPORTS_HERE 8

/* One sender report's SSRC, NTP and RTP timestamps. */
typedef struct {
    unsigned long ssrc, rtp;
    unsigned long long ntp;
} SenderReport;

/* Each report noted on its layer (`layers[i]`): Layer.sender_reported in C. 0, or -1 with an
 * exception. */
static int note_sender_reports(PyObject *const *layers, const SenderReport *reports, int count,
                               PyObject *clock) {
    double now = clock_now(clock);
    if (now == -1.0 && PyErr_Occurred())
        return -1;
    for (int i = 0; i < count; i++) {
        PyObject *report = Py_BuildValue("(KK)", reports[i].ntp,
                                         (unsigned long long)reports[i].rtp);
        int failed = report == NULL ||
            PyObject_SetAttr(layers[i], read_names_interned[R_SENDER_REPORT], report) < 0;
        Py_XDECREF(report);
        PyObject *reception = failed ? NULL :
            PyObject_GetAttr(layers[i], read_names_interned[R_RECEPTION]);
        PyObject *last_sr = reception == NULL ? NULL :
            PyLong_FromUnsignedLong((unsigned long)((reports[i].ntp >> 16) & 0xFFFFFFFFUL));
        PyObject *at = last_sr == NULL ? NULL : PyFloat_FromDouble(now);
        failed = at == NULL ||
            PyObject_SetAttr(reception, read_names_interned[R_LAST_SR], last_sr) < 0 ||
            PyObject_SetAttr(reception, read_names_interned[R_LAST_SR_AT], at) < 0;
        Py_XDECREF(reception);
        Py_XDECREF(last_sr);
        Py_XDECREF(at);
        if (failed)
            return -1;
    }
    return 0;
}

/* A compound RTCP packet from a publisher that is nothing but sender reports without report
 * blocks and source descriptions (as a sending browser sends them, one a second or so for
 * each of its streams), each about a stream of `layers` (the transport's layers by SSRC):
 * noted on those layers as Router.rtcp_received notes them (Layer.sender_reported), with the
 * route's `clock`; the descriptions are skipped, as rtcp.parse skips them. 1 if handled
 * here, 0 if it is for Python's rtcp() (anything else, or anything Python would read
 * differently or refuse), -1 with an exception. */
static int read_sender_reports_here(PyObject *layers, PyObject *clock,
                                    const unsigned char *packet, Py_ssize_t length) {
    SenderReport reports[SENDER_REPORTS_HERE];
    int found = 0;
    Py_ssize_t pos = 0;
    while (pos < length) {
        if (length < pos + 4)
            return 0;
        const unsigned char *header = packet + pos;
        int count = header[0] & 0x1F;
        Py_ssize_t size = 4 * (Py_ssize_t)((header[2] << 8) | header[3]);
        if ((header[0] >> 6) != 2 || (header[0] & 0x20) || length < pos + 4 + size)
            return 0;  /* not version 2, padded or truncated */
        if (header[1] == 200) {
            if (count != 0 || size != 24 || found == SENDER_REPORTS_HERE)
                return 0;
            reports[found].ssrc = get32(header + 4);
            reports[found].ntp = ((unsigned long long)get32(header + 8) << 32) |
                                 get32(header + 12);
            reports[found].rtp = get32(header + 16);
            found++;
        } else if (header[1] != 202) {
            return 0;  /* a source description says nothing the SFU reads: skipped */
        }
        pos += 4 + size;
    }
    if (found == 0 || !PyDict_Check(layers))
        return 0;
    PyObject *found_layers[SENDER_REPORTS_HERE];
    int held = 0, result = 1;
    for (; held < found; held++) {
        PyObject *ssrc = PyLong_FromUnsignedLong(reports[held].ssrc);
        PyObject *layer = ssrc == NULL ? NULL : PyDict_GetItemWithError(layers, ssrc);
        Py_XDECREF(ssrc);
        if (layer == NULL) {  /* not a stream it knows: Python's; or an error */
            result = PyErr_Occurred() ? -1 : 0;
            break;
        }
        found_layers[held] = Py_NewRef(layer);  /* held: what follows may run Python code */
    }
    if (result == 1 && note_sender_reports(found_layers, reports, found, clock) < 0)
        result = -1;
    for (int i = 0; i < held; i++)
        Py_DECREF(found_layers[i]);
    return result;
}

static long long realtime_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* The kernel's receive time of a datagram (SCM_TIMESTAMPNS) in ns since the epoch, or 0 if the
 * socket does not have SO_TIMESTAMPNS on. */
static long long kernel_stamp_ns(struct msghdr *header) {
    if (header->msg_control == NULL)
        return 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(header); c != NULL; c = CMSG_NXTHDR(header, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec stamp;
            memcpy(&stamp, CMSG_DATA(c), sizeof stamp);
            return (long long)stamp.tv_sec * 1000000000LL + stamp.tv_nsec;
        }
    }
    return 0;
}

/* The kernel's receive time of a datagram, or now, in ns since the epoch. */
static long long arrival_ns(struct msghdr *header) {
    long long stamp = kernel_stamp_ns(header);
    return stamp != 0 ? stamp : realtime_ns();
}

/* How long ago the kernel received a datagram stamped `stamp` (kernel_stamp_ns), in s: 0
 * without a stamp; at most MAX_WAITED, so that a step of the system's clock cannot put an
 * arrival far from the others. */
#define MAX_WAITED 1.0
static double waited(long long stamp) {
    if (stamp == 0)
        return 0.0;
    long long now_ns = realtime_ns();
    if (stamp >= now_ns)
        return 0.0;
    double seconds = (double)(now_ns - stamp) * 1e-9;
    return seconds < MAX_WAITED ? seconds : MAX_WAITED;
}

/* The transport-wide sequence number in the one-byte header extension `id` of the RTP packet
 * `p` (`length` bytes, unprotected), or -1. */
static long transport_sequence(const unsigned char *p, Py_ssize_t length, long id) {
    if (length < 12 || !(p[0] & 0x10))
        return -1;
    Py_ssize_t offset = 12 + 4 * (p[0] & 0x0F);
    if (offset + 4 > length || p[offset] != 0xBE || p[offset + 1] != 0xDE)
        return -1;
    Py_ssize_t pos = offset + 4, end = pos + 4 * (((Py_ssize_t)p[offset + 2] << 8) | p[offset + 3]);
    if (end > length)
        return -1;
    while (pos < end) {
        unsigned char byte = p[pos];
        if (byte == 0) {
            pos++;
            continue;
        }
        long found = byte >> 4, size = (byte & 0x0F) + 1;
        if (found == 15 || pos + 1 + size > end)
            return -1;
        if (found == id)
            return size == 2 ? ((long)p[pos + 1] << 8) | p[pos + 2] : -1;
        pos += 1 + size;
    }
    return -1;
}

/* Notes when the RTP packet `p` arrived in `arrivals` (TwccReceiver.arrivals), if its
 * publisher numbers its packets (the header's extension id is not 0): when it reached the
 * socket (`stamp`, the kernel's, see waited()) on the route's clock, which says `now`. Not when
 * the event loop got to it: a hold of the loop is not queueing on the publisher's uplink, and
 * its browser would slow down for it. */
static void record_arrival(PyObject *arrivals, const unsigned char *p, Py_ssize_t length,
                           double now, long long stamp, int sends_feedback) {
    if (!PyByteArray_Check(arrivals) || PyByteArray_GET_SIZE(arrivals) !=
            (Py_ssize_t)(sizeof(ArrivalsHeader) + ARRIVALS * sizeof(Arrival)))
        return;
    char *buffer = PyByteArray_AS_STRING(arrivals);
    ArrivalsHeader header;
    memcpy(&header, buffer, sizeof header);
    if (header.extension_id <= 0 || header.extension_id >= 15)
        return;
    long sequence = transport_sequence(p, length, header.extension_id);
    if (sequence < 0)
        return;
    Arrival record = {(int32_t)sequence, (int64_t)((now - waited(stamp)) * 1e6)};
    memcpy(buffer + sizeof header + (sequence & (ARRIVALS - 1)) * sizeof record, &record,
           sizeof record);
    if (header.first < 0)
        header.first = (int32_t)sequence;
    if (header.highest < 0 || ((sequence - header.highest) & 0xFFFF) < 0x8000)
        header.highest = (int32_t)sequence;  /* the newest in sequence, not in time */
    header.reader = sends_feedback;  /* whoever records the arrivals sends the feedback */
    header.recorded++;
    memcpy(buffer, &header, sizeof header);
}

typedef int (*protect_rtcp_fn)(void *session, void *packet, int *length);

/* The reader sends a publisher its transport feedback itself, on the first arrival
 * FEEDBACK_INTERVAL_US after the last feedback, once the router's tick noted the SSRCs it
 * carries: protected with the transport's sending session (`sender`, a
 * native.FeedbackSender) and sent to the address the packet came from. A feedback packet that
 * cannot be made or sent is dropped (the next one covers what it would have reported, or the
 * publisher takes those packets for lost); 0, or -1 with an exception. */
static int send_feedback(PyObject *arrivals, PyObject *sender, int fd,
                         const struct sockaddr_storage *name, socklen_t name_length,
                         double now) {
    if (!PyByteArray_Check(arrivals) || PyByteArray_GET_SIZE(arrivals) !=
            (Py_ssize_t)(sizeof(ArrivalsHeader) + ARRIVALS * sizeof(Arrival)))
        return 0;
    char *buffer = PyByteArray_AS_STRING(arrivals);
    ArrivalsHeader header;
    memcpy(&header, buffer, sizeof header);
    if (!header.reader || !header.ssrcs || header.recorded == header.reported ||
            (int64_t)(now * 1000000.0) - header.last_us < FEEDBACK_INTERVAL_US)
        return 0;
    if (!PyTuple_Check(sender) || PyTuple_GET_SIZE(sender) != 3) {
        PyErr_SetString(PyExc_TypeError, "a route's feedback sender is (protect_rtcp, session, "
                        "its Session)");
        return -1;
    }
    protect_rtcp_fn protect = (protect_rtcp_fn)PyLong_AsVoidPtr(PyTuple_GET_ITEM(sender, 0));
    void *session = protect == NULL ? NULL : PyLong_AsVoidPtr(PyTuple_GET_ITEM(sender, 1));
    if (session == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *packets = twcc_take_feedback(buffer, now);
    if (packets == NULL)
        return -1;
    unsigned char out[READ_SIZE];
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(packets); i++) {
        PyObject *packet = PyList_GET_ITEM(packets, i);
        Py_ssize_t size = PyBytes_GET_SIZE(packet);
        if (size + FEEDBACK_TRAILER > (Py_ssize_t)sizeof out) {
            feedback_unsent++;
            continue;
        }
        memcpy(out, PyBytes_AS_STRING(packet), (size_t)size);
        int length = (int)size;
        if (protect(session, out, &length) != 0 ||
                sendto(fd, out, (size_t)length, MSG_DONTWAIT, (const struct sockaddr *)name,
                       name_length) < 0)
            feedback_unsent++;
        else
            feedback_sent++;
    }
    Py_DECREF(packets);
    return 0;
}

/* One SRTP or SRTCP datagram from an address with a route: 1 if handled here (forwarded, given
 * to Python's rtp() or rtcp(), or dropped by libsrtp), 0 if it is for deliver(), -1 with an
 * exception. */
static int read_media(PyObject *route, PyObject *by_address, unsigned char *packet,
                      Py_ssize_t length, unprotect_fn unprotect, int rtcp, long long stamp,
                      int fd, const struct sockaddr_storage *name, socklen_t name_length) {
    if (!PyTuple_Check(route) || PyTuple_GET_SIZE(route) != 13) {
        PyErr_SetString(PyExc_TypeError, "a route is (address, target, receiver, srtp, layers, "
                        "counters, clock, rtp, rtcp, video, estimated, arrivals, feedback)");
        return -1;
    }
    PyObject *address = PyTuple_GET_ITEM(route, 0), *target = PyTuple_GET_ITEM(route, 1),
             *srtp = PyTuple_GET_ITEM(route, 3),
             *layers = PyTuple_GET_ITEM(route, 4), *counters = PyTuple_GET_ITEM(route, 5),
             *clock = PyTuple_GET_ITEM(route, 6), *rtp_handler = PyTuple_GET_ITEM(route, 7),
             *rtcp_handler = PyTuple_GET_ITEM(route, 8), *video = PyTuple_GET_ITEM(route, 9),
             *estimated = PyTuple_GET_ITEM(route, 10), *arrivals = PyTuple_GET_ITEM(route, 11),
             *feedback = PyTuple_GET_ITEM(route, 12);
    PyObject *bound = PyDict_GetItemWithError(by_address, address);  /* borrowed */
    if (bound != target)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyDict_Check(layers)) {
        PyErr_SetString(PyExc_TypeError, "a route's layers are a dict");
        return -1;
    }
    void *session = PyLong_AsVoidPtr(srtp);
    if (session == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (tally(target, TALLY_RECEIVED, 1, 0, 0) < 0)
        return -1;
    int size = (int)length;
    if (unprotect(session, packet, &size) != 0) {
        read_unprotect_failed++;
        return 1;
    }
    if (rtcp) {
        int handled = feedback_alone(packet, size) ?
            read_feedback_here(video, estimated, clock, packet, size) :
            remb_alone(packet, size) ? read_remb_here(video) :
            read_sender_reports_here(layers, clock, packet, size);
        if (handled != 0)
            return handled;
    }
    PyObject *data = PyBytes_FromStringAndSize((const char *)packet, size);
    if (data == NULL)
        return -1;
    int result = -1;
    if (rtcp) {
        PyObject *returned = PyObject_CallOneArg(rtcp_handler, data);
        Py_DECREF(data);
        if (returned == NULL)
            return -1;
        Py_DECREF(returned);
        return 1;
    }
    double now = clock_now(clock);
    if (now == -1.0 && PyErr_Occurred())
        goto done;
    record_arrival(arrivals, packet, size, now, stamp, feedback != Py_None);
    if (feedback != Py_None &&
            send_feedback(arrivals, feedback, fd, name, name_length, now) < 0)
        goto done;
    Py_ssize_t copies = receive_packet(data, layers, now);
    if (copies == RECEIVE_ERROR)
        goto done;
    if (copies == RECEIVE_PYTHON) {
        PyObject *returned = PyObject_CallOneArg(rtp_handler, data);
        if (returned == NULL)
            goto done;
        Py_DECREF(returned);
    } else if (tally(counters, TALLY_COUNTERS, 1, copies, (long long)copies * size) < 0) {
        goto done;
    }
    result = 1;
done:
    Py_DECREF(data);
    return result;
}

static int set_arrived(PyObject *delay, long long ns) {
    PyObject *value = PyLong_FromLongLong(ns);
    if (value == NULL)
        return -1;
    int result = PyObject_SetAttr(delay, read_names_interned[R_ARRIVED_NS], value);
    Py_DECREF(value);
    return result;
}

/* An exception that is not an Exception (KeyboardInterrupt, SystemExit) raised while the
 * reader handled a datagram: kept until the batch is done, then raised from read() for the
 * event loop to see, rather than reported as the datagram's failure. */
static PyObject *interrupt_type = NULL, *interrupt_value = NULL, *interrupt_traceback = NULL;

/* Tells failed(address, exception) about the exception set now, and clears it (an interrupt
 * is kept aside instead, see above). */
static void report_failure(PyObject *failed, const struct sockaddr_storage *name,
                           socklen_t length) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value != NULL && traceback != NULL)
        PyException_SetTraceback(value, traceback);
    if (type != NULL && !PyErr_GivenExceptionMatches(type, PyExc_Exception)) {
        if (interrupt_type == NULL) {
            interrupt_type = type;
            interrupt_value = value;
            interrupt_traceback = traceback;
        } else {  /* the first one is raised */
            Py_DECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(traceback);
        }
        return;
    }
    PyObject *address = name == NULL ? Py_NewRef(Py_None) : address_tuple(name, length);
    if (address == NULL) {
        PyErr_Clear();
        address = Py_NewRef(Py_None);
    }
    PyObject *returned = PyObject_CallFunctionObjArgs(
        failed, address, value != NULL ? value : Py_None, NULL);
    if (returned == NULL)
        PyErr_WriteUnraisable(failed);
    Py_XDECREF(returned);
    Py_DECREF(address);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
}

static int set_holding(PyObject *holder, PyObject *value) {
    if (fields_is(holder, &HoldingFieldsType, FIELDS_KNOWN_HOLDING)) {
        ((HoldingFields *)holder)->holding = value == Py_True;  /* in place */
        return 0;
    }
    return PyObject_SetAttr(holder, read_names_interned[R_HOLDING], value);
}

/* The C address a Python int gives (libsrtp's functions): the last one read is kept with its
 * object, which the event loop's reader callback passes again at every wake-up. */
typedef struct {
    PyObject *object;  /* owned: its value cannot change while kept */
    unsigned long long address;
} KnownAddress;

static KnownAddress known_unprotect, known_unprotect_rtcp;

static unsigned long long address_of(KnownAddress *known, PyObject *object) {
    if (object == known->object)
        return known->address;
    unsigned long long address = PyLong_AsUnsignedLongLong(object);
    if (address == (unsigned long long)-1 && PyErr_Occurred())
        return address;
    Py_XSETREF(known->object, Py_NewRef(object));
    known->address = address;
    return address;
}

static int read_datagrams(int fd, unprotect_fn unprotect, PyObject *routes, PyObject *by_address,
                          PyObject *deliver, PyObject *failed, PyObject *held, PyObject *flush,
                          PyObject *delay, unprotect_fn unprotect_rtcp);

/* Wakes the loop's sleepers whose beat is due (`beat.Wakeups`): periodic work then runs in
 * this wake-up rather than in one of its own. 0, or -1 with an exception. */
static int ride_beat(PyObject *wakeups) {
    double due;
    if (fields_is(wakeups, &WakeupsFieldsType, FIELDS_KNOWN_WAKEUPS)) {
        due = ((WakeupsFields *)wakeups)->due;  /* in place */
    } else {
        PyObject *due_object = PyObject_GetAttr(wakeups, read_names_interned[R_DUE]);
        if (due_object == NULL)
            return -1;
        due = PyFloat_AsDouble(due_object);
        Py_DECREF(due_object);
        if (due == -1.0 && PyErr_Occurred())
            return -1;
    }
    if (clock_now(monotonic) < due)
        return 0;
    PyObject *returned = PyObject_CallMethodNoArgs(wakeups, read_names_interned[R_RIDE]);
    Py_XDECREF(returned);
    return returned == NULL ? -1 : 0;
}

PyObject *media_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 12) {
        PyErr_Format(PyExc_TypeError, "read() takes 12 arguments (%zd given)", nargs);
        return NULL;
    }
    long fd_value = PyLong_AsLong(args[0]);
    if (fd_value == -1 && PyErr_Occurred())
        return NULL;
    if (fd_value < 0 || fd_value > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "read(): not a file descriptor");
        return NULL;
    }
    int fd = (int)fd_value;
    unsigned long long unprotect_address = address_of(&known_unprotect, args[1]),
                       unprotect_rtcp_address = address_of(&known_unprotect_rtcp, args[2]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *routes = args[3], *by_address = args[4], *deliver = args[5], *failed = args[6],
             *held = args[7], *flush = args[8], *delay = args[9], *holder = args[10],
             *wakeups = args[11];
    if (!PyDict_Check(routes) || !PyDict_Check(by_address) || !PyList_Check(held)) {
        PyErr_SetString(PyExc_TypeError, "read(): routes and by_address are dicts, held a list");
        return NULL;
    }
    if (intern_names() < 0)
        return NULL;
    /* Python code that sends while the datagrams are handled queues its copies in `held` */
    if (set_holding(holder, Py_True) < 0)
        return NULL;
    int count = read_datagrams(fd, (unprotect_fn)(uintptr_t)unprotect_address, routes,
                               by_address, deliver, failed, held, flush, delay,
                               (unprotect_fn)(uintptr_t)unprotect_rtcp_address);
    if (count < 0)
        report_failure(failed, NULL, 0);
    if (tallies_apply() < 0)
        report_failure(failed, NULL, 0);
    if (set_holding(holder, Py_False) < 0)
        report_failure(failed, NULL, 0);
    if (PyList_GET_SIZE(held) > 0) {
        PyObject *returned = PyObject_CallNoArgs(flush);
        if (returned == NULL)
            report_failure(failed, NULL, 0);
        Py_XDECREF(returned);
    }
    if (wakeups != Py_None && ride_beat(wakeups) < 0)
        report_failure(failed, NULL, 0);
    if (interrupt_type != NULL) {
        PyErr_Restore(interrupt_type, interrupt_value, interrupt_traceback);
        interrupt_type = interrupt_value = interrupt_traceback = NULL;
        return NULL;
    }
    return PyLong_FromLong(count < 0 ? 0 : count);
}

/* Reads and handles one batch; the number read, or -1 with an exception (reading failed). */
static int read_datagrams(int fd, unprotect_fn unprotect, PyObject *routes, PyObject *by_address,
                          PyObject *deliver, PyObject *failed, PyObject *held, PyObject *flush,
                          PyObject *delay, unprotect_fn unprotect_rtcp) {
    int timed = delay != Py_None;
    if (!read_messages_ready) {
        for (int i = 0; i < READ_BATCH; i++) {
            read_vectors[i].iov_base = read_buffers[i];
            read_vectors[i].iov_len = READ_SIZE;
            struct msghdr *header = &read_messages[i].msg_hdr;
            memset(header, 0, sizeof *header);
            header->msg_name = &read_names[i];
            header->msg_iov = &read_vectors[i];
            header->msg_iovlen = 1;
            header->msg_control = read_controls[i];  /* the socket's SO_TIMESTAMPNS, if on */
        }
        read_messages_ready = 1;
        reset_messages(READ_BATCH);
    }
    int count;
    do {
        count = recvmmsg(fd, read_messages, READ_BATCH, MSG_DONTWAIT, NULL);
    } while (count < 0 && errno == EINTR);
    if (count < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    for (int i = 0; i < count; i++) {
        struct msghdr *header = &read_messages[i].msg_hdr;
        const struct sockaddr_storage *name = &read_names[i];
        socklen_t name_length = header->msg_namelen;
        unsigned char *packet = read_buffers[i];
        Py_ssize_t length = (Py_ssize_t)read_messages[i].msg_len;
        if (header->msg_flags & MSG_TRUNC) {
            read_truncated++;
            continue;
        }
        /* RFC 7983: 128-191 is RTP/RTCP; RTCP packet types are 192-223 (RFC 5761) */
        int media = length > 1 && packet[0] > 127 && packet[0] < 192;
        int rtcp = media && packet[1] > 191 && packet[1] < 224;
        int handled = 0;
        /* the delay is that of forwarded RTP: only an RTP datagram's arrival counts */
        if (timed && media && !rtcp && set_arrived(delay, arrival_ns(header)) < 0)
            handled = -1;
        if (handled == 0 && media && length >= (rtcp ? 8 : 12)) {
            PyObject *key = address_key(name, name_length);
            if (key != NULL) {
                PyObject *route = PyDict_GetItemWithError(routes, key);  /* borrowed */
                Py_DECREF(key);
                if (route != NULL) {
                    Py_INCREF(route);
                    handled = read_media(route, by_address, packet, length,
                                         rtcp ? unprotect_rtcp : unprotect, rtcp,
                                         rtcp ? 0 : kernel_stamp_ns(header), fd, name,
                                         name_length);
                    Py_DECREF(route);
                } else if (PyErr_Occurred()) {
                    handled = -1;
                }
            } else if (PyErr_Occurred()) {
                handled = -1;
            }
        }
        if (handled == 0) {
            PyObject *data = PyBytes_FromStringAndSize((const char *)packet, length);
            PyObject *address = data == NULL ? NULL : address_tuple(name, name_length);
            PyObject *returned = address == NULL ? NULL :
                PyObject_CallFunctionObjArgs(deliver, data, address, NULL);
            handled = returned == NULL ? -1 : 1;
            Py_XDECREF(returned);
            Py_XDECREF(address);
            Py_XDECREF(data);
        }
        if (handled < 0)
            report_failure(failed, name, name_length);
        if (PyList_GET_SIZE(held) > 0) {
            PyObject *returned = PyObject_CallNoArgs(flush);
            if (returned == NULL)
                report_failure(failed, name, name_length);
            Py_XDECREF(returned);
        }
        if (timed) {
            unsigned long long copies = take_fan_sent();
            if (copies > 0) {
                PyObject *sent = PyLong_FromUnsignedLongLong(copies);
                PyObject *returned = sent == NULL ? NULL : PyObject_CallMethodObjArgs(
                    delay, read_names_interned[R_SENT_MANY], sent, NULL);
                if (returned == NULL)
                    report_failure(failed, name, name_length);
                Py_XDECREF(returned);
                Py_XDECREF(sent);
            }
            if (media && !rtcp && set_arrived(delay, 0) < 0)
                report_failure(failed, name, name_length);
        }
    }
    reset_messages(count);
    return count;
}

PyObject *media_read_counts(PyObject *self, PyObject *args) {
    return Py_BuildValue("(KKKK)", read_truncated, read_unprotect_failed, feedback_sent,
                         feedback_unsent);
}
