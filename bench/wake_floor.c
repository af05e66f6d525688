/* The least a forwarder can do per wake-up: the reference for bench/wake_floor.py.
 *
 *     wake_floor PORT SINK_PORT COPIES
 *
 * waits on one UDP socket bound to 127.0.0.1:PORT with epoll, reads every datagram that is
 * there with recvmmsg(), and sends COPIES copies of each RTP packet of payload type 96 to
 * 127.0.0.1:SINK_PORT with one sendmmsg() per batch. Other RTP packets (the layers nobody
 * receives) and datagrams whose first byte is 0 (standing for a consumer's RTCP) are read and
 * not forwarded. No parsing beyond that: what is left is the kernel's part of each wake-up
 * and of each copy. Runs until killed.
 *
 * Built as a shared library (-shared -fPIC -DWAKE_FLOOR_LIBRARY), its wake_floor() takes
 * libsrtp's srtp_unprotect and srtp_protect and the sessions to use them on, from pylibsrtp's
 * own binding (the libsrtp the SFU uses, with OpenSSL's AES): it then unprotects each RTP
 * packet and protects each copy in a session of its own, as an SFU does for each consumer's
 * transport (bench/wake_floor.py sets the sessions up and calls it through ctypes).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#define BATCH 64
#define MAX_COPIES 64
#define SIZE 1500

static unsigned char buffers[BATCH][SIZE];
static struct mmsghdr in[BATCH];
static struct iovec in_vectors[BATCH];
static struct mmsghdr out[BATCH * MAX_COPIES];
static struct iovec out_vectors[BATCH * MAX_COPIES];

static unsigned char copies_buffers[BATCH * MAX_COPIES][SIZE];

typedef int (*srtp_fn)(void *session, void *packet, int *length);

/* Forwards until killed; with unprotect NULL, without SRTP. Returns only on an error. */
int wake_floor(int port, int sink_port, int copies, srtp_fn unprotect, srtp_fn protect,
               void *rx, void **tx);

#ifndef WAKE_FLOOR_LIBRARY
int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: wake_floor PORT SINK_PORT COPIES\n");
        return 2;
    }
    return wake_floor(atoi(argv[1]), atoi(argv[2]), atoi(argv[3]), NULL, NULL, NULL, NULL);
}
#endif

int wake_floor(int port, int sink_port, int copies, srtp_fn unprotect, srtp_fn protect,
               void *rx, void **tx) {
    if (copies < 1 || copies > MAX_COPIES) {
        fprintf(stderr, "wake_floor: COPIES is 1 to %d\n", MAX_COPIES);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct sockaddr_in sink = {.sin_family = AF_INET, .sin_port = htons((uint16_t)sink_port)};
    inet_pton(AF_INET, "127.0.0.1", &local.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &sink.sin_addr);
    if (fd < 0 || bind(fd, (struct sockaddr *)&local, sizeof local) < 0) {
        perror("wake_floor: bind");
        return 1;
    }
    int poll = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
    if (poll < 0 || epoll_ctl(poll, EPOLL_CTL_ADD, fd, &event) < 0) {
        perror("wake_floor: epoll");
        return 1;
    }
    for (int i = 0; i < BATCH; i++) {
        in_vectors[i].iov_base = buffers[i];
        in_vectors[i].iov_len = SIZE;
        in[i].msg_hdr.msg_iov = &in_vectors[i];
        in[i].msg_hdr.msg_iovlen = 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        struct epoll_event ready;
        if (epoll_wait(poll, &ready, 1, -1) < 1)
            continue;
        for (;;) {
            int count = recvmmsg(fd, in, BATCH, MSG_DONTWAIT, NULL);
            if (count < 1)
                break;
            int queued = 0;
            for (int i = 0; i < count; i++) {
                int length = (int)in[i].msg_len;
                if (length < 12 || buffers[i][0] == 0)
                    continue;
                if (unprotect != NULL && unprotect(rx, buffers[i], &length) != 0)
                    continue;
                if ((buffers[i][1] & 0x7F) != 96)
                    continue;
                for (int c = 0; c < copies; c++, queued++) {
                    if (unprotect == NULL) {
                        out_vectors[queued].iov_base = buffers[i];
                        out_vectors[queued].iov_len = (size_t)length;
                    } else {
                        int protected_length = length;
                        memcpy(copies_buffers[queued], buffers[i], (size_t)length);
                        if (protect(tx[c], copies_buffers[queued], &protected_length) != 0) {
                            queued--;
                            continue;
                        }
                        out_vectors[queued].iov_base = copies_buffers[queued];
                        out_vectors[queued].iov_len = (size_t)protected_length;
                    }
                    memset(&out[queued].msg_hdr, 0, sizeof out[queued].msg_hdr);
                    out[queued].msg_hdr.msg_name = &sink;
                    out[queued].msg_hdr.msg_namelen = sizeof sink;
                    out[queued].msg_hdr.msg_iov = &out_vectors[queued];
                    out[queued].msg_hdr.msg_iovlen = 1;
                }
            }
            for (int sent = 0; sent < queued;) {
                int done = sendmmsg(fd, out + sent, queued - sent, 0);
                if (done < 1)
                    break;
                sent += done;
            }
            if (count < BATCH)
                break;
        }
    }
}
