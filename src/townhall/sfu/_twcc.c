/* Transport-wide congestion control feedback in C (part of townhall.sfu._fastsend).
 *
 *     twcc_feedback(data, history, state, burst_ms, window_ms, min_packets)
 *         -> (groups, newest_ms, delivered)
 *
 * does for one RTCP transport feedback packet what twcc.parse_feedback, TwccSender.feedback and
 * the per-packet part of congestion.DelayBasedEstimate do in Python: it reads the packet (the
 * same checks and ValueError texts), matches each reported arrival with the send time and size
 * in `history` (TwccSender.history, records of TwccSent), groups the matched packets by send
 * time (packets sent within `burst_ms` of a group's first form one group) and keeps the window
 * of delivered packets (the last `window_ms` of arrivals).
 *
 * It returns the groups the packet completed, flattened as [last send, last arrival, ...] in
 * milliseconds, for DelayBasedEstimate.group; the arrival time of the last matched packet (None
 * if none matched: the feedback changes nothing); and the delivered rate in bit/s over the
 * window (None with fewer than `min_packets` packets or under half a window). A malformed packet
 * raises ValueError before anything changes.
 *
 * `state` is a bytearray of TWCC_STATE_SIZE bytes (the module constant) that TwccSender keeps
 * for the estimate: the open group and the delivered window, a ring of DELIVERED_SLOTS packets
 * (when it is full the oldest packets leave the window early, and the rate is over what it
 * holds: past DELIVERED_SLOTS packets in half a window, 8,192 a second).
 */

#include "_twcc.h"

#include <string.h>

#define DELIVERED_SLOTS 2048
#define MAX_COUNT 65536

typedef struct {
    double arrival;
    int64_t size;
} Delivered;

typedef struct {
    double first_send, last_send, last_arrival;
    int64_t has_group;
    int64_t head, count, bytes;
    int64_t overflowed;  /* the ring was full: the window holds less than window_ms */
    Delivered delivered[DELIVERED_SLOTS];
} EstimateState;

const Py_ssize_t twcc_state_size = (Py_ssize_t)sizeof(EstimateState);

/* One packet's status symbol and arrival time (µs), for the packet being read. */
static unsigned char symbols[MAX_COUNT];
static int64_t arrivals[MAX_COUNT];

Py_ssize_t twcc_history_size(PyObject *history) {
    if (!PyByteArray_Check(history))
        return 0;
    Py_ssize_t bytes = PyByteArray_GET_SIZE(history);
    if (bytes % (Py_ssize_t)sizeof(TwccSent) != 0)
        return 0;
    Py_ssize_t records = bytes / (Py_ssize_t)sizeof(TwccSent);
    if (records == 0 || (records & (records - 1)) != 0)
        return 0;
    return records;
}

static int malformed(const char *message) {
    PyErr_SetString(PyExc_ValueError, message);
    return -1;
}

/* Reads the packet into symbols[] and arrivals[]; 0, or -1 with ValueError set. */
static int read_feedback(const unsigned char *p, Py_ssize_t size, long *base, long *count) {
    if (size < 20)
        return malformed("RTCP transport feedback is truncated");
    *base = (p[12] << 8) | p[13];
    *count = (p[14] << 8) | p[15];
    long reference = ((long)p[16] << 16) | (p[17] << 8) | p[18];
    if (reference & 0x800000)
        reference -= 0x1000000;
    Py_ssize_t pos = 20;
    long read = 0;
    while (read < *count) {
        if (pos + 2 > size)
            return malformed("RTCP transport feedback is truncated in its status chunks");
        unsigned int chunk = ((unsigned int)p[pos] << 8) | p[pos + 1];
        pos += 2;
        if (!(chunk & 0x8000)) {  /* run length */
            unsigned char symbol = (unsigned char)((chunk >> 13) & 0x3);
            for (long run = chunk & 0x1FFF; run > 0 && read < *count; run--)
                symbols[read++] = symbol;
        } else if (!(chunk & 0x4000)) {  /* fourteen 1-bit symbols */
            for (int i = 0; i < 14 && read < *count; i++)
                symbols[read++] = (unsigned char)((chunk >> (13 - i)) & 0x1);
        } else {  /* seven 2-bit symbols */
            for (int i = 0; i < 7 && read < *count; i++)
                symbols[read++] = (unsigned char)((chunk >> (12 - 2 * i)) & 0x3);
        }
    }
    int64_t arrival = (int64_t)reference * 64000;
    for (long i = 0; i < *count; i++) {
        switch (symbols[i]) {
        case 0:
            break;
        case 1:
            if (pos + 1 > size)
                return malformed("RTCP transport feedback is truncated in its deltas");
            arrival += (int64_t)p[pos] * 250;
            pos += 1;
            break;
        case 2:
            if (pos + 2 > size)
                return malformed("RTCP transport feedback is truncated in its deltas");
            arrival += (int64_t)(int16_t)((p[pos] << 8) | p[pos + 1]) * 250;
            pos += 2;
            break;
        default:
            return malformed("RTCP transport feedback has a reserved status symbol");
        }
        arrivals[i] = arrival;
    }
    return 0;
}

