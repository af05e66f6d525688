/* The least a forwarder can do per wake-up: the reference for bench/wake_floor.py.
 *
 *     wake_floor PORT SINK_PORT COPIES
 *
 * waits on one UDP socket bound to 127.0.0.1:PORT with epoll, reads every datagram that is
 * there with recvmmsg(), and sends COPIES copies of each datagram whose first byte is not 0
 * to 127.0.0.1:SINK_PORT with one sendmmsg() per batch (a first byte of 0 marks a datagram
 * that is read and not forwarded, as an SFU reads a consumer's RTCP). No SRTP, no parsing:
 * what is left is the kernel's part of each wake-up and of each copy. Runs until killed.
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
                if (in[i].msg_len == 0 || buffers[i][0] == 0)
                    continue;
                for (int c = 0; c < copies; c++, queued++) {
                    out_vectors[queued].iov_base = buffers[i];
                    out_vectors[queued].iov_len = in[i].msg_len;
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
