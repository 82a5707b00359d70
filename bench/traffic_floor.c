/* The least time a batch-norm pass can take on this machine: passes that only
 * move its bytes, with no arithmetic (integer adds where a value must be used, so
 * that no bit pattern, float32 or float64, costs a floating-point assist). Built
 * and loaded by traffic_floor.py. Sizes are in bytes: any dtype.
 *   floor_copy:  read x, write y (inference's traffic); nt: non-temporal stores;
 *   floor_read:  read x (a statistics pass: the forward's first trip);
 *   floor_read2: read x and dy (the backward's reduction);
 *   floor_pass3: read x and dy, write dx (the backward's elementwise traffic).
 * AVX2, x86-64 only: a reference point for benchmarks, not part of fastbn. */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define V __m256i
#define LD(p) _mm256_loadu_si256((const V *)(p))

__attribute__((target("avx2"))) static void copy_part(char *y, const char *x, size_t n,
                                                      int nt) {
    size_t i = 0;
    for (; i < n && ((uintptr_t)(y + i) & 31); i++) y[i] = x[i];
    if (nt)
        for (; i + 64 <= n; i += 64) {
            _mm_prefetch(x + i + 4096, _MM_HINT_NTA);
            _mm256_stream_si256((V *)(y + i), LD(x + i));
            _mm256_stream_si256((V *)(y + i + 32), LD(x + i + 32));
        }
    else
        for (; i + 64 <= n; i += 64) {
            _mm256_store_si256((V *)(y + i), LD(x + i));
            _mm256_store_si256((V *)(y + i + 32), LD(x + i + 32));
        }
    for (; i < n; i++) y[i] = x[i];
    _mm_sfence();
}

__attribute__((target("avx2"))) static void pass3_part(char *d, const char *x, const char *g,
                                                       size_t n, int nt) {
    size_t i = 0;
    for (; i < n && ((uintptr_t)(d + i) & 31); i++) d[i] = x[i] + g[i];
    if (nt)
        for (; i + 64 <= n; i += 64) {
            _mm_prefetch(x + i + 4096, _MM_HINT_NTA);
            _mm_prefetch(g + i + 4096, _MM_HINT_NTA);
            _mm256_stream_si256((V *)(d + i), _mm256_add_epi32(LD(x + i), LD(g + i)));
            _mm256_stream_si256((V *)(d + i + 32),
                                _mm256_add_epi32(LD(x + i + 32), LD(g + i + 32)));
        }
    else
        for (; i + 64 <= n; i += 64) {
            _mm256_store_si256((V *)(d + i), _mm256_add_epi32(LD(x + i), LD(g + i)));
            _mm256_store_si256((V *)(d + i + 32),
                               _mm256_add_epi32(LD(x + i + 32), LD(g + i + 32)));
        }
    for (; i < n; i++) d[i] = x[i] + g[i];
    _mm_sfence();
}

__attribute__((target("avx2"))) static int read_part(const char *x, const char *g, size_t n) {
    V a = _mm256_setzero_si256(), b = a, c = a, d = a;
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        a = _mm256_add_epi32(a, LD(x + i));
        b = _mm256_add_epi32(b, LD(x + i + 32));
        c = _mm256_add_epi32(c, LD(x + i + 64));
        d = _mm256_add_epi32(d, LD(x + i + 96));
        if (g) {
            a = _mm256_add_epi32(a, LD(g + i));
            b = _mm256_add_epi32(b, LD(g + i + 32));
            c = _mm256_add_epi32(c, LD(g + i + 64));
            d = _mm256_add_epi32(d, LD(g + i + 96));
        }
    }
    int lanes[8], s = 0;
    _mm256_storeu_si256((V *)lanes, _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d)));
    for (int k = 0; k < 8; k++) s += lanes[k];
    for (; i < n; i++) s += x[i] + (g ? g[i] : 0);
    return s;
}

#ifdef _OPENMP
#define PART int t = omp_get_thread_num(), k = omp_get_num_threads()
#else
#define PART int t = 0, k = 1
#endif
/* thread t's part of n bytes, split on 64-byte boundaries */
#define LO(n) ((n) / 64 * t / k * 64)
#define HI(n) (t + 1 == k ? (n) : (n) / 64 * (t + 1) / k * 64)

void floor_copy(char *y, const char *x, size_t n, int threads, int nt) {
#pragma omp parallel num_threads(threads)
    {
        PART;
        copy_part(y + LO(n), x + LO(n), HI(n) - LO(n), nt);
    }
}

void floor_pass3(char *d, const char *x, const char *g, size_t n, int threads, int nt) {
#pragma omp parallel num_threads(threads)
    {
        PART;
        pass3_part(d + LO(n), x + LO(n), g + LO(n), HI(n) - LO(n), nt);
    }
}

int floor_read(const char *x, size_t n, int threads) {
    int s = 0;
#pragma omp parallel num_threads(threads) reduction(+ : s)
    {
        PART;
        s += read_part(x + LO(n), NULL, HI(n) - LO(n));
    }
    return s;
}

int floor_read2(const char *x, const char *g, size_t n, int threads) {
    int s = 0;
#pragma omp parallel num_threads(threads) reduction(+ : s)
    {
        PART;
        s += read_part(x + LO(n), g + LO(n), HI(n) - LO(n));
    }
    return s;
}
