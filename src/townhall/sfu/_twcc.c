/* Transport-wide congestion control feedback and the send-side estimate in C (part of
 * townhall.sfu._fastsend).
 *
 *     twcc_feedback(data, history, state, parameters) -> estimate in bit/s, or None
 *
 * does for one RTCP transport feedback packet what twcc.parse_feedback, TwccSender.feedback and
 * congestion.DelayBasedEstimate do in Python: it reads the packet (the same checks and
 * ValueError texts), matches each reported arrival with the send time and size in `history`
 * (TwccSender.history, records of TwccSent), groups the matched packets by send time (packets
 * sent within BURST_MS of a group's first form one group), keeps the window of delivered packets
 * (the last DELIVERED_WINDOW_MS of arrivals, or more, up to DELIVERED_MAX_WINDOW_MS, while that
 * holds fewer than DELIVERED_MIN_PACKETS), and runs the delay-based estimate: the trendline
 * over the groups, overuse detection with its adaptive threshold, and the rate control on the
 * delivered rate. Every step is DelayBasedEstimate's, in the same order of floating-point
 * operations, so both give the same numbers (a twin test checks it).
 *
 * It returns None when no reported packet matched (nothing changes), while there is no
 * estimate yet, or when the window gives no delivered rate (too few packets in it). A malformed
 * packet raises ValueError before anything changes.
 *
 * `state` is a bytearray of TWCC_STATE_SIZE zero bytes (the module constant) that TwccSender
 * keeps for the estimate; the delivered window in it is a ring of DELIVERED_SLOTS packets, as is
 * congestion.py's (DELIVERED_SLOTS there): when it is full the oldest packets leave the window
 * early, and the rate is over what it holds (past DELIVERED_SLOTS packets in half a window,
 * 8,192 a second). `parameters` is congestion.py's constants packed as doubles (Parameters
 * below, twcc._PARAMETERS), so they have one home.
 */

#include "_twcc.h"
#include "_bytes.h"

#include <stddef.h>
#include <math.h>
#include <string.h>

#define DELIVERED_SLOTS 2048
#define MAX_COUNT 65536
/* The most groups the trendline can be asked to fit (congestion.WINDOW is 20). */
#define MAX_WINDOW 64

/* congestion.py's constants, in this order (twcc._PARAMETERS packs them). */
typedef struct {
    double burst_ms, delivered_window_ms, delivered_min_packets, window, smoothing, gain,
        threshold, min_threshold, max_threshold, k_up, k_down, outlier, threshold_step_ms,
        max_deltas, overuse_time_ms, delivered_share, decrease, increase_per_second, max_growth,
        growth_headroom, rtt_ms, drop_quiet_ms, delivered_max_window_ms;
} Parameters;

enum { NORMAL = 0, UNDERUSE = 1, OVERUSE = 2 };  /* congestion.Usage */

typedef struct {
    double arrival;
    int64_t size;
} Delivered;

typedef struct {
    double x, y;
} Point;

typedef struct {
    /* the open group */
    double first_send, last_send, last_arrival;
    int64_t has_group;
    /* the delivered window */
    int64_t head, count, bytes;
    int64_t overflowed;  /* the ring was full: the window holds less than window_ms */
    Delivered delivered[DELIVERED_SLOTS];
    /* DelayBasedEstimate's fields; a has_ flag stands for None */
    int64_t started;  /* the fields below that do not start at zero are set */
    int64_t has_previous;
    double previous_send, previous_arrival, arrival_origin;
    double accumulated, smoothed;
    Point points[MAX_WINDOW];
    int64_t points_head, points_count;
    double previous_trend, threshold;
    int64_t has_threshold_at;
    double threshold_at, overuse_time;
    int64_t overuse_count, pending_groups;
    double pending_send;
    int64_t has_dropped;
    double dropped_at;
    int64_t has_updated;
    double updated_at;
    int64_t deltas, usage, has_estimate;
    double estimate;
    /* the last estimate the socket's reader handed to Python, and when (twcc_news) */
    int64_t has_reported;
    double reported, reported_at;
    /* the delivered rate the last feedback gave (bit/s; 0 or less: none). Last, so Python
     * reads it from the state's last 8 bytes (TwccSender.delivered) */
    double delivered_rate;
} EstimateState;

