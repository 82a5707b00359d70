/* Streamed (non-temporal) stores of the elementwise passes' outputs, at the
 * widest vector width the CPU has, and the check that decides whether an output
 * is worth streaming at all (see compiler.h and plan.h). Not a dispatched
 * template: each width is its own function, compiled for its instruction set,
 * chosen once. */
#if defined(__linux__)
#define _DEFAULT_SOURCE 1 /* mincore */
#include <sys/mman.h>
#include <unistd.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"

#if FBN_CAN_STREAM && defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FBN_WIDE_STREAM 1

/* n bytes, a multiple of 64 (copy_lines16: of 16), to dst aligned to as many. */
__attribute__((target("avx512f"))) static void copy_lines64(char *dst, const char *src,
                                                            int64_t n) {
    for (int64_t i = 0; i < n; i += 64)
        _mm512_stream_si512((__m512i *)(dst + i), _mm512_loadu_si512(src + i));
}

__attribute__((target("avx2"))) static void copy_lines32(char *dst, const char *src, int64_t n) {
    for (int64_t i = 0; i < n; i += 64) {
        _mm256_stream_si256((__m256i *)(dst + i), _mm256_loadu_si256((const __m256i *)(src + i)));
        _mm256_stream_si256((__m256i *)(dst + i + 32),
                            _mm256_loadu_si256((const __m256i *)(src + i + 32)));
    }
}

/* copy_lines64 / copy_lines32 of n bytes for each of `rows` rows (dst's ldd bytes
 * apart, src's lds) */
__attribute__((target("avx512f"))) static void copy_rows64(char *dst, int64_t ldd,
                                                           const char *src, int64_t lds,
                                                           int rows, int64_t n) {
    for (int r = 0; r < rows; r++) copy_lines64(dst + r * ldd, src + r * lds, n);
}

__attribute__((target("avx2"))) static void copy_rows32(char *dst, int64_t ldd, const char *src,
                                                        int64_t lds, int rows, int64_t n) {
    for (int r = 0; r < rows; r++) copy_lines32(dst + r * ldd, src + r * lds, n);
}
#endif

#if FBN_CAN_STREAM
static void copy_lines16(char *dst, const char *src, int64_t n) {
    for (int64_t i = 0; i < n; i += 16)
        _mm_stream_si128((__m128i *)(dst + i), _mm_loadu_si128((const __m128i *)(src + i)));
}
#endif

/* 0: not chosen yet; a race between two first calls stores the same value. */
static volatile int stream_width;

static int choose_width(void) {
#if FBN_CAN_STREAM
    int w = 16;
#ifdef FBN_WIDE_STREAM
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) w = 64;
    else if (__builtin_cpu_supports("avx2")) w = 32;
#endif
    const char *env = getenv("FASTBN_STREAM_WIDTH"); /* narrower only */
    if (env) {
        const int want = atoi(env);
        if ((want == 16 || want == 32 || want == 64) && want < w) w = want;
    }
    return w;
#else
    return -1; /* plain stores */
#endif
}

int fbn_stream_width(void) {
    if (!stream_width) stream_width = choose_width();
    return stream_width > 0 ? stream_width : 0;
}

void fbn_stream_copy(void *dst, const void *src, int64_t n) {
    char *d = dst;
    const char *s = src;
    const int w = fbn_stream_width();
    if (!w) {
        memcpy(d, s, (size_t)n);
        return;
    }
#if FBN_CAN_STREAM
    /* plain stores only below 16 bytes: 16-byte streamed stores fill the partial
     * lines at either end, so that the write-combining buffer merges them with the
     * neighbouring copies (consecutive spans and runs share those lines) */
    int64_t i = (int64_t)((16 - (uintptr_t)d % 16) % 16);
    if (i > n) i = n;
    if (i) memcpy(d, s, (size_t)i);
    for (; i + 16 <= n && (uintptr_t)(d + i) % 64; i += 16)
        copy_lines16(d + i, s + i, 16);
    const int64_t body = (n - i) / 64 * 64;
#ifdef FBN_WIDE_STREAM
    if (w == 64)
        copy_lines64(d + i, s + i, body);
    else if (w == 32)
        copy_lines32(d + i, s + i, body);
    else
#endif
        copy_lines16(d + i, s + i, body);
    i += body;
    for (; i + 16 <= n; i += 16) copy_lines16(d + i, s + i, 16);
    if (i < n) memcpy(d + i, s + i, (size_t)(n - i));
#endif
}

void fbn_stream_rows(void *dst, int64_t ldd, const void *src, int64_t lds, int rows,
                     int64_t n) {
    char *d = dst;
    const char *s = src;
#ifdef FBN_WIDE_STREAM
    /* the usual row group's span of a wide row: every row's bytes whole lines */
    if ((uintptr_t)d % 64 == 0 && ldd % 64 == 0 && n % 64 == 0) {
        const int w = fbn_stream_width();
        if (w == 64) {
            copy_rows64(d, ldd, s, lds, rows, n);
            return;
        }
        if (w == 32) {
            copy_rows32(d, ldd, s, lds, rows, n);
            return;
        }
    }
#endif
    for (int r = 0; r < rows; r++) fbn_stream_copy(d + r * ldd, s + r * lds, n);
}

/* Whether the pages of [p, p + bytes) are in memory, judged by three of them
 * (first, middle, last). An output in pages never touched (a fresh mmap, as
 * malloc gives for large arrays) is faulted in as it is written: the kernel
 * zeroes each page through the cache, so plain stores then hit the cache, where
 * streamed stores would write each line twice (measured: 15-35% slower on 32-128
 * MB outputs). Elsewhere than Linux: assumed resident. */
int fbn_resident(const void *p, int64_t bytes) {
#if defined(__linux__)
    const long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || bytes < 3 * page) return 1;
    const uintptr_t lo = ((uintptr_t)p + page - 1) / page * page;
    const uintptr_t hi = ((uintptr_t)p + bytes) / page * page - page; /* last whole page */
    const uintptr_t at[3] = {lo, lo + (hi - lo) / 2 / page * page, hi};
    for (int i = 0; i < 3; i++) {
        unsigned char v = 1;
        if (mincore((void *)at[i], (size_t)page, &v) == 0 && !(v & 1)) return 0;
    }
#else
    (void)p;
    (void)bytes;
#endif
    return 1;
}
