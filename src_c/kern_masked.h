/* mask= (issue 20): statistics over the positions a mask keeps, every position
 * normalised, and the backward's dx. The mask is one byte (0 or 1) per flat
 * (outer, inner) position, shared by every channel, so a tile's kept count is
 * the same for all its channels and the merge stays per segment. The sums are
 * those of the unmasked kernels (kern_runs.h, kern_cols.h) with each dropped
 * value's term selected to zero: with every position kept they are the same
 * operations in the same order, so the results are bitwise the unmasked ones.
 * The backward's reductions run over every position (each is normalised with
 * the masked statistics), so they are the unmasked kernels; only dx differs:
 * kept positions get the full formula with count = kept positions, dropped
 * ones gamma * invstd * dy' (they do not move the statistics). A per-dtype
 * template: see kern_dtype.h for T, TC and FBN_SYM. */

/* Kept positions of each segment of p into kept[k] (segments are the same in
 * every channel block); returns their total. */
static int64_t FBN_SYM(mask_counts)(const uint8_t *mask, const fbn_plan *p, int64_t *kept) {
    int64_t total = 0;
    for (int64_t k = 0; k < p->nsegs; k++) {
        const int64_t j0 = k * p->seg_len;
        const int64_t j1 = j0 + p->seg_len < p->per_channel ? j0 + p->seg_len : p->per_channel;
        int64_t n = 0;
        for (int64_t j = j0; j < j1; j++) n += mask[j] != 0;
        kept[k] = n;
        total += n;
    }
    return total;
}

/* Each channel's first kept value: the pivot (first_kept: its flat index). */
static void FBN_SYM(mpivots)(const T *x, const fbn_shape *s, int64_t first_kept,
                             double *pivot) {
    const int64_t o = first_kept / s->inner, i = first_kept - o * s->inner;
    for (int64_t c = 0; c < s->channels; c++)
        pivot[c] = (double)FBN_LD(x[(o * s->channels + c) * s->inner + i]);
}

/* Adds value o's e and e^2, e = (x - pivot) - mean, to lanes l1[l], l2[l]; zero
 * when the position is dropped (a select: a NaN in padding is dropped too). */
FBN_INLINE void FBN_SYM(mlane_add)(double *l1, double *l2, int l, int64_t o,
                                   const T *restrict x, const uint8_t keep, double pivot,
                                   double mean) {
    double e = ((double)FBN_LD(x[o]) - pivot) - mean;
    e = keep ? e : 0.0;
    l1[l] += e;
    l2[l] += e * e;
}

/* fbn_runs_dev_<sfx> with a mask: the same lanes, pieces and flushes (see
 * fbn_sum_runs_<sfx>); value b + i of a run is flat position b + i + dj. (The
 * masked kernels' inputs are contiguous: a row gap of 0.) */
FBN_INLINE void FBN_SYM(mruns_dev)(fbn_acc *a1, fbn_acc *a2, const fbn_shape *s, int64_t c,
                                   int64_t j0, int64_t j1, const T *restrict x,
                                   const uint8_t *restrict mask, double pivot, double mean) {
    double l1[FBN_LANES] = {0}, l2[FBN_LANES] = {0};
    int64_t pending = 0;
    const int64_t ahead = FBN_RUNS_AHEAD * s->channels * s->inner;
    const int fetch = s->inner * (int64_t)sizeof(T) <= FBN_SHORT_RUN;
    for (FBN_SYM(run_it) r = FBN_SYM(run_first)(s, c, j0, j1, 0); r.j < j1;
         FBN_SYM(run_next)(s, j1, &r)) {
        const int64_t off = r.pos, len = r.n;
        const uint8_t *mk = mask + r.j; /* mk[k]: the run's value k */
        if (fetch) fbn_prefetch(x + off + ahead, len * (int64_t)sizeof(T));
        for (int64_t at = 0; at < len;) {
            const int64_t n = FBN_PIECE - pending < len - at ? FBN_PIECE - pending : len - at;
            const int64_t b = off + at;
            const uint8_t *mb = mk + at;
            int64_t i = 0;
            for (; i + FBN_LANES <= n; i += FBN_LANES)
                for (int l = 0; l < FBN_LANES; l++)
                    FBN_SYM(mlane_add)(l1, l2, l, b + i + l, x, mb[i + l], pivot, mean);
            for (; i + 8 <= n; i += 8)
                for (int l = 0; l < 8; l++)
                    FBN_SYM(mlane_add)(l1, l2, l, b + i + l, x, mb[i + l], pivot, mean);
            for (; i < n; i++)
                FBN_SYM(mlane_add)(l1, l2, (int)(i % FBN_LANES), b + i, x, mb[i], pivot, mean);
            at += n;
            pending += n;
            if (pending == FBN_PIECE) {
                memcpy(a1->lane, l1, sizeof l1);
                memcpy(a2->lane, l2, sizeof l2);
                fbn_acc_flush(a1);
                fbn_acc_flush(a2);
                memset(l1, 0, sizeof l1);
                memset(l2, 0, sizeof l2);
                pending = 0;
            }
        }
    }
    memcpy(a1->lane, l1, sizeof l1);
    memcpy(a2->lane, l2, sizeof l2);
}