_Static_assert(offsetof(EstimateState, delivered_rate) + sizeof(double) == sizeof(EstimateState),
               "the delivered rate is the state's last 8 bytes");

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

/* DelayBasedEstimate.group: a group of packets is complete (its last send and arrival). */
static void take_group(EstimateState *state, const Parameters *k, double send_ms,
                       double arrival_ms) {
    if (!state->has_previous) {
        state->has_previous = 1;
        state->previous_send = send_ms;
        state->previous_arrival = arrival_ms;
        state->arrival_origin = arrival_ms;
        return;
    }
    double send_delta = send_ms - state->previous_send;
    double variation = (arrival_ms - state->previous_arrival) - send_delta;
    state->previous_send = send_ms;
    state->previous_arrival = arrival_ms;
    state->deltas++;
    state->accumulated += variation;
    state->smoothed = k->smoothing * state->smoothed + (1 - k->smoothing) * state->accumulated;
    int64_t window = (int64_t)k->window;
    Point *point;
    if (state->points_count < window) {
        point = &state->points[(state->points_head + state->points_count) % window];
        state->points_count++;
    } else {
        point = &state->points[state->points_head];
        state->points_head = (state->points_head + 1) % window;
    }
    point->x = arrival_ms - state->arrival_origin;
    point->y = state->smoothed;
    state->pending_send += send_delta;
    state->pending_groups++;
}

/* DelayBasedEstimate.packet: one matched packet into the delivered window and the groups. */
static void take_packet(EstimateState *state, const Parameters *k, double send_ms,
                        double arrival_ms, int64_t size) {
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
        if (send_ms - state->first_send <= k->burst_ms) {
            if (send_ms > state->last_send)
                state->last_send = send_ms;
            if (arrival_ms > state->last_arrival)
                state->last_arrival = arrival_ms;
            return;
        }
        take_group(state, k, state->last_send, state->last_arrival);
    }
    state->has_group = 1;
    state->first_send = state->last_send = send_ms;
    state->last_arrival = arrival_ms;
}

/* DelayBasedEstimate.delivered: bit/s over the window, or a negative number for none. */
static double delivered_rate(EstimateState *state, const Parameters *k) {
    if (state->count == 0)
        return -1.0;
    double newest = state->delivered[(state->head + state->count - 1) % DELIVERED_SLOTS].arrival;
    while (state->count &&
           state->delivered[state->head].arrival < newest - k->delivered_window_ms &&
           ((double)state->count > k->delivered_min_packets ||
            state->delivered[state->head].arrival < newest - k->delivered_max_window_ms)) {
        state->bytes -= state->delivered[state->head].size;
        state->head = (state->head + 1) % DELIVERED_SLOTS;
        state->count--;
    }
    double span = newest - state->delivered[state->head].arrival;
    int overflowed = (int)state->overflowed;
    state->overflowed = 0;
    if ((double)state->count < k->delivered_min_packets || span <= 0.0 ||
        (span < k->delivered_window_ms / 2 && !overflowed))
        return -1.0;
    return (double)(state->bytes * 8000) / span;
}

/* congestion._slope: the least-squares slope of the points, oldest first. */
static double slope(const EstimateState *state, const Parameters *k) {
    int64_t window = (int64_t)k->window, count = state->points_count;
    double sum_x = 0.0, sum_y = 0.0;
    for (int64_t i = 0; i < count; i++) {
        const Point *point = &state->points[(state->points_head + i) % window];
        sum_x += point->x;
        sum_y += point->y;
    }
    double mean_x = sum_x / (double)count, mean_y = sum_y / (double)count;
    double numerator = 0.0, denominator = 0.0;
    for (int64_t i = 0; i < count; i++) {
        const Point *point = &state->points[(state->points_head + i) % window];
        double dx = point->x - mean_x;
        numerator += dx * (point->y - mean_y);
        denominator += dx * dx;
    }
    return denominator != 0.0 ? numerator / denominator : 0.0;
}

