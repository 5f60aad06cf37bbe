/* backward.h: the FlashAttention-2 backward driver and its plain scalar tile kernels, for one
   real type (float or double).

   What it does: the gradients of refattn.reference.attention_backward, dQ, dK, dV and (with a
   bias) dS, tile by tile, never holding an Lq×Lk buffer of its own: for each tile of m query
   rows against n keys it recomputes the scores as the forward does (softcap, bias, every mask),
   the weights P = exp(s - lse) from the forward's saved lse, dP = dO·Vᵀ, and
   dS = P ⊙ (dP - D + dlse) with D_i = Σ_d dO_id·O_id (pass 0), then accumulates
       dV += Pᵀ·dO,   dK += scale·dXᵀ·Q,   dQ += scale·dX·K    (dX = dS ⊙ softcap slope)
   A hidden pair (masks, causal and window bounds, kv_lengths, a -inf bias) and every pair of a
   fully masked row (lse -inf) has P, dS and dX exactly 0 and is left out of the sums entirely,
   so NaN in hidden keys, values or queries reaches no gradient. A NaN row (lse NaN) spreads
   its NaN to dQ_i and to dK, dV and dS at the keys it sees, as the reference's does.

   Parallel plan, no atomics: every output element has one owner, and its sum runs in an order
   fixed by the shapes alone, so results are the same bit for bit whatever the thread count.
     pass A   work item (b, kv head, key tile): owns its rows of dK and dV (and dS), loops over
              the G query heads of the group and every query tile that can see the key tile.
     pass B   work item (b, query head, query tile): owns its rows of dQ, loops over the key
              tiles it can see, recomputing what pass A computed for them (S, P, dP, dS).
     fused    when the kv heads alone keep the threads busy (FUSED_BALANCE), work item
              (b, kv head) runs pass A for each key tile in order and adds each tile's dX·K to
              dQ as it goes: no recomputation. Each dQ row then sums the same tiles (the same
              extents, tile_extent), computed by the same kernels, in the same order (key
              tiles ascending) as pass B would: the two plans give the same bits.
   What it does not do: validation (refattn_attention_backward checks the call), bfloat16 or
   float16 (the wrapper converts), SIMD arithmetic (the tables do), or run the forward (the
   wrapper passes its out and lse).

   This file is a template included by flash_f32.c and flash_f64.c after flash.h, whose plan,
   visible_range and scalar forward kernels it uses; ELEM is REAL there. The macros are flash.h's,
   and GRAD_OPS, the backward's tile-kernel table type.

   Legend: B batch, Hq/Hkv heads, G = Hq/Hkv, Lq/Lk lengths, Dk/Dv head dims. A tile is m query
   rows (m <= bq) against n keys (n <= bk); r indexes rows in a tile, j keys in a tile. */

/* ------------------------------------------------------------------------------------------ */
/* The scalar tile kernels: plain loops, the fallback and the baseline of every SIMD kernel.  */

static void FN(scalar_probs)(REAL *p, int64_t ldp, const REAL *shift, int64_t m, int64_t n) {
    for (int64_t r = 0; r < m; r++)
        for (int64_t j = 0; j < n; j++) p[r * ldp + j] = EXP(p[r * ldp + j] - shift[r]);
}

static void FN(scalar_dscores)(REAL *dx, REAL *ds, int64_t ldds, const REAL *p, const REAL *dp,
                               const REAL *slope, int64_t ld, const REAL *t, REAL scale,
                               int64_t m, int64_t n) {
    for (int64_t r = 0; r < m; r++) {
        for (int64_t j = 0; j < n; j++) {
            const REAL d = p[r * ld + j] * (dp[r * ld + j] - t[r]);
            if (ds) ds[r * ldds + j] = d;
            dx[r * ld + j] = (slope ? d * slope[r * ld + j] : d) * scale;
        }
    }
}

static void FN(scalar_accumulate)(REAL *o, int64_t ldo, const REAL *p, int64_t pr, int64_t pc,
                                  const uint8_t *vis, int64_t vr, int64_t vc, const REAL *v,
                                  int64_t ldv, int64_t m, int64_t n, int64_t D) {
    for (int64_t r = 0; r < m; r++) {
        REAL *orow = o + r * ldo;
        for (int64_t j = 0; j < n; j++) {
            if (vis && !vis[r * vr + j * vc]) continue;
            const REAL pj = p[r * pr + j * pc];
            for (int64_t d = 0; d < D; d++) orow[d] += pj * v[j * ldv + d];
        }
    }
}

