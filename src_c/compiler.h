/* Compiler-specific helpers of the kernels: inlining, SIMD dispatch, loop hints,
 * prefetches and non-temporal stores. Each has a plain C99 fallback. Internal,
 * not part of the public C API. */
#ifndef FASTBN_COMPILER_H
#define FASTBN_COMPILER_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "tuning.h"

/* Helpers of the dispatched tile functions must be inlined into them, so that
 * each target_clones version compiles them for its own instruction set. */
#if defined(__GNUC__)
#define FBN_INLINE static inline __attribute__((always_inline))
#else
#define FBN_INLINE static inline
#endif

/* A static function GCC must not inline (see its use), without a warning where a
 * build leaves it unused. */
#if defined(__GNUC__)
#define FBN_NOINLINE __attribute__((noinline, unused))
#else
#define FBN_NOINLINE
#endif

/* A function GCC must not clone for constant arguments (see its use). */
#if defined(__GNUC__) && !defined(__clang__)
#define FBN_NOCLONE __attribute__((noclone))
#else
#define FBN_NOCLONE
#endif

/* Runtime SIMD dispatch of the functions that do the arithmetic (GCC on x86-64):
 * one clone per instruction set, chosen at load time by the CPU. -DFBN_NO_DISPATCH
 * builds the baseline alone (tools/digest_paths.sh checks that build's results).
 * -DFBN_ONE_CLONE (the sanitizer build, setup.py): the kernels once, for the
 * baseline, the half conversions and streamed copies still by what the CPU has; at
 * -O1 nothing is vectorised, so the clones would be the same code three times. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FBN_NO_DISPATCH)
#ifdef FBN_ONE_CLONE
#define FBN_DISPATCH
#define FBN_SIMD_PATHS "one baseline x86-64 clone (FBN_ONE_CLONE: sanitizer build)"
#else
#define FBN_DISPATCH __attribute__((target_clones("avx512f", "avx2", "default")))
#define FBN_SIMD_PATHS "runtime dispatch: avx512f, avx2, baseline x86-64"
#endif
#else
#define FBN_DISPATCH
#define FBN_SIMD_PATHS "compiler auto-vectorisation for the build target (no runtime dispatch)"
#endif

/* Before a loop without loop-carried dependences (values may still be read and
 * written at one address in one iteration, as in place): vectorise it without
 * runtime alias checks. */
#if defined(__GNUC__) && !defined(__clang__)
#define FBN_IVDEP _Pragma("GCC ivdep")
#elif defined(__clang__)
#define FBN_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define FBN_IVDEP
#endif

/* Before a loop over a row group's rows (at most FBN_GROUP, 4, a constant count):
 * unroll it whole, so that each row's vector stays in a register (GCC 12 kept the
 * 16-bit y loop's rolled, through the stack, once its ReLU was a constant). */
#if defined(__GNUC__) && !defined(__clang__)
#define FBN_UNROLL_ROWS _Pragma("GCC unroll 4")
#elif defined(__clang__)
#define FBN_UNROLL_ROWS _Pragma("clang loop unroll(full)")
#else
#define FBN_UNROLL_ROWS
#endif

/* isfinite as a comparison, which vectorises: false for NaN and +-inf. */
#define FBN_FINITE(v) (fabs(v) <= DBL_MAX)

/* Non-temporal stores (src_c/stream.c): SSE2's and wider where the CPU has them,
 * with GCC or clang; other compilers store outputs as usual. */
#if defined(__SSE2__) && defined(__GNUC__)
#define FBN_CAN_STREAM 1
#define FBN_STREAM_FENCE() _mm_sfence()
#else
#define FBN_CAN_STREAM 0
#define FBN_STREAM_FENCE() ((void)0)
#endif

/* n bytes from src to dst (plan.c): whole cache lines of dst with non-temporal
 * stores of the widest vectors the CPU has (64 bytes with AVX-512F, 32 with AVX2,
 * else 16; FASTBN_STREAM_WIDTH=16|32|64 in the environment narrows it, for tests
 * and tuning), the partial lines at either end with plain stores. Callers fence
 * (FBN_STREAM_FENCE) before other threads read dst. Without FBN_CAN_STREAM: memcpy. */
void fbn_stream_copy(void *dst, const void *src, int64_t n);
/* fbn_stream_copy of n bytes for each of `rows` rows, dst's ldd bytes apart and
 * src's lds: a row group's span in one call, whole lines in one loop where every
 * row's n bytes are whole lines of dst. */
void fbn_stream_rows(void *dst, int64_t ldd, const void *src, int64_t lds, int rows,
                     int64_t n);
/* The vector width in bytes fbn_stream_copy uses (0: plain stores). */
int fbn_stream_width(void);

/* Prefetches the bytes [p, p + bytes) a cache line at a time. */
static inline void fbn_prefetch(const void *p, int64_t bytes) {
#if defined(__GNUC__)
    const char *q = (const char *)p;
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(q + b);
#else
    (void)p;
    (void)bytes;
#endif
}

/* Prefetches the bytes [p, p + bytes) for writing (a read for ownership). */
static inline void fbn_prefetch_w(const void *p, int64_t bytes) {
#if defined(__GNUC__)
    const char *q = (const char *)p;
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(q + b, 1);
#else
    (void)p;
    (void)bytes;
#endif
}

/* Prefetches the line FBN_STREAM_AHEAD bytes after p (streamed passes), into all
 * levels: a non-temporal prefetch (prefetchnta) beside streamed stores made a
 * copy 2-4x slower than no prefetch at all (bench/traffic_floor.c, Sapphire Rapids). */
FBN_INLINE void fbn_prefetch_stream(const void *p) {
#if defined(__GNUC__)
    __builtin_prefetch((const char *)p + FBN_STREAM_AHEAD, 0, 3);
#else
    (void)p;
#endif
}

#endif
