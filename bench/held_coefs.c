/* How fast one core writes y = (x - shift) * scale + bias of channels-last data
 * with few channels (NHWC 64x56x56x64: 64 channels, 12.8 M values) by non-temporal
 * stores, against a streamed copy of the same bytes: float16 and float32 data,
 * float32 arithmetic. It asks why fastbn's flat spans of repeated coefficients
 * (kern_coefs.h's fbn_repeat_typed_<sfx>: the three coefficient arrays repeated
 * over 2 KB of data, each step loading x and three coefficient vectors) stayed
 * well above bench/traffic_floor.py's floor, a flat streamed copy. With 64
 * channels the coefficients repeat every 4 vectors of 16 floats: 12 registers of
 * AVX-512's 32 hold them all (fbn_y_held_<sfx>, kern_half_y.h;
 * fbn_direct_held64_<sfx>, kern_direct.h).
 *
 * Variants (best of 21 rounds, all variants once a round; x at 16 bytes past a
 * line, as NumPy's large arrays are):
 *   copy                  flat streamed copy, 64-byte stores (the floor)
 *   f16 flat, 2x16        fastbn's flat span before: 3 coefficient loads a step,
 *                         output 16 bytes past a line, two 16-byte stores a step
 *   f16 flat, 64          the same, output aligned, a 64-byte store for 2 steps
 *   f16 held, 2x16 / 64   the 4 steps' coefficients held in registers
 *   f32 flat / held       float32 data, 64-byte stores, output aligned
 *
 *     cc -O2 -march=native bench/held_coefs.c -o /tmp/held_coefs && /tmp/held_coefs
 * (x86-64 with AVX-512F and F16C.) */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N (64L * 56 * 56 * 64)
#define C 64
#define SPAN 1024 /* fastbn's flat span of float16 (2 KB) */
#define ROUNDS 21
#define R (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

static float sh[SPAN], sc[SPAN], bi[SPAN]; /* C values repeated over SPAN */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static inline __m512 affine(__m512 v, __m512 s, __m512 c, __m512 b) {
    return _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(v, s), c), b);
}

static inline __m256i f16_step(const uint16_t *x, __m512 s, __m512 c, __m512 b) {
    return _mm512_cvtps_ph(affine(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)x)), s, c, b), R);
}

static inline void store_2x16(uint16_t *o, __m256i h) {
    _mm_stream_si128((__m128i *)o, _mm256_castsi256_si128(h));
    _mm_stream_si128((__m128i *)o + 1, _mm256_extracti128_si256(h, 1));
}

static inline void store_64(uint16_t *o, __m256i a, __m256i b) {
    _mm512_stream_si512((void *)o, _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1));
}

#define FLAT(j) _mm512_loadu_ps(sh + (j)), _mm512_loadu_ps(sc + (j)), _mm512_loadu_ps(bi + (j))

__attribute__((noinline)) static void copy(void *o, const void *x, int64_t bytes) {
    for (int64_t i = 0; i < bytes; i += 64)
        _mm512_stream_si512((void *)((char *)o + i), _mm512_loadu_si512((const char *)x + i));
}

__attribute__((noinline)) static void f16_flat_2x16(uint16_t *o, const uint16_t *x) {
    for (int64_t i = 0; i < N; i += 16) store_2x16(o + i, f16_step(x + i, FLAT(i % SPAN)));
}

__attribute__((noinline)) static void f16_flat_64(uint16_t *o, const uint16_t *x) {
    for (int64_t i = 0; i < N; i += 32)
        store_64(o + i, f16_step(x + i, FLAT(i % SPAN)), f16_step(x + i + 16, FLAT(i % SPAN + 16)));
}

__attribute__((noinline)) static void f16_held(uint16_t *o, const uint16_t *x, int wide) {
    __m512 s[4], c[4], b[4];
    for (int k = 0; k < 4; k++)
        s[k] = _mm512_loadu_ps(sh + 16 * k), c[k] = _mm512_loadu_ps(sc + 16 * k),
        b[k] = _mm512_loadu_ps(bi + 16 * k);
    for (int64_t i = 0; i < N; i += C) {
        __m256i h[4];
        for (int k = 0; k < 4; k++) h[k] = f16_step(x + i + 16 * k, s[k], c[k], b[k]);
        if (wide) {
            store_64(o + i, h[0], h[1]);
            store_64(o + i + 32, h[2], h[3]);
        } else {
            for (int k = 0; k < 4; k++) store_2x16(o + i + 16 * k, h[k]);
        }
    }
}

__attribute__((noinline)) static void f32_flat(float *o, const float *x) {
    for (int64_t i = 0; i < N; i += 16)
        _mm512_stream_ps(o + i, affine(_mm512_loadu_ps(x + i), FLAT(i % (SPAN / 2))));
}

__attribute__((noinline)) static void f32_held(float *o, const float *x) {
    __m512 s[4], c[4], b[4];
    for (int k = 0; k < 4; k++)
        s[k] = _mm512_loadu_ps(sh + 16 * k), c[k] = _mm512_loadu_ps(sc + 16 * k),
        b[k] = _mm512_loadu_ps(bi + 16 * k);
    for (int64_t i = 0; i < N; i += C)
        for (int k = 0; k < 4; k++)
            _mm512_stream_ps(o + i + 16 * k, affine(_mm512_loadu_ps(x + i + 16 * k), s[k], c[k], b[k]));
}

enum { COPY16, FLAT2X16, FLAT64, HELD2X16, HELD64, COPY32, F32FLAT, F32HELD, NV };
static const char *names[NV] = {"copy (float16 bytes)", "f16 flat, 2x16", "f16 flat, 64",
                                "f16 held, 2x16",       "f16 held, 64",   "copy (float32 bytes)",
                                "f32 flat, 64",         "f32 held, 64"};

int main(void) {
    char *xb = aligned_alloc(4096, N * 4 + 4096), *ob = aligned_alloc(4096, N * 4 + 4096);
    for (int i = 0; i < SPAN; i++) sh[i] = 0.1f * (i % C), sc[i] = 1.0f + (i % C), bi[i] = 0.5f;
    uint16_t *x16 = (uint16_t *)(xb + 16), *o16 = (uint16_t *)(ob + 16), *a16 = (uint16_t *)ob;
    float *x32 = (float *)(xb + 16), *a32 = (float *)ob;
    memset(xb, 0x3c, N * 4 + 4096);
    memset(ob, 0, N * 4 + 4096);
    double best[NV];
    for (int v = 0; v < NV; v++) best[v] = 1e9;
    for (int r = 0; r < ROUNDS; r++)
        for (int v = 0; v < NV; v++) {
            double t = now();
            switch (v) {
            case COPY16: copy(a16, x16, N * 2); break;
            case FLAT2X16: f16_flat_2x16(o16, x16); break;
            case FLAT64: f16_flat_64(a16, x16); break;
            case HELD2X16: f16_held(o16, x16, 0); break;
            case HELD64: f16_held(a16, x16, 1); break;
            case COPY32: copy(a32, x32, N * 4); break;
            case F32FLAT: f32_flat(a32, x32); break;
            case F32HELD: f32_held(a32, x32); break;
            }
            t = now() - t;
            if (t < best[v]) best[v] = t;
        }
    for (int v = 0; v < NV; v++)
        printf("%-22s %7.3f ms  %.2fx its copy\n", names[v], best[v] * 1e3,
               best[v] / best[v < COPY32 ? COPY16 : COPY32]);
    return 0;
}