/* fbn_stats_group_<sfx> with a mask: mk[i] is row i's (all its channels'). */
FBN_INLINE void FBN_SYM(mstats_group)(const T *row, const uint8_t *mk, int64_t C, int64_t nc,
                                      const int g, const int centred, const double *pv,
                                      const double *mean, double *restrict acc,
                                      double *restrict acc2) {
    for (int64_t c = 0; c < nc; c++) {
        double s1 = 0.0, s2 = 0.0;
        for (int i = 0; i < g; i++) {
            double e = (double)FBN_LD(row[i * C + c]) - pv[c];
            if (centred) e -= mean[c];
            e = mk[i] ? e : 0.0;
            s1 += e;
            s2 += e * e;
        }
        acc[c] += s1;
        acc2[c] += s2;
    }
}

/* fbn_stats_cols_<sfx> with a mask (n: the tile's kept rows, > 0). */
FBN_INLINE void FBN_SYM(mstats_cols)(const T *x, const uint8_t *mask, int64_t C, int64_t c0,
                                     int64_t nc, int64_t j0, int64_t j1, double n,
                                     const double *pivot, fbn_part *part, double *scratch) {
    const double *pv = pivot + c0;
    double *acc = scratch, *acc2 = acc + nc, *mean = acc2 + nc;
    double *need = mean + nc, *tot = need + nc, *comp = tot + nc, *tot2 = comp + nc;
    double *comp2 = tot2 + nc;
    const int G = FBN_SYM(reduce_group)(C);
    for (int64_t c = 0; c < nc; c++) mean[c] = 0.0;
    for (int pass = 0; pass < 2; pass++) {
        const int one_flush = fbn_sums_begin(j1 - j0, nc, &acc, &acc2, tot, comp, tot2, comp2);
        for (int64_t o = j0; o < j1;) {
            const int64_t end = o + FBN_FLUSH_ROWS < j1 ? o + FBN_FLUSH_ROWS : j1;
            for (int64_t c = 0; c < nc; c++) acc[c] = acc2[c] = 0.0;
            for (; o < end; o += G) {
                const T *row = x + o * C + c0;
                const uint8_t *mk = mask + o;
                const int g = end - o < G ? (int)(end - o) : G;
                if (pass == 0 && FBN_SYM(needs_prefetch)(C, nc))
                    FBN_SYM(prefetch_block)(row, C, nc, o, j1, G);
                if (g == 2 * FBN_GROUP && pass == 0)
                    FBN_SYM(mstats_group)(row, mk, C, nc, 2 * FBN_GROUP, 0, pv, mean, acc, acc2);
                else if (g == 2 * FBN_GROUP)
                    FBN_SYM(mstats_group)(row, mk, C, nc, 2 * FBN_GROUP, 1, pv, mean, acc, acc2);
                else if (g == FBN_GROUP && pass == 0)
                    FBN_SYM(mstats_group)(row, mk, C, nc, FBN_GROUP, 0, pv, mean, acc, acc2);
                else if (g == FBN_GROUP)
                    FBN_SYM(mstats_group)(row, mk, C, nc, FBN_GROUP, 1, pv, mean, acc, acc2);
                else
                    for (int i = 0; i < g; i++)
                        FBN_SYM(mstats_group)(row + i * C, mk + i, C, nc, 1, 1, pv, mean, acc,
                                              acc2);
            }
            fbn_sums_flush(one_flush, nc, acc, acc2, tot, comp, tot2, comp2);
        }
        if (!FBN_SYM(finish_cols)(nc, n, pass, tot, comp, tot2, comp2, mean, need, part + c0))
            break;
    }
}

