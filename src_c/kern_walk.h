/* The walk of an elementwise tile, shared by the forward (y) and the backward
 * (dx): rows-shape runs, columns-shape spans of row groups, and their streamed
 * forms. A per-dtype template: see kern_dtype.h for T, TC and FBN_SYM. */

/* Columns shape: tile r as spans of `rows` rows (a row apart) of m contiguous
 * values from offset off, whose first value is of channel ch. A tile of whole
 * rows with coefficients repeated over `period` values goes `period` values
 * (several rows) per span of one row, so short rows (small C, e.g. NHWC) still
 * make long vector loops. Otherwise spans are FBN_GROUP rows by FBN_SPAN
 * channels: each channel's coefficients are loaded once for the group's rows,
 * however large C.
 *   for (it = span_first(s, &r, period, at); it.rows > 0; span_next(s, &r, period, &it))
 * with `at` the array whose lines spans follow (see fbn_span_set_<sfx>). */
typedef struct {
    int64_t off, ch, m, rows; /* the span; rows == 0 ends the walk */
    int64_t group;            /* its first row (-1: flat) */
    int64_t mis;              /* `at`'s offset from a cache line, in values */
} FBN_SYM(span_it);

/* A group's first span ends at a line boundary (FBN_LINE_VALUES values) of the
 * array given to span_first, so that the others (vector loops over channels) store
 * (or load) whole lines: NumPy's arrays start 16 bytes past a line (large ones) or
 * anywhere 16 bytes apart on the heap, and split accesses cost, stores most (an
 * output at another offset in a line than x's, e.g. (256, 512) float64: 1.7x
 * slower aligned to x's lines than to the output's). */
FBN_INLINE void FBN_SYM(span_set)(const fbn_shape *s, const FBN_SYM(tile) *r,
                                  FBN_SYM(span_it) *it) {
    const int64_t left = r->c0 + r->nc - it->ch, rows = r->j1 - it->group;
    it->off = it->group * s->channels + it->ch;
    /* a row of more than one span: the first ends at a line boundary */
    const int64_t m = left <= FBN_SPAN || it->ch != r->c0
                          ? FBN_SPAN
                          : FBN_SPAN - (it->mis + it->off) % FBN_LINE_VALUES;
    it->m = left < m ? left : m;
    it->rows = rows < FBN_GROUP ? rows : FBN_GROUP;
}

FBN_INLINE FBN_SYM(span_it) FBN_SYM(span_first)(const fbn_shape *s, const FBN_SYM(tile) *r,
                                                int64_t period, const T *at) {
    FBN_SYM(span_it) it = {.off = 0, .ch = r->c0, .m = 0, .rows = 0, .group = r->j0,
                           .mis = (int64_t)((uintptr_t)at / sizeof(T)) % FBN_LINE_VALUES};
    if (r->j1 <= r->j0) return it;
    if (period && r->nc == s->channels) {
        const int64_t n = (r->j1 - r->j0) * s->channels;
        it.off = r->j0 * s->channels;
        it.ch = 0;
        it.m = n < period ? n : period;
        it.rows = 1;
        it.group = -1;
        return it;
    }
    FBN_SYM(span_set)(s, r, &it);
    return it;
}

FBN_INLINE void FBN_SYM(span_next)(const fbn_shape *s, const FBN_SYM(tile) *r, int64_t period,
                                   FBN_SYM(span_it) *it) {
    if (it->group < 0) {
        const int64_t end = r->j1 * s->channels;
        it->off += it->m;
        it->m = end - it->off < period ? end - it->off : period;
        it->rows = it->m > 0;
        return;
    }
    it->ch += it->m; /* the group's next channels, or the next group */
    if (it->ch >= r->c0 + r->nc) {
        it->ch = r->c0;
        it->group += it->rows;
        if (it->group >= r->j1) {
            it->rows = 0;
            return;
        }
    }
    FBN_SYM(span_set)(s, r, it);
}

