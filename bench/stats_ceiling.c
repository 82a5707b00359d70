/* The arithmetic fastbn's reductions do per value, alone: data in L1, sums in
 * registers, no memory traffic. What the statistics (e = x - pivot widened to
 * double; sums of e and e * e) and the backward's sums (dy and dy * (x - shift),
 * widened to double) cost on one core, without FMA (the kernels build with
 * -ffp-contract=off, so that every instruction set gives the same bits). Built
 * and run by bench/stats_ceiling.py: each function returns values per second. */
#include <immintrin.h>
#include <stdint.h>
#include <time.h>

#define N 4096 /* values: 16 KB of float32, in L1 */

static float xf[N] __attribute__((aligned(64))), df[N] __attribute__((aligned(64)));
static double xd[N] __attribute__((aligned(64))), dd[N] __attribute__((aligned(64)));
static uint16_t xh[N] __attribute__((aligned(64))), dh[N] __attribute__((aligned(64)));
static volatile double sink;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void fill(void) {
    for (int i = 0; i < N; i++) {
        xf[i] = (float)(i % 97) * 0.01f;
        df[i] = (float)(i % 89) * 0.01f;
        xd[i] = xf[i];
        dd[i] = df[i];
        xh[i] = (uint16_t)(0x3c00 + i % 100); /* float16 values near 1 */
        dh[i] = (uint16_t)(0x3800 + i % 90);
    }
}

/* A vector of VD doubles, and VD values of each dtype widened into one; the
 * arithmetic below is GCC's vector operators (the intrinsics' types are GCC
 * vectors), the same for both widths. */
#if defined(__AVX512F__)
typedef __m512d vd;
#define VD 8
static inline vd wide_f32(const float *p) { return _mm512_cvtps_pd(_mm256_load_ps(p)); }
static inline vd wide_f64(const double *p) { return _mm512_load_pd(p); }
static inline vd wide_f16(const uint16_t *p) {
    return _mm512_cvtps_pd(_mm256_cvtph_ps(_mm_load_si128((const __m128i *)p)));
}
#else /* AVX2 with F16C */
typedef __m256d vd;
#define VD 4
static inline vd wide_f32(const float *p) { return _mm256_cvtps_pd(_mm_load_ps(p)); }
static inline vd wide_f64(const double *p) { return _mm256_load_pd(p); }
static inline vd wide_f16(const uint16_t *p) {
    return _mm256_cvtps_pd(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)p)));
}
#endif

static inline double vsum(vd a) {
    double s = 0.0;
    for (int i = 0; i < VD; i++) s += a[i];
    return s;
}

/* The widening of dtype k (0 float32, 1 float64, 2 float16) of the vector at i. */
static inline vd widen(int k, int which, int i) {
    if (k == 0) return wide_f32((which ? df : xf) + i);
    if (k == 1) return wide_f64((which ? dd : xd) + i);
    return wide_f16((which ? dh : xh) + i);
}

/* Statistics: four pairs of accumulators (independent chains, as the kernels'
 * lanes), reps passes over the block. k a constant in each caller. */
static inline double stats(const int k, int reps) {
    vd a0 = {0}, a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    const vd p = a0 + 0.3;
    for (int r = 0; r < reps; r++)
        for (int i = 0; i < N; i += 4 * VD) {
            vd e0 = widen(k, 0, i) - p, e1 = widen(k, 0, i + VD) - p;
            vd e2 = widen(k, 0, i + 2 * VD) - p, e3 = widen(k, 0, i + 3 * VD) - p;
            a0 += e0, b0 += e0 * e0;
            a1 += e1, b1 += e1 * e1;
            a2 += e2, b2 += e2 * e2;
            a3 += e3, b3 += e3 * e3;
        }
    return vsum(a0 + a1 + a2 + a3) + vsum(b0 + b1 + b2 + b3);
}

/* The backward's sums: sum(dy) and sum(dy * (x - shift)). */
static inline double sums(const int k, int reps) {
    vd a0 = {0}, a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    const vd s = a0 + 0.3;
    for (int r = 0; r < reps; r++)
        for (int i = 0; i < N; i += 4 * VD) {
            vd g0 = widen(k, 1, i), g1 = widen(k, 1, i + VD);
            vd g2 = widen(k, 1, i + 2 * VD), g3 = widen(k, 1, i + 3 * VD);
            a0 += g0, b0 += g0 * (widen(k, 0, i) - s);
            a1 += g1, b1 += g1 * (widen(k, 0, i + VD) - s);
            a2 += g2, b2 += g2 * (widen(k, 0, i + 2 * VD) - s);
            a3 += g3, b3 += g3 * (widen(k, 0, i + 3 * VD) - s);
        }
    return vsum(a0 + a1 + a2 + a3) + vsum(b0 + b1 + b2 + b3);
}

/* Values per second of op (0 statistics, 1 backward sums) on dtype k: the best of
 * `tries` timings of `reps` passes. */
double ceiling_rate(int op, int k, int reps, int tries) {
    fill();
    double best = 1e30;
    for (int t = 0; t < tries; t++) {
        const double t0 = now();
        double v;
        if (op == 0)
            v = k == 0 ? stats(0, reps) : k == 1 ? stats(1, reps) : stats(2, reps);
        else
            v = k == 0 ? sums(0, reps) : k == 1 ? sums(1, reps) : sums(2, reps);
        const double dt = now() - t0;
        sink += v;
        if (dt < best) best = dt;
    }
    return (double)N * reps / best;
}

/* The vector width in doubles this build uses. */
int ceiling_width(void) { return VD; }
