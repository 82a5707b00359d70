/* Tilings of the kernels (see plan.h). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "plan.h"

/* Detected at the first call; a race between two first calls stores the same
 * values. */
static int64_t cache_l1d, cache_l2, cache_l3;
static volatile int cache_known;

/* A size in bytes from "48K", "2048 K", "2M" or "65536": 0 when unreadable. */
static int64_t parse_size(const char *txt, char **end) {
    char *e;
    long long v = strtoll(txt, &e, 10);
    while (*e == ' ') e++;
    if (*e == 'K' || *e == 'k') v *= 1024, e++;
    else if (*e == 'M' || *e == 'm') v *= 1024 * 1024, e++;
    if (end) *end = e;
    return v > 0 ? (int64_t)v : 0;
}

/* index*'s size of the data or unified cache of that level, from sysfs. */
static int64_t sysfs_cache(int level) {
    for (int i = 0; i < 8; i++) {
        char path[96], buf[32];
        int64_t lv = 0, size = 0;
        int data = 1;
        FILE *f;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
        if (!(f = fopen(path, "r"))) break;
        if (fgets(buf, sizeof buf, f)) lv = parse_size(buf, NULL);
        fclose(f);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/type", i);
        if ((f = fopen(path, "r"))) {
            if (fgets(buf, sizeof buf, f)) data = buf[0] != 'I'; /* not Instruction */
            fclose(f);
        }
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        if ((f = fopen(path, "r"))) {
            if (fgets(buf, sizeof buf, f)) size = parse_size(buf, NULL);
            fclose(f);
        }
        if (lv == level && data && size > 0) return size;
    }
    return 0;
}

/* The kernel's sysfs first: glibc's sysconf derives the sizes from CPUID itself and
 * can be wrong in a VM (on an AMD EPYC guest, sysconf gave a 256 MB L3 where sysfs
 * and lscpu give 32 MB; .NET's runtime met the same, dotnet/runtime#108492), and a
 * wrong L3 moves the streaming threshold. sysconf where sysfs has no answer. */
static int64_t detect_cache(int level) {
    int64_t v = sysfs_cache(level);
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE) && \
    defined(_SC_LEVEL3_CACHE_SIZE)
    if (v <= 0) {
        long r = sysconf(level == 1 ? _SC_LEVEL1_DCACHE_SIZE
                         : level == 2 ? _SC_LEVEL2_CACHE_SIZE : _SC_LEVEL3_CACHE_SIZE);
        v = r > 0 ? (int64_t)r : 0;
    }
#endif
    return v;
}

/* Sizes out of any plausible range take the fallbacks. */
static int64_t sane(int64_t v, int64_t lo, int64_t hi, int64_t fallback) {
    return v >= lo && v <= hi ? v : fallback;
}

void fbn_set_cache_sizes(int64_t l1d, int64_t l2, int64_t l3) {
    const char *env = getenv("FASTBN_CACHE_SIZES");
    int64_t e[3] = {0, 0, 0};
    if (env && !(l1d || l2 || l3)) {
        char *at = (char *)env;
        for (int i = 0; i < 3 && *at; i++) {
            e[i] = parse_size(at, &at);
            if (*at == ',') at++;
        }
    }
    l1d = l1d ? l1d : e[0] ? e[0] : detect_cache(1);
    l2 = l2 ? l2 : e[1] ? e[1] : detect_cache(2);
    l3 = l3 ? l3 : e[2] ? e[2] : detect_cache(3);
    cache_l1d = sane(l1d, 4096, 4 << 20, 32 << 10);
    cache_l2 = sane(l2, 64 << 10, 64 << 20, 512 << 10);
    cache_l3 = sane(l3, 0, (int64_t)1 << 34, 8 << 20);
    cache_known = 1;
}