/* Whether a row group's lines of out and of in fall in the same L1 sets: rows a
 * multiple of 4 KB apart put a group's lines of one array in one set, and out at
 * in's offset within a page (NumPy's large arrays all start 16 bytes past one)
 * puts 2 * FBN_GROUP lines there (dx: 3 * FBN_GROUP), as many as the ways of an
 * 8-way L1 or more. Such groups go by pairs of rows. */
FBN_INLINE int FBN_SYM(same_sets)(const T *out, const T *in, int64_t C) {
    const uintptr_t d = ((uintptr_t)out - (uintptr_t)in) % 4096;
    return (C * (int64_t)sizeof(T)) % 4096 == 0 && (d < 64 || d > 4096 - 64);
}

/* The array whose cache lines a column walk of plan p aligns its spans to (and
 * the typed coefficients theirs, fbn_typed_arrays_<sfx>): the output, or x when
 * the output is streamed through the L1 buffer (its lines are fixed). */
FBN_INLINE const T *FBN_SYM(walk_lines)(const fbn_plan *p, const T *x, const T *out) {
    return p->stream ? x : out;
}

/* The data value that typed coefficients from channel c0 share their place in a
 * cache line with (fbn_typed_arrays_<sfx>): walk_lines' at c0 when the column
 * walk aligns its spans to those lines, i.e. tiles' channel blocks wider than a
 * span, of rows too long for repeated coefficients (fbn_repeat_typed_<sfx>); else
 * NULL (lines as they come): other spans start anywhere in a line, and then
 * coefficients on a line's start split fewer of their loads. */
FBN_INLINE const T *FBN_SYM(coef_lines)(const fbn_plan *p, const T *x, const T *out,
                                        int64_t c0) {
    const int aligned =
        p->s.inner == 1 && 2 * p->s.channels > FBN_CHUNK && p->block > FBN_SPAN;
    const T *at = FBN_SYM(walk_lines)(p, x, out);
    return aligned && at ? at + c0 : NULL;
}

/* Columns shape, streamed output: whether spans are single rows, one after
 * another, rather than groups of FBN_GROUP rows, which load each coefficient
 * once for the group but read FBN_GROUP places at once. Single rows where the
 * `arrays` coefficient arrays fit in FBN_ROW_BY_ROW_BYTES (at most half of
 * L1d, l1_half) and rows are not short
 * (shorter ones repeat their coefficients over a period, see
 * fbn_repeat_typed_<sfx>). */
FBN_INLINE int FBN_SYM(row_by_row)(int64_t C, int64_t period, int arrays, int64_t l1_half) {
    const int64_t bound = FBN_ROW_BY_ROW_BYTES < l1_half ? FBN_ROW_BY_ROW_BYTES : l1_half;
    return !period && 2 * C >= FBN_CHUNK && arrays * C * (int64_t)sizeof(TC) <= bound;
}

/* Columns shape, streamed float32 / float64: whether tile r (rows of C values) goes
 * as one flat span, straight from the registers with its coefficients held there
 * (kern_direct.h's fbn_direct_held64_<sfx>): repeated coefficients (k->period,
 * whole rows, no row gap) whose cycle the held loop takes from any channel of the
 * first line (a head of a partial line goes through the buffer), and at least two
 * cycles besides the head and tail. A flat span of a period at a time went
 * through the buffer for such a head and tail every 2 KB, and held only whole
 * cycles within each. */
FBN_INLINE int FBN_SYM(held_flat)(const int op, const FBN_SYM(tcoefs) *k,
                                  const FBN_SYM(tile) *r, int64_t C) {
#ifdef FBN_NARROW
    (void)op, (void)k, (void)r, (void)C;
    return 0;
#else
    /* fbn_direct_row_<sfx>'s held cycle for any head (under a line) and tail */
    const int64_t m = (r->j1 - r->j0) * C;
    return (op == FBN_OP_AFFINE || op == FBN_OP_DX) && k->period && r->nc == C &&
           FBN_SYM(held_cycle)(k, FBN_LINE_VALUES, m - 2 * FBN_LINE_VALUES,
                               FBN_DIRECT_HELD * FBN_LINE_VALUES);
#endif
}