static const GRAD_OPS FN(scalar_grad_ops) = {
    .bq = 32,
    .bk = 64,
    .probs = FN(scalar_probs),
    .dscores = FN(scalar_dscores),
    .accumulate = FN(scalar_accumulate),
};

/* ------------------------------------------------------------------------------------------ */
/* The driver.                                                                                */

/* What every thread of one backward call shares. */
typedef struct FN(grad_plan) {
    FN(plan) f;                  /* the forward's: the call, the diagonal, window, scale, softcap */
    const refattn_grad_call *g;
    const GRAD_OPS *gops;
    const REAL *lse;             /* (B, Hq, Lq): the forward's */
    REAL *t;                     /* (B, Hq, Lq): D_i - dlse_i, from pass 0 */
} FN(grad_plan);

/* One thread's tiles. */
typedef struct FN(grad_work) {
    REAL *kp, *vp;      /* the key tile's keys and values, packed for `scores`, Dk·bk, Dv·bk */
    REAL *p;            /* scores, then weights P, (bq, bk) */
    REAL *dp;           /* dO·Vᵀ, (bq, bk) */
    REAL *dx;           /* scale·dS ⊙ slope, (bq, bk) */
    REAL *slope;        /* 1 - tanh²(x / softcap), (bq, bk) */
    uint8_t *vis;       /* visibility when some pair of the tile is hidden, (bq, bk) */
    REAL *shift, *t;    /* per row: lse (+inf for a fully masked row), D - dlse, (bq) */
} FN(grad_work);

static size_t FN(grad_work_layout)(FN(grad_work) *w, char *mine, int64_t Dk, int64_t Dv,
                                   int64_t bq, int64_t bk) {
    size_t at = 0;
    LAYOUT_PIECE(kp, REAL, Dk * bk);
    LAYOUT_PIECE(vp, REAL, Dv * bk);
    LAYOUT_PIECE(p, REAL, bq * bk);
    LAYOUT_PIECE(dp, REAL, bq * bk);
    LAYOUT_PIECE(dx, REAL, bq * bk);
    LAYOUT_PIECE(slope, REAL, bq * bk);
    LAYOUT_PIECE(vis, uint8_t, bq * bk);
    LAYOUT_PIECE(shift, REAL, bq);
    LAYOUT_PIECE(t, REAL, bq);
    return at;
}

/* The part of the tile rows [i0, i0 + m) × keys [j0, j0 + n) that the structural masks leave
   to compute: rows [i0 + *r0, i0 + *r1), from the first that sees a key of the tile to the last
   (rows that see none come first or last: both ends of visible_range grow with i), against
   keys [j0, j0 + *nn), up to the last key the last of them sees (a tile crossing the causal
   diagonal loses the triangle no row sees). Returns 0 when no row sees a key of the tile. The
   one statement of what both plans compute, so that they compute the same. */
static int FN(tile_extent)(const FN(plan) *p, int64_t b, int64_t i0, int64_t m, int64_t j0,
                           int64_t n, int64_t *r0, int64_t *r1, int64_t *nn) {
    int64_t lo, hi, first = 0, end = m;
#define SEES(r) (FN(visible_range)(p, b, i0 + (r), &lo, &hi), lo < hi && hi > j0 && lo < j0 + n)
    while (first < m && !SEES(first)) first++;
    if (first == m || n <= 0) return 0;
    while (!SEES(end - 1)) end--; /* stops at first, which sees */
#undef SEES
    *r0 = first;
    *r1 = end;
    *nn = min64(n, hi - j0); /* hi of row end - 1, the largest */
    return 1;
}

/* count zeros from x; x may be NULL when count is 0 (an empty output) */
static inline void FN(zero)(REAL *x, int64_t count) {
    if (count > 0) memset(x, 0, (size_t)count * sizeof(REAL));
}