/* DelayBasedEstimate._detect */
static void detect(EstimateState *state, const Parameters *k, double trend, double send_delta,
                   int64_t groups, double now_ms) {
    double deltas = (double)state->deltas < k->max_deltas ? (double)state->deltas : k->max_deltas;
    double modified = deltas * trend * k->gain;
    if (modified > state->threshold) {
        state->overuse_time += send_delta;
        state->overuse_count += groups;
        if (state->overuse_time > k->overuse_time_ms && state->overuse_count > 1 &&
            trend >= state->previous_trend) {
            state->overuse_time = 0.0;
            state->overuse_count = 0;
            state->usage = OVERUSE;
        }
    } else if (modified < -state->threshold) {
        state->overuse_time = 0.0;
        state->overuse_count = 0;
        state->usage = UNDERUSE;
    } else {
        state->overuse_time = 0.0;
        state->overuse_count = 0;
        state->usage = NORMAL;
    }
    state->previous_trend = trend;
    if (!state->has_threshold_at) {
        state->has_threshold_at = 1;
        state->threshold_at = now_ms;
    }
    double size = fabs(modified);
    if (size < state->threshold + k->outlier) {
        double gain = size < state->threshold ? k->k_down : k->k_up;
        double elapsed = now_ms - state->threshold_at;
        elapsed = elapsed > 0.0 ? elapsed : 0.0;
        elapsed = elapsed < k->threshold_step_ms ? elapsed : k->threshold_step_ms;
        state->threshold += gain * (size - state->threshold) * elapsed;
        double bounded = state->threshold > k->min_threshold ? state->threshold : k->min_threshold;
        state->threshold = bounded < k->max_threshold ? bounded : k->max_threshold;
    }
    state->threshold_at = now_ms;
}

/* DelayBasedEstimate.update with the delivered rate (negative: none); 1 with the estimate in
 * *estimate, 0 while there is none or there is no delivered rate. */
static int update(EstimateState *state, const Parameters *k, double now_ms, double rate,
                  double *estimate) {
    state->delivered_rate = rate;
    if (state->pending_groups && state->points_count >= 2) {
        detect(state, k, slope(state, k), state->pending_send, state->pending_groups, now_ms);
        state->pending_send = 0.0;
        state->pending_groups = 0;
    }
    if (rate >= 0.0) {
        double elapsed = 0.0;
        if (state->has_updated) {
            elapsed = now_ms - state->updated_at;
            elapsed = elapsed > 0.0 ? elapsed : 0.0;
        }
        state->has_updated = 1;
        state->updated_at = now_ms;
        int quiet = !state->has_dropped || now_ms - state->dropped_at >= k->drop_quiet_ms;
        if (state->usage == OVERUSE) {
            if (!state->has_dropped || now_ms - state->dropped_at >= k->rtt_ms) {
                state->estimate = k->decrease * rate;
                state->has_estimate = 1;
                state->has_dropped = 1;
                state->dropped_at = now_ms;
            }
            state->usage = NORMAL;  /* one decrease per overuse signal */
        } else {
            double value = state->estimate;
            if (!state->has_estimate) {
                value = k->delivered_share * rate;
            } else if (state->usage == NORMAL) {
                double grown = value * pow(k->increase_per_second, elapsed / 1000);
                double ceiling = k->max_growth * rate + k->growth_headroom;
                double bounded = grown < ceiling ? grown : ceiling;
                value = value >= bounded ? value : bounded;
            }
            if (quiet) {
                double floor = k->delivered_share * rate;
                value = value >= floor ? value : floor;
            }
            state->estimate = value;
            state->has_estimate = 1;
        }
    }
    if (rate < 0.0)
        return 0;  /* nothing new: an estimate from before would be taken for a fresh one */
    *estimate = state->estimate;
    return (int)state->has_estimate;
}