/* Columns shape, streamed: op's m values of one row from offset o (the inputs'
 * from oi, a row ld apart; channels from ch) computed into buf and copied out
 * (a row group's rows: fbn_stream_rows, fbn_cols_tile_<sfx>). (Row groups go
 * through the buffer too, which loads each channel's coefficients once for the
 * group; streamed directly from registers they gained nothing on Zen 4, and rows
 * a multiple of 4 KB apart were much slower on an earlier Xeon:
 * docs/performance.md.) */
FBN_INLINE void FBN_SYM(span_out)(const int op, const T *x, const T *dy, int64_t oi, int64_t ld,
                                  T *out, int64_t o, int64_t m, const FBN_SYM(tcoefs) *k,
                                  int64_t ch, T *buf) {
    FBN_SYM(span_rows)(op, x, dy, oi, ld, buf, FBN_CHUNK, m, k, ch, 1, 0);
    fbn_stream_copy(out + o, buf, m * (int64_t)sizeof(T));
}

/* Columns shape, streamed: y or dx without the epilogues of m values of one row (a
 * span, or a tile's whole row; from offset o, the inputs' from oi, channels from
 * ch), its direct part (fbn_direct_part_<sfx>) straight from the register loops'
 * vectors (kern_half_y.h, kern_half_dx.h; float32 / float64: kern_direct.h), the
 * rest through buf. Returns 0 (nothing written) where op is another, the CPU has
 * no register form of it, or no part goes direct. */
FBN_INLINE int FBN_SYM(span_direct)(const int op, const T *x, const T *dy, int64_t oi, T *out,
                                    int64_t o, int64_t m, const FBN_SYM(tcoefs) *k, int64_t ch,
                                    T *buf) {
    if (op != FBN_OP_AFFINE && op != FBN_OP_DX) return 0;
    const T *xi = x + oi, *di = op == FBN_OP_DX ? dy + oi : NULL;
    const FBN_SYM(direct) d = FBN_SYM(direct_part)(out + o, m, xi, di);
    const int64_t head = d.head, body = d.body, tail = m - d.head - d.body;
    T *ob = out + o + head;
#ifdef FBN_NARROW
    if (!body ||
        !(op == FBN_OP_AFFINE
              ? FBN_SYM(half_y_rows)(d.nt, xi + head, 0, ob, 0, body, k, ch + head, 1)
              : FBN_SYM(half_dx_rows)(d.nt, di + head, xi + head, NULL, 0, ob, 0, body, k,
                                      ch + head, 1, k->relu, 0)))
        return 0;
#else
    if (!body || !FBN_SYM(direct_row)(op, d.nt, xi + head, di ? di + head : NULL, ob, body, k,
                                      ch + head))
        return 0;
#endif
    /* the tail's channel: within the repeated arrays where the span is longer
     * (fbn_held_flat_<sfx>: they repeat every k->cycle values) */
    int64_t tch = ch + head + body;
    if (k->period && tch + tail > k->period) tch %= k->cycle;
    if (head) FBN_SYM(span_out)(op, x, dy, oi, 0, out, o, head, k, ch, buf);
    if (tail)
        FBN_SYM(span_out)(op, x, dy, oi + head + body, 0, out, o + head + body, tail, k, tch,
                          buf);
    return 1;
}

/* Row tile t (whole (o, c) rows) of op, inputs gap values further apart a row
 * (fbn_row_gap; a literal 0 for contiguous inputs, see fbn_elemwise_tile_<sfx>),
 * read from memory: not prefetched (fbn_stream_values_<sfx>). */
