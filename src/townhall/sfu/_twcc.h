/* Shared by _fastsend.c, _read.c and _twcc.c: what the native piece knows of twcc.py's
 * buffers. */

#ifndef TOWNHALL_TWCC_H
#define TOWNHALL_TWCC_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* One packet in TwccSender.history (a bytearray of these, struct "=dii" in twcc.py): when it
 * was sent (seconds on the router's clock), its size, and its transport-wide sequence number
 * (-1 for a slot never used). */
typedef struct {
    double sent_at;
    int32_t size;
    int32_t sequence;
} TwccSent;

/* TwccReceiver.arrivals (twcc.py): a header, then ARRIVALS records, each slot the packet
 * whose sequence number is the slot's modulo ARRIVALS (structs "=iiiiqiiqqIIii" and "=iq").
 * The header is the feedback's whole state, shared by the Python path and the socket's reader:
 * the extension id (0: not negotiated), the first and highest sequence numbers recorded (-1:
 * none yet), whether the reader records the arrivals and sends the feedback itself, how many
 * arrivals were recorded; the next number to report (-1: none reported yet), the feedback
 * packets made, the arrivals recorded when feedback was last made and when that was (µs on the
 * router's clock); the SSRCs the feedback carries and whether they are known yet. */
typedef struct {
    int32_t extension_id, first, highest, reader;
    int64_t recorded;
    int32_t next, count;
    int64_t reported, last_us;
    uint32_t sender_ssrc, media_ssrc;
    int32_t ssrcs, unused;
} ArrivalsHeader;
typedef struct __attribute__((packed)) {
    int32_t sequence;
    int64_t at_us;
} Arrival;
#define ARRIVALS 1024

/* The size of the estimate's state (a bytearray twcc.py makes; the module's TWCC_STATE_SIZE). */
extern const Py_ssize_t twcc_state_size;

/* The history's record count if `history` is a bytearray of a power of two of them, else 0. */
Py_ssize_t twcc_history_size(PyObject *history);

/* One transport feedback packet (RTPFB 15, `length` bytes) matched against `history` (a
 * TwccSender's bytearray) and run through the estimate whose state is `state` (a bytearray of
 * twcc_state_size) with `parameters` (twcc.parameters()): 1 with the estimate in bit/s in
 * `estimate`, 0 when there is none (nothing matched, or none yet), -1 with ValueError (the
 * packet is malformed; nothing changed) or TypeError (buffers of the wrong size). */
int twcc_estimate(const unsigned char *data, Py_ssize_t length, PyObject *history,
                  PyObject *state, const void *parameters, Py_ssize_t parameters_length,
                  double *estimate);

/* Whether the socket's reader hands the estimate `estimate` that the state `state` gave to
 * Python at `now` (s, the router's clock): not when it is the one it handed last or a rise of
 * under REPORT_RISE on it, that one was handed under REPORT_REFRESH ago, and Python heard
 * nothing from the state since (twcc_feedback). It notes what it hands. At a steady rate most
 * estimates are the one before or a small step up from it. */
int twcc_news(PyObject *state, double estimate, double now);

/* The estimate last handed to Python was not taken: the next one is news, whatever it is. */
void twcc_unreported(PyObject *state);

/* twcc_feedback(data, history, state, parameters) -> estimate or None: see _twcc.c. */
PyObject *twcc_feedback(PyObject *self, PyObject *args);

/* The feedback to a publisher due at `now` (s, the router's clock) from its arrivals
 * (`buffer`, TwccReceiver.arrivals' bytes), as TwccReceiver.feedback makes it: a list of
 * packets, empty when nothing arrived since the last; the header updated. NULL with an
 * exception. */
PyObject *twcc_take_feedback(char *buffer, double now);

/* twcc_take(arrivals, now) -> [feedback packets]: twcc_take_feedback for Python. */
PyObject *twcc_take(PyObject *self, PyObject *args);

/* Least time between two feedback packets the socket's reader sends a publisher, in µs
 * (twcc.FEEDBACK_INTERVAL). */
#define FEEDBACK_INTERVAL_US 100000
/* A record older than this is taken for a lost packet, in µs (twcc._ARRIVAL_AGE). */
#define ARRIVAL_AGE_US 10000000

#endif
