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
 * Built with -DWITH_SRTP (and -lsrtp2), it also unprotects each RTP packet with libsrtp
 * (AES-CM-128, HMAC-SHA1-80, the 30 key bytes 0, 1, ... 29) and protects each copy in a
 * session of its own, as an SFU does for each consumer's transport.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#ifdef WITH_SRTP
#include <srtp2/srtp.h>
#endif

#define BATCH 64
#define MAX_COPIES 64
#define SIZE 1500

static unsigned char buffers[BATCH][SIZE];
static struct mmsghdr in[BATCH];
static struct iovec in_vectors[BATCH];
static struct mmsghdr out[BATCH * MAX_COPIES];
static struct iovec out_vectors[BATCH * MAX_COPIES];

#ifdef WITH_SRTP
static unsigned char copies_buffers[BATCH * MAX_COPIES][SIZE];
static srtp_t rx, tx[MAX_COPIES];

static int session(srtp_t *out, srtp_ssrc_type_t type) {
    static unsigned char key[30];
    for (int i = 0; i < 30; i++)
        key[i] = (unsigned char)i;
    srtp_policy_t policy;
    memset(&policy, 0, sizeof policy);
    srtp_crypto_policy_set_rtp_default(&policy.rtp);
    srtp_crypto_policy_set_rtcp_default(&policy.rtcp);
    policy.ssrc.type = type;
    policy.key = key;
    policy.window_size = 1024;
    return srtp_create(out, &policy) == srtp_err_status_ok ? 0 : -1;
}
#endif

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: wake_floor PORT SINK_PORT COPIES\n");
        return 2;
    }
    int copies = atoi(argv[3]);
    if (copies < 1 || copies > MAX_COPIES) {
        fprintf(stderr, "wake_floor: COPIES is 1 to %d\n", MAX_COPIES);
        return 2;
    }
#ifdef WITH_SRTP
    if (srtp_init() != srtp_err_status_ok || session(&rx, ssrc_any_inbound) < 0) {
        fprintf(stderr, "wake_floor: libsrtp\n");
        return 1;
    }
    for (int c = 0; c < copies; c++)
        if (session(&tx[c], ssrc_any_outbound) < 0) {
            fprintf(stderr, "wake_floor: libsrtp\n");
            return 1;
        }
#endif
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    struct sockaddr_in sink = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
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
#ifdef WITH_SRTP
                if (srtp_unprotect(rx, buffers[i], &length) != srtp_err_status_ok)
                    continue;
#endif
                if ((buffers[i][1] & 0x7F) != 96)
                    continue;
                for (int c = 0; c < copies; c++, queued++) {
#ifdef WITH_SRTP
                    int protected_length = length;
                    memcpy(copies_buffers[queued], buffers[i], (size_t)length);
                    if (srtp_protect(tx[c], copies_buffers[queued], &protected_length) !=
                        srtp_err_status_ok) {
                        queued--;
                        continue;
                    }
                    out_vectors[queued].iov_base = copies_buffers[queued];
                    out_vectors[queued].iov_len = (size_t)protected_length;
#else
                    out_vectors[queued].iov_base = buffers[i];
                    out_vectors[queued].iov_len = (size_t)length;
#endif
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
