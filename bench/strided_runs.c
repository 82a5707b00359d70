/* How fast one core reads a channel's runs of NCHW data from memory, with the
 * statistics' arithmetic (each float widened to double; sums of e and e^2, e = x -
 * pivot, in 4 x 8 lanes), against the same bytes read as longer runs: 64 channels,
 * 51 MB of float32, a channel's runs `run` floats long and 64 runs apart (NCHW with
 * inner = run), read channel after channel, `group` adjacent channels at a time
 * (their runs of one row are contiguous: `group` x run floats read in a row).
 *
 *     cc -O2 -mavx512f bench/strided_runs.c -o /tmp/strided_runs && /tmp/strided_runs
 */
#define _DEFAULT_SOURCE
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

typedef struct {
    __m512d s[4], q[4];
} lanes;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void dev_run(lanes *l, const float *p, long n, __m512d pivot) {
    for (long i = 0; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++) {
            __m512d e = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(p + i + 8 * k)), pivot);
            l->s[k] = _mm512_add_pd(l->s[k], e);
            l->q[k] = _mm512_add_pd(l->q[k], _mm512_mul_pd(e, e));
        }
}

int main(void) {
    const long channels = 64, total = 64L * 64 * 3136;
    float *x = aligned_alloc(1 << 21, total * sizeof(float));
    madvise(x, total * sizeof(float), MADV_HUGEPAGE);
    for (long i = 0; i < total; i++) x[i] = (float)(i % 7);
    const __m512d pivot = _mm512_set1_pd(0.5);
    const long runs[] = {784, 3136, 200704};
    printf("run (floats)  group  ns per value (best of 7)\n");
    for (int r = 0; r < 3; r++)
        for (int group = 1; group <= 8; group *= 2) {
            const long run = runs[r], rows = total / channels / run;
            double best = 1e9, sink = 0;
            for (int rep = 0; rep < 7; rep++) {
                double t0 = now();
                for (long c = 0; c < channels; c += group) {
                    lanes l[8];
                    for (int g = 0; g < group; g++)
                        for (int k = 0; k < 4; k++) l[g].s[k] = l[g].q[k] = _mm512_setzero_pd();
                    for (long o = 0; o < rows; o++)
                        for (int g = 0; g < group; g++)
                            dev_run(&l[g], x + (o * channels + c + g) * run, run, pivot);
                    for (int g = 0; g < group; g++)
                        for (int k = 0; k < 4; k++)
                            sink += _mm512_reduce_add_pd(l[g].s[k]) + _mm512_reduce_add_pd(l[g].q[k]);
                }
                const double t = now() - t0;
                if (t < best) best = t;
            }
            printf("%12ld  %5d  %.3f  (%g)\n", run, group, best / total * 1e9, sink);
        }
    free(x);
    return 0;
}
