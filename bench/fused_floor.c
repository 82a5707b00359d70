/* What a fused training forward over NCHW data can reach on one thread, with no
 * fastbn code: idealised loops over (N, C, HW) float32 or float64 data, built and
 * timed by fused_floor.py. Sizes are in values; one thread; AVX-512F, else AVX2.
 *   ff_copy:    y = x + 0 with streamed stores (the floor traffic_floor.py uses);
 *   ff_read:    integer sum of x (memory traffic of the statistics, no arithmetic);
 *   ff_stats:   sum and sum of squares of (x - pivot) in double (the statistics'
 *               arithmetic: x converted to double, four accumulators);
 *   ff_fused:   per channel, ff_stats over its N runs, then y = x * a + b over them
 *               (from cache) with streamed stores: fastbn's order of work;
 *   ff_overlap: the statistics of channel c + 1 interleaved, `chunk` values at a
 *               time, with the writes of channel c (reads and writes in flight
 *               together, as in a copy);
 *   ff_group:   g adjacent channels at a time: their statistics row by row, then
 *               their outputs either channel by channel (rows = 0: fastbn's order)
 *               or row by row (rows = 1: each row's g runs one stretch of memory).
 * A reference point for docs/performance.md, not part of fastbn. */
#include <immintrin.h>
#include <stdint.h>

static int wide(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

/* y[i] = x[i] * a + b, streamed; n a multiple of 16 values (64 bytes) */
__attribute__((target("avx512f"))) static void rewrite_f32_512(float *y, const float *x,
                                                               int64_t n, float a, float b) {
    const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
    for (int64_t i = 0; i < n; i += 16)
        _mm512_stream_ps(y + i, _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), va), vb));
}
__attribute__((target("avx2"))) static void rewrite_f32_256(float *y, const float *x, int64_t n,
                                                            float a, float b) {
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    for (int64_t i = 0; i < n; i += 8)
        _mm256_stream_ps(y + i, _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), va), vb));
}
__attribute__((target("avx512f"))) static void rewrite_f64_512(double *y, const double *x,
                                                               int64_t n, double a, double b) {
    const __m512d va = _mm512_set1_pd(a), vb = _mm512_set1_pd(b);
    for (int64_t i = 0; i < n; i += 8)
        _mm512_stream_pd(y + i, _mm512_add_pd(_mm512_mul_pd(_mm512_loadu_pd(x + i), va), vb));
}
__attribute__((target("avx2"))) static void rewrite_f64_256(double *y, const double *x, int64_t n,
                                                            double a, double b) {
    const __m256d va = _mm256_set1_pd(a), vb = _mm256_set1_pd(b);
    for (int64_t i = 0; i < n; i += 4)
        _mm256_stream_pd(y + i, _mm256_add_pd(_mm256_mul_pd(_mm256_loadu_pd(x + i), va), vb));
}

static void rewrite(void *y, const void *x, int64_t n, int f64, double a, double b) {
    if (f64 && wide()) rewrite_f64_512(y, x, n, a, b);
    else if (f64) rewrite_f64_256(y, x, n, a, b);
    else if (wide()) rewrite_f32_512(y, x, n, (float)a, (float)b);
    else rewrite_f32_256(y, x, n, (float)a, (float)b);
}

/* acc[0..7] += x - p, acc[8..15] += (x - p)^2: plain loops GCC vectorises at -O3 */
static void stats(const void *x, int64_t n, int f64, double p, double *acc) {
    for (int64_t i = 0; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) {
            double v = (f64 ? ((const double *)x)[i + k] : ((const float *)x)[i + k]) - p;
            acc[k] += v;
            acc[8 + k] += v * v;
        }
}

static int64_t isum(const int32_t *x, int64_t n) {
    int32_t acc[16] = {0};
    for (int64_t i = 0; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) acc[k] += x[i + k];
    int64_t s = 0;
    for (int k = 0; k < 16; k++) s += acc[k];
    return s;
}

void ff_copy(void *y, const void *x, int64_t n, int f64) {
    rewrite(y, x, n, f64, 1.0, 0.0);
    _mm_sfence();
}

int64_t ff_read(const void *x, int64_t n, int f64) {
    return isum(x, n * (f64 ? 2 : 1));
}

double ff_stats(const void *x, int64_t n, int f64) {
    double acc[16] = {0};
    stats(x, n, f64, 0.5, acc);
    return acc[0] + acc[8];
}

