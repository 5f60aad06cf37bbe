/* kernels_grad.h: the SIMD tile kernels of the backward pass, float32, one body for every
   instruction set.

   What it does: the backward tile kernels of internal.h (refattn_grad_ops_f32) over the vector
   operations of a vec_*.h header and its blocking constants (MR, NP, GRAD_BQ, GRAD_BK):
     probs       one row at a time: P = exp(s - lse), vectorised exp, the tail under a mask;
     dscores     one row at a time: dS = P ⊙ (dP - t), dX = dS ⊙ slope · scale;
     accumulate  o += p·v for a block of MR rows × NP vectors of columns held in registers,
                 p read with any row and column steps (so that Pᵀ·dO, dXᵀ·Q and dX·K all take
                 P and dX as the driver holds them, never transposed), one broadcast of p and
                 NP vector loads of v per step; with vis, hidden pairs are left out under a
                 mask (never multiplied by 0).
   The scores (Q·Kᵀ and dO·Vᵀ) are the forward's `scores` over keys packed by its pack_keys.
   What it does not do: decide anything about masks or tiles (backward.h does), or differ
   between instruction sets: kernels_<isa>.c includes its vec header, then kernels_simd.h (whose
   table macros this body uses), then this body, inside its own target pragma.

   Legend: m rows against n columns, r row, j column, d dim; VW lanes. */

static void grad_probs(float *p, int64_t ldp, const float *shift, int64_t m, int64_t n) {
    for (int64_t r = 0; r < m; r++) {
        float *row = p + r * ldp;
        const vec sh = vset1(shift[r]);
        int64_t j = 0;
        for (; j + VW <= n; j += VW) vstore(row + j, vexp(vsub(vload(row + j), sh)));
        if (j < n) {
            const vmask k = vlanes(n - j);
            vstore_part(row + j, k, vexp(vsub(vload_part(k, row + j), sh)));
        }
    }
}

/* One row: the same operations in the same order as the scalar kernel, VW columns at a time. */
INLINE void dscores_row(float *dx, float *ds, const float *p, const float *dp, const float *slope,
                        float t, float scale, int64_t n, const int WITH_DS, const int WITH_SLOPE) {
    const vec tv = vset1(t), sc = vset1(scale);
    int64_t j = 0;
    for (; j + VW <= n; j += VW) {
        vec d = vmul(vload(p + j), vsub(vload(dp + j), tv));
        if (WITH_DS) vstore(ds + j, d);
        if (WITH_SLOPE) d = vmul(d, vload(slope + j));
        vstore(dx + j, vmul(d, sc));
    }
    if (j < n) {
        const vmask k = vlanes(n - j);
        vec d = vmul(vload_part(k, p + j), vsub(vload_part(k, dp + j), tv));
        if (WITH_DS) vstore_part(ds + j, k, d);
        if (WITH_SLOPE) d = vmul(d, vload_part(k, slope + j));
        vstore_part(dx + j, k, vmul(d, sc));
    }
}

static void grad_dscores(float *dx, float *ds, int64_t ldds, const float *p, const float *dp,
                         const float *slope, int64_t ld, const float *t, float scale, int64_t m,
                         int64_t n) {
    for (int64_t r = 0; r < m; r++) {
        const int64_t at = r * ld;
        float *dsr = ds ? ds + r * ldds : NULL;
        const float *sl = slope ? slope + at : NULL;
        if (ds && slope) dscores_row(dx + at, dsr, p + at, dp + at, sl, t[r], scale, n, 1, 1);
        else if (ds) dscores_row(dx + at, dsr, p + at, dp + at, sl, t[r], scale, n, 1, 0);
        else if (slope) dscores_row(dx + at, dsr, p + at, dp + at, sl, t[r], scale, n, 0, 1);
        else dscores_row(dx + at, dsr, p + at, dp + at, sl, t[r], scale, n, 0, 0);
    }
}

/* o (ROWS, VW·VECS) += p (ROWS, n) · v (n, VW·VECS), p[r·pr + j·pc]; the last vector holds the
   lanes of `tail`. CAREFUL: pairs with vis 0 are left out (the accumulator kept as it is). */