/* fbn_stats_tile_<sfx> over the kept positions (kept: per segment). A tile
 * with none has the empty part (0, 0), which the merge skips. */
FBN_DISPATCH static void FBN_SYM(mstats_tile)(const T *x, const uint8_t *mask,
                                              const fbn_plan *p, int64_t t,
                                              const int64_t *kept, const double *pivot,
                                              fbn_part *part, double *scratch) {
    FBN_SYM(tile) r = FBN_SYM(tile_of)(p, t);
    const fbn_shape *s = &p->s;
    const double n = (double)kept[t % p->nsegs];
    if (n == 0.0) {
        for (int64_t c = r.c0; c < r.c0 + r.nc; c++) part[c].mean = part[c].m2 = 0.0;
        return;
    }
    if (s->inner > 1) {
        int64_t c = r.c0;
        double mean = 0.0;
        for (int pass = 0; pass < 2; pass++) {
            fbn_acc e1 = {{0}, {0, 0}}, e2 = e1;
            if (pass == 0)
                FBN_SYM(mruns_dev)(&e1, &e2, s, c, r.j0, r.j1, x, mask, pivot[c], 0.0);
            else
                FBN_SYM(mruns_dev)(&e1, &e2, s, c, r.j0, r.j1, x, mask, pivot[c], mean);
            double s1 = fbn_acc_value(&e1), m2 = fbn_acc_value(&e2) - s1 * s1 / n;
            mean += s1 / n;
            part[c].mean = mean;
            part[c].m2 = m2;
            if (s1 * s1 / n <= FBN_ONE_PASS * m2) break;
        }
        return;
    }
    FBN_SYM(mstats_cols)(x, mask, s->channels, r.c0, r.nc, r.j0, r.j1, n, pivot, part, scratch);
}

/* n values of dx of one channel (coefficients of fbn_dx1_<sfx>, relu a constant)
 * into out: the full formula where mk[i] keeps the position, k_dy * dy' where it
 * drops it. Both are computed and one selected: the loop vectorises. */
FBN_INLINE void FBN_SYM(mdx_values)(const int relu, const T *restrict dr, const T *restrict xr,
                                    const uint8_t *restrict mk, T *restrict out, int64_t n,
                                    TC sh, TC sc, TC bi, TC kd, TC kx, TC md, TC k0, TC is) {
    for (int64_t i = 0; i < n; i++) {
        const TC d = FBN_LD(dr[i]), v = FBN_LD(xr[i]);
        const TC full = FBN_SYM(dx1)(d, v, sh, sc, bi, relu, kd, kx, md, k0, is, 0);
        const TC plain = kd * FBN_SYM(masked)(d, v, sh, sc, bi, relu);
        out[i] = FBN_ST(mk[i] ? full : plain);
    }
}

/* fbn_mdx_values_<sfx> with stream: an output too large for the caches goes
 * through an L1 buffer, at out's offset in a line, and out with non-temporal
 * stores (as fbn_stream_values_<sfx>: plain stores were most of the masked dx's
 * time beyond the caches). */
FBN_INLINE void FBN_SYM(mdx_span)(const int relu, int stream, const T *dr, const T *xr,
                                  const uint8_t *mk, T *out, int64_t n, TC sh, TC sc, TC bi,
                                  TC kd, TC kx, TC md, TC k0, TC is) {
#if FBN_CAN_STREAM
    if (stream) {
        T buf[FBN_STREAM_CHUNK] __attribute__((aligned(64)));
        int64_t off = (int64_t)((uintptr_t)out % 64 / sizeof(T));
        for (int64_t i = 0, m; i < n; i += m, off = 0) {
            m = n - i < FBN_STREAM_CHUNK - off ? n - i : FBN_STREAM_CHUNK - off;
            FBN_SYM(mdx_values)(relu, dr + i, xr + i, mk + i, buf + off, m, sh, sc, bi, kd, kx,
                                md, k0, is);
            fbn_stream_copy(out + i, buf + off, m * (int64_t)sizeof(T));
        }
        return;
    }
#endif
    (void)stream;
    FBN_SYM(mdx_values)(relu, dr, xr, mk, out, n, sh, sc, bi, kd, kx, md, k0, is);
}