FBN_INLINE void FBN_SYM(rows_tile)(const int op, const T *x, const T *dy, T *out,
                                   const fbn_plan *p, int64_t t, const FBN_SYM(tcoefs) *k,
                                   const int64_t gap) {
    const fbn_shape *s = &p->s;
    const int64_t C = s->channels;
    const int64_t f0 = t * p->rows, n = s->outer * C;
    const int64_t f1 = f0 + p->rows < n ? f0 + p->rows : n;
    for (int64_t f = f0; f < f1; f++)
        FBN_SYM(run_values)(op, p->stream, 0, x, dy, out, f * s->inner, f / C * gap, s->inner,
                            k, f % C);
}

/* Channel-block tile t of op with inner > 1 (fused passes): one channel's runs
 * (gap: as fbn_rows_tile_<sfx>'s), re-read from the caches: prefetched. */
FBN_INLINE void FBN_SYM(runs_tile)(const int op, const T *x, const T *dy, T *out,
                                   const fbn_plan *p, int64_t t, const FBN_SYM(tcoefs) *k,
                                   const int64_t gap) {
    const fbn_shape *s = &p->s;
    const int64_t C = s->channels;
    const FBN_SYM(tile) r = FBN_SYM(tile_of)(p, t);
    /* the output's runs, a channel stride apart, are fetched for writing
     * FBN_OUT_AHEAD runs ahead: the hardware prefetchers miss most of the
     * read-for-ownership of such short runs, and every store waited for it */
    const int fetch = !p->stream && s->inner * (int64_t)sizeof(T) <= FBN_SHORT_RUN;
    const int64_t ahead = FBN_OUT_AHEAD * C * s->inner;
    FBN_SYM(run_it) u = FBN_SYM(run_first)(s, r.c0, r.j0, r.j1, gap);
    if (fetch)
        for (int64_t i = 0; i < FBN_OUT_AHEAD && u.pos + i * C * s->inner < s->outer * C * s->inner; i++)
            fbn_prefetch_w(out + u.pos + i * C * s->inner, u.n * (int64_t)sizeof(T));
    for (; u.j < r.j1; FBN_SYM(run_next)(s, r.j1, &u)) {
        if (fetch && u.pos + ahead < s->outer * C * s->inner)
            fbn_prefetch_w(out + u.pos + ahead, s->inner * (int64_t)sizeof(T));
        FBN_SYM(run_values)(op, p->stream, 1, x, dy, out, u.pos, u.skip, u.n, k, r.c0);
    }
}

/* Tile t of op with inner > 1 whose block holds several adjacent channels (a
 * fused pass's group: see fbn_pass_rewrite_group_<sfx>), plain and contiguous: their runs
 * row by row, so that the output goes out a row's stretch at a time (written
 * channel by channel, a run a row apart, it took longer: docs/performance.md).
 * Not in fbn_runs_tile_<sfx>: the loop around the run there changed how GCC
 * compiled the unfused passes' register loops (a clone 4.5x slower at some
 * addresses). */
FBN_INLINE void FBN_SYM(runs_group)(const int op, const T *x, const T *dy, T *out,
                                    const fbn_plan *p, int64_t t, const FBN_SYM(tcoefs) *k) {
    const fbn_shape *s = &p->s;
    const int64_t C = s->channels, end = s->outer * C * s->inner;
    const FBN_SYM(tile) r = FBN_SYM(tile_of)(p, t);
    const int64_t stretch = r.nc * s->inner * (int64_t)sizeof(T);
    const int fetch = !p->stream && s->inner * (int64_t)sizeof(T) <= FBN_SHORT_RUN;
    const int64_t ahead = FBN_OUT_AHEAD * C * s->inner; /* as fbn_runs_tile_<sfx>'s */
    FBN_SYM(run_it) u = FBN_SYM(run_first)(s, r.c0, r.j0, r.j1, 0);
    if (fetch)
        for (int64_t i = 0; i < FBN_OUT_AHEAD && u.pos + i * C * s->inner < end; i++)
            fbn_prefetch_w(out + u.pos + i * C * s->inner, stretch);
    for (; u.j < r.j1; FBN_SYM(run_next)(s, r.j1, &u)) {
        if (fetch && u.pos + ahead < end) fbn_prefetch_w(out + u.pos + ahead, stretch);
        for (int64_t c = 0; c < r.nc; c++)
            FBN_SYM(run_values)(op, p->stream, 1, x, dy, out, u.pos + c * s->inner, 0, u.n, k,
                                r.c0 + c);
    }
    if (p->stream) FBN_STREAM_FENCE();
}

