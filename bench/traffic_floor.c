/* The least time a batch-norm pass can take on this machine: passes that only
 * move its bytes, with no arithmetic (integer adds where a value must be used, so
 * that no bit pattern, float32 or float64, costs a floating-point assist). Built
 * and loaded by traffic_floor.py. Sizes are in bytes: any dtype.
 *   floor_copy:  read x, write y (inference's traffic);
 *   floor_read:  read x (a statistics pass: the forward's first trip);
 *   floor_read2: read x and dy (the backward's reduction);
 *   floor_pass3: read x and dy, write dx (the backward's elementwise traffic).
 * `mode` of the passes that write: FLOOR_NT (non-temporal stores) and FLOOR_PF
 * (software prefetches of the inputs 4 KB ahead), or'ed; the caller takes the
 * fastest. Loads and stores are the widest vectors the CPU has (AVX-512F, else
 * AVX2: floor_width; AVX2 after floor_set_width(32)), whole aligned lines of the
 * output (64 bytes) at a time.
 * x86-64 with AVX2 at least: a reference point for benchmarks, not part of fastbn. */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { FLOOR_NT = 1, FLOOR_PF = 2 };
#define AHEAD 4096

static int floor_narrow; /* floor_set_width(32): AVX2 passes on an AVX-512 CPU */

/* The vector width the passes use, in bytes. */
int floor_width(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && !floor_narrow ? 64 : 32;
}

/* The passes' vectors at most w bytes wide (32 or 64), as on a machine without
 * AVX-512; returns the width they now use. */
int floor_set_width(int w) {
    floor_narrow = w < 64;
    return floor_width();
}

/* One 64-byte line: d = x (+ g) at offset i, one template per width. */
#define LINE512(d, x, g, i, nt)                                                       \
    do {                                                                              \
        __m512i v_ = _mm512_loadu_si512((x) + (i));                                   \
        if (g) v_ = _mm512_add_epi32(v_, _mm512_loadu_si512((g) + (i)));              \
        if (nt) _mm512_stream_si512((__m512i *)((d) + (i)), v_);                      \
        else _mm512_store_si512((__m512i *)((d) + (i)), v_);                          \
    } while (0)

__attribute__((target("avx512f"))) static void pass_512(char *d, const char *x, const char *g,
                                                        size_t n, int mode) {
    size_t i = 0;
    for (; i < n && ((uintptr_t)(d + i) & 63); i++) d[i] = x[i] + (g ? g[i] : 0);
    const int nt = mode & FLOOR_NT;
    if (mode & FLOOR_PF)
        for (; i + 64 <= n; i += 64) {
            _mm_prefetch(x + i + AHEAD, _MM_HINT_T0);
            if (g) _mm_prefetch(g + i + AHEAD, _MM_HINT_T0);
            LINE512(d, x, g, i, nt);
        }
    else
        for (; i + 64 <= n; i += 64) LINE512(d, x, g, i, nt);
    for (; i < n; i++) d[i] = x[i] + (g ? g[i] : 0);
    _mm_sfence();
}

#define V2 __m256i
#define LD2(p) _mm256_loadu_si256((const V2 *)(p))
#define LINE256(d, x, g, i, nt)                                                       \
    do {                                                                              \
        V2 a_ = LD2((x) + (i)), b_ = LD2((x) + (i) + 32);                             \
        if (g) {                                                                      \
            a_ = _mm256_add_epi32(a_, LD2((g) + (i)));                                \
            b_ = _mm256_add_epi32(b_, LD2((g) + (i) + 32));                           \
        }                                                                             \
        if (nt) {                                                                     \
            _mm256_stream_si256((V2 *)((d) + (i)), a_);                               \
            _mm256_stream_si256((V2 *)((d) + (i) + 32), b_);                          \
        } else {                                                                      \
            _mm256_store_si256((V2 *)((d) + (i)), a_);                                \
            _mm256_store_si256((V2 *)((d) + (i) + 32), b_);                           \
        }                                                                             \
    } while (0)

