/* The kernel templates (kern_dtype.h, which lists the parameters) for bfloat16
 * data: one translation unit per dtype (see kernels.c); half precision as in
 * kernels_f16.c. */
#define FBN_NARROW 1
#define FBN_HALF_REGS 2 /* y in registers from fbn_half_level() 2 (AVX-512F): kern_half_y.h */
#define FBN_HALF_REGS_CACHED 3 /* the rows shape's cached runs: with AVX512_BF16 */
#define FBN_HALF_CACHED_RUN 16 /* and 16 values or more (shorter: slower padded) */
#define FBN_HALF_DX_CACHED 0 /* their y only: dx took 1.05-1.09x the blocks' time */
#define FBN_HALF_SCALAR_RUN 16 /* shorter runs one value at a time: inlined integer forms */
#define FBN_HALF_BF_HW 1 /* register loops also with AVX512_BF16's rounding (isa 3) */
#define FBN_SFX bf16
#define T fbn_bfloat16
#define TC float
#define FBN_VINT int32_t
#define FBN_LD(v) fbn_bf16_to_f32((v).bits)
#define FBN_ST(v) ((fbn_bfloat16){fbn_f32_to_bf16(v)})
#define FBN_LD_N(s, d, n) fbn_bf16_widen((const fbn_bf16 *)(const void *)(s), (d), (n))
#define FBN_ST_N(s, d, n) fbn_bf16_narrow((s), (fbn_bf16 *)(void *)(d), (n))
#define FBN_LD_V(isa, s, d) fbn_bf16_widen16((isa), (const fbn_bf16 *)(const void *)(s), (d))
#define FBN_ST_V(isa, nt, s, d) fbn_bf16_narrow16((isa), (nt), (s), (fbn_bf16 *)(void *)(d))
#include "kern_dtype.h"
