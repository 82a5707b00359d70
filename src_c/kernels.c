/* Dtype-independent parts of fastbn, and one instantiation of kernels_impl.h
 * per dtype. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fastbn.h"
#include "plan.h"

static int64_t fbn_tile_bytes(void) {
#ifdef FBN_TUNING /* tuning builds only: FASTBN_TILE_KB overrides the tile size */
    const char *kb = getenv("FASTBN_TILE_KB");
    if (kb) return atoll(kb) * 1024;
#endif
    return FBN_TILE_BYTES;
}

static int64_t fbn_col_max(void) {
#ifdef FBN_TUNING /* tuning builds only: FASTBN_COL_MAX overrides the channel block */
    const char *n = getenv("FASTBN_COL_MAX");
    if (n) return atoll(n);
#endif
    return FBN_COL_MAX;
}

/* Rows per tile, at most len, so that n rows make at least FBN_MIN_TILES tiles,
 * unless tiles would be under `least` rows. */
static int64_t fbn_min_tile_len(int64_t len, int64_t n, int64_t least) {
    const int64_t even = (n + FBN_MIN_TILES - 1) / FBN_MIN_TILES;
    const int64_t want = even > least ? even : least;
    return want < len ? want : len;
}

/* A pass reads `inputs` arrays of elem_size values and writes one output. An
 * output too large for the caches is streamed (non-temporal stores), and then
 * only the inputs occupy the cache: a tile holds at most FBN_TILE_BYTES of them.
 * Elementwise passes (reduction = 0) take tiles of whole rows when inner == 1.
 * Reductions keep per-channel accumulators: when whole channels of a block of
 * up to FBN_COL_MAX fit in a tile and the rows are few, tiles are such channel
 * blocks (so a fused pass can reduce and rewrite them in cache); otherwise whole
 * rows again, read in memory order a few rows at a time. */
fbn_plan fbn_make_plan(fbn_shape s, int64_t elem_size, int inputs, int reduction) {
    fbn_plan p;
    int64_t tile = fbn_tile_bytes();
    p.s = s;
    p.per_channel = s.outer * s.inner;
    p.stream = FBN_CAN_STREAM && p.per_channel * s.channels * elem_size >= FBN_STREAM_BYTES;
    int64_t bytes_per_value = elem_size * (inputs + (p.stream ? 0 : 1));
    p.block = 1;
    int fits = 0;
    if (s.inner == 1) {
        const int64_t col_max = fbn_col_max();
        int64_t strip = s.channels < col_max ? s.channels : col_max;
        /* few rows: a block's rows are short runs a whole row apart, which stream
         * from memory slower than whole rows; from 2 * FBN_FLUSH_ROWS rows up,
         * whole-row tiles (read again from L3 for the output) ran faster when
         * the data came from memory (256-512 rows: 0.65-0.8x the time) */
        fits = strip > 0 && strip * p.per_channel * bytes_per_value <= tile &&
               p.per_channel < 2 * FBN_FLUSH_ROWS;
        p.block = reduction && fits ? strip : s.channels;
    }
    if (p.block < 1) p.block = 1;
    p.nblocks = (s.channels + p.block - 1) / p.block;
    /* whole-row reduction tiles stream (only a rare second statistics pass reads
     * one again): larger ones mean fewer partial results to merge, but at least
     * FBN_MIN_TILES of them (of FBN_FLUSH_ROWS rows or more) keep threads busy */
    const int whole_rows = reduction && s.inner == 1 && !fits;
    if (whole_rows) tile *= FBN_ROW_TILES;
    int64_t max_len = tile / (bytes_per_value * p.block);
    if (whole_rows) max_len = fbn_min_tile_len(max_len, p.per_channel, FBN_FLUSH_ROWS);
    /* an elementwise pass of a mid-sized array (one tile of data) on threads too,
     * in tiles of at least FBN_MIN_PARALLEL / FBN_MIN_TILES values */
    const int split = !reduction && p.per_channel * s.channels >= FBN_MIN_PARALLEL;
    const int64_t least_values = FBN_MIN_PARALLEL / FBN_MIN_TILES;
    if (split && s.inner == 1)
        max_len = fbn_min_tile_len(max_len, p.per_channel,
                                   (least_values + s.channels - 1) / s.channels);
    if (max_len < 1) max_len = 1;
    p.nsegs = p.per_channel > max_len ? (p.per_channel + max_len - 1) / max_len : 1;
    p.seg_len = p.nsegs > 0 ? (p.per_channel + p.nsegs - 1) / p.nsegs : 0;
    p.rows = 0;
    if (!reduction && s.inner > 1) { /* memory order: whole (o, c) rows per tile */
        int64_t total = s.outer * s.channels;
        p.rows = tile / (bytes_per_value * s.inner);
        if (split)
            p.rows = fbn_min_tile_len(p.rows, total, (least_values + s.inner - 1) / s.inner);
        if (p.rows < 1) p.rows = 1;
        p.nblocks = 1;
        p.nsegs = total > 0 ? (total + p.rows - 1) / p.rows : 0;
    }
    return p;
}

