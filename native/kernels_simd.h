/* kernels_simd.h: the SIMD tile kernels, float32 compute, one body for every instruction set
   and input element.

   What it does: the tile kernels of internal.h over the vector operations of a vec_*.h header
   (a vector of VW floats, masks, exp, reductions, a VW × VW transpose) and its blocking
   constants (MR, NP, WIDE, BQ, BK, FEW_ROWS), for the input elements of an elem_*.h header:
   float (elem_f32.h: one dim per step of a dot product, by FMA), bfloat16 (elem_bf16.h:
   KSTEP = 2 dims per step, a pair of bfloat16 in each 32-bit lane, by vdpbf16ps) or float16
   (elem_f16.h: widened to float as loaded, keys packed widened (its pelem), query rows widened
   once per block of scores (WIDEN_QUERY), then float's arithmetic):
     pack_keys    transposes keys into panels of VW (kp[panel][d / KSTEP][VW][KSTEP]), so that
     scores       computes a block of MR query rows × NP·VW keys held in MR·NP accumulators,
                  KSTEP broadcast query elements times NP key vectors per step of d (an odd
                  Dk with KSTEP 2 ends on a pair padded with 0, in the keys and the query);
     scores_rows  scores for 1–FEW_ROWS query rows straight from unpacked key rows (decode);
     softmax      does one row: vector max, vectorised exp, vector sum; p as the element
                  header rounds it for P·V (bfloat16: to bfloat16, after the sum);
     weigh        accumulates p·V into a block of MR rows × NP vectors of value columns (1–2
                  rows × WIDE vectors), value elements widened to float.
   What it does not do: decide anything about masks or tiles (the driver does), choose between
   instruction sets (each kernels_<isa>.c includes its vec header, then this body, inside its
   own target pragma, and refattn_cpu_has is asked before any of it runs), or differ between
   them: every intended difference stands in the vec header, and every difference between
   input elements in the elem header.

   Legend: m query rows against n keys; Dk, Dv head dims, Dkp = Dk rounded up to KSTEP; r row,
   j key, d dim; VW lanes. */

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

/* Kernel tables: one function per block shape, so that ROWS and VECS are constants and every
   accumulator of a block stays in a register. UPTO(N, F, X) expands to F(X, 1) … F(X, N), and
   ROWS(N, F) to F(1) … F(N) (two families: a macro cannot expand inside itself). */
#define CAT(a, b) CAT_(a, b)
#define CAT_(a, b) a##b
#define UPTO(N, F, X) CAT(UPTO_, N)(F, X)
#define UPTO_1(F, X) F(X, 1)
#define UPTO_2(F, X) UPTO_1(F, X) F(X, 2)
#define UPTO_3(F, X) UPTO_2(F, X) F(X, 3)
#define UPTO_4(F, X) UPTO_3(F, X) F(X, 4)
#define UPTO_5(F, X) UPTO_4(F, X) F(X, 5)
#define UPTO_6(F, X) UPTO_5(F, X) F(X, 6)
#define UPTO_7(F, X) UPTO_6(F, X) F(X, 7)
#define UPTO_8(F, X) UPTO_7(F, X) F(X, 8)
#define ROWS(N, F) CAT(ROWS_, N)(F)
#define ROWS_1(F) F(1)
#define ROWS_2(F) ROWS_1(F) F(2)
#define ROWS_3(F) ROWS_2(F) F(3)
#define ROWS_4(F) ROWS_3(F) F(4)
#define ROWS_5(F) ROWS_4(F) F(5)
#define ROWS_6(F) ROWS_5(F) F(6)
#define ROWS_7(F) ROWS_6(F) F(7)
#define ROWS_8(F) ROWS_7(F) F(8)

/* Packed keys hold Dk rounded up to PACK_ROUND dims, the dims past Dk 0: KSTEP unless the
   includer says otherwise (kernels_amx.c: VW·KSTEP, the dims of a tile row). */
#ifndef PACK_ROUND
#define PACK_ROUND KSTEP
#endif
static inline int64_t packed_dk(int64_t Dk) { return (Dk + PACK_ROUND - 1) / PACK_ROUND * PACK_ROUND; }