int twcc_estimate(const unsigned char *data, Py_ssize_t length, PyObject *history,
                  PyObject *state_object, const void *parameters, Py_ssize_t parameters_length,
                  double *estimate) {
    Py_ssize_t records = PyByteArray_Check(history) ? twcc_history_size(history) : 0;
    Parameters k;
    int fits = parameters_length == (Py_ssize_t)sizeof(Parameters);
    if (fits)
        memcpy(&k, parameters, sizeof(Parameters));
    if (records == 0 || !PyByteArray_Check(state_object) ||
            PyByteArray_GET_SIZE(state_object) != twcc_state_size || !fits ||
            k.window < 2 || k.window > MAX_WINDOW) {
        PyErr_SetString(PyExc_TypeError,
                        "transport feedback: history, state or parameters of the wrong size");
        return -1;
    }
    long base, count;
    if (read_feedback(data, length, &base, &count) < 0)
        return -1;
    const TwccSent *sent = (const TwccSent *)PyByteArray_AS_STRING(history);
    EstimateState *state = (EstimateState *)PyByteArray_AS_STRING(state_object);
    if (!state->started) {
        state->started = 1;
        state->threshold = k.threshold;
    }
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
        take_packet(state, &k, record->sent_at * 1000.0, newest, record->size);
    }
    if (!matched)
        return 0;
    return update(state, &k, newest, delivered_rate(state, &k), estimate);
}

PyObject *twcc_feedback(PyObject *self, PyObject *args) {
    Py_buffer data, parameters;
    PyObject *history, *state_object;
    if (!PyArg_ParseTuple(args, "y*O!O!y*", &data, &PyByteArray_Type, &history,
                          &PyByteArray_Type, &state_object, &parameters))
        return NULL;
    double estimate;
    int found = twcc_estimate(data.buf, data.len, history, state_object, parameters.buf,
                              parameters.len, &estimate);
    PyBuffer_Release(&data);
    PyBuffer_Release(&parameters);
    if (found < 0)
        return NULL;
    if (found == 0)
        Py_RETURN_NONE;
    /* Python has this one: the reader's next one is news whatever it is */
    ((EstimateState *)PyByteArray_AS_STRING(state_object))->has_reported = 0;
    return PyFloat_FromDouble(estimate);
}

/* What of the reader's estimates goes to Python (twcc_news): any fall at once (Python decides
 * whether it is a drop, and a fall it did not hear of would leave it deciding on a higher rate
 * than the link's); a rise once it is REPORT_RISE over the last one handed; and any estimate,
 * a small rise or the same again, once the last one handed is REPORT_REFRESH old (s). Python's
 * Estimate counts an estimate as stale only after seconds (bandwidth.FEEDBACK_EXPIRY), and
 * chooses layers twice a second on rates that differ by several times: a rise of a few
 * percent held for under a second changes no layer, while each call into Python costs tens of
 * microseconds (browsers send feedback ten times a second on each receiving connection, and
 * a steady estimate rises in small steps). */
#define REPORT_REFRESH 1.0
#define REPORT_RISE 0.05

void twcc_unreported(PyObject *state_object) {
    if (PyByteArray_Check(state_object) && PyByteArray_GET_SIZE(state_object) == twcc_state_size)
        ((EstimateState *)PyByteArray_AS_STRING(state_object))->has_reported = 0;
}

int twcc_news(PyObject *state_object, double estimate, double now) {
    if (!PyByteArray_Check(state_object) ||
            PyByteArray_GET_SIZE(state_object) != twcc_state_size)
        return 1;
    EstimateState *state = (EstimateState *)PyByteArray_AS_STRING(state_object);
    if (state->has_reported && estimate >= state->reported &&
            estimate < state->reported * (1 + REPORT_RISE) && now >= state->reported_at &&
            now - state->reported_at < REPORT_REFRESH)
        return 0;
    state->has_reported = 1;
    state->reported = estimate;
    state->reported_at = now;
    return 1;
}