/* DelayBasedEstimate.packet: one matched packet into the delivered window and the groups. */
static int take_packet(EstimateState *state, double send_ms, double arrival_ms, int64_t size,
                       double burst_ms, PyObject *groups) {
    if (state->count == DELIVERED_SLOTS) {
        state->overflowed = 1;
        state->bytes -= state->delivered[state->head].size;
        state->head = (state->head + 1) % DELIVERED_SLOTS;
        state->count--;
    }
    Delivered *slot = &state->delivered[(state->head + state->count) % DELIVERED_SLOTS];
    slot->arrival = arrival_ms;
    slot->size = size;
    state->count++;
    state->bytes += size;
    if (state->has_group) {
        if (send_ms - state->first_send <= burst_ms) {
            if (send_ms > state->last_send)
                state->last_send = send_ms;
            if (arrival_ms > state->last_arrival)
                state->last_arrival = arrival_ms;
            return 0;
        }
        PyObject *send = PyFloat_FromDouble(state->last_send);
        PyObject *arrival = PyFloat_FromDouble(state->last_arrival);
        int failed = send == NULL || arrival == NULL || PyList_Append(groups, send) < 0 ||
                     PyList_Append(groups, arrival) < 0;
        Py_XDECREF(send);
        Py_XDECREF(arrival);
        if (failed)
            return -1;
    }
    state->has_group = 1;
    state->first_send = state->last_send = send_ms;
    state->last_arrival = arrival_ms;
    return 0;
}

/* DelayBasedEstimate.delivered: bit/s over the window, or a negative number for none. */
static double delivered_rate(EstimateState *state, double window_ms, long min_packets) {
    if (state->count == 0)
        return -1.0;
    double newest = state->delivered[(state->head + state->count - 1) % DELIVERED_SLOTS].arrival;
    while (state->count && state->delivered[state->head].arrival < newest - window_ms) {
        state->bytes -= state->delivered[state->head].size;
        state->head = (state->head + 1) % DELIVERED_SLOTS;
        state->count--;
    }
    double span = newest - state->delivered[state->head].arrival;
    int overflowed = (int)state->overflowed;
    state->overflowed = 0;
    if (state->count < min_packets || span <= 0.0 || (span < window_ms / 2 && !overflowed))
        return -1.0;
    return (double)(state->bytes * 8000) / span;
}

PyObject *twcc_feedback(PyObject *self, PyObject *args) {
    Py_buffer data;
    PyObject *history, *state_object;
    double burst_ms, window_ms;
    long min_packets;
    if (!PyArg_ParseTuple(args, "y*O!O!ddl", &data, &PyByteArray_Type, &history,
                          &PyByteArray_Type, &state_object, &burst_ms, &window_ms,
                          &min_packets))
        return NULL;
    Py_ssize_t records = twcc_history_size(history);
    if (records == 0 || PyByteArray_GET_SIZE(state_object) != twcc_state_size) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_TypeError, "twcc_feedback: history or state of the wrong size");
        return NULL;
    }
    long base, count;
    int status = read_feedback(data.buf, data.len, &base, &count);
    PyBuffer_Release(&data);
    if (status < 0)
        return NULL;
    const TwccSent *sent = (const TwccSent *)PyByteArray_AS_STRING(history);
    EstimateState *state = (EstimateState *)PyByteArray_AS_STRING(state_object);
    PyObject *groups = PyList_New(0);
    if (groups == NULL)
        return NULL;
    int matched = 0;
    double newest = 0.0;
    for (long i = 0; i < count; i++) {
        if (symbols[i] == 0)
            continue;
        long sequence = (base + i) & 0xFFFF;
        const TwccSent *record = &sent[sequence & (records - 1)];
        if (record->sequence != sequence)
            continue;  /* sent too long ago, or never */
        matched = 1;
        newest = (double)arrivals[i] / 1000.0;
        if (take_packet(state, record->sent_at * 1000.0, newest, record->size, burst_ms,
                        groups) < 0) {
            Py_DECREF(groups);
            return NULL;
        }
    }
    if (!matched)
        return Py_BuildValue("(NOO)", groups, Py_None, Py_None);
    double rate = delivered_rate(state, window_ms, min_packets);
    if (rate < 0)
        return Py_BuildValue("(NdO)", groups, newest, Py_None);
    return Py_BuildValue("(Ndd)", groups, newest, rate);
}