FBN_DISPATCH static void FBN_SYM(affine_group)(const T *x, T *y, const fbn_plan *p, int64_t t,
                                               const FBN_SYM(tcoefs) *k) {
    FBN_SYM(runs_group)(FBN_OP_AFFINE, x, NULL, y, p, t, k);
}

FBN_DISPATCH static void FBN_SYM(bwd_elemt_group)(const T *dy, const T *x, T *dx,
                                                  const fbn_plan *p, int64_t t,
                                                  const FBN_SYM(tcoefs) *k) {
    FBN_SYM(runs_group)(FBN_OP_DX, x, dy, dx, p, t, k);
}

/* Channel-block tile t of op with inner == 1: spans of row groups (the row gap
 * enters per span: gap as fbn_rows_tile_<sfx>'s). cached: !p->stream, a constant
 * in each call for float32 / float64 (see fbn_affine_rows_<sfx>: a run-time one
 * made the streamed loop of NHWC float32 y 1.12-1.16x slower). */
FBN_INLINE void FBN_SYM(cols_tile)(const int op, const T *x, const T *dy, T *out,
                                   const fbn_plan *p, int64_t t, const FBN_SYM(tcoefs) *k,
                                   const int64_t gap, const int cached) {
    const fbn_shape *s = &p->s;
    const int64_t C = s->channels;
    const FBN_SYM(tile) r = FBN_SYM(tile_of)(p, t);
    T buf[FBN_CHUNK];
    const int arrays = FBN_IS_AFF(op) ? 3 : FBN_TYPED; /* coefficient arrays read */
    const int same = !FBN_TWO_INPUTS(op)
                         ? FBN_SYM(same_sets)(out, x, C)
                         : FBN_SYM(same_sets)(out, x, C) || FBN_SYM(same_sets)(out, dy, C) ||
                               FBN_SYM(same_sets)(dy, x, C);
    const int pairs = cached && same; /* streamed: computed into buf, copied out from there */
    const int64_t ld = C + gap; /* the inputs' rows (see fbn_row_gap) */
    if (!cached && FBN_SYM(held_flat)(op, k, &r, C) &&
        FBN_SYM(span_direct)(op, x, dy, r.j0 * C, out, r.j0 * C, (r.j1 - r.j0) * C, k, 0, buf))
        return;
    if (!cached && FBN_SYM(row_by_row)(C, k->period, arrays, p->l1_half)) {
        for (int64_t j = r.j0; j < r.j1; j++) {
            /* the tile's whole row from registers (a partial line at either end
             * through buf), else spans of FBN_CHUNK through buf */
            if (FBN_SYM(span_direct)(op, x, dy, j * C + r.c0 + j * gap, out, j * C + r.c0, r.nc,
                                     k, r.c0, buf))
                continue;
            for (int64_t c = r.c0; c < r.c0 + r.nc; c += FBN_CHUNK) {
                const int64_t o = j * C + c, left = r.c0 + r.nc - c;
                const int64_t m = left < FBN_CHUNK ? left : FBN_CHUNK;
                FBN_SYM(span_out)(op, x, dy, o + j * gap, ld, out, o, m, k, c, buf);
            }
        }
    } else {
        /* spans follow the output's lines (streamed: x's, the L1 buffer's are fixed) */
        const T *at = FBN_SYM(walk_lines)(p, x, out);
        for (FBN_SYM(span_it) sp = FBN_SYM(span_first)(s, &r, k->period, at); sp.rows > 0;
             FBN_SYM(span_next)(s, &r, k->period, &sp)) {
            const int64_t o = sp.off, ch = sp.ch, m = sp.m, rows = sp.rows;
            /* the inputs' span (a flat span, group -1, only without a gap) */
            const int64_t oi = o + sp.group * gap;
            if (!cached && rows == 1 &&
                FBN_SYM(span_direct)(op, x, dy, oi, out, o, m, k, ch, buf))
                continue;
            T *to = cached ? out + o : buf;
            const int64_t ldo = cached ? C : FBN_SPAN;
            if (rows == FBN_GROUP && !pairs) {
                FBN_SYM(span_rows)(op, x, dy, oi, ld, to, ldo, m, k, ch, FBN_GROUP, cached);
            } else if (rows == FBN_GROUP) { /* see fbn_same_sets_<sfx> */
                FBN_SYM(span_rows)(op, x, dy, oi, ld, to, ldo, m, k, ch, 2, cached);
                FBN_SYM(span_rows)(op, x, dy, oi + 2 * ld, ld, to + 2 * ldo, ldo, m, k, ch, 2,
                                   cached);
            } else {
                for (int64_t i = 0; i < rows; i++)
                    FBN_SYM(span_rows)(op, x, dy, oi + i * ld, ld, to + i * ldo, ldo, m, k, ch,
                                       1, cached);
            }
            if (!cached) /* one call for the group's rows (docs/performance.md) */
                fbn_stream_rows(out + o, C * (int64_t)sizeof(T), buf,
                                FBN_SPAN * (int64_t)sizeof(T), (int)rows, m * (int64_t)sizeof(T));
        }
    }
}