/* --- feedback to a publisher ----------------------------------------------------------------
 *
 *     twcc_take(arrivals, now) -> [feedback packets]
 *
 * TwccReceiver.feedback in C (twcc_take_feedback, which the socket's reader calls and sends
 * what it gives itself): which packets are due, from the state in the arrivals' header, which
 * it updates; then the feedback about them from their arrivals (TwccReceiver.arrivals; a slot
 * holding another number, or an arrival too old, counts as lost), cut where a receive delta
 * would not fit in a packet (twcc._parts) and written as build_feedback writes them. The same
 * bytes and the same header as the Python path (a twin test checks it). */

#define MAX_DELTA 0x7FFF
/* The most packets one feedback packet reports (twcc.FEEDBACK_MOST). */
#define FEEDBACK_MOST 400
/* An arrival that did not come (or is too old to report). */
#define LOST INT64_MIN

/* Python's a // b for b > 0. */
static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

/* One feedback packet about `n` packets from `base` (arrivals in µs, or LOST), as
 * twcc.build_feedback writes it; a new bytes object, or NULL with an exception. */
static PyObject *feedback_packet(unsigned base, const int64_t *arrivals, int n, unsigned number,
                                 uint32_t sender_ssrc, uint32_t media_ssrc) {
    int64_t reference = 0;
    for (int i = 0; i < n; i++) {
        if (arrivals[i] != LOST) {
            reference = floor_div(arrivals[i], 64000);
            break;
        }
    }
    /* RTCP header and SSRCs (12), base, count, reference time and number (8), the status
     * chunks, the deltas (2 bytes at most each), padding to 32 bits */
    int chunks = (n + 6) / 7;
    Py_ssize_t fixed = 20 + 2 * (Py_ssize_t)chunks;
    unsigned char *out = PyMem_Malloc((size_t)(fixed + 2 * (Py_ssize_t)n + 4));
    if (out == NULL)
        return PyErr_NoMemory();
    Py_ssize_t length = fixed;
    int64_t previous = reference * 64000;
    unsigned value = 0xC000;
    for (int i = 0; i < n; i++) {
        unsigned symbol = 0;
        if (arrivals[i] != LOST) {
            int64_t delta = floor_div(arrivals[i] - previous, 250);
            previous += delta * 250;
            if (delta >= 0 && delta <= 255) {
                symbol = 1;
                out[length++] = (unsigned char)delta;
            } else if (delta >= -MAX_DELTA - 1 && delta <= MAX_DELTA) {
                symbol = 2;
                put16(out + length, (unsigned)(delta & 0xFFFF));
                length += 2;
            } else {
                PyMem_Free(out);
                return PyErr_Format(PyExc_ValueError, "a receive delta of %lld µs does not fit",
                                    (long long)(delta * 250));
            }
        }
        value |= symbol << (12 - 2 * (i % 7));
        if (i % 7 == 6 || i == n - 1) {
            put16(out + 20 + 2 * (i / 7), value);
            value = 0xC000;
        }
    }
    while (length % 4 != 0)
        out[length++] = 0;
    out[0] = 0x8F;
    out[1] = 205;
    put16(out + 2, (unsigned)(length / 4 - 1));
    put32(out + 4, sender_ssrc);
    put32(out + 8, media_ssrc);
    put16(out + 12, base & 0xFFFF);
    put16(out + 14, (unsigned)n);
    put32(out + 16, (uint32_t)(((uint64_t)reference & 0xFFFFFF) << 8 | (number & 0xFF)));
    PyObject *packet = PyBytes_FromStringAndSize((const char *)out, length);
    PyMem_Free(out);
    return packet;
}

_Static_assert(sizeof(ArrivalsHeader) == 64, "TwccReceiver.arrivals' header is 64 bytes");

/* The feedback packets about the `count` packets numbered from `base`, from `records` (the
 * arrivals after the header), numbered from `number`: a new list, or NULL with an exception. */
