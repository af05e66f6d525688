/* Shared by _fastsend.c and _read.c: what the socket's reader calls of the fan-out. */

#ifndef TOWNHALL_READ_H
#define TOWNHALL_READ_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define RECEIVE_PYTHON (-1)
#define RECEIVE_ERROR (-2)

/* Producer.forward for one unprotected RTP packet (receive() in _fastsend.c): copies sent,
 * RECEIVE_PYTHON to leave it to the Python path, or RECEIVE_ERROR with an exception set. */
Py_ssize_t receive_packet(PyObject *data, PyObject *layers, double now);

/* Copies the fan-out sent since the last call (take_sent()). */
unsigned long long take_fan_sent(void);

/* read(...): see _read.c. */
PyObject *media_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

/* read_counts() -> (truncated, unprotect failures): datagrams read() dropped. */
PyObject *media_read_counts(PyObject *self, PyObject *args);

#endif
