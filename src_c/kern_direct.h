/* float32 / float64, streamed: y's and dx's whole 64-byte lines straight from the
 * registers to memory by non-temporal stores, without the L1 buffer and its copy
 * (as 16-bit data do: kern_half_y.h, kern_half_dx.h), for columns-shape rows one
 * by one (fbn_direct_row_<sfx>, called by kern_walk.h's fbn_span_direct_<sfx>) and
 * rows-shape runs (fbn_direct_run_<sfx>, by fbn_stream_regs_<sfx>), each for the
 * part fbn_direct_part_<sfx> gives. A per-dtype template (see kern_dtype.h) for the
 * wide types, included by kern_elemwise.h. GCC emits no non-temporal stores from
 * vectorised loops, so each store width has a function of its own, compiled for its
 * instruction set and chosen by fbn_stream_width() (the CPU's widest, or
 * FASTBN_STREAM_WIDTH). The arithmetic is fbn_affine1_<sfx>'s and fbn_dx1_<sfx>'s,
 * lane by lane: the same bits (no contraction: -ffp-contract=off). Measurements:
 * docs/performance.md. */

#if FBN_CAN_STREAM && defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* The helpers compiled for AVX2, which AVX-512F includes: both loops inline them. */
#pragma GCC push_options
#pragma GCC target("avx2")

/* Half a 64-byte line of TC values in a GCC vector, and its compare mask (32
 * bytes: GCC split 64-byte vectors badly for AVX2). */
typedef TC FBN_SYM(vhalf) __attribute__((vector_size(32)));
typedef FBN_VINT FBN_SYM(vmask) __attribute__((vector_size(32)));
#define FBN_DIRECT_HALF (32 / (int)sizeof(T)) /* values of half a line */

