"""The mutants tools/mutate.py applies, one at a time: realistic one-line bugs.

Each entry: a short name, the file, the exact old text (it must occur exactly
once in the committed file: the harness reports STALE otherwise, so that a
changed line is noticed and its entry updated), the new text, and what the bug
is. Keep one snippet per entry, as small as stays unique.
"""
from collections import namedtuple

Mutant = namedtuple("Mutant", "name path old new description")

# the C kernel templates (src_c/kern_*.h, one family each)
RUNS, COEFS, COLS = "src_c/kern_runs.h", "src_c/kern_coefs.h", "src_c/kern_cols.h"
VEC, ELEMWISE, WALK = "src_c/kern_vec.h", "src_c/kern_elemwise.h", "src_c/kern_walk.h"
STATS, FORWARD, BACKWARD = "src_c/kern_stats.h", "src_c/kern_forward.h", "src_c/kern_backward.h"

MUTANTS = [
    # ---- the survivors named in issue 14
    Mutant("neumaier", "src_c/ksum.h",
           "        k->comp += (k->sum - t) + v;",
           "        k->comp -= (k->sum - t) + v;",
           "fbn_kadd subtracts its compensation (rows-shape sums)"),
    Mutant("any_all", "fastbn/_core.py",
           "if all(_same_buffer(out3, a) for a in overlapping):",
           "if any(_same_buffer(out3, a) for a in overlapping):",
           "_Output writes out directly when it is one input but partially overlaps another"),
    Mutant("dx_4k", ELEMWISE,
           "                d[i] = dr[i * ld + c];",
           "                d[i] = dr[c];",
           "4K-aliasing dx branch: every row of a group reads the first row's dy"),
    # ---- reductions
    Mutant("kadd_arrays", "src_c/ksum.h",
           "        comp[i] += (big - t) + small;",
           "        comp[i] -= (big - t) + small;",
           "columns-shape compensated totals subtract their compensation"),
    Mutant("chan_merge", STATS,
           "parts[c].m2 += seg[c].m2 + delta * delta * wab;",
           "parts[c].m2 += seg[c].m2 + delta * delta * wb;",
           "Chan merge of segments with the wrong weight (multi-segment channels)"),
    Mutant("one_pass", COLS,
           "const double again_c = !(s1 * s1 / n <= FBN_ONE_PASS * m2);",
           "const double again_c = 0.0;",
           "columns shape never takes the centred second pass (pivot far out)"),
    Mutant("ema_factor", BACKWARD,
           "momentum * b * factor);",
           "momentum * b);",
           "running variance without m / (m - 1) (1.4e-6 at m = 70,001)"),
    Mutant("eps_outside", "src_c/kernels.c",
           "is[c] = 1.0 / sqrt(v[c] + eps);",
           "is[c] = 1.0 / (sqrt(v[c]) + eps);",
           "eps outside the square root (3-5e-6 of max|y|)"),
    Mutant("k0_residual", COEFS,
           "t_k_0[c] = (TC)((r != 0.0 && FBN_FINITE(r) ? k_dy[c] * r : 0.0) +",
           "t_k_0[c] = (TC)((0.0) +",
           "dx drops the rounding of mean(dy) to the data's type"),
    # ---- tiling
    Mutant("seg_len", "src_c/plan.c",
           "p.seg_len = p.nsegs > 0 ? (p.per_channel + p.nsegs - 1) / p.nsegs : 0;",
           "p.seg_len = p.nsegs > 0 ? p.per_channel / p.nsegs : 0;",
           "segment length rounded down: the last values of a channel are never reduced"),
    Mutant("tile_end", COLS,
           "r.j1 = r.j0 + p->seg_len < p->per_channel ? r.j0 + p->seg_len : p->per_channel;",
           "r.j1 = r.j0 + p->seg_len < p->per_channel ? r.j0 + p->seg_len : p->per_channel - 1;",
           "the last tile of a channel stops one value short"),
    Mutant("rows_tile_end", WALK,
           "const int64_t f1 = f0 + p->rows < n ? f0 + p->rows : n;",
           "const int64_t f1 = f0 + p->rows < n ? f0 + p->rows : n - 1;",
           "the last elementwise tile of memory-order rows misses its last row"),
    Mutant("pairs", WALK,
           "FBN_SYM(span_rows)(op, x, dy, o + 2 * C, C, to + 2 * ldo, ldo, m, k, ch, 2);",
           "FBN_SYM(span_rows)(op, x, dy, o + 2 * C, C, to + 2 * ldo, ldo, m, k, ch, 1);",
           "4K same-sets row groups by pairs: the fourth row is not written"),
    # ---- threading
    Mutant("shared_scratch", FORWARD,
           "FBN_SYM(stats_tile)(j->x, j->p, t, j->pivot, j->parts, j->scratch + thread * j->len);",
           "FBN_SYM(stats_tile)(j->x, j->p, t, j->pivot, j->parts, j->scratch);",
           "statistics tiles of all threads share one scratch (a race)"),
    # ---- streaming (outputs >= 16 MB)
    Mutant("stream_tail", ELEMWISE,
           "    for (; i < m; i++) out[i] = FBN_SYM(value_at)(op, x, dy, i, h);\n}",
           "    for (; i + 1 < m; i++) out[i] = FBN_SYM(value_at)(op, x, dy, i, h);\n}",
           "streamed runs leave the last value of an unaligned tail unwritten"),
    Mutant("stream_relu", VEC,
           "return relu ? FBN_SYM(vselect)((FBN_SYM(ivec))(v < zero), zero, v) : v;",
           "return v;",
           "streamed vector forward ignores the fused ReLU"),
    # ---- the Python layer
    Mutant("f64_contig", "fastbn/_core.py",
           "if v is None or (v.dtype == _F64 and v.flags.c_contiguous and v.flags.aligned):",
           "if v is None or (v.dtype == _F64 and v.flags.aligned):",
           "strided float64 per-channel vectors passed to the kernels as they are"),
    Mutant("overwritten", "fastbn/_checks.py",
           "        if o is not None and overlaps(o, a.x):\n            return True",
           "        if o is not None and o is a.x:\n            return True",
           "forward(out=view of x) is not recorded as overwriting x"),
    Mutant("running_update_bessel", "fastbn/_checks.py",
           "return count / (count - 1) if unbiased else 1.0",
           "return 1.0",
           "update_running_stats takes the biased variance"),
    Mutant("cma_momentum", "fastbn/layers.py",
           "return 1.0 / (self.num_batches_tracked + 1)",
           "return 1.0 / max(self.num_batches_tracked, 1)",
           "momentum=None: cumulative average off by one batch"),
    # ---- SyncBN
    Mutant("sync_var", "fastbn/distributed.py",
           "var = m2 / max(total, 1)",
           "var = m2 / max(total - 1, 1)",
           "SyncBN normalises with the unbiased variance"),
    Mutant("sync_count", "fastbn/distributed.py",
           "max(cache.global_count, 1), axis=axis",
           "max(cache.count, 1), axis=axis",
           "SyncBN backward divides by the local count"),
    Mutant("sync_mean_lo", "fastbn/distributed.py",
           "delta = dh + (de + (l_b - l_a))",
           "delta = dh + de",
           "SyncBN merge drops the parts' mean_lo (offset 1e8: ~1e-8 errors)"),
    Mutant("sync_order", "fastbn/distributed.py",
           "if rank < partner else _merge(other, acc, combine)",
           "if rank < partner or rank == 1 else _merge(other, acc, combine)",
           "SyncBN reduction in another order on some ranks (not bit-identical)"),
    Mutant("sync_lock", "fastbn/distributed.py",
           "    if not held and state.lock.owned():",
           "    if not held:",
           "SyncBN releases a lock another thread holds"),
    # ---- folding
    Mutant("fold_bias", "fastbn/fold.py",
           "b_folded = ((0.0 if b is None else b) - mean) * scale",
           "b_folded = (0.0 if b is None else b) - mean * scale",
           "folded bias: the layer's bias is not scaled"),
    Mutant("fold_eps", "fastbn/fold.py",
           "bn.running_var, bn.eps, axis=axis)",
           "bn.running_var, 1e-5, axis=axis)",
           "fold_batchnorm ignores the layer's eps"),
]
