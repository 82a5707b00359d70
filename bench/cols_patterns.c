/* How fast one core writes y = (x - shift) * scale + bias of a wide (N, C) float32
 * array (8192 x 4096: 128 MB each way, one coefficient of each kind per channel)
 * by non-temporal stores, walked in several orders, against a streamed copy of the
 * same bytes. It asks what bounds fastbn's streamed columns shape (kern_walk.h:
 * groups of 4 rows, 512-byte spans of each) against bench/traffic_floor.py's floor,
 * a flat streamed copy. Each variant stores straight from the registers (fastbn
 * computes a group's span into an L1 buffer and copies it out; on this walk both
 * measured alike: bench/results/2026-12-06_direct_rows_ab.txt).
 *
 * Variants (medians of 15 rounds, all variants once a round):
 *   copy                 flat, in memory order
 *   copy g4 s512         4-row groups, 512 bytes of each row in turn
 *   copy g4 s4096        4-row groups, 4 KB of each row in turn
 *   y g4 s512            fastbn's walk: a line's 3 coefficients loaded once for 4 rows
 *   y g8 s512, g2 s1024  taller and shorter groups
 *   y row                a row at a time, 3 coefficient loads a line of x
 *   y row L1-coefs       the same, coefficients of 1024 channels reused (12 KB,
 *                        L1-resident), as for rows of up to ~1300 channels
 *   y g4 s512 L1-coefs   fastbn's walk with such coefficients
 *   y row interleaved    a row at a time, the 3 coefficients of 16 channels in one
 *                        192-byte block (one stream instead of three)
 *   y bands 1024x128     column bands of 1024 channels (coefficients in L1) over
 *                        128 rows, a row's band at a time
 *
 *     cc -O2 bench/cols_patterns.c -o /tmp/cols_patterns && /tmp/cols_patterns
 * (x86-64 with AVX-512F; the float32 coefficients of 4096 channels, 48 KB, exceed
 * a 32 KB L1d.) */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ROWS 8192L
#define COLS 4096L
#define ROUNDS 15

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

typedef struct {
    const float *shift, *scale, *bias; /* COLS each */
    const float *packed;               /* 3 * COLS: blocks of 16 shifts, scales, biases */
    long wrap;                         /* channel index mask: COLS - 1, or 1023 (L1) */
} coefs;

__attribute__((target("avx512f"))) static inline __m512 y16(const float *x, const coefs *k,
                                                             long c) {
    const long q = c & k->wrap;
    const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(k->shift + q));
    return _mm512_add_ps(_mm512_mul_ps(d, _mm512_loadu_ps(k->scale + q)),
                         _mm512_loadu_ps(k->bias + q));
}

__attribute__((target("avx512f"))) static void copy_flat(float *y, const float *x) {
    for (long i = 0; i < ROWS * COLS; i += 16) _mm512_stream_ps(y + i, _mm512_loadu_ps(x + i));
}

__attribute__((target("avx512f"))) static void copy_groups(float *y, const float *x, long span) {
    for (long r = 0; r < ROWS; r += 4)
        for (long c = 0; c < COLS; c += span)
            for (long i = r; i < r + 4; i++)
                for (long j = c; j < c + span; j += 16)
                    _mm512_stream_ps(y + i * COLS + j, _mm512_loadu_ps(x + i * COLS + j));
}

/* groups of g rows, span floats of each: a line's coefficients loaded once for the
 * group's g lines */
__attribute__((target("avx512f"))) static void y_groups(float *y, const float *x, const coefs *k,
                                                        long g, long span) {
    for (long r = 0; r < ROWS; r += g)
        for (long c = 0; c < COLS; c += span)
            for (long j = c; j < c + span; j += 16) {
                const long q = j & k->wrap;
                const __m512 sh = _mm512_loadu_ps(k->shift + q), sc = _mm512_loadu_ps(k->scale + q),
                             bi = _mm512_loadu_ps(k->bias + q);
                for (long i = r; i < r + g; i++) {
                    const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + i * COLS + j), sh);
                    _mm512_stream_ps(y + i * COLS + j, _mm512_add_ps(_mm512_mul_ps(d, sc), bi));
                }
            }
}

