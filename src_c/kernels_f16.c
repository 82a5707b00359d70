/* The kernel templates (kern_dtype.h, which lists the parameters) for float16 (IEEE binary16)
 * data: one translation unit per dtype (see kernels.c).
 *
 * Half precision (issue 19): data stored as float16 or bfloat16 (the structs of
 * fastbn.h, of their bits), computed in float; each value converted on load and
 * rounded once on store by src_c/half.h: the hot loops a block at a time
 * (FBN_LD_N, FBN_ST_N: F16C / AVX-512F conversions, AVX2 / AVX-512F integer
 * rounding for bfloat16, as the CPU has them), the (N, C) dx 16 values at a time
 * in registers (FBN_LD_V, FBN_ST_V: kern_half_dx.h), and y (and with AVX-512F the
 * rows shape's dx) too where the CPU's conversions make that pay (FBN_HALF_REGS:
 * kern_half_y.h), the rest one value at a time. */
#define FBN_NARROW 1
#define FBN_HALF_REGS 1 /* y in registers from fbn_half_level() 1 (F16C, AVX2): kern_half_y.h */
#define FBN_HALF_REGS_CACHED 1 /* and in the rows shape's cached runs, from level 1 */
#define FBN_HALF_CACHED_RUN 1 /* of any length (short ones too beat the blocks) */
#define FBN_HALF_DX_CACHED 1 /* y and dx */
#define FBN_HALF_SCALAR_RUN 5 /* y of runs of 1-4 one value at a time (longer: registers) */
#define FBN_SFX f16
#define T fbn_float16
#define TC float
#define FBN_VINT int32_t
#define FBN_LD(v) fbn_f16_to_f32((v).bits)
#define FBN_ST(v) ((fbn_float16){fbn_f32_to_f16(v)})
#define FBN_LD_N(s, d, n) fbn_f16_widen((const fbn_f16 *)(const void *)(s), (d), (n))
#define FBN_ST_N(s, d, n) fbn_f16_narrow((s), (fbn_f16 *)(void *)(d), (n))
#define FBN_LD_V(isa, s, d) fbn_f16_widen16((isa), (const fbn_f16 *)(const void *)(s), (d))
#define FBN_ST_V(isa, nt, s, d) fbn_f16_narrow16((isa), (nt), (s), (fbn_f16 *)(void *)(d))
#include "kern_dtype.h"