/* x = 0 wherever vis is 0, for r < m, j < n (row stride ldx; vis's is bk). */
static void FN(zero_hidden)(REAL *x, int64_t ldx, const uint8_t *vis, int64_t bk, int64_t m,
                            int64_t n) {
    for (int64_t r = 0; r < m; r++)
        for (int64_t j = 0; j < n; j++) x[r * ldx + j] = vis[r * bk + j] ? x[r * ldx + j] : 0;
}

/* The tile of rows [i0, i0 + m) of head h of batch b against keys [j0, j0 + n), whose keys and
   values are packed in w->kp and w->vp, and whose rows' shift and t are in w: P into w->p,
   scale·dX into w->dx, dS into ds (row stride ldds) unless NULL. Returns 1 when some pair of
   the tile is hidden (w->vis then says which; P, dX and dS are exactly 0 there), else 0. */
static int FN(grad_tile)(const FN(grad_plan) *gp, FN(grad_work) *w, int64_t b, int64_t h,
                         int64_t i0, int64_t m, int64_t j0, int64_t n, REAL *ds, int64_t ldds) {
    const FN(plan) *p = &gp->f;
    const refattn_call *c = p->c;
    const OPS *ops = p->ops;
    const GRAD_OPS *gops = gp->gops;
    const int64_t bk = p->bk, Dk = c->Dk, Dv = c->Dv;
    const REAL cap = p->softcap;

    /* pass 1: x = scale·q·kᵀ, then the softcap (keeping its slope) */
    const ELEM *q = (const ELEM *)c->query.data + batch_offset(&c->query, b) +
                    h * c->query.stride[1] + i0 * c->query.stride[2];
    ops->scores(w->p, bk, q, c->query.stride[2], w->kp, m, n, Dk, p->scale);
    if (cap != 0) {
        for (int64_t r = 0; r < m; r++) {
            REAL *s = w->p + r * bk, *slope = w->slope + r * bk;
            for (int64_t j = 0; j < n; j++) {
                const REAL th = TANH(s[j] / cap);
                slope[j] = 1 - th * th;
                s[j] = cap * th;
            }
        }
    }

    /* pass 2: bias and masks, as the forward's score_tile: hidden scores -inf, vis; a fully
       masked row (lse -inf) hides all of its pairs */
    int dead = 0;
    for (int64_t r = 0; r < m; r++) dead |= w->shift[r] == INFINITY;
    int64_t lo_last, hi_last, lo_first, hi_first;
    FN(visible_range)(p, b, i0 + m - 1, &lo_last, &hi_last);
    FN(visible_range)(p, b, i0, &lo_first, &hi_first);
    const int inside = lo_last <= j0 && hi_first >= j0 + n;
    const int has_mask = c->mask.data != NULL, has_bias = c->bias.data != NULL;
    int hidden = 0;
    if (!inside || has_mask || has_bias || dead) {
        for (int64_t r = 0; r < m; r++) {
            const int64_t i = i0 + r;
            REAL *s = w->p + r * bk;
            uint8_t *vis = w->vis + r * bk;
            if (w->shift[r] == INFINITY) {
                memset(vis, 0, (size_t)n);
                hidden = 1;
                continue;
            }
            hidden |= FN(mask_row)(p, b, h, i, j0, n, s, vis);
        }
    }

    /* pass 3: P = exp(s - lse); exactly 0 at hidden pairs (a NaN row's exp(-inf - NaN) too) */
    gops->probs(w->p, bk, w->shift, m, n);
    if (hidden) FN(zero_hidden)(w->p, bk, w->vis, bk, m, n);

    /* pass 4: dP = dO·Vᵀ */
    const REAL *dout = (const REAL *)gp->g->grad_out + ((b * c->Hq + h) * c->Lq + i0) * Dv;
    ops->scores(w->dp, bk, dout, Dv, w->vp, m, n, Dv, 1);

    /* pass 5: dS = P ⊙ (dP - t), dX = dS ⊙ slope · scale; exactly 0 at hidden pairs (dP is NaN
       there when a hidden value is) */
    gops->dscores(w->dx, ds, ldds, w->p, w->dp, cap != 0 ? w->slope : NULL, bk, w->t, p->scale,
                  m, n);
    if (hidden) {
        FN(zero_hidden)(w->dx, bk, w->vis, bk, m, n);
        if (ds) FN(zero_hidden)(ds, ldds, w->vis, bk, m, n);
    }
    return hidden;
}

