/* How fast one core writes the backward's dx of an (N, C) float32 array by
 * non-temporal stores, walked several ways, against the pass that only moves its
 * bytes (dx = x + dy, streamed). It asks what bounds fastbn's streamed columns dx
 * (kern_walk.h, kern_direct.h): each value takes x, dy and six coefficients of its
 * channel (fbn_dx1_<sfx>: shift, invstd, k_x, k_dy, mean_dy, k_0; no ReLU), which
 * short rows (small C) read from arrays repeated over a period of rows
 * (fbn_repeat_typed_<sfx>: flat spans of 512 values), and rows of 16-64 channels
 * in groups of 4 rows, each channel's coefficients loaded once a group.
 *
 * Variants (51 MB each for x, dy and dx; medians of 11 rounds, all once a round):
 *   add floor     dx = x + dy, flat, streamed from registers
 *   flat direct   flat spans, dx streamed straight from registers
 *   flat buf 256  flat spans computed into an L1 buffer 256 bytes at a time, then
 *                 copied out by streamed stores
 *   flat buf 2KB  the same, a whole span (2 KB) at a time: fastbn before dx went
 *                 direct
 *   groups4/2     rows in groups of 4 (2), coefficients loaded once a group,
 *                 streamed from registers
 *
 *     cc -O2 -mavx512f bench/dx_walk.c -o /tmp/dx_walk && for C in 16 32 64 128 256; do /tmp/dx_walk $C; done
 * (x86-64 with AVX-512F; C a multiple of 16.) */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ROUNDS 11
#define VARIANTS 6
static long N, C, P; /* rows, channels, period of the repeated coefficients */
static float *co[6]; /* shift, invstd, k_x, k_dy, mean_dy, k_0, repeated over P */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* dx of 16 values from x, dy, with the coefficients' registers */
static inline __m512 dx_of(__m512 xv, __m512 dv, __m512 sh, __m512 inv, __m512 kx, __m512 kdy,
                           __m512 mdy, __m512 k0) {
    const __m512 xt = _mm512_mul_ps(kx, _mm512_mul_ps(_mm512_sub_ps(xv, sh), inv));
    const __m512 dt = _mm512_mul_ps(kdy, _mm512_sub_ps(dv, mdy));
    return _mm512_add_ps(_mm512_add_ps(dt, xt), k0);
}

/* dx of 16 values at p, coefficients from index c of the repeated arrays */
static inline __m512 dx_at(const float *x, const float *dy, long p, long c) {
    return dx_of(_mm512_loadu_ps(x + p), _mm512_loadu_ps(dy + p), _mm512_loadu_ps(co[0] + c),
                 _mm512_loadu_ps(co[1] + c), _mm512_loadu_ps(co[2] + c),
                 _mm512_loadu_ps(co[3] + c), _mm512_loadu_ps(co[4] + c),
                 _mm512_loadu_ps(co[5] + c));
}

static void add_floor(const float *x, const float *dy, float *o) {
    for (long i = 0; i < N * C; i += 16)
        _mm512_stream_ps(o + i, _mm512_add_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(dy + i)));
}

static void flat_direct(const float *x, const float *dy, float *o) {
    for (long s = 0; s < N * C; s += P)
        for (long i = 0; i < P; i += 16) _mm512_stream_ps(o + s + i, dx_at(x, dy, s + i, i));
}

/* flat spans through an L1 buffer, piece values at a time */
static void flat_buffered(const float *x, const float *dy, float *o, long piece) {
    static float buf[512] __attribute__((aligned(64)));
    for (long s = 0; s < N * C; s += P)
        for (long b = 0; b < P; b += piece) {
            for (long i = 0; i < piece; i += 16) _mm512_store_ps(buf + i, dx_at(x, dy, s + b + i, b + i));
            for (long i = 0; i < piece; i += 16) _mm512_stream_ps(o + s + b + i, _mm512_load_ps(buf + i));
        }
}

static void groups(const float *x, const float *dy, float *o, int g) {
    for (long r = 0; r < N; r += g)
        for (long c = 0; c < C; c += 16) {
            const __m512 sh = _mm512_loadu_ps(co[0] + c), inv = _mm512_loadu_ps(co[1] + c);
            const __m512 kx = _mm512_loadu_ps(co[2] + c), kdy = _mm512_loadu_ps(co[3] + c);
            const __m512 mdy = _mm512_loadu_ps(co[4] + c), k0 = _mm512_loadu_ps(co[5] + c);
            for (int i = 0; i < g; i++) {
                const long p = (r + i) * C + c;
                _mm512_stream_ps(o + p, dx_of(_mm512_loadu_ps(x + p), _mm512_loadu_ps(dy + p),
                                              sh, inv, kx, kdy, mdy, k0));
            }
        }
}

static void run(int v, const float *x, const float *dy, float *o) {
    switch (v) {
    case 0: add_floor(x, dy, o); break;
    case 1: flat_direct(x, dy, o); break;
    case 2: flat_buffered(x, dy, o, 64); break;
    case 3: flat_buffered(x, dy, o, P); break;
    case 4: groups(x, dy, o, 4); break;
    default: groups(x, dy, o, 2); break;
    }
    _mm_sfence();
}

static int cmp(const void *a, const void *b) {
    const double d = *(const double *)a - *(const double *)b;
    return (d > 0) - (d < 0);
}

int main(int argc, char **argv) {
    C = argc > 1 ? atol(argv[1]) : 128;
    if (C < 16 || C % 16 || C > 512) {
        fprintf(stderr, "C: a multiple of 16 up to 512\n");
        return 1;
    }
    N = 51380224L / 4 / C / 4 * 4;
    P = 512 / C * C;
    float *x = aligned_alloc(64, N * C * 4), *dy = aligned_alloc(64, N * C * 4);
    float *o = aligned_alloc(64, N * C * 4);
    for (long i = 0; i < N * C; i++) x[i] = (float)(i % 7), dy[i] = (float)(i % 5), o[i] = 0;
    for (int a = 0; a < 6; a++) {
        co[a] = aligned_alloc(64, 512 * 4);
        for (long i = 0; i < 512; i++) co[a][i] = 1.0f + (float)(i % C) * 0.01f + (float)a;
    }
    const char *names[VARIANTS] = {"add floor", "flat direct", "flat buf 256",
                                   "flat buf 2KB", "groups4", "groups2"};
    double t[VARIANTS][ROUNDS];
    for (int r = 0; r < ROUNDS; r++)
        for (int v = 0; v < VARIANTS; v++) {
            const double t0 = now();
            run(v, x, dy, o);
            t[v][r] = now() - t0;
        }
    for (int v = 0; v < VARIANTS; v++) qsort(t[v], ROUNDS, sizeof(double), cmp);
    printf("C=%ld (%ld rows):", C, N);
    for (int v = 0; v < VARIANTS; v++)
        printf("  %s %.2f ms (%.2fx)", names[v], t[v][ROUNDS / 2] * 1e3,
               t[v][ROUNDS / 2] / t[0][ROUNDS / 2]);
    printf("\n");
    return 0;
}