__attribute__((target("avx512f"))) static void y_rows(float *y, const float *x, const coefs *k) {
    for (long i = 0; i < ROWS; i++)
        for (long j = 0; j < COLS; j += 16) _mm512_stream_ps(y + i * COLS + j, y16(x + i * COLS + j, k, j));
}

__attribute__((target("avx512f"))) static void y_rows_packed(float *y, const float *x,
                                                             const coefs *k) {
    for (long i = 0; i < ROWS; i++)
        for (long j = 0; j < COLS; j += 16) {
            const float *p = k->packed + 3 * j;
            const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + i * COLS + j), _mm512_loadu_ps(p));
            _mm512_stream_ps(y + i * COLS + j,
                             _mm512_add_ps(_mm512_mul_ps(d, _mm512_loadu_ps(p + 16)),
                                           _mm512_loadu_ps(p + 32)));
        }
}

__attribute__((target("avx512f"))) static void y_bands(float *y, const float *x, const coefs *k,
                                                       long band, long rows) {
    for (long r0 = 0; r0 < ROWS; r0 += rows)
        for (long c0 = 0; c0 < COLS; c0 += band)
            for (long i = r0; i < r0 + rows; i++)
                for (long j = c0; j < c0 + band; j += 16)
                    _mm512_stream_ps(y + i * COLS + j, y16(x + i * COLS + j, k, j));
}

#define VARIANTS 11

static void run(int v, float *y, const float *x, const coefs *k, const coefs *l1) {
    switch (v) {
    case 0: copy_flat(y, x); break;
    case 1: copy_groups(y, x, 128); break;
    case 2: copy_groups(y, x, 1024); break;
    case 3: y_groups(y, x, k, 4, 128); break;
    case 4: y_groups(y, x, k, 8, 128); break;
    case 5: y_groups(y, x, k, 2, 256); break;
    case 6: y_rows(y, x, k); break;
    case 7: y_rows(y, x, l1); break;
    case 8: y_groups(y, x, l1, 4, 128); break;
    case 9: y_rows_packed(y, x, k); break;
    default: y_bands(y, x, l1, 1024, 128); break;
    }
    _mm_sfence();
}

static int by_value(const void *a, const void *b) {
    const double u = *(const double *)a, w = *(const double *)b;
    return (u > w) - (u < w);
}

int main(void) {
    static const char *name[VARIANTS] = {
        "copy",        "copy g4 s512",  "copy g4 s4096",    "y g4 s512",
        "y g8 s512",   "y g2 s1024",    "y row",            "y row L1-coefs",
        "y g4 s512 L1-coefs", "y row interleaved", "y bands 1024x128"};
    float *x = aligned_alloc(64, ROWS * COLS * sizeof(float));
    float *y = aligned_alloc(64, ROWS * COLS * sizeof(float));
    float *c3 = aligned_alloc(64, 6 * COLS * sizeof(float));
    for (long i = 0; i < ROWS * COLS; i++) x[i] = y[i] = (float)(i % 7);
    for (long i = 0; i < 6 * COLS; i++) c3[i] = 1.0f + (float)(i % 5);
    const coefs k = {c3, c3 + COLS, c3 + 2 * COLS, c3 + 3 * COLS, COLS - 1};
    const coefs l1 = {c3, c3 + COLS, c3 + 2 * COLS, c3 + 3 * COLS, 1023};
    static double t[VARIANTS][ROUNDS];
    for (int r = 0; r < ROUNDS; r++)
        for (int v = 0; v < VARIANTS; v++) {
            const double t0 = now();
            run(v, y, x, &k, &l1);
            t[v][r] = now() - t0;
        }
    printf("%-20s %10s %8s\n", "variant", "median ms", "/ copy");
    double copy = 0;
    for (int v = 0; v < VARIANTS; v++) {
        qsort(t[v], ROUNDS, sizeof(double), by_value);
        const double med = t[v][ROUNDS / 2];
        if (v == 0) copy = med;
        printf("%-20s %10.2f %8.2f\n", name[v], 1e3 * med, med / copy);
    }
    free(x);
    free(y);
    free(c3);
    return 0;
}
