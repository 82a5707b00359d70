/* Tuning constants of the kernels: one line of reason each. The measurements
 * behind them are in docs/performance.md ("Tuning choices"), with the bench/
 * scripts that repeat them. None changes a result's bits except where said:
 * tilings depend on shape and element size only, never on the thread count.
 * Internal, not part of the public C API. */
#ifndef FASTBN_TUNING_H
#define FASTBN_TUNING_H

/* Bytes of data per tile: a tile is reduced and then rewritten while in L2. */
#define FBN_TILE_BYTES (1024 * 1024)
/* Widest channel block of a fused reduction tile when inner == 1 (whole channels
 * of the block fit in a tile); other tiles take whole rows. */
#define FBN_COL_MAX 256
/* Whole-row reduction tiles (inner == 1) are up to this many tiles long, and
 * there are at least FBN_MIN_TILES of them where rows allow; so are elementwise
 * tiles of arrays of FBN_MIN_PARALLEL values or more, which split anywhere. */
#define FBN_ROW_TILES 4
#define FBN_MIN_TILES 16
/* Below this many values a call runs on one thread: start-up would cost more.
 * (fastbn/_front.pxi reads it too, to skip the thread setting of small calls.) */
#define FBN_MIN_PARALLEL 65536
/* Channels per work item when partial statistics are merged in parallel. */
#define FBN_MERGE_CHUNK 256

/* Columns shape: rows summed together in registers before per-channel sums
 * (and rows sharing coefficients loaded once in elementwise passes). */
#define FBN_GROUP 4
/* Columns shape: rows summed plainly before a compensated total; also the row
 * count from which whole-row tiles beat channel blocks (twice this many). */
#define FBN_FLUSH_ROWS 64
/* Columns shape reductions: scratch doubles per channel (sums, totals, flags). */
#define FBN_COL_SCRATCH 8
/* Columns-shape statistics: rows of at least this many bytes sum 2 * FBN_GROUP
 * rows in registers (their per-channel sums spill from L1). */
#define FBN_WIDE_ROW 2048
/* Columns shape, dx with C channels in [MIN, MAX]: row groups, not flat spans
 * of repeated coefficients (with fewer channels their loops are too short). */
#define FBN_DX_GROUP_MIN 16
#define FBN_DX_GROUP_MAX 64

/* Independent accumulator lanes: enough vector registers to hide add latency. */
#define FBN_LANES 32 /* fbn_acc_flush assumes 32 */
/* Values summed in plain lanes before they are added to a compensated total:
 * bounds the rounding error of long sums without slowing the inner loop. */
#define FBN_PIECE 4096
/* One pass of shifted sums gives the variance to ~FBN_ONE_PASS * 1e-16 relative:
 * above that, statistics take a second, centred pass (changes results). */
#define FBN_ONE_PASS 256.0

/* Outputs of at least this many bytes are written with non-temporal stores,
 * their inputs prefetched FBN_STREAM_AHEAD bytes ahead. */
#define FBN_STREAM_BYTES (16 * 1024 * 1024)
#define FBN_STREAM_AHEAD 4096
/* Streamed columns: single rows where the coefficient arrays a pass reads fit
 * in this many bytes (half of L1); above, groups of FBN_GROUP rows. */
#define FBN_ROW_BY_ROW_BYTES 16384

/* Row groups a reduction fetches ahead where the hardware prefetcher falls short:
 * channel blocks, and rows of at most FBN_SHORT_ROW bytes. */
#define FBN_AHEAD 1
#define FBN_SHORT_ROW 2048
/* Rows shape: reductions over runs of at most FBN_SHORT_RUN bytes (small maps,
 * e.g. 14x14) fetch the run FBN_RUNS_AHEAD rows ahead: the hardware prefetcher
 * does not follow short runs a row apart. */
#define FBN_RUNS_AHEAD 2
#define FBN_SHORT_RUN 4096

/* The cached work block (work.c) is kept up to this many bytes. */
#define FBN_WORK_CACHE (16 * 1024 * 1024)

#endif