/* FBN_DIRECT_HALF values from p. */
FBN_INLINE FBN_SYM(vhalf) FBN_SYM(direct_load)(const TC *p) {
    FBN_SYM(vhalf) v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* What a loop walks (a constant of the loops): a row, its coefficients an array
 * each; or a run, one channel's coefficients broadcast, its inputs from memory
 * (FBN_DIRECT_RUN) or prefetched ahead (FBN_DIRECT_RUN_FETCH: y's, whose loads
 * the hardware prefetchers alone kept waiting, and dx's re-read from the caches;
 * dx from memory was slower with them: docs/performance.md). */
#define FBN_DIRECT_ROW 0
#define FBN_DIRECT_RUN 1
#define FBN_DIRECT_RUN_FETCH 2

/* The channels' coefficients a row's loop reads, from its first channel on: locals
 * of the loops, which no streamed store can alias. */
typedef struct {
    const TC *shift, *scale, *bias, *k_dy, *k_x, *mean_dy, *k_0, *invstd;
} FBN_SYM(drow);

/* The coefficients of a half line, as vectors: dx's five are set for FBN_OP_DX
 * only (op a constant). */
typedef struct {
    FBN_SYM(vhalf) shift, scale, bias, k_dy, k_x, mean_dy, k_0, invstd;
} FBN_SYM(dhalf);

/* v's FBN_DIRECT_HALF lanes all s (a broadcast: 0.0 + s would turn -0.0 into +0.0). */
FBN_INLINE FBN_SYM(vhalf) FBN_SYM(direct_splat)(TC s) {
    FBN_SYM(vhalf) v;
    for (int i = 0; i < FBN_DIRECT_HALF; i++) v[i] = s;
    return v;
}

/* A coefficient vector of array p at c (form FBN_DIRECT_ROW), or, for a run, p's
 * one value broadcast (c unused). */
FBN_INLINE FBN_SYM(vhalf) FBN_SYM(direct_coef)(const int form, const TC *p, int64_t c) {
    return form != FBN_DIRECT_ROW ? FBN_SYM(direct_splat)(*p) : FBN_SYM(direct_load)(p + c);
}

/* op's coefficients of the half line at c of k's arrays (form FBN_DIRECT_ROW:
 * channels from k's pointers), or of one channel's run (k points at its values). */
FBN_INLINE FBN_SYM(dhalf) FBN_SYM(direct_coefs)(const int op, const int form,
                                                const FBN_SYM(drow) *k, int64_t c) {
    const FBN_SYM(vhalf) zero = {0};
    FBN_SYM(dhalf) q = {zero, zero, zero, zero, zero, zero, zero, zero};
    q.shift = FBN_SYM(direct_coef)(form, k->shift, c);
    q.scale = FBN_SYM(direct_coef)(form, k->scale, c);
    q.bias = FBN_SYM(direct_coef)(form, k->bias, c);
    if (op == FBN_OP_DX) {
        q.k_dy = FBN_SYM(direct_coef)(form, k->k_dy, c);
        q.k_x = FBN_SYM(direct_coef)(form, k->k_x, c);
        q.mean_dy = FBN_SYM(direct_coef)(form, k->mean_dy, c);
        q.k_0 = FBN_SYM(direct_coef)(form, k->k_0, c);
        q.invstd = FBN_SYM(direct_coef)(form, k->invstd, c);
    }
    return q;
}

/* The half line at c (x at xr, dy at dr) of op (FBN_OP_AFFINE: y, FBN_OP_DX: dx;
 * a constant) with coefficients q, relu a constant: fbn_affine1_<sfx>'s and
 * fbn_dx1_<sfx>'s arithmetic (not in eval mode), lane by lane. pre, the affine
 * value, is y before its ReLU and dx's ReLU mask. The ReLU's selects are masks:
 * v < 0 ? 0 : v keeps NaN and -0.0, pre > 0 ? dy : 0 drops dy where pre is NaN,
 * as the scalar forms do. */
FBN_INLINE FBN_SYM(vhalf) FBN_SYM(direct_v)(const int op, const T *xr, const T *dr,
                                            const FBN_SYM(dhalf) *q, int64_t c, const int relu) {
    const FBN_SYM(vhalf) zero = {0};
    const FBN_SYM(vhalf) xc = FBN_SYM(direct_load)(xr + c) - q->shift;
    const FBN_SYM(vhalf) pre = xc * q->scale + q->bias;
    if (op == FBN_OP_AFFINE) {
        FBN_SYM(vhalf) y = pre;
        if (relu) y = (FBN_SYM(vhalf))((FBN_SYM(vmask))y & ~(y < zero));
        return y;
    }
    FBN_SYM(vhalf) g = FBN_SYM(direct_load)(dr + c);
    if (relu) {
        g = (FBN_SYM(vhalf))((FBN_SYM(vmask))g & (pre > zero));
    }
    const FBN_SYM(vhalf) xterm = q->k_x * (xc * q->invstd);
    return q->k_dy * (g - q->mean_dy) + xterm + q->k_0;
}

/* A run's inputs at c, FBN_STREAM_AHEAD bytes ahead (dy: op FBN_OP_DX's). */
FBN_INLINE void FBN_SYM(direct_fetch)(const int op, const T *x, const T *dy, int64_t c) {
    fbn_prefetch_stream(x + c);
    if (op == FBN_OP_DX) fbn_prefetch_stream(dy + c);
}

/* The half line at c of a row (its coefficients loaded there) or of a run (q,
 * broadcast once by the caller); form: see FBN_DIRECT_ROW. */
FBN_INLINE FBN_SYM(vhalf) FBN_SYM(direct_at)(const int op, const int form, const T *xr,
                                             const T *dr, const FBN_SYM(drow) *k,
                                             const FBN_SYM(dhalf) *q, int64_t c,
                                             const int relu) {
    if (form != FBN_DIRECT_ROW) return FBN_SYM(direct_v)(op, xr, dr, q, c, relu);
    const FBN_SYM(dhalf) qc = FBN_SYM(direct_coefs)(op, FBN_DIRECT_ROW, k, c);
    return FBN_SYM(direct_v)(op, xr, dr, &qc, c, relu);
}
#pragma GCC pop_options

/* The two loops below differ in their stores only: an intrinsic of one
 * instruction set cannot sit in a function inlined into both. op, form (see
 * FBN_DIRECT_ROW) and relu are constants: fbn_direct_rows64_<sfx> and
 * fbn_direct_rows32_<sfx> instantiate them. */
#pragma GCC push_options
#pragma GCC target("avx512f")
/* op's m values (whole lines; out aligned to 64 bytes), a 64-byte store a line. */
FBN_INLINE void FBN_SYM(direct_row64)(const int op, const int form, const T *xr, const T *dr,
                                      T *out, int64_t m, const FBN_SYM(drow) *k,
                                      const int relu) {
    const FBN_SYM(drow) kk = *k;
    const FBN_SYM(dhalf) q = FBN_SYM(direct_coefs)(op, form, &kk, 0); /* rows: unused */
    for (int64_t c = 0; c < m; c += 2 * FBN_DIRECT_HALF) {
        if (form == FBN_DIRECT_RUN_FETCH) FBN_SYM(direct_fetch)(op, xr, dr, c);
        const __m256i lo = (__m256i)FBN_SYM(direct_at)(op, form, xr, dr, &kk, &q, c, relu);
        const __m256i hi =
            (__m256i)FBN_SYM(direct_at)(op, form, xr, dr, &kk, &q, c + FBN_DIRECT_HALF, relu);
        _mm512_stream_si512((__m512i *)(out + c),
                            _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
    }
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2")
/* fbn_direct_row64_<sfx> by two 32-byte stores a line. */
FBN_INLINE void FBN_SYM(direct_row32)(const int op, const int form, const T *xr, const T *dr,
                                      T *out, int64_t m, const FBN_SYM(drow) *k,
                                      const int relu) {
    const FBN_SYM(drow) kk = *k;
    const FBN_SYM(dhalf) q = FBN_SYM(direct_coefs)(op, form, &kk, 0); /* rows: unused */
    for (int64_t c = 0; c < m; c += 2 * FBN_DIRECT_HALF) {
        if (form == FBN_DIRECT_RUN_FETCH) FBN_SYM(direct_fetch)(op, xr, dr, c);
        __m256i *o = (__m256i *)(out + c);
        _mm256_stream_si256(o, (__m256i)FBN_SYM(direct_at)(op, form, xr, dr, &kk, &q, c, relu));
        _mm256_stream_si256(o + 1, (__m256i)FBN_SYM(direct_at)(op, form, xr, dr, &kk, &q,
                                                               c + FBN_DIRECT_HALF, relu));
    }
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f")
/* A 64-byte line of TC values (AVX-512F: one register), and its compare mask. */
typedef TC FBN_SYM(vline) __attribute__((vector_size(64)));
typedef FBN_VINT FBN_SYM(vlmask) __attribute__((vector_size(64)));

FBN_INLINE FBN_SYM(vline) FBN_SYM(line_load)(const TC *p) {
    FBN_SYM(vline) v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* y (op FBN_OP_AFFINE) or dx (FBN_OP_DX; dy at dr) of m values (out aligned to 64
 * bytes) whose coefficients repeat every S lines (k->cycle; op, S and relu
 * constants up to 4 lines, see fbn_direct_held_s64_<sfx>): the S lines'
 * coefficients read once and held in registers (y's three arrays, dx's six, eight
 * with the ReLU's mask: GCC keeps what does not fit of AVX-512F's 32 registers on
 * the stack, in L1), so that a line loads x (and dy) alone where
 * fbn_direct_row64_<sfx> loads every coefficient line too, in halves
 * (docs/performance.md). fbn_direct_v_<sfx>'s arithmetic: the same bits. Returns
 * the values done, whole cycles. */
FBN_INLINE int64_t FBN_SYM(direct_held64)(const int op, const int S, const int relu,
                                          const T *xr, const T *dr, T *out, int64_t m,
                                          const FBN_SYM(drow) *k) {
    const int dx = op == FBN_OP_DX;
    const FBN_SYM(vline) zero = {0};
    FBN_SYM(vline) sh[FBN_DIRECT_HELD], sc[FBN_DIRECT_HELD], bi[FBN_DIRECT_HELD];
    FBN_SYM(vline) kd[FBN_DIRECT_HELD], kx[FBN_DIRECT_HELD], md[FBN_DIRECT_HELD];
    FBN_SYM(vline) k0[FBN_DIRECT_HELD], is[FBN_DIRECT_HELD];
    for (int s = 0; s < S; s++) {
        const int64_t at = s * FBN_LINE_VALUES;
        sh[s] = FBN_SYM(line_load)(k->shift + at);
        sc[s] = !dx || relu ? FBN_SYM(line_load)(k->scale + at) : zero;
        bi[s] = !dx || relu ? FBN_SYM(line_load)(k->bias + at) : zero;
        kd[s] = dx ? FBN_SYM(line_load)(k->k_dy + at) : zero;
        kx[s] = dx ? FBN_SYM(line_load)(k->k_x + at) : zero;
        md[s] = dx ? FBN_SYM(line_load)(k->mean_dy + at) : zero;
        k0[s] = dx ? FBN_SYM(line_load)(k->k_0 + at) : zero;
        is[s] = dx ? FBN_SYM(line_load)(k->invstd + at) : zero;
    }
    int64_t c = 0;
    for (; c + S * FBN_LINE_VALUES <= m; c += S * FBN_LINE_VALUES)
        for (int s = 0; s < S; s++) {
            const int64_t i = c + s * FBN_LINE_VALUES;
            const FBN_SYM(vline) xc = FBN_SYM(line_load)(xr + i) - sh[s];
            FBN_SYM(vline) v;
            if (!dx) {
                v = xc * sc[s] + bi[s];
                if (relu) v = (FBN_SYM(vline))((FBN_SYM(vlmask))v & ~(v < zero));
            } else {
                FBN_SYM(vline) g = FBN_SYM(line_load)(dr + i);
                if (relu) g = (FBN_SYM(vline))((FBN_SYM(vlmask))g & (xc * sc[s] + bi[s] > zero));
                const FBN_SYM(vline) xterm = kx[s] * (xc * is[s]);
                v = kd[s] * (g - md[s]) + xterm + k0[s];
            }
            _mm512_stream_si512((__m512i *)(out + i), (__m512i)v);
        }
    return c;
}

/* fbn_direct_held64_<sfx> with op (FBN_OP_AFFINE or FBN_OP_DX) and relu constants,
 * S (1 to FBN_DIRECT_HELD) a constant up to 4 (registers); longer cycles take S at
 * run time, their coefficient lines copied once into the loop's local arrays (L1):
 * still one 64-byte load per coefficient and line, over a whole tile
 * (docs/performance.md). */
FBN_INLINE int64_t FBN_SYM(direct_held_s64)(const int op, const int relu, int64_t S,
                                            const T *xr, const T *dr, T *out, int64_t m,
                                            const FBN_SYM(drow) *k) {
    if (S == 1) return FBN_SYM(direct_held64)(op, 1, relu, xr, dr, out, m, k);
    if (S == 2) return FBN_SYM(direct_held64)(op, 2, relu, xr, dr, out, m, k);
    if (S == 3) return FBN_SYM(direct_held64)(op, 3, relu, xr, dr, out, m, k);
    if (S == 4) return FBN_SYM(direct_held64)(op, 4, relu, xr, dr, out, m, k);
    return FBN_SYM(direct_held64)(op, (int)S, relu, xr, dr, out, m, k);
}

static int64_t FBN_SYM(direct_held_rows64)(int op, int64_t S, int relu, const T *xr,
                                           const T *dr, T *out, int64_t m,
                                           const FBN_SYM(drow) *k) {
    if (op == FBN_OP_DX)
        return relu ? FBN_SYM(direct_held_s64)(FBN_OP_DX, 1, S, xr, dr, out, m, k)
                    : FBN_SYM(direct_held_s64)(FBN_OP_DX, 0, S, xr, dr, out, m, k);
    return relu ? FBN_SYM(direct_held_s64)(FBN_OP_AFFINE, 1, S, xr, NULL, out, m, k)
                : FBN_SYM(direct_held_s64)(FBN_OP_AFFINE, 0, S, xr, NULL, out, m, k);
}
#pragma GCC pop_options

/* One function per store width; op (FBN_OP_AFFINE or FBN_OP_DX), form and relu
 * constants inside. */
#pragma GCC push_options
#pragma GCC target("avx512f")
FBN_INLINE void FBN_SYM(direct_ops64)(int op, const int form, const T *xr, const T *dr, T *out,
                                      int64_t m, const FBN_SYM(drow) *k, int relu) {
    if (op == FBN_OP_DX && relu)
        FBN_SYM(direct_row64)(FBN_OP_DX, form, xr, dr, out, m, k, 1);
    else if (op == FBN_OP_DX)
        FBN_SYM(direct_row64)(FBN_OP_DX, form, xr, dr, out, m, k, 0);
    else if (relu)
        FBN_SYM(direct_row64)(FBN_OP_AFFINE, form, xr, NULL, out, m, k, 1);
    else
        FBN_SYM(direct_row64)(FBN_OP_AFFINE, form, xr, NULL, out, m, k, 0);
}

static void FBN_SYM(direct_rows64)(int op, int form, const T *xr, const T *dr, T *out,
                                   int64_t m, const FBN_SYM(drow) *k, int relu) {
    if (form == FBN_DIRECT_RUN_FETCH)
        FBN_SYM(direct_ops64)(op, FBN_DIRECT_RUN_FETCH, xr, dr, out, m, k, relu);
    else if (form == FBN_DIRECT_RUN)
        FBN_SYM(direct_ops64)(op, FBN_DIRECT_RUN, xr, dr, out, m, k, relu);
    else
        FBN_SYM(direct_ops64)(op, FBN_DIRECT_ROW, xr, dr, out, m, k, relu);
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2")
FBN_INLINE void FBN_SYM(direct_ops32)(int op, const int form, const T *xr, const T *dr, T *out,
                                      int64_t m, const FBN_SYM(drow) *k, int relu) {
    if (op == FBN_OP_DX && relu)
        FBN_SYM(direct_row32)(FBN_OP_DX, form, xr, dr, out, m, k, 1);
    else if (op == FBN_OP_DX)
        FBN_SYM(direct_row32)(FBN_OP_DX, form, xr, dr, out, m, k, 0);
    else if (relu)
        FBN_SYM(direct_row32)(FBN_OP_AFFINE, form, xr, NULL, out, m, k, 1);
    else
        FBN_SYM(direct_row32)(FBN_OP_AFFINE, form, xr, NULL, out, m, k, 0);
}

static void FBN_SYM(direct_rows32)(int op, int form, const T *xr, const T *dr, T *out,
                                   int64_t m, const FBN_SYM(drow) *k, int relu) {
    if (form == FBN_DIRECT_RUN_FETCH)
        FBN_SYM(direct_ops32)(op, FBN_DIRECT_RUN_FETCH, xr, dr, out, m, k, relu);
    else if (form == FBN_DIRECT_RUN)
        FBN_SYM(direct_ops32)(op, FBN_DIRECT_RUN, xr, dr, out, m, k, relu);
    else
        FBN_SYM(direct_ops32)(op, FBN_DIRECT_ROW, xr, dr, out, m, k, relu);
}
#pragma GCC pop_options

/* y (op FBN_OP_AFFINE) or dx (FBN_OP_DX; dy at dr) of m values of one row (whole
 * 64-byte lines of out, channels from ch) by stores of w bytes
 * (fbn_direct_part_<sfx>'s nt: 64 or 32). Returns 0 (nothing written) for a leaky
 * ReLU's slope and for dx in eval mode, which the loops do not take. */
FBN_INLINE int FBN_SYM(direct_row)(const int op, int w, const T *xr, const T *dr, T *out,
                                   int64_t m, const FBN_SYM(tcoefs) *k, int64_t ch) {
    if (!FBN_SYM(direct_takes)(op, k->relu, k->eval)) return 0;
    const FBN_SYM(drow) r = {k->shift + ch, k->scale + ch, k->bias + ch, k->k_dy + ch,
                             k->k_x + ch,   k->mean_dy + ch, k->k_0 + ch, k->invstd + ch};
    /* repeated coefficients: whole cycles held in registers, then the rest
     * (coefficients from ch again: a whole number of cycles done) */
    const int64_t n =
        w == 64 ? FBN_SYM(held_cycle)(k, ch, m, FBN_DIRECT_HELD * FBN_LINE_VALUES) : 0;
    /* repeated arrays hold channels [ch, period): a longer span only by whole cycles */
    if (!n && k->period && ch + m > k->period) return 0;
    if (n) {
        const int64_t done =
            FBN_SYM(direct_held_rows64)(op, n / FBN_LINE_VALUES, k->relu, xr, dr, out, m, &r);
        xr += done, out += done, m -= done;
        if (dr) dr += done;
        if (!m) return 1;
    }
    if (w == 64)
        FBN_SYM(direct_rows64)(op, FBN_DIRECT_ROW, xr, dr, out, m, &r, k->relu);
    else
        FBN_SYM(direct_rows32)(op, FBN_DIRECT_ROW, xr, dr, out, m, &r, k->relu);
    return 1;
}

/* Rows shape: y or dx of m values of channel h's run (whole 64-byte lines of out)
 * by stores of w bytes, its coefficients broadcast once into registers, its
 * inputs prefetched for y and where fetch (re-read from the caches: see
 * FBN_DIRECT_RUN_FETCH). Returns 0 (nothing written) where fbn_direct_row_<sfx>
 * would. */
FBN_INLINE int FBN_SYM(direct_run)(const int op, int w, int fetch, const T *xr, const T *dr,
                                   T *out, int64_t m, const FBN_SYM(chan) *h) {
    const int form = op == FBN_OP_AFFINE || fetch ? FBN_DIRECT_RUN_FETCH : FBN_DIRECT_RUN;
    if (!FBN_SYM(direct_takes)(op, h->relu, h->eval)) return 0;
    const FBN_SYM(drow) r = {&h->shift, &h->scale, &h->bias,    &h->k_dy,
                             &h->k_x,   &h->mean_dy, &h->k_0, &h->invstd};
    if (w == 64)
        FBN_SYM(direct_rows64)(op, form, xr, dr, out, m, &r, h->relu);
    else
        FBN_SYM(direct_rows32)(op, form, xr, dr, out, m, &r, h->relu);
    return 1;
}
#else
FBN_INLINE int FBN_SYM(direct_row)(const int op, int w, const T *xr, const T *dr, T *out,
                                   int64_t m, const FBN_SYM(tcoefs) *k, int64_t ch) {
    (void)op, (void)w, (void)xr, (void)dr, (void)out, (void)m, (void)k, (void)ch;
    return 0;
}

FBN_INLINE int FBN_SYM(direct_run)(const int op, int w, int fetch, const T *xr, const T *dr,
                                   T *out, int64_t m, const FBN_SYM(chan) *h) {
    (void)op, (void)w, (void)fetch, (void)xr, (void)dr, (void)out, (void)m, (void)h;
    return 0;
}
#endif
