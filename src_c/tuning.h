/* Tuning constants of the kernels: one line of reason each. The measurements
 * behind them are in docs/performance.md ("Tuning choices"), with the bench/
 * scripts that repeat them: each constant can be overridden at build time
 * (CFLAGS=-DFBN_GROUP=8, see bench/ab_revs.sh) to time the alternative. None
 * changes a result's bits except where said: tilings depend on shape and element
 * size only, never on the thread count. (Results with an override may differ from
 * tests/digests.json.) Internal, not part of the public C API. */
#ifndef FASTBN_TUNING_H
#define FASTBN_TUNING_H

/* Bytes of data per reduction tile: a tile is reduced and then rewritten while in
 * L2. Fixed, not read from the machine: a reduction's partition sets its results'
 * bits. (Elementwise tiles take half of the L2 detected at run time, plan.c.) */
#ifndef FBN_TILE_BYTES
#define FBN_TILE_BYTES (1024 * 1024)
#endif
/* Widest channel block of a fused reduction tile when inner == 1 (whole channels
 * of the block fit in a tile); other tiles take whole rows. */
#ifndef FBN_COL_MAX
#define FBN_COL_MAX 256
#endif
/* Whole-row reduction tiles (inner == 1) are up to this many tiles long, and
 * there are at least FBN_MIN_TILES of them where rows allow; so are elementwise
 * tiles of arrays of FBN_MIN_PARALLEL values or more, which split anywhere. */
#ifndef FBN_ROW_TILES
#define FBN_ROW_TILES 4
#endif
#ifndef FBN_MIN_TILES
#define FBN_MIN_TILES 16
#endif
/* Below this many values a call runs on one thread: start-up would cost more.
 * (fastbn/_front.pxi reads it too, to skip the thread setting of small calls.) */
#ifndef FBN_MIN_PARALLEL
#define FBN_MIN_PARALLEL 65536
#endif
/* On threads, a training op goes unfused by the rules for rows that stay in L3 and
 * for 16-bit data (fbn_run_pass_<sfx>, kern_fused.h) only from this many values:
 * below, the unfused op's second parallel loop cost more than it saved
 * (docs/performance.md). */
#ifndef FBN_UNFUSED_THREADED
#define FBN_UNFUSED_THREADED (2 * FBN_MIN_PARALLEL)
#endif
/* A call of fewer values than FBN_WAKE_VALUES wakes no sleeping worker (after a
 * pause, as between a trainer's layers, waking one cost more than the whole call
 * on one thread), unless FBN_DENSE_LOOPS such calls in a row each began within a
 * worker's spin of the last loop's end; workers still awake from a previous loop
 * are used (fbn_pool_threads, parallel.c; docs/performance.md). No result's bits
 * depend on them. */
#ifndef FBN_WAKE_VALUES
#define FBN_WAKE_VALUES (1 << 19)
#endif
#ifndef FBN_DENSE_LOOPS
#define FBN_DENSE_LOOPS 2
#endif
/* Fused passes over whole channels on threads run tasks of consecutive channel
 * tiles (not neighbouring channels on two cores at once): up to FBN_FUSE_L2S
 * detected L2s of data, at least FBN_FUSE_TASKS tasks per thread (fbn_fuse_group,
 * plan.c; no result's bits depend on them). */
#ifndef FBN_FUSE_L2S
#define FBN_FUSE_L2S 4
#endif
#ifndef FBN_FUSE_TASKS
#define FBN_FUSE_TASKS 4
#endif
/* Channels per work item when partial statistics are merged in parallel. */
#ifndef FBN_MERGE_CHUNK
#define FBN_MERGE_CHUNK 256
#endif

/* Columns shape: rows summed together in registers before per-channel sums
 * (and rows sharing coefficients loaded once in elementwise passes). */
#ifndef FBN_GROUP
#define FBN_GROUP 4
#endif
/* Columns shape: rows summed plainly before a compensated total. */
#ifndef FBN_FLUSH_ROWS
#define FBN_FLUSH_ROWS 64
#endif
/* Columns-shape reductions of fewer rows than this take channel-block tiles: from
 * here up, whole rows stream from memory faster than a block's short runs. */
