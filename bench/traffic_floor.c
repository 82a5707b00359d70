/* The least time a batch-norm pass can take on this machine: passes that only
 * move its bytes, with no arithmetic. Built and loaded by traffic_floor.py.
 *   floor_copy: read x, write y with non-temporal stores (inference's traffic);
 *   floor_read: read x (a statistics pass: the forward's first trip).
 * AVX2, x86-64 only: a reference point for benchmarks, not part of fastbn. */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

__attribute__((target("avx2"))) static void copy_part(float *y, const float *x, size_t n) {
    size_t i = 0;
    for (; i < n && ((uintptr_t)(y + i) & 31); i++) y[i] = x[i];
    for (; i + 16 <= n; i += 16) {
        _mm_prefetch((const char *)(x + i) + 4096, _MM_HINT_NTA);
        _mm256_stream_ps(y + i, _mm256_loadu_ps(x + i));
        _mm256_stream_ps(y + i + 8, _mm256_loadu_ps(x + i + 8));
    }
    for (; i < n; i++) y[i] = x[i];
    _mm_sfence();
}

__attribute__((target("avx2"))) static float read_part(const float *x, size_t n) {
    __m256 a = _mm256_setzero_ps(), b = a, c = a, d = a; /* four chains: no add latency */
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a = _mm256_add_ps(a, _mm256_loadu_ps(x + i));
        b = _mm256_add_ps(b, _mm256_loadu_ps(x + i + 8));
        c = _mm256_add_ps(c, _mm256_loadu_ps(x + i + 16));
        d = _mm256_add_ps(d, _mm256_loadu_ps(x + i + 24));
    }
    float lanes[8], s = 0;
    _mm256_storeu_ps(lanes, _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d)));
    for (int k = 0; k < 8; k++) s += lanes[k];
    for (; i < n; i++) s += x[i];
    return s;
}

void floor_copy(float *y, const float *x, size_t n, int threads) {
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        int t = omp_get_thread_num(), k = omp_get_num_threads();
#else
        int t = 0, k = 1;
#endif
        copy_part(y + n * t / k, x + n * t / k, n * (t + 1) / k - n * t / k);
    }
}

float floor_read(const float *x, size_t n, int threads) {
    float s = 0;
#pragma omp parallel num_threads(threads) reduction(+ : s)
    {
#ifdef _OPENMP
        int t = omp_get_thread_num(), k = omp_get_num_threads();
#else
        int t = 0, k = 1;
#endif
        s += read_part(x + n * t / k, n * (t + 1) / k - n * t / k);
    }
    return s;
}