/* Tile t of plan p of op (a constant): out from x (and dy for FBN_OP_DX), the
 * inputs' rows fbn_row_gap values apart when gapped (a constant), else
 * contiguous: the gap a literal 0, which folds away. */
FBN_INLINE void FBN_SYM(elemwise_tile)(const int op, const T *x, const T *dy, T *out,
                                       const fbn_plan *p, int64_t t,
                                       const FBN_SYM(tcoefs) *k, const int gapped) {
    const int64_t gap = gapped ? fbn_row_gap(&p->s) : 0;
    if (p->rows)
        FBN_SYM(rows_tile)(op, x, dy, out, p, t, k, gap);
    else if (p->s.inner > 1)
        FBN_SYM(runs_tile)(op, x, dy, out, p, t, k, gap);
#ifdef FBN_NARROW /* one instance: cached chooses no loop of 16-bit data's own */
    else
        FBN_SYM(cols_tile)(op, x, dy, out, p, t, k, gap, !p->stream);
#else
    else if (p->stream)
        FBN_SYM(cols_tile)(op, x, dy, out, p, t, k, gap, 0);
    else
        FBN_SYM(cols_tile)(op, x, dy, out, p, t, k, gap, 1);
#endif
    if (p->stream) FBN_STREAM_FENCE();
}

/* The plain tiles (no epilogue) of contiguous inputs are dispatched functions of
 * their own, with nothing else inside: their code is what it was before the
 * epilogues and row strides. Compiled in one function with a second walk (the
 * row gap's), GCC spilled the walk's pointers and a vector of dy to the stack in
 * the per-run dx loop (AVX-512: 15 instructions a vector instead of 11, the
 * fused backward of (16, 32, 8, 8) float32 1.14x slower). Row-strided inputs
 * (*_gap) and the epilogues (*_x) are others; the *_any functions choose. */

FBN_DISPATCH static void FBN_SYM(affine_tile)(const T *x, T *y, const fbn_plan *p, int64_t t,
                                              const FBN_SYM(tcoefs) *k) {
    FBN_SYM(elemwise_tile)(FBN_OP_AFFINE, x, NULL, y, p, t, k, 0);
}

/* y of tile t, plain, of row-strided x (fbn_row_gap). */
FBN_DISPATCH static void FBN_SYM(affine_tile_gap)(const T *x, T *y, const fbn_plan *p, int64_t t,
                                                  const FBN_SYM(tcoefs) *k) {
    FBN_SYM(elemwise_tile)(FBN_OP_AFFINE, x, NULL, y, p, t, k, 1);
}

