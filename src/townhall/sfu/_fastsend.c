/* townhall.sfu._fastsend: protect RTP packets with libsrtp and send them in one sendmmsg().
 *
 * The optional native piece of the packet path (see native.py). Python builds each consumer's
 * copy of a packet as before; instead of protecting and sending copies one at a time, the UDP
 * socket holds them while one received datagram is handled and hands them here together:
 *
 *     send(fd, protect, [(srtp, packet, sockaddr), ...]) -> number sent
 *
 * `protect` is the address of libsrtp's srtp_protect() and `srtp` the address of an srtp_t,
 * both from pylibsrtp's own cffi binding (its statically linked libsrtp: the sessions aiortc
 * keyed), `sockaddr` a packed struct sockaddr_in or sockaddr_in6. Datagrams the socket cannot
 * take now (EAGAIN) are counted as not sent; a packet libsrtp refuses is skipped.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_BATCH 256
#define PACKET_SIZE 1500
#define MAX_TRAILER 148

typedef int (*protect_fn)(void *session, void *packet, int *length);

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
            if (length > PACKET_SIZE - MAX_TRAILER)
                continue;
            memcpy(buffers[batch], PyBytes_AS_STRING(packet), (size_t)length);
            int protected_length = (int)length;
            if (protect(srtp, buffers[batch], &protected_length) != 0)
                continue;
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
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)
                    break;  /* the socket is full: these are lost, as a full queue loses them */
                offset++;  /* this one datagram failed (say, unreachable); go on */
                continue;
            }
            offset += n;
            sent += n;
        }
    }
    return PyLong_FromSsize_t(sent);
}

static PyMethodDef methods[] = {
    {"send", fastsend_send, METH_VARARGS,
     "send(fd, protect, [(srtp, packet, sockaddr), ...]) -> sent: protect each packet and "
     "send them all with sendmmsg()."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastsend", "libsrtp protect + sendmmsg for many packets.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__fastsend(void) { return PyModule_Create(&module); }