/* kp[panel][d / KSTEP][VW][KSTEP]: element d of key VW·panel + t at
   kp[panel·Dkp·VW + (d / KSTEP)·VW·KSTEP + t·KSTEP + d % KSTEP]; keys past n and dims past Dk
   are 0. A step of KSTEP elements is one 32-bit lane, so the transpose is that of floats. */
static void pack_keys(pelem *kp, const elem *k, int64_t ldk, int64_t n, int64_t Dk) {
    const int64_t Dkp = packed_dk(Dk);
    for (int64_t j0 = 0; j0 < n; j0 += VW) {
        const int64_t count = imin(VW, n - j0);
        pelem *panel = kp + (j0 / VW) * Dkp * VW;
        for (int64_t d0 = 0; d0 < Dk; d0 += VW * KSTEP) {
            const int64_t dims = imin(VW * KSTEP, Dk - d0), steps = (dims + KSTEP - 1) / KSTEP;
            vec rows[VW];
            UNROLL for (int t = 0; t < VW; t++)
                rows[t] = t < count ? vload_dims_part(k + (j0 + t) * ldk + d0, dims) : vzero();
            vtranspose(rows);
            /* t runs over constants: a variable index would keep rows[] in memory */
            UNROLL for (int t = 0; t < VW; t++)
                if (t < steps || PACK_ROUND > KSTEP) vstore_packed(panel + (d0 + t * KSTEP) * VW, rows[t]);
        }
    }
}

/* acc += the step of dims [d, d + KSTEP) of q (ROWS rows) times the kp panels, of which the
   first `have` dims are real (have < KSTEP: the last step of an odd Dk, the rest 0). */
INLINE void scores_step(vec acc[MR][NP], const elem *q, int64_t ldq, const pelem *kp,
                        int64_t Dkp, int64_t d, int64_t have, const int ROWS, const int PANELS) {
    vec key[NP];
    UNROLL for (int v = 0; v < PANELS; v++) key[v] = vload_packed(kp + (v * Dkp + d) * VW);
    UNROLL for (int r = 0; r < ROWS; r++) {
        const vec qd = have == KSTEP ? vbroadcast_dims(q + r * ldq + d)
                                     : vbroadcast_dims_part(q + r * ldq + d, have);
        UNROLL for (int v = 0; v < PANELS; v++) acc[r][v] = vdot(qd, key[v], acc[r][v]);
    }
}

#ifdef WIDEN_QUERY
/* With WIDEN_QUERY (elem_f16.h, KSTEP 1): the query rows of a block widened to float,
   WIDE_DIMS dims at a time, so that each broadcast is a load rather than a conversion per use
   (PANELS FMAs each); the arithmetic is then that of float32 inputs. */
#define WIDE_DIMS 128
INLINE void scores_dims(vec acc[MR][NP], const elem *q, int64_t ldq, const pelem *kp,
                        int64_t Dkp, int64_t Dk, const int ROWS, const int PANELS) {
    float wide[MR][WIDE_DIMS] __attribute__((aligned(64)));
    for (int64_t d0 = 0; d0 < Dk; d0 += WIDE_DIMS) {
        const int64_t dims = imin(WIDE_DIMS, Dk - d0);
        UNROLL for (int r = 0; r < ROWS; r++) widen_dims(wide[r], q + r * ldq + d0, dims);
        for (int64_t d = 0; d < dims; d++) {
            vec key[NP];
            UNROLL for (int v = 0; v < PANELS; v++)
                key[v] = vload_packed(kp + (v * Dkp + d0 + d) * VW);
            UNROLL for (int r = 0; r < ROWS; r++) {
                const vec qd = vbroadcast(&wide[r][d]);
                UNROLL for (int v = 0; v < PANELS; v++) acc[r][v] = vfmadd(qd, key[v], acc[r][v]);
            }
        }
    }
}
#else
/* acc += q (ROWS, Dk) · kp panels, a step of KSTEP dims at a time */
INLINE void scores_dims(vec acc[MR][NP], const elem *q, int64_t ldq, const pelem *kp,
                        int64_t Dkp, int64_t Dk, const int ROWS, const int PANELS) {
    int64_t d = 0;
    for (; d + KSTEP <= Dk; d += KSTEP) scores_step(acc, q, ldq, kp, Dkp, d, KSTEP, ROWS, PANELS);
    if (d < Dk) scores_step(acc, q, ldq, kp, Dkp, d, Dk - d, ROWS, PANELS);
}
#endif