/* y of tile t with an epilogue: a leaky ReLU (k->relu 2), a residual z, or both
 * (any row gap). */
FBN_DISPATCH static void FBN_SYM(affine_tile_x)(const T *x, const T *z, T *y, const fbn_plan *p,
                                                int64_t t, const FBN_SYM(tcoefs) *k) {
    if (!z)
        FBN_SYM(elemwise_tile)(FBN_OP_XAFF + 2, x, NULL, y, p, t, k, 1);
    else if (k->relu == 0)
        FBN_SYM(elemwise_tile)(FBN_OP_XAFF + 4, x, z, y, p, t, k, 1);
    else if (k->relu == 1)
        FBN_SYM(elemwise_tile)(FBN_OP_XAFF + 5, x, z, y, p, t, k, 1);
    else
        FBN_SYM(elemwise_tile)(FBN_OP_XAFF + 6, x, z, y, p, t, k, 1);
}

/* y of tile t: plain (relu 0 or 1, no residual z), or with an epilogue. */
static inline void FBN_SYM(affine_tile_any)(const T *x, const T *z, T *y, const fbn_plan *p,
                                            int64_t t, const FBN_SYM(tcoefs) *k) {
    if (z || k->relu >= 2)
        FBN_SYM(affine_tile_x)(x, z, y, p, t, k);
    else if (fbn_row_gap(&p->s))
        FBN_SYM(affine_tile_gap)(x, y, p, t, k);
    else
        FBN_SYM(affine_tile)(x, y, p, t, k);
}

/* dx = k_dy * (dy' - mean_dy) + k_x * (x - shift) * invstd + k_0, in TC (see
 * fbn_fill_typed_<sfx>), of contiguous inputs. */
FBN_DISPATCH static void FBN_SYM(bwd_elemt_tile)(const T *dy, const T *x, T *dx,
                                                 const fbn_plan *p, int64_t t,
                                                 const FBN_SYM(tcoefs) *k) {
    FBN_SYM(elemwise_tile)(FBN_OP_DX, x, dy, dx, p, t, k, 0);
}

/* The same of row-strided inputs (fbn_row_gap). */
FBN_DISPATCH static void FBN_SYM(bwd_elemt_tile_gap)(const T *dy, const T *x, T *dx,
                                                     const fbn_plan *p, int64_t t,
                                                     const FBN_SYM(tcoefs) *k) {
    FBN_SYM(elemwise_tile)(FBN_OP_DX, x, dy, dx, p, t, k, 1);
}

/* dx of tile t with a leaky ReLU's mask (any row gap), over k->z where given
 * (16-bit data, contiguous inputs). */
FBN_DISPATCH static void FBN_SYM(bwd_elemt_tile_x)(const T *dy, const T *x, T *dx,
                                                   const fbn_plan *p, int64_t t,
                                                   const FBN_SYM(tcoefs) *k) {
#ifdef FBN_NARROW
    if (k->z) {
        FBN_SYM(elemwise_tile)(FBN_OP_XDX + 6, x, dy, dx, p, t, k, 0);
        return;
    }
#endif
    FBN_SYM(elemwise_tile)(FBN_OP_XDX + 2, x, dy, dx, p, t, k, 1);
}

static inline void FBN_SYM(bwd_elemt_tile_any)(const T *dy, const T *x, T *dx, const fbn_plan *p,
                                               int64_t t, const FBN_SYM(tcoefs) *k) {
    if (k->relu >= 2) /* a leaky ReLU's mask */
        FBN_SYM(bwd_elemt_tile_x)(dy, x, dx, p, t, k);
    else if (fbn_row_gap(&p->s))
        FBN_SYM(bwd_elemt_tile_gap)(dy, x, dx, p, t, k);
    else
        FBN_SYM(bwd_elemt_tile)(dy, x, dx, p, t, k);
}