/* Columns shape: dx of n channels from ch of one row (keep: the row's mask). */
FBN_INLINE void FBN_SYM(mdx_row)(const int relu, const T *restrict dr, const T *restrict xr,
                                 const uint8_t keep, T *restrict out, int64_t n,
                                 const FBN_SYM(tcoefs) *k, int64_t ch) {
    const TC *restrict shift = k->shift + ch, *restrict scale = k->scale + ch;
    const TC *restrict bias = k->bias + ch, *restrict k_dy = k->k_dy + ch;
    const TC *restrict k_x = k->k_x + ch, *restrict mdy = k->mean_dy + ch;
    const TC *restrict k_0 = k->k_0 + ch, *restrict inv = k->invstd + ch;
    for (int64_t c = 0; c < n; c++) {
        const TC d = FBN_LD(dr[c]), v = FBN_LD(xr[c]);
        const TC full = FBN_SYM(dx1)(d, v, shift[c], scale[c], bias[c], relu, k_dy[c], k_x[c],
                                     mdy[c], k_0[c], inv[c], 0);
        const TC plain = k_dy[c] * FBN_SYM(masked)(d, v, shift[c], scale[c], bias[c], relu);
        out[c] = FBN_ST(keep ? full : plain);
    }
}

/* dx of channels [c0, c0 + nc), flat positions [j0, j1) (see fbn_mdx_values_<sfx>). */
FBN_INLINE void FBN_SYM(mdx_block_as)(const int relu, int stream, const T *restrict dy,
                                      const T *restrict x, T *dx, const fbn_shape *s,
                                      const uint8_t *restrict mask, const FBN_SYM(tcoefs) *k,
                                      int64_t c0, int64_t nc, int64_t j0, int64_t j1) {
    if (s->inner > 1) {
        for (int64_t c = c0; c < c0 + nc; c++) {
            const TC sh = k->shift[c], sc = k->scale[c], bi = k->bias[c], kd = k->k_dy[c];
            const TC kx = k->k_x[c], md = k->mean_dy[c], k0 = k->k_0[c], is = k->invstd[c];
            for (FBN_SYM(run_it) r = FBN_SYM(run_first)(s, c, j0, j1, 0); r.j < j1;
                 FBN_SYM(run_next)(s, j1, &r))
                FBN_SYM(mdx_span)(relu, stream, dy + r.pos, x + r.pos, mask + r.j, dx + r.pos,
                                  r.n, sh, sc, bi, kd, kx, md, k0, is);
        }
    } else {
        const int64_t C = s->channels;
        for (int64_t o = j0; o < j1; o++) {
            const int64_t b = o * C + c0;
#if FBN_CAN_STREAM
            if (stream) {
                T buf[FBN_STREAM_CHUNK] __attribute__((aligned(64)));
                int64_t off = (int64_t)((uintptr_t)(dx + b) % 64 / sizeof(T));
                for (int64_t i = 0, m; i < nc; i += m, off = 0) {
                    m = nc - i < FBN_STREAM_CHUNK - off ? nc - i : FBN_STREAM_CHUNK - off;
                    FBN_SYM(mdx_row)(relu, dy + b + i, x + b + i, mask[o], buf + off, m, k,
                                     c0 + i);
                    fbn_stream_copy(dx + b + i, buf + off, m * (int64_t)sizeof(T));
                }
                continue;
            }
#endif
            FBN_SYM(mdx_row)(relu, dy + b, x + b, mask[o], dx + b, nc, k, c0);
        }
    }
    if (stream) FBN_STREAM_FENCE();
}

FBN_DISPATCH static void FBN_SYM(mdx_block)(int stream, const T *dy, const T *x, T *dx,
                                            const fbn_shape *s, const uint8_t *mask,
                                            const FBN_SYM(tcoefs) *k, int64_t c0, int64_t nc,
                                            int64_t j0, int64_t j1) {
    if (k->relu)
        FBN_SYM(mdx_block_as)(1, stream, dy, x, dx, s, mask, k, c0, nc, j0, j1);
    else
        FBN_SYM(mdx_block_as)(0, stream, dy, x, dx, s, mask, k, c0, nc, j0, j1);
}

#include "kern_masked_pass.h" /* the drivers: fbn_forward_masked, fbn_backward_masked */