/* s (ROWS, VW·PANELS) = scale · q (ROWS, Dk) · kp panels */
INLINE void scores_block(float *s, int64_t lds, const elem *q, int64_t ldq, const pelem *kp,
                         int64_t Dk, float scale, const int ROWS, const int PANELS) {
    const int64_t Dkp = packed_dk(Dk);
    vec acc[MR][NP];
    UNROLL for (int r = 0; r < ROWS; r++) UNROLL for (int v = 0; v < PANELS; v++)
        acc[r][v] = vzero();
    scores_dims(acc, q, ldq, kp, Dkp, Dk, ROWS, PANELS);
    const vec sc = vset1(scale);
    UNROLL for (int r = 0; r < ROWS; r++) UNROLL for (int v = 0; v < PANELS; v++)
        vstore(s + r * lds + v * VW, vmul(acc[r][v], sc));
}

typedef void (*scores_fn)(float *, int64_t, const elem *, int64_t, const pelem *, int64_t, float);
#define SCORES(R, P)                                                                            \
    static void scores_##R##x##P(float *s, int64_t lds, const elem *q, int64_t ldq,             \
                                 const pelem *kp, int64_t Dk, float scale) {                    \
        scores_block(s, lds, q, ldq, kp, Dk, scale, R, P);                                      \
    }
#define SCORES_ROW(R) UPTO(NP, SCORES, R)
ROWS(MR, SCORES_ROW)
#define SCORES_NAME(R, P) scores_##R##x##P,
#define SCORES_ENTRY(R) {UPTO(NP, SCORES_NAME, R)},
static const scores_fn scores_table[MR][NP] = {ROWS(MR, SCORES_ENTRY)};

/* (kernels_amx.c, with a table of its own, scores on AMX tiles instead: unused there) */
__attribute__((unused)) static void scores(float *s, int64_t lds, const elem *q, int64_t ldq,
                                           const pelem *kp, int64_t m, int64_t n, int64_t Dk,
                                           float scale) {
    const int64_t panels = (n + VW - 1) / VW, Dkp = packed_dk(Dk);
    for (int64_t p0 = 0; p0 < panels; p0 += NP) {
        const int64_t np = imin(NP, panels - p0);
        for (int64_t r0 = 0; r0 < m; r0 += MR) {
            const int64_t mr = imin(MR, m - r0);
            scores_table[mr - 1][np - 1](s + r0 * lds + p0 * VW, lds, q + r0 * ldq, ldq,
                                         kp + p0 * Dkp * VW, Dk, scale);
        }
    }
}

/* s (m, n) = scale · q (m, Dk) · kᵀ straight from the key rows, for decode-sized tiles: per
   row and VW keys, one accumulator per key along d (whole vectors of VW·KSTEP dims, the tail
   of Dk masked, 0 in the query and the key), then vsum_each turns the VW partial vectors into
   VW dot products. Reads each key row once per query row and packs nothing. */
static void scores_rows(float *s, int64_t lds, const elem *q, int64_t ldq, const elem *k,
                        int64_t ldk, int64_t m, int64_t n, int64_t Dk, float scale) {
    const vec sc = vset1(scale);
    for (int64_t r = 0; r < m; r++) {
        const elem *qr = q + r * ldq;
        for (int64_t j0 = 0; j0 < n; j0 += VW) {
            const int64_t count = imin(VW, n - j0);
            vec acc[VW];
            UNROLL for (int t = 0; t < VW; t++) acc[t] = vzero();
            /* key by key, each row read front to back: the order memory streams best in */
            UNROLL for (int t = 0; t < VW; t++) {
                if (t >= count) break;
                const elem *kr = k + (j0 + t) * ldk;
                int64_t d0 = 0;
                for (; d0 + VW * KSTEP <= Dk; d0 += VW * KSTEP)
                    acc[t] = vdot(vload_dims(qr + d0), vload_dims(kr + d0), acc[t]);
                if (d0 < Dk) {
                    const int64_t dims = Dk - d0;
                    acc[t] = vdot(vload_dims_part(qr + d0, dims), vload_dims_part(kr + d0, dims),
                                  acc[t]);
                }
            }
            vstore(s + r * lds + j0, vmul(vsum_each(acc), sc));
        }
    }
}