/* The cached work block: claimed by one call at a time (an atomic flag; calls
 * that find it taken allocate their own), kept up to FBN_WORK_CACHE bytes. */
#define FBN_WORK_CACHE (16 * 1024 * 1024)
#if defined(__GNUC__) || defined(__clang__)
#define FBN_CLAIM(flag) (__atomic_exchange_n(&(flag), 1, __ATOMIC_ACQUIRE) == 0)
#define FBN_UNCLAIM(flag) __atomic_store_n(&(flag), 0, __ATOMIC_RELEASE)
#elif defined(_MSC_VER)
#include <intrin.h>
#define FBN_CLAIM(flag) (_InterlockedExchange(&(flag), 1) == 0)
#define FBN_UNCLAIM(flag) _InterlockedExchange(&(flag), 0)
#else /* no atomics known: every call allocates */
#define FBN_CLAIM(flag) 0
#define FBN_UNCLAIM(flag) (void)0
#endif
static long fbn_cache_busy;
static void *fbn_cache_block;
static int64_t fbn_cache_bytes;

/* Under AddressSanitizer every call allocates its own block and a poisoned gap
 * follows each buffer: an overrun of one buffer is still reported, as with a
 * malloc each. */
#if defined(__SANITIZE_ADDRESS__)
#define FBN_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FBN_ASAN 1
#endif
#endif
#ifdef FBN_ASAN
#include <sanitizer/asan_interface.h>
#define FBN_GAP 64
#else
#define FBN_ASAN 0
#define FBN_GAP 0
#define ASAN_POISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#define ASAN_UNPOISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#endif

static int64_t fbn_round64(int64_t n) { return (n + 63) / 64 * 64; }

int fbn_work_alloc(fbn_work *w, int n, const int64_t *bytes, void **buffers) {
    int64_t total = 64; /* room to align the first buffer */
    for (int i = 0; i < n; i++) total += fbn_round64(bytes[i]) + FBN_GAP;
    w->block = NULL;
    w->cached = 0;
    w->bytes = total;
    if (!FBN_ASAN && total <= FBN_WORK_CACHE && FBN_CLAIM(fbn_cache_busy)) {
        if (fbn_cache_bytes < total) {
            free(fbn_cache_block);
            fbn_cache_block = malloc(total);
            fbn_cache_bytes = fbn_cache_block ? total : 0;
        }
        if (fbn_cache_block) {
            w->block = fbn_cache_block;
            w->cached = 1;
        } else {
            FBN_UNCLAIM(fbn_cache_busy);
        }
    }
    if (!w->block) w->block = malloc(total);
    if (!w->block) return -1;
    char *at = (char *)w->block + (64 - (uintptr_t)w->block % 64) % 64;
    for (int i = 0; i < n; i++) {
        buffers[i] = at;
        ASAN_POISON_MEMORY_REGION(at + bytes[i], fbn_round64(bytes[i]) - bytes[i] + FBN_GAP);
        at += fbn_round64(bytes[i]) + FBN_GAP;
    }
    return 0;
}