#ifndef FBN_FEW_ROWS
#define FBN_FEW_ROWS (2 * FBN_FLUSH_ROWS)
#endif
/* Training forwards whose tiles hold whole channels (nsegs == 1) keep their work
 * arrays per thread, a channel block's each, from this many channels up (issue 13:
 * (2, 50M) float32 took 4.8 GB of C-sized work), and C-sized ones below: the block
 * arrays' setup cost about 350 instructions a tile (+2.3% at (16, 32, 64)), and
 * below this the C-sized ones are small. No result's bits depend on it. */
#ifndef FBN_BLOCK_WORK_C
#define FBN_BLOCK_WORK_C 4096
#endif
/* Columns shape reductions: scratch doubles per channel (sums, totals, flags,
 * partial sums). */
#ifndef FBN_COL_SCRATCH
#define FBN_COL_SCRATCH 10
#endif
/* Columns-shape statistics: rows of at least this many bytes sum 2 * FBN_GROUP
 * rows in registers (their per-channel sums spill from L1). */
#ifndef FBN_WIDE_ROW
#define FBN_WIDE_ROW 2048
#endif
/* Columns-shape reductions of whole rows of FBN_ORDER_ROW bytes or more and at
 * most FBN_ORDER_CHANNELS channels take a group's rows one after another, its
 * partial sums in L1, rather than a line of each row in turn: the hardware
 * prefetchers follow that order poorly once a group spans 2 KB (the same bits;
 * bench/reduce_order.c). */
#ifndef FBN_ORDER_ROW
#define FBN_ORDER_ROW 512
#endif
#ifndef FBN_ORDER_CHANNELS
#define FBN_ORDER_CHANNELS 256
#endif
/* Columns shape, dx with C channels in [MIN, MAX] and rows of at most
 * FBN_DX_GROUP_BYTES: row groups, not flat spans of repeated coefficients (with
 * fewer channels their loops are too short; a group of longer rows, a line of
 * each row in turn, the hardware prefetchers follow poorly: see FBN_ORDER_ROW). */
#ifndef FBN_DX_GROUP_MIN
#define FBN_DX_GROUP_MIN 16
#endif
#ifndef FBN_DX_GROUP_MAX
#define FBN_DX_GROUP_MAX 64
#endif
#ifndef FBN_DX_GROUP_BYTES
#define FBN_DX_GROUP_BYTES 256
#endif
/* ... except streamed float32 / float64 rows of at most FBN_DX_FLAT_STREAM_BYTES:
 * flat spans straight from the registers there beat groups, whose spans of 4 such
 * rows each went through the L1 buffer by a call of their own (kern_direct.h). */
#ifndef FBN_DX_FLAT_STREAM_BYTES
#define FBN_DX_FLAT_STREAM_BYTES 64
#endif
/* The most 64-byte lines of coefficients whose repetition (the cycle, lcm(C, a
 * line)) kern_direct.h's fbn_direct_held64_<sfx> holds: y's three arrays, dx's six
 * or eight, of that many lines, in registers up to 4 (AVX-512F has 32), longer
 * cycles in a local copy. dx whose cycle fits takes flat spans too, however long
 * its rows (kern_coefs.h). 16: the cycles of the widest rows that repeat (2 * C at
 * most FBN_CHUNK values: float32 C = 256, float64 C = 128) and of every power of two
 * below. */
#ifndef FBN_DIRECT_HELD
#define FBN_DIRECT_HELD 16
#endif

/* Independent accumulator lanes: enough vector registers to hide add latency. */
#define FBN_LANES 32 /* fixed: fbn_acc_flush assumes 32 */
/* Values summed in plain lanes before they are added to a compensated total:
 * bounds the rounding error of long sums without slowing the inner loop. */
#ifndef FBN_PIECE
#define FBN_PIECE 4096
#endif
/* One pass of shifted sums gives the variance to ~FBN_ONE_PASS * 1e-16 relative:
 * above that, statistics take a second, centred pass (changes results). */
