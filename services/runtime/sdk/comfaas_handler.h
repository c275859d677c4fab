/* comfaas_handler.h: a warm C handler for comfaas (handler mode).
 *
 * The executor puts this header on the include path of every `c` build, so
 * a bundle needs only:
 *
 *     #include <comfaas_handler.h>
 *
 *     static int handle(const uint8_t *in, size_t n, comfaas_out *out) {
 *         return comfaas_write(out, in, n);   // 0: ok; non-zero: an error
 *     }
 *
 *     int main(void) { return comfaas_serve(handle); }
 *
 * and `mode = "handler"` in comfaas.toml. One process serves many calls, so
 * globals keep their values between calls. The handler appends its output
 * to `out` (comfaas_write, comfaas_printf); to fail a call it returns
 * non-zero, and what it wrote to `out` is the error message. Whatever the
 * function prints (printf, puts, fprintf(stderr, ...)) goes to its log:
 * stdout is redirected to stderr, since the real stdout carries the
 * protocol.
 *
 * The protocol (the same for every runtime, in the README): a request is a
 * 4-byte big-endian length and the input on stdin; an answer is a status
 * byte (0 ok, 1 error, 2 ready), a 4-byte big-endian length and the output
 * on stdout; after each call the marker "\0comfaas-call-end\0" on stderr.
 *
 * Single header: everything is `static`, include it once per program.
 */
#ifndef COMFAAS_HANDLER_H
#define COMFAAS_HANDLER_H

/* dup, dup2, read, write are POSIX: declared under -std=c11 too when this
 * header comes first. */
#if !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

/* A growing output buffer, reset before each call. */
typedef struct comfaas_out {
    uint8_t *data;
    size_t len;
    size_t cap;
} comfaas_out;

/* A handler: `in` holds `n` bytes of input; it appends the output to
 * `out` and returns 0, or returns non-zero with an error message in `out`. */
typedef int (*comfaas_handler)(const uint8_t *in, size_t n, comfaas_out *out);

static const char COMFAAS_CALL_END[] = "\0comfaas-call-end\0";
#define COMFAAS_CALL_END_LEN (sizeof COMFAAS_CALL_END - 1)

/* Makes room for `more` bytes; -1 when memory is out. */
static int comfaas_reserve(comfaas_out *out, size_t more) {
    if (out->cap - out->len >= more) return 0;
    size_t cap = out->cap ? out->cap : 256;
    while (cap - out->len < more) {
        if (cap > SIZE_MAX / 2) return -1;
        cap *= 2;
    }
    uint8_t *data = realloc(out->data, cap);
    if (!data) return -1;
    out->data = data;
    out->cap = cap;
    return 0;
}

/* Appends `n` bytes to the output; 0, or -1 when memory is out. */
static int comfaas_write(comfaas_out *out, const void *data, size_t n) {
    if (n == 0) return 0;
    if (comfaas_reserve(out, n) != 0) return -1;
    memcpy(out->data + out->len, data, n);
    out->len += n;
    return 0;
}

/* Appends formatted text to the output; 0, or -1 on failure. */
static int comfaas_printf(comfaas_out *out, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(NULL, 0, fmt, args);
    va_end(args);
    if (n < 0) return -1;
    if (comfaas_reserve(out, (size_t)n + 1) != 0) return -1;
    va_start(args, fmt);
    vsnprintf((char *)out->data + out->len, (size_t)n + 1, fmt, args);
    va_end(args);
    out->len += (size_t)n;
    return 0;
}

static int comfaas_write_all_(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* 1: read `n` bytes; 0: end of input before the first byte; -1: error. */
static int comfaas_read_all_(int fd, uint8_t *p, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) return got == 0 ? 0 : -1;
        got += (size_t)r;
    }
    return 1;
}

/* One frame in one writev: the executor wakes once per answer, not twice. */
static int comfaas_frame_(int fd, uint8_t status, const uint8_t *data, size_t n) {
    uint8_t head[5] = {status, (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8),
                       (uint8_t)n};
    struct iovec iov[2] = {{head, sizeof head}, {(void *)data, n}};
    ssize_t w;
    do {
        w = writev(fd, iov, n ? 2 : 1);
    } while (w < 0 && errno == EINTR);
    if (w < 0) return -1;
    /* A partial write (a full pipe): the rest one piece at a time. */
    size_t done = (size_t)w;
    if (done < sizeof head) {
        if (comfaas_write_all_(fd, head + done, sizeof head - done) != 0) return -1;
        done = sizeof head;
    }
    return comfaas_write_all_(fd, data + (done - sizeof head), n - (done - sizeof head));
}

/* Serves calls until stdin closes: returns 0 then, 1 when the pipes fail. */
static int comfaas_serve(comfaas_handler handle) {
    /* The protocol keeps the real stdout; the function's prints go to stderr. */
    int proto = dup(1);
    if (proto < 0 || dup2(2, 1) < 0) {
        perror("comfaas_serve: dup");
        return 1;
    }
    comfaas_out out = {0};
    uint8_t *in = NULL;
    size_t in_cap = 0;
    if (comfaas_frame_(proto, 2, (const uint8_t *)"ready", 5) != 0) return 1;
    for (;;) {
        uint8_t head[4];
        int r = comfaas_read_all_(0, head, 4);
        if (r == 0) return 0;
        if (r < 0) return 1;
        size_t n = ((size_t)head[0] << 24) | ((size_t)head[1] << 16) | ((size_t)head[2] << 8) |
                   (size_t)head[3];
        if (n + 1 > in_cap) {
            uint8_t *grown = realloc(in, n + 1);
            if (!grown) {
                fprintf(stderr, "comfaas_serve: out of memory for %zu input bytes\n", n);
                return 1;
            }
            in = grown;
            in_cap = n + 1;
        }
        if (n > 0 && comfaas_read_all_(0, in, n) != 1) return 1;
        in[n] = 0; /* a convenience for text inputs; n excludes it */
        out.len = 0;
        int failed = handle(in, n, &out);
        /* What the call printed, then the marker, then the answer. */
        fflush(stdout);
        fflush(stderr);
        if (comfaas_write_all_(2, (const uint8_t *)COMFAAS_CALL_END, COMFAAS_CALL_END_LEN) != 0)
            return 1;
        if (failed && out.len == 0) comfaas_printf(&out, "handler returned %d", failed);
        if (comfaas_frame_(proto, failed ? 1 : 0, out.data, out.len) != 0) return 1;
    }
}

#endif /* COMFAAS_HANDLER_H */
