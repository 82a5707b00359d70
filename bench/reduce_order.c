/* How fast one core sums e = x - pivot and e^2 per channel over the rows of an
 * (N, C) array (about 100 MB of float64 or 50 MB of float32, C channels), in
 * groups of 4 rows, against a plain sum of the same bytes (a read). It asks why
 * fastbn's columns-shape statistics and backward sums took 1.5-2.9x a read on the
 * Zen 4 guest, and which order of the same operations avoids it (kern_cols.h).
 * Both orders below do each channel's operations in the same order (the same
 * bits, checked):
 *   lines   a line of each of the group's rows in turn, the group's sums in
 *           registers (fastbn's order before: fbn_stats_group_v_<sfx>)
 *   rows    the group's rows one after another, its partial sums in L1
 *           (fbn_stats_rows_<sfx>)
 * Medians of 15 rounds, every variant once a round:
 *
 *     cc -O3 -march=native -ffp-contract=off bench/reduce_order.c -o /tmp/reduce_order
 *     /tmp/reduce_order
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define FLUSH 64 /* rows summed before a flush to the totals (FBN_FLUSH_ROWS) */
#define GROUP 4
#define ROUNDS 15
#define MAX_C 512

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* One template per data type: T and the suffix. */
#define DEFINE(T, SFX)                                                                         \
    static double read_##SFX(const T *x, int64_t n) {                                          \
        double s[16] = {0}, t = 0;                                                             \
        for (int64_t i = 0; i + 16 <= n; i += 16)                                              \
            for (int k = 0; k < 16; k++) s[k] += x[i + k];                                     \
        for (int k = 0; k < 16; k++) t += s[k];                                                \
        return t;                                                                              \
    }                                                                                          \
    static void lines_##SFX(const T *x, int64_t rows, int64_t C, const double *pv,            \
                            double *acc, double *acc2, double *tot) {                          \
        for (int64_t o = 0; o < rows;) {                                                       \
            const int64_t end = o + FLUSH < rows ? o + FLUSH : rows;                           \
            for (int64_t c = 0; c < C; c++) acc[c] = acc2[c] = 0;                              \
            for (; o + GROUP <= end; o += GROUP)                                               \
                for (int64_t c = 0; c < C; c++) {                                              \
                    double s1 = 0, s2 = 0;                                                     \
                    for (int i = 0; i < GROUP; i++) {                                          \
                        double e = (double)x[(o + i) * C + c] - pv[c];                         \
                        s1 += e;                                                               \
                        s2 += e * e;                                                           \
                    }                                                                          \
                    acc[c] += s1;                                                              \
                    acc2[c] += s2;                                                             \
                }                                                                              \
            for (int64_t c = 0; c < C; c++) tot[c] += acc[c], tot[C + c] += acc2[c];           \
        }                                                                                      \
    }                                                                                          \
    static void rows_##SFX(const T *x, int64_t rows, int64_t C, const double *pv,             \
                           double *acc, double *acc2, double *tot) {                           \
        double p1[MAX_C], p2[MAX_C];                                                           \
        for (int64_t o = 0; o < rows;) {                                                       \
            const int64_t end = o + FLUSH < rows ? o + FLUSH : rows;                           \
            for (int64_t c = 0; c < C; c++) acc[c] = acc2[c] = 0;                              \
            for (; o + GROUP <= end; o += GROUP)                                               \
                for (int i = 0; i < GROUP; i++) {                                              \
                    const T *r = x + (o + i) * C;                                              \
                    for (int64_t c = 0; c < C; c++) {                                          \
                        double e = (double)r[c] - pv[c];                                       \
                        double t1 = (i == 0 ? 0.0 : p1[c]) + e;                                \
                        double t2 = (i == 0 ? 0.0 : p2[c]) + e * e;                            \
                        if (i == GROUP - 1)                                                    \
                            acc[c] += t1, acc2[c] += t2;                                       \
                        else                                                                   \
                            p1[c] = t1, p2[c] = t2;                                            \
                    }                                                                          \
                }                                                                              \
            for (int64_t c = 0; c < C; c++) tot[c] += acc[c], tot[C + c] += acc2[c];           \
        }                                                                                      \
    }                                                                                          \
    static void run_##SFX(int64_t C) {                                                         \
        const int64_t rows = ((int64_t)100 << 20) / 8 / C / FLUSH * FLUSH;                     \
        const size_t bytes = (size_t)rows * C * sizeof(T), huge = (size_t)1 << 21;            \
        T *x = aligned_alloc(huge, (bytes + huge - 1) / huge * huge);                          \
        madvise(x, bytes, MADV_HUGEPAGE); /* as NumPy's large arrays */                        \
        for (int64_t i = 0; i < rows * C; i++) x[i] = (T)((i * 7) % 13) + (T)0.1 * (i % 3);    \
        double pv[MAX_C], acc[MAX_C], acc2[MAX_C], tot[2][2 * MAX_C], t[3][ROUNDS], sink = 0;  \
        for (int64_t c = 0; c < C; c++) pv[c] = x[c];                                          \
        for (int r = 0; r < ROUNDS; r++)                                                       \
            for (int v = 0; v < 3; v++) {                                                      \
                if (v) memset(tot[v - 1], 0, sizeof tot[0]);                                   \
                const double t0 = now();                                                       \
                if (v == 0) sink += read_##SFX(x, rows * C);                                   \
                if (v == 1) lines_##SFX(x, rows, C, pv, acc, acc2, tot[0]);                    \
                if (v == 2) rows_##SFX(x, rows, C, pv, acc, acc2, tot[1]);                     \
                t[v][r] = now() - t0;                                                          \
            }                                                                                  \
        const int same = !memcmp(tot[0], tot[1], 2 * C * sizeof(double));                      \
        for (int v = 0; v < 3; v++) qsort(t[v], ROUNDS, sizeof(double), cmp);                  \
        printf("%-8s %5ld %9ld %8.2f %8.2f %8.2f %8.2f %8.2f  %s\n", #T, (long)C, (long)rows,  \
               t[0][ROUNDS / 2] * 1e3, t[1][ROUNDS / 2] * 1e3, t[2][ROUNDS / 2] * 1e3,         \
               t[1][ROUNDS / 2] / t[0][ROUNDS / 2], t[2][ROUNDS / 2] / t[0][ROUNDS / 2],        \
               same ? "same bits" : "BITS DIFFER");                                            \
        free(x);                                                                               \
        if (sink == 1.5) puts("");                                                             \
    }

static int cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

DEFINE(float, f32)
DEFINE(double, f64)

int main(void) {
    static const int64_t cs[] = {32, 64, 128, 256, 384, 512};
    printf("dtype        C      rows  read ms lines ms  rows ms   lines/read rows/read\n");
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        run_f32(cs[i]);
        run_f64(cs[i]);
    }
    return 0;
}