INLINE void accumulate_block(float *o, int64_t ldo, const float *p, int64_t pr, int64_t pc,
                             const uint8_t *vis, int64_t vr, int64_t vc, const float *v,
                             int64_t ldv, int64_t n, vmask tail, const int ROWS, const int VECS,
                             const int CAREFUL) {
    vec acc[MR][NP];
    /* whole vectors but the last, which holds the lanes of tail: plain loads and stores there
       (masked ones are slow on AMD), decided at compile time (c and VECS are constants) */
#define LOAD(c, at) ((c) == VECS - 1 ? vload_part(tail, at) : vload(at))
    UNROLL for (int r = 0; r < ROWS; r++) UNROLL for (int c = 0; c < VECS; c++)
        acc[r][c] = LOAD(c, o + r * ldo + c * VW);
    for (int64_t j = 0; j < n; j++) {
        vec val[NP];
        UNROLL for (int c = 0; c < VECS; c++) val[c] = LOAD(c, v + j * ldv + c * VW);
        UNROLL for (int r = 0; r < ROWS; r++) {
            const vec pj = vbroadcast(p + r * pr + j * pc);
            if (CAREFUL) {
                const vmask seen = vif(vis[r * vr + j * vc]);
                UNROLL for (int c = 0; c < VECS; c++)
                    acc[r][c] = vfmadd_part(seen, pj, val[c], acc[r][c]);
            } else {
                UNROLL for (int c = 0; c < VECS; c++) acc[r][c] = vfmadd(pj, val[c], acc[r][c]);
            }
        }
    }
#undef LOAD
    UNROLL for (int r = 0; r < ROWS; r++) UNROLL for (int c = 0; c < VECS; c++) {
        if (c == VECS - 1) vstore_part(o + r * ldo + c * VW, tail, acc[r][c]);
        else vstore(o + r * ldo + c * VW, acc[r][c]);
    }
}

typedef void (*accumulate_fn)(float *, int64_t, const float *, int64_t, int64_t, const uint8_t *,
                              int64_t, int64_t, const float *, int64_t, int64_t, vmask);
#define ACCUMULATE_FN(R, V, C)                                                                  \
    static void accumulate_##R##x##V##_##C(float *o, int64_t ldo, const float *p, int64_t pr,   \
                                           int64_t pc, const uint8_t *vis, int64_t vr,          \
                                           int64_t vc, const float *v, int64_t ldv, int64_t n,  \
                                           vmask tail) {                                        \
        accumulate_block(o, ldo, p, pr, pc, vis, vr, vc, v, ldv, n, tail, R, V, C);             \
    }
#define ACCUMULATE(R, V) ACCUMULATE_FN(R, V, 0) ACCUMULATE_FN(R, V, 1)
#define ACCUMULATE_ROW(R) UPTO(NP, ACCUMULATE, R)
ROWS(MR, ACCUMULATE_ROW)
#define ACCUMULATE_NAME_0(R, V) accumulate_##R##x##V##_0,
#define ACCUMULATE_NAME_1(R, V) accumulate_##R##x##V##_1,
#define ACCUMULATE_ENTRY_0(R) {UPTO(NP, ACCUMULATE_NAME_0, R)},
#define ACCUMULATE_ENTRY_1(R) {UPTO(NP, ACCUMULATE_NAME_1, R)},
static const accumulate_fn accumulate_table[2][MR][NP] = {{ROWS(MR, ACCUMULATE_ENTRY_0)},
                                                          {ROWS(MR, ACCUMULATE_ENTRY_1)}};

static void grad_accumulate(float *o, int64_t ldo, const float *p, int64_t pr, int64_t pc,
                            const uint8_t *vis, int64_t vr, int64_t vc, const float *v,
                            int64_t ldv, int64_t m, int64_t n, int64_t D) {
    const int careful = vis != NULL;
    for (int64_t r0 = 0; r0 < m; r0 += MR) {
        const int64_t mr = imin(MR, m - r0);
        for (int64_t c0 = 0; c0 < D; c0 += NP * VW) {
            const int64_t width = imin(NP * VW, D - c0), vecs = (width + VW - 1) / VW;
            const int64_t last = width - (vecs - 1) * VW; /* columns in the last vector, 1..VW */
            accumulate_table[careful][mr - 1][vecs - 1](
                o + r0 * ldo + c0, ldo, p + r0 * pr, pr, pc, careful ? vis + r0 * vr : NULL, vr,
                vc, v + c0, ldv, n, vlanes(last));
        }
    }
}

static const refattn_grad_ops_f32 grad_ops = {
    .bq = GRAD_BQ,
    .bk = GRAD_BK,
    .probs = grad_probs,
    .dscores = grad_dscores,
    .accumulate = grad_accumulate,
};