#ifndef FBN_ONE_PASS
#define FBN_ONE_PASS 256.0
#endif

/* Reductions' tiles hold only their inputs for outputs of at least this many
 * bytes (fixed: their tiling sets the bits of the results). Whether any pass's
 * stores are non-temporal is decided at run time (plan.c): when its inputs and
 * output take more than 3/4 of the detected L3 (issue 17: 16 MB outputs streamed
 * out of a 105 MB L3 took twice PyTorch's time; half of a 32 MB L3 was too little).
 * Streamed inputs are prefetched FBN_STREAM_AHEAD bytes ahead. */
#ifndef FBN_STREAM_BYTES
#define FBN_STREAM_BYTES (16 * 1024 * 1024)
#endif
#ifndef FBN_STREAM_AHEAD
#define FBN_STREAM_AHEAD 4096
#endif
/* Streamed runs are computed a chunk at a time into an L1 buffer, then copied out
 * with non-temporal stores (fbn_stream_values_<sfx>, kern_elemwise.h). Chunks of
 * FBN_STREAM_CHUNK_BYTES; but float32 / float64 runs of FBN_STREAM_LONG_RUN bytes
 * or more read from memory take FBN_STREAM_LONG_BYTES, and runs whose inputs are
 * re-read from the caches (prefetched a chunk at a time) FBN_STREAM_FETCH_BYTES.
 * (16-bit data's chunk is a call of the dispatched register loop, whose cost per
 * call outweighed a smaller buffer's gain.) */
#ifndef FBN_STREAM_CHUNK_BYTES
#define FBN_STREAM_CHUNK_BYTES 1024
#endif
#ifndef FBN_STREAM_LONG_RUN
#define FBN_STREAM_LONG_RUN 2048
#endif
#ifndef FBN_STREAM_LONG_BYTES
#define FBN_STREAM_LONG_BYTES 256
#endif
#ifndef FBN_STREAM_FETCH_BYTES
#define FBN_STREAM_FETCH_BYTES 512
#endif
/* Streamed runs go straight from registers (fbn_stream_regs_<sfx>), and so do
 * streamed rows (fbn_span_direct_<sfx>), unless the output lies up to
 * FBN_STREAM_ALIAS_BYTES past an input within a 4 KB page: the loads running ahead
 * then waited on the pending streamed stores they seemed to overlap (4K aliasing;
 * docs/performance.md). */
#ifndef FBN_STREAM_ALIAS_BYTES
#define FBN_STREAM_ALIAS_BYTES 512
#endif
#if FBN_STREAM_LONG_BYTES > FBN_STREAM_CHUNK_BYTES || \
    FBN_STREAM_FETCH_BYTES > FBN_STREAM_CHUNK_BYTES
#error "the streamed runs' buffer holds FBN_STREAM_CHUNK_BYTES"
#endif
/* Streamed columns: single rows where the coefficient arrays a pass reads fit
 * in this many bytes and in half of the detected L1d; above, groups of FBN_GROUP
 * rows. */
#ifndef FBN_ROW_BY_ROW_BYTES
#define FBN_ROW_BY_ROW_BYTES 16384
#endif

/* Row groups a reduction fetches ahead where the hardware prefetcher falls short:
 * channel blocks, and rows of at most FBN_SHORT_ROW bytes. */
#ifndef FBN_AHEAD
#define FBN_AHEAD 1
#endif
#ifndef FBN_SHORT_ROW
#define FBN_SHORT_ROW 2048
#endif
/* Rows shape: reductions over runs of at most FBN_SHORT_RUN bytes (small maps,
 * e.g. 14x14) fetch the run FBN_RUNS_AHEAD rows ahead: the hardware prefetcher
 * does not follow short runs a row apart. */