static PyObject *report_packets(const char *records, unsigned base, int count, long long oldest,
                                unsigned number, uint32_t sender_ssrc, uint32_t media_ssrc) {
    int64_t arrivals[ARRIVALS];
    for (int i = 0; i < count; i++) {
        unsigned sequence = (base + (unsigned)i) & 0xFFFF;
        Arrival record;
        memcpy(&record, records + (sequence & (ARRIVALS - 1)) * sizeof record, sizeof record);
        arrivals[i] = record.sequence == (int32_t)sequence && record.at_us >= oldest
            ? record.at_us : LOST;
    }
    PyObject *packets = PyList_New(0);
    if (packets == NULL)
        return NULL;
    /* cut where a delta from the last arrival would not fit, and after every FEEDBACK_MOST
     * (twcc._parts) */
    int start = 0, have_previous = 0;
    int64_t previous = 0;
    for (int i = 0; i <= count; i++) {
        int cut = i == count || i - start == FEEDBACK_MOST;
        if (!cut && arrivals[i] != LOST) {
            int64_t arrival = arrivals[i];
            if (!have_previous) {
                previous = floor_div(arrival, 64000) * 64000;
                have_previous = 1;
            } else if (arrival - previous < -(int64_t)MAX_DELTA * 250 ||
                       arrival - previous > (int64_t)MAX_DELTA * 250) {
                cut = 1;
            }
        }
        if (cut && i > start) {
            PyObject *packet = feedback_packet((base + (unsigned)start) & 0xFFFF,
                                               arrivals + start, i - start, number++,
                                               sender_ssrc, media_ssrc);
            if (packet == NULL || PyList_Append(packets, packet) < 0) {
                Py_XDECREF(packet);
                Py_DECREF(packets);
                return NULL;
            }
            Py_DECREF(packet);
            start = i;
            have_previous = i < count && arrivals[i] != LOST;
            if (have_previous)
                previous = floor_div(arrivals[i], 64000) * 64000;
        }
        if (i < count && arrivals[i] != LOST) {
            int64_t offset = (arrivals[i] - previous) % 250;
            previous = arrivals[i] - (offset < 0 ? offset + 250 : offset);
        }
    }
    return packets;
}

/* TwccReceiver._take step for step (a twin test holds the two to the same bytes and header). */
PyObject *twcc_take_feedback(char *buffer, double now) {
    ArrivalsHeader header;
    memcpy(&header, buffer, sizeof header);
    if (header.recorded == header.reported || header.highest < 0)
        return PyList_New(0);
    header.reported = header.recorded;
    long start = header.next < 0 ? header.first : header.next;
    long span = (header.highest - start) & 0xFFFF;
    if (span >= 0x8000) {  /* only packets reported already (as lost) came since */
        memcpy(buffer, &header, sizeof header);
        return PyList_New(0);
    }
    if (span >= ARRIVALS) {
        start = (header.highest - ARRIVALS + 1) & 0xFFFF;
        span = ARRIVALS - 1;
    }
    int64_t now_us = (int64_t)(now * 1000000.0);
    PyObject *packets = report_packets(buffer + sizeof header, (unsigned)start, (int)span + 1,
                                       (long long)(now_us - ARRIVAL_AGE_US),
                                       (unsigned)header.count, header.sender_ssrc,
                                       header.media_ssrc);
    if (packets == NULL)
        return NULL;
    header.next = (int32_t)((header.highest + 1) & 0xFFFF);
    header.count = (int32_t)(((int64_t)header.count + PyList_GET_SIZE(packets)) & 0x7FFFFFFF);
    header.last_us = now_us;
    memcpy(buffer, &header, sizeof header);
    return packets;
}

PyObject *twcc_take(PyObject *self, PyObject *args) {
    PyObject *arrivals;
    double now;
    if (!PyArg_ParseTuple(args, "O!d", &PyByteArray_Type, &arrivals, &now))
        return NULL;
    if (PyByteArray_GET_SIZE(arrivals) !=
            (Py_ssize_t)(sizeof(ArrivalsHeader) + ARRIVALS * sizeof(Arrival))) {
        PyErr_SetString(PyExc_TypeError, "twcc_take(): arrivals is TwccReceiver.arrivals");
        return NULL;
    }
    return twcc_take_feedback(PyByteArray_AS_STRING(arrivals), now);
}