/* The rows [i0, i0 + m) of head h: their shift (lse, +inf for a fully masked row, so that
   exp(s - shift) is 0 there) and t into w. */
static void FN(load_rows)(const FN(grad_plan) *gp, FN(grad_work) *w, int64_t b, int64_t h,
                          int64_t i0, int64_t m) {
    const int64_t row0 = (b * gp->f.c->Hq + h) * gp->f.c->Lq + i0;
    for (int64_t r = 0; r < m; r++) {
        const REAL lse = gp->lse[row0 + r];
        w->shift[r] = lse == -INFINITY ? INFINITY : lse;
        w->t[r] = gp->t[row0 + r];
    }
}

/* Pack key tile jt of kv head hkv of batch b (keys and values) into w; returns its key count. */
static int64_t FN(pack_tile)(const FN(grad_plan) *gp, FN(grad_work) *w, int64_t b, int64_t hkv,
                             int64_t jt) {
    const refattn_call *c = gp->f.c;
    const int64_t bk = gp->f.bk, j0 = jt * bk, n = min64(bk, c->Lk - j0);
    const ELEM *k = (const ELEM *)c->key.data + batch_offset(&c->key, b) +
                    hkv * c->key.stride[1] + j0 * c->key.stride[2];
    gp->f.ops->pack_keys(w->kp, k, c->key.stride[2], n, c->Dk);
    if (c->Dv > 0) {
        const ELEM *v = (const ELEM *)c->value.data + batch_offset(&c->value, b) +
                        hkv * c->value.stride[1] + j0 * c->value.stride[2];
        gp->f.ops->pack_keys(w->vp, v, c->value.stride[2], n, c->Dv);
    }
    return n;
}

/* Pass A: key tile jt of kv head hkv of batch b; its dK and dV rows (and its dS columns) are
   written here alone. With dq, each tile's scale·dX·K is added to dQ too (the fused plan:
   dQ rows of the group's heads, zeroed by the caller, are then this item's too). */
static void FN(key_tile)(const FN(grad_plan) *gp, FN(grad_work) *w, int64_t b, int64_t hkv,
                         int64_t jt, int with_dq) {
    const FN(plan) *p = &gp->f;
    const refattn_call *c = p->c;
    const refattn_grad_call *g = gp->g;
    const GRAD_OPS *gops = gp->gops;
    const int64_t Hq = c->Hq, Lq = c->Lq, Lk = c->Lk, Dk = c->Dk, Dv = c->Dv;
    const int64_t bq = p->bq, bk = p->bk, j0 = jt * bk;
    const int64_t n = FN(pack_tile)(gp, w, b, hkv, jt);
    /* dK (n, Dk) and dV (n, Dv): this tile's rows of the outputs, accumulated in place */
    REAL *dk = (REAL *)g->grad_key + ((b * c->Hkv + hkv) * Lk + j0) * Dk;
    REAL *dv = Dv > 0 ? (REAL *)g->grad_value + ((b * c->Hkv + hkv) * Lk + j0) * Dv : NULL;
    FN(zero)(dk, n * Dk);
    FN(zero)(dv, n * Dv);
    const ELEM *k = (const ELEM *)c->key.data + batch_offset(&c->key, b) +
                    hkv * c->key.stride[1] + j0 * c->key.stride[2];
    const int64_t ldq = c->query.stride[2], ldk = c->key.stride[2];
    for (int64_t h = hkv * p->G; h < (hkv + 1) * p->G; h++) {
        for (int64_t t0 = 0; t0 < Lq; t0 += bq) {
            int64_t r0, r1, nn;
            if (!FN(tile_extent)(p, b, t0, min64(bq, Lq - t0), j0, n, &r0, &r1, &nn)) continue;
            const int64_t i0 = t0 + r0, m = r1 - r0;
            FN(load_rows)(gp, w, b, h, i0, m);
            const int64_t row0 = (b * Hq + h) * Lq + i0;
            REAL *ds = g->grad_scores ? (REAL *)g->grad_scores + row0 * Lk + j0 : NULL;
            const int hidden = FN(grad_tile)(gp, w, b, h, i0, m, j0, nn, ds, Lk);
            const uint8_t *vis = hidden ? w->vis : NULL;
            const REAL *dout = (const REAL *)g->grad_out + row0 * Dv;
            const ELEM *q = (const ELEM *)c->query.data + batch_offset(&c->query, b) +
                            h * c->query.stride[1] + i0 * ldq;
            /* dV += Pᵀ·dO and dK += (scale·dX)ᵀ·Q: rows are keys, the sum runs over queries
               (P is 0 at hidden pairs and dO finite: no pair to leave out in dV) */
            if (Dv > 0) gops->accumulate(dv, Dv, w->p, 1, bk, NULL, 0, 0, dout, Dv, nn, m, Dv);
            gops->accumulate(dk, Dk, w->dx, 1, bk, vis, 1, bk, q, ldq, nn, m, Dk);
            if (with_dq) {
                REAL *dq = (REAL *)g->grad_query + row0 * Dk;
                gops->accumulate(dq, Dk, w->dx, bk, 1, vis, bk, 1, k, ldk, m, nn, Dk);
            }
        }
    }
}