#ifndef FBN_RUNS_AHEAD
#define FBN_RUNS_AHEAD 2
#endif
#ifndef FBN_SHORT_RUN
#define FBN_SHORT_RUN 4096
#endif
/* Rows-shape reductions (statistics, the backward's sums) read up to FBN_RUN_GROUP
 * adjacent channels row by row (each channel's sums bitwise as alone) where a channel's runs are FBN_GROUP_RUN
 * bytes or longer: a channel's runs a row apart are fetched slower than g channels'
 * contiguous ones, but shorter runs pay more for the lanes each run saves and
 * reloads than they gain. FBN_RUN_GROUP bounds the fused passes' groups, which
 * they re-read from cache; reductions that read their data once (batch_stats,
 * backward_reduce, the unfused passes' reductions) take up to FBN_ONCE_GROUP,
 * leaving FBN_ONCE_TASKS groups or more per thread (fbn_run_group, plan.c). */
#ifndef FBN_RUN_GROUP
#define FBN_RUN_GROUP 8
#endif
#ifndef FBN_ONCE_GROUP
#define FBN_ONCE_GROUP 32
#endif
#ifndef FBN_ONCE_TASKS
#define FBN_ONCE_TASKS 2
#endif
/* the bound of both, for the groups' arrays */
#define FBN_MAX_RUN_GROUP (FBN_ONCE_GROUP > FBN_RUN_GROUP ? FBN_ONCE_GROUP : FBN_RUN_GROUP)
#ifndef FBN_GROUP_RUN
#define FBN_GROUP_RUN 2048
#endif
/* Fused passes (a channel rewritten right after its reduction) only where runs
 * are FBN_FUSE_RUN bytes or longer, or inner == 1: shorter runs (small maps) lie a
 * row apart, and the unfused elementwise pass over whole rows in memory order
 * rewrote them faster (docs/performance.md). No result's bits depend on it. */
#ifndef FBN_FUSE_RUN
#define FBN_FUSE_RUN 1024
#endif
/* Elementwise passes over runs shorter than FBN_SPREAD_RUN bytes walk rows of
 * C * inner values with coefficients repeated (fbn_spread_typed_<sfx>), where
 * such an array takes at most FBN_SPREAD_BYTES (more is coefficient traffic: a
 * float64 (16, 4096, 2, 2) inference took 1.13x the time at 2 threads). Such
 * passes are never fused. */
#ifndef FBN_SPREAD_RUN
#define FBN_SPREAD_RUN 64
#endif
#ifndef FBN_SPREAD_BYTES
#define FBN_SPREAD_BYTES 65536
#endif
#if FBN_SPREAD_RUN > FBN_FUSE_RUN
#error "a fused pass's typed arrays are not spread: FBN_SPREAD_RUN <= FBN_FUSE_RUN"
#endif
/* Small maps' reductions as the columns of (outer, C * inner), where that view is
 * at most FBN_COLS_WIDTH values wide (its work is that wide): statistics with
 * inner at most FBN_STATS_COLS_INNER, the backward's sums with inner at most
 * FBN_SUMS_COLS_INNER (their wider maps lost at 2 threads; docs/performance.md).
 * Values, not bytes: 16-bit data's sums are float32's. The columns' sums are
 * other sums than the runs', so results' bits depend on these. */
#ifndef FBN_STATS_COLS_INNER
#define FBN_STATS_COLS_INNER 32
#endif
#ifndef FBN_SUMS_COLS_INNER
#define FBN_SUMS_COLS_INNER 16
#endif
#ifndef FBN_COLS_WIDTH
#define FBN_COLS_WIDTH 32768
#endif
#if FBN_STATS_COLS_INNER * 8 >= FBN_FUSE_RUN || FBN_SUMS_COLS_INNER * 8 >= FBN_FUSE_RUN
#error "fused passes reduce runs: FBN_*_COLS_INNER * 8 < FBN_FUSE_RUN"
#endif
/* Fused passes over one channel's short runs fetch the output's runs this many
 * rows ahead for writing (not streamed outputs). */
#ifndef FBN_OUT_AHEAD
#define FBN_OUT_AHEAD 4
#endif

/* The cached work block (work.c) is kept up to this many bytes. */
#ifndef FBN_WORK_CACHE
#define FBN_WORK_CACHE (16 * 1024 * 1024)
#endif

#endif