/* run (o, c) of (N, C, HW) data of `size`-byte values */
static const char *run_at(const void *x, int64_t o, int64_t c, int64_t C, int64_t HW, int size) {
    return (const char *)x + ((o * C + c) * HW) * size;
}

void ff_fused(void *y, const void *x, int64_t N, int64_t C, int64_t HW, int f64) {
    const int size = f64 ? 8 : 4;
    for (int64_t c = 0; c < C; c++) {
        double acc[16] = {0};
        for (int64_t o = 0; o < N; o++) stats(run_at(x, o, c, C, HW, size), HW, f64, 0.5, acc);
        const double a = 1.0 / (1.0 + acc[8]), b = -acc[0] * a;
        for (int64_t o = 0; o < N; o++)
            rewrite((char *)y + (run_at(x, o, c, C, HW, size) - (const char *)x),
                    run_at(x, o, c, C, HW, size), HW, f64, a, b);
    }
    _mm_sfence();
}

void ff_overlap(void *y, const void *x, int64_t N, int64_t C, int64_t HW, int f64,
                int64_t chunk) {
    const int size = f64 ? 8 : 4;
    double acc[16] = {0};
    for (int64_t o = 0; o < N; o++) stats(run_at(x, o, 0, C, HW, size), HW, f64, 0.5, acc);
    for (int64_t c = 0; c < C; c++) {
        const double a = 1.0 / (1.0 + acc[8]), b = -acc[0] * a;
        double next[16] = {0};
        for (int64_t o = 0; o < N; o++) {
            const char *xr = run_at(x, o, c, C, HW, size);
            char *yr = (char *)y + (xr - (const char *)x);
            for (int64_t i = 0; i < HW; i += chunk) {
                const int64_t m = HW - i < chunk ? HW - i : chunk;
                if (c + 1 < C) stats(xr + (HW + i) * size, m, f64, 0.5, next);
                rewrite(yr + i * size, xr + i * size, m, f64, a, b);
            }
        }
        for (int k = 0; k < 16; k++) acc[k] = next[k];
    }
    _mm_sfence();
}

void ff_group(void *y, const void *x, int64_t N, int64_t C, int64_t HW, int f64, int64_t g,
              int rows) {
    const int size = f64 ? 8 : 4;
    if (g > 64) g = 64; /* the locals' bound */
    for (int64_t c0 = 0; c0 < C; c0 += g) {
        const int64_t n = C - c0 < g ? C - c0 : g;
        double acc[64][16] = {{0}}, a[64], b[64];
        for (int64_t o = 0; o < N; o++)
            for (int64_t k = 0; k < n; k++)
                stats(run_at(x, o, c0 + k, C, HW, size), HW, f64, 0.5, acc[k]);
        for (int64_t k = 0; k < n; k++) {
            a[k] = 1.0 / (1.0 + acc[k][8]);
            b[k] = -acc[k][0] * a[k];
        }
        for (int64_t i = 0; i < N * n; i++) {
            const int64_t o = rows ? i / n : i % N, k = rows ? i % n : i / N;
            const char *xr = run_at(x, o, c0 + k, C, HW, size);
            rewrite((char *)y + (xr - (const char *)x), xr, HW, f64, a[k], b[k]);
        }
    }
    _mm_sfence();
}

/* the copy in the fused pass's order: channel by channel, a run a row apart */
void ff_copy_runs(void *y, const void *x, int64_t N, int64_t C, int64_t HW, int f64) {
    const int size = f64 ? 8 : 4;
    for (int64_t c = 0; c < C; c++)
        for (int64_t o = 0; o < N; o++) {
            const char *xr = run_at(x, o, c, C, HW, size);
            rewrite((char *)y + (xr - (const char *)x), xr, HW, f64, 1.0, 0.0);
        }
    _mm_sfence();
}

/* the copy of g adjacent channels at a time, row by row (g runs one stretch) */
void ff_copy_group(void *y, const void *x, int64_t N, int64_t C, int64_t HW, int f64,
                   int64_t g) {
    const int size = f64 ? 8 : 4;
    for (int64_t c0 = 0; c0 < C; c0 += g)
        for (int64_t o = 0; o < N; o++) {
            const int64_t n = C - c0 < g ? C - c0 : g;
            const char *xr = run_at(x, o, c0, C, HW, size);
            rewrite((char *)y + (xr - (const char *)x), xr, HW * n, f64, 1.0, 0.0);
        }
    _mm_sfence();
}