/* Pass B: query tile qt of head h of batch b; its dQ rows are written here alone, summed over
   the key tiles in order. */
static void FN(query_tile)(const FN(grad_plan) *gp, FN(grad_work) *w, int64_t b, int64_t h,
                           int64_t qt) {
    const FN(plan) *p = &gp->f;
    const refattn_call *c = p->c;
    const int64_t Lq = c->Lq, Dk = c->Dk, bk = p->bk, hkv = h / p->G;
    const int64_t t0 = qt * p->bq, tm = min64(p->bq, Lq - t0);
    const int64_t row0 = (b * c->Hq + h) * Lq + t0;
    FN(zero)((REAL *)gp->g->grad_query + row0 * Dk, tm * Dk);
    const int64_t ldk = c->key.stride[2];
    for (int64_t jt = 0; jt < p->nkt; jt++) {
        const int64_t j0 = jt * bk;
        int64_t r0, r1, nn;
        if (!FN(tile_extent)(p, b, t0, tm, j0, min64(bk, c->Lk - j0), &r0, &r1, &nn)) continue;
        const int64_t i0 = t0 + r0, m = r1 - r0;
        FN(pack_tile)(gp, w, b, hkv, jt);
        FN(load_rows)(gp, w, b, h, i0, m);
        const int hidden = FN(grad_tile)(gp, w, b, h, i0, m, j0, nn, NULL, 0);
        const ELEM *k = (const ELEM *)c->key.data + batch_offset(&c->key, b) +
                        hkv * c->key.stride[1] + j0 * ldk;
        REAL *dq = (REAL *)gp->g->grad_query + (row0 + r0) * Dk;
        gp->gops->accumulate(dq, Dk, w->dx, bk, 1, hidden ? w->vis : NULL, bk, 1, k, ldk, m, nn,
                             Dk);
    }
}

/* The fused plan computes S and dP once where the two passes compute them twice: 5 products of
   a tile rather than 7, 1.4 times less work. Its items are the kv heads, all of equal cost but
   for kv_lengths, so B·Hkv items on T threads keep them B·Hkv / (T·ceil(B·Hkv / T)) busy: it
   is taken when that is at least FUSED_BALANCE (3/4: 8 heads on 2 or 3 threads, 2 on 2, 6 on
   4; not 1 on 2, 2 on 3 or 5 on 4), and always on one thread. */
#define FUSED_BALANCE_NUM 3
#define FUSED_BALANCE_DEN 4