void fbn_work_after_fork(void) { fbn_cache_busy = 0; }

void fbn_work_free(fbn_work *w) {
    if (w->cached) {
        FBN_UNCLAIM(fbn_cache_busy);
    } else {
        ASAN_UNPOISON_MEMORY_REGION(w->block, w->bytes);
        free(w->block);
    }
    w->block = NULL;
}

int fbn_threads_for(const fbn_plan *p, int nthreads) {
    int64_t total = p->per_channel * p->s.channels;
    int64_t tiles = p->nblocks * p->nsegs;
    if (nthreads < 1 || total < FBN_MIN_PARALLEL) return 1;
    return tiles < nthreads ? (int)(tiles > 0 ? tiles : 1) : nthreads;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FBN_NO_DISPATCH)
#define FBN_DISPATCH __attribute__((target_clones("avx512f", "avx2", "default")))
#define FBN_SIMD_PATHS "runtime dispatch: avx512f, avx2, baseline x86-64"
#else
#define FBN_DISPATCH
#define FBN_SIMD_PATHS "compiler auto-vectorisation for the build target (no runtime dispatch)"
#endif

FBN_DISPATCH void fbn_invstd(int64_t channels, const double *var, double eps, double *invstd) {
    const double *restrict v = var;
    double *restrict is = invstd;
    for (int64_t c = 0; c < channels; c++) is[c] = 1.0 / sqrt(v[c] + eps);
}

FBN_DISPATCH void fbn_coefficients(int64_t channels, const double *mean_hi,
                                   const double *mean_lo, const double *invstd,
                                   const double *gamma, const double *beta, double *shift,
                                   double *scale, double *bias) {
    const double *restrict hi = mean_hi, *restrict lo = mean_lo, *restrict is = invstd;
    const double *restrict g = gamma, *restrict be = beta;
    double *restrict sh = shift, *restrict sc = scale, *restrict bi = bias;
    /* one simple loop per optional input, so that each vectorises (with few rows
     * per channel, this counts) */
    for (int64_t c = 0; c < channels; c++) {
        sh[c] = hi[c];
        sc[c] = is[c];
        bi[c] = 0.0;
    }
    if (g)
        for (int64_t c = 0; c < channels; c++) sc[c] = g[c] * is[c];
    if (be)
        for (int64_t c = 0; c < channels; c++) bi[c] = be[c];
    /* the residual is dropped when 0 or beside an infinite scale (never NaN) */
    if (lo)
        for (int64_t c = 0; c < channels; c++)
            bi[c] = lo[c] != 0.0 && FBN_FINITE(sc[c]) ? bi[c] - lo[c] * sc[c] : bi[c];
}

int fbn_openmp_enabled(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int fbn_max_threads(void) { return fbn_pool_max_threads(); }

const char *fbn_simd_paths(void) { return FBN_SIMD_PATHS; }

const char *fbn_compiler(void) {
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#else
    return "unknown C99 compiler";
#endif
}

/* FBN_STREAM_V(dst, v): a 16-byte non-temporal store of vector v (SSE2 is
 * baseline x86-64); FBN_VINT: the integers of T's size, for vector masks. */
#define T float
#define SFX f32
#define FBN_VINT int32_t
#define FBN_STREAM_V(d, v) _mm_stream_ps((d), (__m128)(v))
#include "kernels_impl.h"
#undef T
#undef SFX
#undef FBN_VINT
#undef FBN_STREAM_V

#define T double
#define SFX f64
#define FBN_VINT int64_t
#define FBN_STREAM_V(d, v) _mm_stream_pd((d), (__m128d)(v))
#include "kernels_impl.h"
#undef T
#undef SFX
#undef FBN_VINT
#undef FBN_STREAM_V
