/* Checks of src_c/half.h, run by tests/test_half_conversions.py.
 *
 *   half_check dump STRIDE FILE  writes, for the floats whose bits are multiples of
 *       STRIDE (and every binary16), the portable conversions' results (raw arrays):
 *       f16 -> f32 of all 65536 halves (uint32), then for the strided floats
 *       f32 -> f16 and f32 -> bf16 (uint16 each).
 *   half_check compare STRIDE    compares the vector forms (F16C, AVX2, AVX-512F,
 *       where this CPU has them) and the kernels' block conversions with the
 *       portable ones on the same values and prints "<path> <values> <mismatches>"
 *       lines.
 *
 * Built with -mf16c -mavx2 -mavx512f so that every vector form exists; each runs
 * only if __builtin_cpu_supports says the CPU has its instructions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"

static int same_f16_to_f32(uint32_t a, uint32_t b) { return a == b; }

/* The block conversions (fbn_*_widen / fbn_*_narrow, each ISA's form where this CPU
 * has it) on every half and on blocks of the strided floats of every length 0..40
 * (vector bodies and scalar tails), against the portable conversions. */
typedef void (*widen_fn)(const uint16_t *, float *, int64_t);
typedef void (*narrow_fn)(const float *, uint16_t *, int64_t);

static void check_blocks(const char *name, widen_fn widen, float (*w1)(uint16_t),
                         narrow_fn narrow, uint16_t (*n1)(float), uint64_t stride) {
    static uint16_t h[65536], hb[65536];
    static float f[65536];
    uint64_t bad = 0, n = 0;
    for (uint32_t i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    for (int64_t len = 0, at = 0; at < 65536; at += len, len = len % 41 + 1) {
        const int64_t m = at + len <= 65536 ? len : 65536 - at;
        widen(h + at, f + at, m);
        for (int64_t i = at; i < at + m; i++) bad += fbn_f32_bits(f[i]) != fbn_f32_bits(w1(h[i]));
    }
    printf("%s/widen 65536 %llu\n", name, (unsigned long long)bad);
    bad = 0;
    for (uint64_t u0 = 0; u0 < (1ull << 32); u0 += 65536 * stride) {
        int64_t k = 0;
        for (; k < 65536 && u0 + k * stride < (1ull << 32); k++)
            f[k] = fbn_bits_f32((uint32_t)(u0 + k * stride));
        for (int64_t len = 0, at = 0; at < k; at += len, len = len % 41 + 1) {
            const int64_t m = at + len <= k ? len : k - at;
            narrow(f + at, hb + at, m);
        }
        for (int64_t i = 0; i < k; i++) bad += hb[i] != n1(f[i]);
        n += (uint64_t)k;
    }
    printf("%s/narrow %llu %llu\n", name, (unsigned long long)n, (unsigned long long)bad);
}

static void compare(uint64_t stride) {
    const int f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
    const int avx2 = __builtin_cpu_supports("avx2");
    const int avx512 = __builtin_cpu_supports("avx512f");
#ifdef FBN_HAVE_BF16_HW
    const int bf16hw = fbn_bf16_hw(); /* AVX512_BF16's rounding, denormals kept */
#endif
    /* widening: all halves */
    uint64_t bad_w8 = 0, bad_w16 = 0, bad_bw8 = 0, bad_bw16 = 0;
    for (uint32_t h0 = 0; h0 < 65536; h0 += 16) {
        fbn_f16 in[16];
        float out[16];
        for (int i = 0; i < 16; i++) in[i] = (fbn_f16)(h0 + i);
        if (f16c) {
            _mm256_storeu_ps(out, fbn_f16x8_load(in));
            _mm256_storeu_ps(out + 8, fbn_f16x8_load(in + 8));
            for (int i = 0; i < 16; i++)
                bad_w8 += !same_f16_to_f32(fbn_f32_bits(out[i]), fbn_f32_bits(fbn_f16_to_f32(in[i])));
        }
        if (avx512) {
            _mm512_storeu_ps(out, fbn_f16x16_load(in));
            for (int i = 0; i < 16; i++)
                bad_w16 += fbn_f32_bits(out[i]) != fbn_f32_bits(fbn_f16_to_f32(in[i]));
            _mm512_storeu_ps(out, fbn_bf16x16_load(in));
            for (int i = 0; i < 16; i++)
                bad_bw16 += fbn_f32_bits(out[i]) != fbn_f32_bits(fbn_bf16_to_f32(in[i]));
        }
        if (avx2) {
            _mm256_storeu_ps(out, fbn_bf16x8_load(in));
            _mm256_storeu_ps(out + 8, fbn_bf16x8_load(in + 8));
            for (int i = 0; i < 16; i++)
                bad_bw8 += fbn_f32_bits(out[i]) != fbn_f32_bits(fbn_bf16_to_f32(in[i]));
        }
    }
    if (f16c) printf("f16_to_f32/f16c 65536 %llu\n", (unsigned long long)bad_w8);
    if (avx512) printf("f16_to_f32/avx512f 65536 %llu\n", (unsigned long long)bad_w16);
    if (avx2) printf("bf16_to_f32/avx2 65536 %llu\n", (unsigned long long)bad_bw8);
    if (avx512) printf("bf16_to_f32/avx512f 65536 %llu\n", (unsigned long long)bad_bw16);
    /* narrowing: the strided floats, 16 at a time */
    uint64_t n = 0, bad_n8 = 0, bad_n16 = 0, bad_b8 = 0, bad_b16 = 0, bad_bh = 0;
    for (uint64_t u0 = 0; u0 < (1ull << 32); u0 += 16 * stride) {
        float in[16];
        fbn_f16 out[16] __attribute__((aligned(32))); /* the streamed forms' alignment */
        int k = 0;
        for (; k < 16 && u0 + k * stride < (1ull << 32); k++)
            in[k] = fbn_bits_f32((uint32_t)(u0 + k * stride));
        for (int i = k; i < 16; i++) in[i] = 0.0f;
        n += k;
        /* the streamed forms (nt 1, 2) round as the plain ones: their lane order and
         * stores checked on one block in 64, which keeps the every-float run's time */
        const int nts = u0 / (16 * stride) % 64 == 0 ? 2 : 0;
        if (f16c) {
            fbn_f16x8_store(out, _mm256_loadu_ps(in));
            fbn_f16x8_store(out + 8, _mm256_loadu_ps(in + 8));
            for (int i = 0; i < k; i++) bad_n8 += out[i] != fbn_f32_to_f16(in[i]);
            for (int nt = 1; nt <= nts; nt++) { /* streamed: the two halves' order */
                fbn_f16_narrow16_f16c(in, out, nt);
                for (int i = 0; i < k; i++) bad_n8 += out[i] != fbn_f32_to_f16(in[i]);
            }
        }
        if (avx512) {
            fbn_f16x16_store(out, _mm512_loadu_ps(in));
            for (int i = 0; i < k; i++) bad_n16 += out[i] != fbn_f32_to_f16(in[i]);
            for (int nt = 1; nt <= nts; nt++) {
                fbn_f16_narrow16_avx512(in, out, nt);
                for (int i = 0; i < k; i++) bad_n16 += out[i] != fbn_f32_to_f16(in[i]);
            }
            fbn_bf16x16_store(out, _mm512_loadu_ps(in));
            for (int i = 0; i < k; i++) bad_b16 += out[i] != fbn_f32_to_bf16(in[i]);
            for (int nt = 1; nt <= nts; nt++) {
                fbn_bf16_narrow16_avx512(in, out, nt);
                for (int i = 0; i < k; i++) bad_b16 += out[i] != fbn_f32_to_bf16(in[i]);
            }
        }
#ifdef FBN_HAVE_BF16_HW
        if (bf16hw) {
            fbn_bf16_narrow16_bf(in, out, 0);
            for (int i = 0; i < k; i++) bad_bh += out[i] != fbn_f32_to_bf16(in[i]);
            for (int nt = 1; nt <= nts; nt++) {
                fbn_bf16_narrow16_bf(in, out, nt);
                for (int i = 0; i < k; i++) bad_bh += out[i] != fbn_f32_to_bf16(in[i]);
            }
        }
#endif
        if (avx2) {
            fbn_bf16x8_store(out, _mm256_loadu_ps(in));
            fbn_bf16x8_store(out + 8, _mm256_loadu_ps(in + 8));
            for (int i = 0; i < k; i++) bad_b8 += out[i] != fbn_f32_to_bf16(in[i]);
            for (int nt = 1; nt <= nts; nt++) {
                fbn_bf16_narrow16_avx2(in, out, nt);
                for (int i = 0; i < k; i++) bad_b8 += out[i] != fbn_f32_to_bf16(in[i]);
            }
        }
    }
    if (f16c) printf("f32_to_f16/f16c %llu %llu\n", (unsigned long long)n, (unsigned long long)bad_n8);
    if (avx512) printf("f32_to_f16/avx512f %llu %llu\n", (unsigned long long)n, (unsigned long long)bad_n16);
    if (avx2) printf("f32_to_bf16/avx2 %llu %llu\n", (unsigned long long)n, (unsigned long long)bad_b8);
    if (avx512) printf("f32_to_bf16/avx512f %llu %llu\n", (unsigned long long)n, (unsigned long long)bad_b16);
#ifdef FBN_HAVE_BF16_HW
    if (bf16hw)
        printf("f32_to_bf16/avx512bf16 %llu %llu\n", (unsigned long long)n, (unsigned long long)bad_bh);
#endif
    /* blocks: the dispatched choice, then each form this CPU has */
    check_blocks("f16_blocks", fbn_f16_widen, fbn_f16_to_f32, fbn_f16_narrow, fbn_f32_to_f16, stride);
    check_blocks("bf16_blocks", fbn_bf16_widen, fbn_bf16_to_f32, fbn_bf16_narrow, fbn_f32_to_bf16, stride);
    if (f16c && avx2)
        check_blocks("f16_blocks/f16c", fbn_f16_widen_f16c, fbn_f16_to_f32, fbn_f16_narrow_f16c,
                     fbn_f32_to_f16, stride);
    if (avx2)
        check_blocks("bf16_blocks/avx2", fbn_bf16_widen_avx2, fbn_bf16_to_f32, fbn_bf16_narrow_avx2,
                     fbn_f32_to_bf16, stride);
    if (avx512) {
        check_blocks("f16_blocks/avx512f", fbn_f16_widen_avx512, fbn_f16_to_f32,
                     fbn_f16_narrow_avx512, fbn_f32_to_f16, stride);
        check_blocks("bf16_blocks/avx512f", fbn_bf16_widen_avx512, fbn_bf16_to_f32,
                     fbn_bf16_narrow_avx512, fbn_f32_to_bf16, stride);
    }
#ifdef FBN_HAVE_BF16_HW
    if (bf16hw)
        check_blocks("bf16_blocks/avx512bf16", fbn_bf16_widen_avx512, fbn_bf16_to_f32,
                     fbn_bf16_narrow_bf, fbn_f32_to_bf16, stride);
#endif
}

static int dump(uint64_t stride, const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    for (uint32_t h = 0; h < 65536; h++) {
        uint32_t b = fbn_f32_bits(fbn_f16_to_f32((fbn_f16)h));
        fwrite(&b, sizeof b, 1, f);
    }
    for (int which = 0; which < 2; which++)
        for (uint64_t u = 0; u < (1ull << 32); u += stride) {
            float x = fbn_bits_f32((uint32_t)u);
            fbn_f16 r = which == 0 ? fbn_f32_to_f16(x) : fbn_f32_to_bf16(x);
            fwrite(&r, sizeof r, 1, f);
        }
    return fclose(f) != 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "compare")) {
        compare(strtoull(argv[2], NULL, 10));
        return 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "dump")) return dump(strtoull(argv[2], NULL, 10), argv[3]);
    fprintf(stderr, "usage: half_check compare STRIDE | dump STRIDE FILE\n");
    return 2;
}