static void softmax(float *s, int64_t n, float *mx, float *sum, float *alpha) {
    /* pass 1: the tile's max, and the row's new running max. vmax(x, top) keeps top where x is
       NaN: the max is that of the other scores wherever a NaN sits, as in the scalar kernel,
       and pass 2 makes the sum NaN (exp(NaN - shift) is NaN). (vmax(top, x) took a NaN into
       top and dropped it at the next max: a tile of finite keys with a NaN at some positions
       then looked fully masked.) */
    const vec ninf = vset1(-INFINITY);
    vec top = ninf, top2 = ninf; /* two chains of max, so they overlap */
    int64_t j = 0;
    for (; j + 2 * VW <= n; j += 2 * VW) { /* whole vectors unmasked: vmaskmov is slow on AMD */
        top = vmax(vload(s + j), top);
        top2 = vmax(vload(s + j + VW), top2);
    }
    for (; j < n; j += VW) top = vmax(vload_part_or(ninf, vlanes(imin(VW, n - j)), s + j), top);
    const float tile = vreduce_max(vmax(top, top2)), old = *mx;
    const float now = tile > old ? tile : old;

    /* pass 2: p = exp(s - shift) and their sum, and p as P·V takes it (vround_p); masked
       stores only at the tail (they are slow on AMD's Zen 4 too) */
    const vec shift = vset1(SOFTMAX_SHIFT(now));
    vec total = vzero();
    j = 0;
    for (; j + VW <= n; j += VW) {
        const vec p = vexp(vsub(vload(s + j), shift));
        vstore(s + j, vround_p(p));
        total = vadd(total, p);
    }
    if (j < n) {
        const vmask k = vlanes(n - j);
        const vec p = vexp(vsub(vload_part(k, s + j), shift));
        vstore_part(s + j, k, vround_p(p));
        total = vadd_part(total, k, p);
    }
    /* old = -inf: 0, nothing to keep */
    const float a = now == old ? 1.0f : vlane0(vexp(vset1(old - now)));
    *sum = *sum * a + vreduce_add(total);
    *mx = now;
    *alpha = a;
}

/* o (ROWS, VW·VECS) = alpha ⊙ o + p (ROWS, n) · v (n, VW·VECS); the last vector holds the
   lanes of `tail`. CAREFUL: keys with vis 0 are left out (the old accumulator is kept, not
   multiplied by 0: a NaN value of a hidden key must not reach the row). */
INLINE void weigh_block(float *o, int64_t ldo, const float *p, int64_t ldp, const uint8_t *vis,
                        int64_t ldvis, const float *alpha, const elem *v, int64_t ldv, int64_t n,
                        vmask tail, const int ROWS, const int VECS, const int CAREFUL) {
    vec acc[MR][WIDE];
    vmask cols[WIDE];
    UNROLL for (int c = 0; c < VECS; c++) cols[c] = c == VECS - 1 ? tail : vwhole();
    UNROLL for (int r = 0; r < ROWS; r++) {
        UNROLL for (int c = 0; c < VECS; c++) {
            acc[r][c] = vload_part(cols[c], o + r * ldo + c * VW);
            if (alpha[r] != 1.0f) acc[r][c] = vmul(acc[r][c], vset1(alpha[r]));
        }
    }
    for (int64_t j = 0; j < n; j++) {
        vec val[WIDE];
        UNROLL for (int c = 0; c < VECS; c++) val[c] = vload_values(cols[c], v + j * ldv + c * VW);
        UNROLL for (int r = 0; r < ROWS; r++) {
            const vec pj = vbroadcast(p + r * ldp + j);
            if (CAREFUL) {
                const vmask seen = vif(vis[r * ldvis + j]);
                UNROLL for (int c = 0; c < VECS; c++)
                    acc[r][c] = vfmadd_part(seen, pj, val[c], acc[r][c]);
            } else {
                UNROLL for (int c = 0; c < VECS; c++) acc[r][c] = vfmadd(pj, val[c], acc[r][c]);
            }
        }
    }
    UNROLL for (int r = 0; r < ROWS; r++) UNROLL for (int c = 0; c < VECS; c++)
        vstore_part(o + r * ldo + c * VW, cols[c], acc[r][c]);
}

