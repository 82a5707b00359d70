/* Tilings of the kernels (see plan.h). */
#include <stdint.h>

#include "plan.h"

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
 * Elementwise passes take tiles of whole rows when inner == 1, and row tiles
 * otherwise. Reductions keep per-channel accumulators: when whole channels of a
 * block of up to FBN_COL_MAX fit in a tile and the rows are few, tiles are such
 * channel blocks (so a fused pass can reduce and rewrite them in cache);
 * otherwise whole rows again, read in memory order a few rows at a time. */
fbn_plan fbn_make_plan(fbn_shape s, int64_t elem_size, int inputs, int kind) {
    const int reduction = kind == FBN_REDUCTION;
    fbn_plan p;
    int64_t tile = FBN_TILE_BYTES;
    p.s = s;
    p.per_channel = s.outer * s.inner;
    p.stream = FBN_CAN_STREAM && p.per_channel * s.channels * elem_size >= FBN_STREAM_BYTES;
    int64_t bytes_per_value = elem_size * (inputs + (p.stream ? 0 : 1));
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
    return p->ntiles < nthreads ? (int)(p->ntiles > 0 ? p->ntiles : 1) : nthreads;
}
