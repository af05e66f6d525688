/* Shared by _fastsend.c and _twcc.c: what the native piece knows of twcc.py's buffers. */

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

/* The size of the estimate's state (a bytearray twcc.py makes; the module's TWCC_STATE_SIZE). */
extern const Py_ssize_t twcc_state_size;

/* The history's record count if `history` is a bytearray of a power of two of them, else 0. */
Py_ssize_t twcc_history_size(PyObject *history);

/* twcc_feedback(data, history, state, parameters) -> estimate or None: see _twcc.c. */
PyObject *twcc_feedback(PyObject *self, PyObject *args);

#endif