__attribute__((target("avx2"))) static void pass_256(char *d, const char *x, const char *g,
                                                     size_t n, int mode) {
    size_t i = 0;
    for (; i < n && ((uintptr_t)(d + i) & 63); i++) d[i] = x[i] + (g ? g[i] : 0);
    const int nt = mode & FLOOR_NT;
    if (mode & FLOOR_PF)
        for (; i + 64 <= n; i += 64) {
            _mm_prefetch(x + i + AHEAD, _MM_HINT_T0);
            if (g) _mm_prefetch(g + i + AHEAD, _MM_HINT_T0);
            LINE256(d, x, g, i, nt);
        }
    else
        for (; i + 64 <= n; i += 64) LINE256(d, x, g, i, nt);
    for (; i < n; i++) d[i] = x[i] + (g ? g[i] : 0);
    _mm_sfence();
}

__attribute__((target("avx512f"))) static int read_512(const char *x, const char *g, size_t n) {
    __m512i a = _mm512_setzero_si512(), b = a, c = a, e = a;
    size_t i = 0;
    for (; i + 256 <= n; i += 256) {
        a = _mm512_add_epi32(a, _mm512_loadu_si512(x + i));
        b = _mm512_add_epi32(b, _mm512_loadu_si512(x + i + 64));
        c = _mm512_add_epi32(c, _mm512_loadu_si512(x + i + 128));
        e = _mm512_add_epi32(e, _mm512_loadu_si512(x + i + 192));
        if (g) {
            a = _mm512_add_epi32(a, _mm512_loadu_si512(g + i));
            b = _mm512_add_epi32(b, _mm512_loadu_si512(g + i + 64));
            c = _mm512_add_epi32(c, _mm512_loadu_si512(g + i + 128));
            e = _mm512_add_epi32(e, _mm512_loadu_si512(g + i + 192));
        }
    }
    int s = _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a, b), _mm512_add_epi32(c, e)));
    for (; i < n; i++) s += x[i] + (g ? g[i] : 0);
    return s;
}

__attribute__((target("avx2"))) static int read_256(const char *x, const char *g, size_t n) {
    V2 a = _mm256_setzero_si256(), b = a, c = a, e = a;
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        a = _mm256_add_epi32(a, LD2(x + i));
        b = _mm256_add_epi32(b, LD2(x + i + 32));
        c = _mm256_add_epi32(c, LD2(x + i + 64));
        e = _mm256_add_epi32(e, LD2(x + i + 96));
        if (g) {
            a = _mm256_add_epi32(a, LD2(g + i));
            b = _mm256_add_epi32(b, LD2(g + i + 32));
            c = _mm256_add_epi32(c, LD2(g + i + 64));
            e = _mm256_add_epi32(e, LD2(g + i + 96));
        }
    }
    int lanes[8], s = 0;
    _mm256_storeu_si256((V2 *)lanes, _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, e)));
    for (int k = 0; k < 8; k++) s += lanes[k];
    for (; i < n; i++) s += x[i] + (g ? g[i] : 0);
    return s;
}

static void pass_part(char *d, const char *x, const char *g, size_t n, int mode) {
    if (floor_width() == 64) pass_512(d, x, g, n, mode);
    else pass_256(d, x, g, n, mode);
}

static int read_part(const char *x, const char *g, size_t n) {
    return floor_width() == 64 ? read_512(x, g, n) : read_256(x, g, n);
}

#ifdef _OPENMP
#define PART int t = omp_get_thread_num(), k = omp_get_num_threads()
#else
#define PART int t = 0, k = 1
#endif
/* thread t's part of n bytes, split on 64-byte boundaries */
#define LO(n) ((n) / 64 * t / k * 64)
#define HI(n) (t + 1 == k ? (n) : (n) / 64 * (t + 1) / k * 64)

void floor_copy(char *y, const char *x, size_t n, int threads, int mode) {
#pragma omp parallel num_threads(threads)
    {
        PART;
        pass_part(y + LO(n), x + LO(n), NULL, HI(n) - LO(n), mode);
    }
}

void floor_pass3(char *d, const char *x, const char *g, size_t n, int threads, int mode) {
#pragma omp parallel num_threads(threads)
    {
        PART;
        pass_part(d + LO(n), x + LO(n), g + LO(n), HI(n) - LO(n), mode);
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