fbn_caches fbn_cache_sizes(void) {
    if (!cache_known) fbn_set_cache_sizes(0, 0, 0);
    fbn_caches c = {cache_l1d, cache_l2, cache_l3};
    return c;
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
 * only the inputs occupy the cache: a tile holds at most FBN_TILE_BYTES of them
 * (reductions: outputs of FBN_STREAM_BYTES or more, whatever the stores).
 * Elementwise passes take tiles of whole rows when inner == 1, and row tiles
 * otherwise. Reductions keep per-channel accumulators: when whole channels of a
 * block of up to FBN_COL_MAX fit in a tile and the rows are few, tiles are such
 * channel blocks (so a fused pass can reduce and rewrite them in cache);
 * otherwise whole rows again, read in memory order a few rows at a time. */
fbn_plan fbn_make_plan(fbn_shape s, int64_t elem_size, int inputs, int kind) {
    const int reduction = kind == FBN_REDUCTION;
    fbn_plan p;
    /* reductions: fixed sizes (their partition sets the bits of the results);
     * elementwise passes: half of L2 per tile */
    const fbn_caches cs = fbn_cache_sizes();
    int64_t tile = reduction ? FBN_TILE_BYTES : cs.l2 / 2;
    p.s = s;
    p.l1_half = cs.l1d / 2;
    p.per_channel = s.outer * s.inner;
    const int64_t bytes = p.per_channel * s.channels * elem_size;
    /* streamed stores (any kind of pass) when the pass's data, its inputs and output,
     * take more than three quarters of the last-level cache shared by the threads
     * (and more than 4 L2s): smaller outputs stay in that cache for the next pass
     * (half of a 32 MB L3 streamed 512x4096 float32's 16-24 MB, 1.1-1.5x slower) */
    const int64_t l3_part = cs.l3 / 4 * 3;
    const int64_t stream_from = l3_part > 4 * cs.l2 ? l3_part : 4 * cs.l2;
    p.beyond_l3 = (inputs + 1) * bytes > stream_from;
    p.stream = FBN_CAN_STREAM && p.beyond_l3;
    /* a reduction's tiling assumes streamed outputs from FBN_STREAM_BYTES, whatever
     * the stores: its tiles set the bits of its results */
    const int tiled_streamed = reduction ? FBN_CAN_STREAM && bytes >= FBN_STREAM_BYTES : p.stream;
    int64_t bytes_per_value = elem_size * (inputs + (tiled_streamed ? 0 : 1));
    p.block = 1;
    int fits = 0;
    if (s.inner == 1) {
        int64_t strip = s.channels < FBN_COL_MAX ? s.channels : FBN_COL_MAX;
        /* few rows: a block's rows are short runs a whole row apart, which stream
         * from memory slower than whole rows (from FBN_FEW_ROWS rows up) */
        fits = strip > 0 && strip * p.per_channel * bytes_per_value <= tile &&
               p.per_channel < FBN_FEW_ROWS;
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
    p.ntiles = p.per_channel ? p.nblocks * p.nsegs : 0;
    p.rows = 0;
    /* a channel of several tiles still fused when its data (inputs, and the output
     * unless streamed) fit in L2, or in a quarter of L3 (re-read from there, not
     * from memory): no result's bits depend on it */
    const int64_t channel_bytes = p.per_channel * bytes_per_value;
    p.fuse_segs = reduction && s.inner > 1 && p.nsegs > 1 &&
                  (channel_bytes <= cs.l2 || channel_bytes <= cs.l3 / 4);
    if (!reduction && s.inner > 1) { /* row tiles: whole (o, c) rows, memory order */
        int64_t total = s.outer * s.channels;
        p.rows = tile / (bytes_per_value * s.inner);
        if (split)
            p.rows = fbn_min_tile_len(p.rows, total, (least_values + s.inner - 1) / s.inner);
        if (p.rows < 1) p.rows = 1;
        p.block = p.nblocks = p.seg_len = p.nsegs = 0;
        p.ntiles = total > 0 ? (total + p.rows - 1) / p.rows : 0;
    }
    return p;
}

int fbn_threads_for(const fbn_plan *p, int nthreads) {
    int64_t total = p->per_channel * p->s.channels;
    if (nthreads < 1 || total < FBN_MIN_PARALLEL) return 1;
    if (p->ntiles < nthreads) nthreads = (int)(p->ntiles > 0 ? p->ntiles : 1);
    return fbn_pool_threads(total, nthreads);
}

/* Tiles taken one at a time put two threads on neighbouring channels at once: with
 * short runs (e.g. 14x14 maps, 784 bytes) each (o, c) run of the output shares its
 * first and last cache lines with channel c - 1's and c + 1's, and so do the
 * per-channel arrays (statistics, coefficients): lines written by both threads
 * move between the cores all along a tile. A task of consecutive channels shares
 * lines only at its ends, and tasks of many channels were faster still than tasks
 * of a few (docs/performance.md). Each tile is still reduced and rewritten alone
 * (in cache as before); the task's size only sets how finely the pool balances the
 * threads: up to FBN_FUSE_L2S L2s of data (about a hundred microseconds), and at
 * least FBN_FUSE_TASKS tasks per thread. */
int64_t fbn_fuse_group(const fbn_plan *p, int64_t elem_size, int inputs, int nt) {
    if (nt <= 1) return 1;
    const int64_t tile = p->block * p->per_channel * elem_size * (inputs + 1);
    int64_t g = tile > 0 ? fbn_cache_sizes().l2 * FBN_FUSE_L2S / tile : 1;
    const int64_t most = p->nblocks / (FBN_FUSE_TASKS * nt);
    if (g > most) g = most;
    return g < 1 ? 1 : g;
}

/* A fused pass (reread) re-reads a group's channels from cache: groups of at most
 * an eighth of L3 per thread for the forward (a quarter made the 2-thread float64
 * forward of 64x64x56x56 1.08-1.13x slower, channels of 1.6 MB), a quarter for the
 * backward (inputs > 1: x and dy; there a quarter gained up to 0.82x at 2 threads;
 * docs/performance.md). A pass
 * that reads them once takes larger groups, as many as leave each of its nt
 * threads FBN_ONCE_TASKS of them (docs/performance.md). */
int64_t fbn_run_group(const fbn_plan *p, int64_t elem_size, int inputs, int nt, int reread) {
    const fbn_shape *s = &p->s;
    if (s->inner <= 1 || p->block != 1 || s->outer < 2 || p->rows ||
        s->inner * elem_size < FBN_GROUP_RUN)
        return 1;
    int64_t g;
    if (reread) {
        const int64_t channel = p->per_channel * elem_size * inputs;
        const int64_t part = inputs > 1 ? 4 : 8;
        const int64_t fit = fbn_cache_sizes().l3 / (part * (nt > 1 ? nt : 1)) / channel;
        g = fit < FBN_RUN_GROUP ? fit : FBN_RUN_GROUP;
    } else {
        /* ceil(C / g) * nsegs >= tasks when g <= C / ceil(tasks / nsegs) */
        const int64_t tasks = nt > 1 ? (int64_t)nt * FBN_ONCE_TASKS : 1;
        const int64_t need = (tasks + p->nsegs - 1) / p->nsegs;
        const int64_t most = s->channels / need;
        g = most < FBN_ONCE_GROUP ? most : FBN_ONCE_GROUP;
    }
    return g < 1 ? 1 : g;
}
