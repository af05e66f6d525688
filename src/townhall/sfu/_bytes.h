/* Big-endian reads and writes of packets, shared by the native piece's sources. */

#ifndef TOWNHALL_BYTES_H
#define TOWNHALL_BYTES_H

/* `value`'s low 16 bits at `at`, network order; returns the bytes written. */
static inline int put16(unsigned char *at, long value) {
    at[0] = (unsigned char)((value >> 8) & 0xFF);
    at[1] = (unsigned char)(value & 0xFF);
    return 2;
}

/* `value`'s low 32 bits at `at`, network order; returns the bytes written. */
static inline int put32(unsigned char *at, unsigned long value) {
    at[0] = (unsigned char)((value >> 24) & 0xFF);
    at[1] = (unsigned char)((value >> 16) & 0xFF);
    at[2] = (unsigned char)((value >> 8) & 0xFF);
    at[3] = (unsigned char)(value & 0xFF);
    return 4;
}

/* The 32 bits at `at`, network order. */
static inline unsigned long get32(const unsigned char *at) {
    return ((unsigned long)at[0] << 24) | ((unsigned long)at[1] << 16) |
           ((unsigned long)at[2] << 8) | (unsigned long)at[3];
}

#endif
