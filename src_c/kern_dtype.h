/* One instantiation of the kernel templates (the kern_*.h files) for one data
 * type. Each of src_c/kernels_<sfx>.c includes this file once, after defining
 *   FBN_SFX       the suffix of the generated names: f32, f64, f16, bf16
 *   T             the storage type of the data arrays (x, y, dy, dx): float, double,
 *                 fbn_float16, fbn_bfloat16
 *   TC            the compute type of the elementwise passes (their typed
 *                 coefficients, y and dx): T itself for float32 and float64
 *   FBN_VINT      the integer type of TC's size (vector masks)
 *   FBN_LD, FBN_ST  (optional) FBN_LD(v): the T value v as TC; FBN_ST(v): the TC
 *                 value v as T, rounded once. Plain conversions by default.
 *   FBN_NARROW    (optional) defined when T is narrower than TC (float16, bfloat16:
 *                 T is a struct of their bits, so that a value used without FBN_LD
 *                 or stored without FBN_ST does not compile); then also
 *   FBN_LD_N, FBN_ST_N  FBN_LD_N(src, dst, n): n T values as TC into dst;
 *                 FBN_ST_N(src, dst, n): n TC values as T, rounded once: blocks of
 *                 FBN_HBLOCK values at most, by the CPU's vector conversions (half.h)
 *   FBN_LD_V, FBN_ST_V  FBN_LD_V(isa, src, dst): 16 T values as TC into dst by the
 *                 instruction set isa (a constant: half.h's fbn_*_widen16);
 *                 FBN_ST_V(isa, nt, src, dst): 16 TC values as T (kern_half_dx.h),
 *                 with nt (a constant) by non-temporal stores to dst aligned to 32
 *   FBN_HALF_REGS  (FBN_NARROW) the least fbn_half_level() (half.h: 1 F16C +
 *                 AVX2, 2 AVX-512F) at which y (and the rows shape's dx, from 2
 *                 only) are computed in registers (kern_half_y.h), else buffered;
 *                 FBN_HALF_REGS_CACHED: the least such level (0: none) at which the
 *                 rows shape's cached runs too (its streamed chunks: always), those
 *                 of FBN_HALF_CACHED_RUN values or more, and their dx too if
 *                 FBN_HALF_DX_CACHED (0 or 1); FBN_HALF_SCALAR_RUN: the rows shape's
 *                 runs shorter than this (cached) one value at a time by FBN_LD and
 *                 FBN_ST inlined, whose calls per run cost blocks and registers more
 *                 (not a dx that FBN_HALF_DX_CACHED puts in registers)
 *   FBN_HALF_BF_HW  (optional, bfloat16) the register loops compiled a third time
 *                 with AVX512_BF16's rounding (level 3: half.h's fbn_bf16_hw)
 * Reductions accumulate in double whatever T is. Every read of a data value goes
 * through FBN_LD and every write through FBN_ST: the storage types float16 and
 * bfloat16 (src_c/half.h) are instantiations with TC float (issue 19).
 *
 * Naming rule: every name a template defines, function or type, is
 *     FBN_SYM(name)  ->  fbn_<name>_<sfx>      e.g. fbn_forward_train_f32,
 * so `grep -n "FBN_SYM(forward_train)" src_c` finds the definition of
 * fbn_forward_train_f32 and fbn_forward_train_f64. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compiler.h"
#include "fastbn.h"
#include "half.h"
#include "plan.h"

#define FBN_SYM_(name, sfx) fbn_##name##_##sfx
#define FBN_SYM_EXPAND(name, sfx) FBN_SYM_(name, sfx)
#define FBN_SYM(name) FBN_SYM_EXPAND(name, FBN_SFX)
#ifndef FBN_LD
#define FBN_LD(v) ((TC)(v))
#endif
#ifndef FBN_ST
#define FBN_ST(v) ((T)(v))
#endif

/* Sizes in values of this dtype. */
#define FBN_CHUNK (2048 / (int)sizeof(T)) /* columns shape: spans, repeated coefficients */
#define FBN_SPAN (FBN_CHUNK / FBN_GROUP)  /* channels of one span of a row group */
#define FBN_LINE_VALUES (64 / (int64_t)sizeof(T)) /* a cache line of T */
#define FBN_HBLOCK 256 /* FBN_NARROW: values converted per FBN_LD_N / FBN_ST_N call */

#include "kern_runs.h"     /* rows-shape reductions: one channel's runs */
#include "kern_coefs.h"    /* the elementwise coefficients in TC */
#include "kern_cols.h"     /* the reductions' tiles, columns shape */
#include "kern_groups.h"   /* rows-shape reductions of adjacent channels at once */
#include "kern_elemwise.h" /* y and dx per value, run and row group (kern_half_dx.h) */
#include "kern_walk.h"     /* the walk of an elementwise tile */
#include "kern_stats.h"    /* statistics over all tiles: batch_stats */
#include "kern_forward.h"  /* forward_infer, affine */
#include "kern_backward.h" /* backward_reduce, backward_elemt, ema */
#include "kern_fused.h"    /* forward_train, backward: one fused skeleton */
#include "kern_masked.h"   /* forward_masked, backward_masked (mask=) */

#undef FBN_SYM_
#undef FBN_SYM_EXPAND
#undef FBN_SYM
#undef FBN_CHUNK
#undef FBN_SPAN
#undef FBN_LINE_VALUES
#undef FBN_STREAM_CHUNK
#undef FBN_HBLOCK
#undef FBN_TYPED
#undef FBN_LD
#undef FBN_ST
#undef FBN_LD_N
#undef FBN_ST_N
#undef FBN_LD_V
#undef FBN_ST_V