/* Blocks of WIDE_ROWS rows or fewer (decode) take up to WIDE vectors of columns, the others
   up to NP: WEIGH_VECS_R is the count for blocks of R rows. */
#define WIDE_ROWS 2
#define WEIGH_VECS_1 WIDE
#define WEIGH_VECS_2 WIDE
#define WEIGH_VECS_3 NP
#define WEIGH_VECS_4 NP
#define WEIGH_VECS_5 NP
#define WEIGH_VECS_6 NP
#define WEIGH_VECS_7 NP
#define WEIGH_VECS_8 NP
typedef void (*weigh_fn)(float *, int64_t, const float *, int64_t, const uint8_t *, int64_t,
                         const float *, const elem *, int64_t, int64_t, vmask);
#define WEIGH_FN(R, V, C)                                                                       \
    static void weigh_##R##x##V##_##C(float *o, int64_t ldo, const float *p, int64_t ldp,       \
                                      const uint8_t *vis, int64_t ldvis, const float *alpha,    \
                                      const elem *v, int64_t ldv, int64_t n, vmask tail) {      \
        weigh_block(o, ldo, p, ldp, vis, ldvis, alpha, v, ldv, n, tail, R, V, C);               \
    }
#define WEIGH(R, V) WEIGH_FN(R, V, 0) WEIGH_FN(R, V, 1)
#define WEIGH_ROW(R) UPTO(CAT(WEIGH_VECS_, R), WEIGH, R)
ROWS(MR, WEIGH_ROW)
#define WEIGH_NAME_0(R, V) weigh_##R##x##V##_0,
#define WEIGH_NAME_1(R, V) weigh_##R##x##V##_1,
#define WEIGH_ENTRY_0(R) {UPTO(CAT(WEIGH_VECS_, R), WEIGH_NAME_0, R)},
#define WEIGH_ENTRY_1(R) {UPTO(CAT(WEIGH_VECS_, R), WEIGH_NAME_1, R)},
static const weigh_fn weigh_table[2][MR][WIDE] = {{ROWS(MR, WEIGH_ENTRY_0)},
                                                  {ROWS(MR, WEIGH_ENTRY_1)}};

static void weigh(float *o, int64_t ldo, const float *p, int64_t ldp, const uint8_t *vis,
                  int64_t ldvis, const float *alpha, const elem *v, int64_t ldv, int64_t m,
                  int64_t n, int64_t Dv) {
    const int careful = vis != NULL;
    for (int64_t r0 = 0; r0 < m; r0 += MR) {
        const int64_t mr = imin(MR, m - r0);
        /* one or two rows (decode) take up to WIDE vectors: one pass over the value rows */
        const int64_t block = (mr <= WIDE_ROWS ? WIDE : NP) * VW;
        for (int64_t c0 = 0; c0 < Dv; c0 += block) {
            const int64_t width = imin(block, Dv - c0), vecs = (width + VW - 1) / VW;
            const int64_t last = width - (vecs - 1) * VW; /* columns in the last vector, 1..VW */
            weigh_table[careful][mr - 1][vecs - 1](
                o + r0 * ldo + c0, ldo, p + r0 * ldp, ldp, careful ? vis + r0 * ldvis : NULL,
                ldvis, alpha + r0, v + c0, ldv, n, vlanes(last));
        }
    }
}

#ifndef SIMD_BODY_NO_TABLE /* kernels_amx.c makes its own table of these kernels */
static const ELEM_OPS ops = {
    .bq = BQ,
    .bk = BK,
    .kstep = KSTEP,
    .pack_keys = pack_keys,
    .scores = scores,
    .few_rows = FEW_ROWS,
    .scores_rows = scores_rows,
    .softmax = softmax,
    .weigh = weigh,
};
#endif