static int FN(backward)(const refattn_grad_call *g, const OPS *ops, const GRAD_OPS *gops,
                        int num_threads) {
    const refattn_call *c = g->call;
    FN(grad_plan) gp = {0};
    FN(plan) *p = &gp.f;
    p->c = c;
    p->ops = ops;
    p->G = c->Hq / c->Hkv;
    p->bk = gops->bk;
    p->bq = gops->bq;
    p->nqt = cdiv(c->Lq, p->bq);
    p->nkt = cdiv(c->Lk, p->bk);
    p->offset = c->causal == REFATTN_CAUSAL_BOTTOM_RIGHT ? c->Lk - c->Lq : 0;
    p->wl = c->window_left < 0 ? -1 : min64(c->window_left, c->Lq + c->Lk);
    p->wr = c->window_right < 0 ? -1 : min64(c->window_right, c->Lq + c->Lk);
    p->scale = (REAL)c->scale;
    p->softcap = (REAL)c->softcap;
    gp.g = g;
    gp.gops = gops;
    gp.lse = (const REAL *)c->lse;
    const int64_t BHq = c->B * c->Hq, BHkv = c->B * c->Hkv, rows = BHq * c->Lq;
    const int64_t Dk = c->Dk, Dv = c->Dv, bq = p->bq, bk = p->bk, nqt = p->nqt, nkt = p->nkt;

    /* Threads: no more than the work items, and one when the call is too small to share. */
    int64_t threads = num_threads;
    const int64_t items = max64(BHkv * nkt, BHq * nqt);
    const double work = (double)rows * (double)c->Lk * (double)(Dk + Dv);
    if (threads > items) threads = items > 0 ? items : 1;
    if (work < 65536.0) threads = 1;
    const int64_t busy = FUSED_BALANCE_DEN * BHkv, all = FUSED_BALANCE_NUM * threads;
    const int fused = threads == 1 || busy >= all * cdiv(BHkv, threads);

    /* Allocate everything before the parallel region, so a failure is one clean return. */
    const size_t per_thread = FN(grad_work_layout)(NULL, NULL, Dk, Dv, bq, bk);
    size_t t_bytes = round_up(size_mul_add((size_t)rows, sizeof(REAL), 0));
    size_t total = size_mul_add((size_t)threads, per_thread, ALIGN);
    total = size_mul_add(1, total, t_bytes);
    if (total == SIZE_MAX || t_bytes == SIZE_MAX) return REFATTN_ENOMEM;
    char *block = malloc(total);
    if (!block) return REFATTN_ENOMEM;
    char *base = (char *)round_up((size_t)(uintptr_t)block); /* 64-byte aligned */
    gp.t = (REAL *)(base + (size_t)threads * per_thread);
    const REAL *out = (const REAL *)c->out, *dout = (const REAL *)g->grad_out;
    const REAL *dlse = (const REAL *)g->grad_lse;

    refattn_team_starts(threads);
#pragma omp parallel num_threads((int)threads) if (threads > 1)
    {
        FN(grad_work) w;
        FN(grad_work_layout)(&w, base + (size_t)THREAD_ID() * per_thread, Dk, Dv, bq, bk);

        /* pass 0: t_i = D_i - dlse_i with D_i = Σ_d dO_id·O_id, row by row */
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; row++) {
            REAL D = 0;
            for (int64_t d = 0; d < Dv; d++) D += dout[row * Dv + d] * out[row * Dv + d];
            gp.t[row] = dlse ? D - dlse[row] : D;
        }

        if (fused) {
            /* fused: one item per (b, kv head), its key tiles in order, dQ as it goes */
#pragma omp for schedule(dynamic, 1)
            for (int64_t bh = 0; bh < BHkv; bh++) {
                const int64_t b = bh / c->Hkv, hkv = bh % c->Hkv;
                if (rows > 0)
                    FN(zero)((REAL *)g->grad_query + (b * c->Hq + hkv * p->G) * c->Lq * Dk,
                             p->G * c->Lq * Dk);
                for (int64_t jt = 0; jt < nkt; jt++) FN(key_tile)(&gp, &w, b, hkv, jt, 1);
            }
        } else {
            /* pass A: (key tile, b, kv head), the first key tiles first: under a causal mask
               they see the most queries. No barrier after it: pass B reads none of it. */
#pragma omp for schedule(dynamic, 1) nowait
            for (int64_t item = 0; item < BHkv * nkt; item++) {
                const int64_t bh = item % BHkv, jt = item / BHkv;
                FN(key_tile)(&gp, &w, bh / c->Hkv, bh % c->Hkv, jt, 0);
            }
            /* pass B: (query tile, b, query head), the last query tiles first (the heaviest
               under a causal mask) */
#pragma omp for schedule(dynamic, 1)
            for (int64_t item = 0; item < BHq * nqt; item++) {
                const int64_t bh = item % BHq, qt = nqt - 1 - item / BHq;
                FN(query_tile)(&gp, &w, bh / c->Hq, bh % c->Hq, qt);
            }
        }
    }
    free(block);
    return REFATTN_OK;
}
