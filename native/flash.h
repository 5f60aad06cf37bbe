/* flash.h: the FlashAttention-2 driver and the plain scalar tile kernels, for one real type.

   What it does: for each tile of queries (the parallel unit) it walks the tiles of keys that
   the structural masks (causal, window, kv_lengths) leave visible to some query of the tile,
   scores them, keeps a running max and sum per query row (online softmax), rescales the row's
   float accumulator only when the max grows, and divides once at the end. Memory: per-thread
   tiles, small split-K partials, and a packed copy of the keys when a head has
   PREPACK_MIN_TILES query tiles or more to share it (at most PREPACK_MAX_BYTES at a time: kv
   heads go in groups that fit); no Lq×Lk buffer unless weights are asked for.
   What it does not do: SIMD arithmetic (the ops table does the tile arithmetic), validation
   (refattn_attention checks the call first), or anything across calls.

   This file is a template: flash_f32.c, flash_f64.c, flash_bf16.c and flash_f16.c include it with
       REAL      float or double: what it computes in
       ELEM      the element of query, key, value and out: REAL, or uint16_t (bfloat16 or
                 float16 bits)
       PACKED, TO_PACKED(x), PACKED_TO_REAL(x)  the element of packed keys and values (OPS's
                 K), an ELEM as one, and one widened: ELEM, x and TO_REAL(x) unless defined
       TO_REAL(x), FROM_REAL(x)  an ELEM widened to REAL, a REAL rounded to ELEM
       ROUND_P(x)  p as P·V takes it: x, or x rounded to bfloat16 (the spec's tolerance, 5)
       OPS       the tile-kernel table type   FN(name)  the name with a dtype suffix
       EXP, LOG, TANH  libm functions for REAL

   Legend: B batch, Hq/Hkv heads, G = Hq/Hkv, Lq/Lk lengths, Dk/Dv head dims. A tile is m query
   rows (m <= bq) against n keys (n <= bk); r indexes rows in a tile, j keys in a tile. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "internal.h"

#ifndef PACKED
#define PACKED ELEM
#define TO_PACKED(x) (x)              /* an ELEM as packed */
#define PACKED_TO_REAL(x) TO_REAL(x)  /* a packed element widened to REAL */
#endif

#ifndef REFATTN_FLASH_COMMON
#define REFATTN_FLASH_COMMON

#ifdef _OPENMP
#define THREAD_ID() omp_get_thread_num()
#else
#define THREAD_ID() 0
#endif

#define ALIGN 64 /* bytes: a cache line, and an AVX-512 vector */

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline size_t round_up(size_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; }

/* One piece of a thread's block in a *_layout function (whose locals are w, mine and at): its
   64-byte aligned size added to at, and with mine non-NULL, w->field pointed at it. */
#define LAYOUT_PIECE(field, type, count)                                                       \
    do {                                                                                       \
        if (mine) w->field = (type *)(mine + at);                                              \
        at += round_up(sizeof(type) * (size_t)(count));                                        \
    } while (0)

/* The element offset of batch entry b of a tensor. */
static inline int64_t batch_offset(const refattn_tensor *t, int64_t b) {
    return t->batch_offsets ? t->batch_offsets[b] : b * t->stride[0];
}

/* a·b + c bytes, or SIZE_MAX when it does not fit (the allocation then fails: ENOMEM). */
static inline size_t size_mul_add(size_t a, size_t b, size_t c) {
    if (b != 0 && a > (SIZE_MAX - c) / b) return SIZE_MAX;
    return a * b + c;
}

#endif /* REFATTN_FLASH_COMMON */

/* ------------------------------------------------------------------------------------------ */
/* The scalar tile kernels: plain loops, the fallback and the baseline of every SIMD kernel.  */

/* kp: keys as rows of Dk, (n, Dk), each element as PACKED (exactly: ELEM itself, or widened). */
static void FN(scalar_pack_keys)(PACKED *kp, const ELEM *k, int64_t ldk, int64_t n, int64_t Dk) {
    for (int64_t j = 0; j < n; j++)
        for (int64_t d = 0; d < Dk; d++) kp[j * Dk + d] = TO_PACKED(k[j * ldk + d]);
}

/* s (m, n) = scale · q (m, Dk) · kᵀ, keys read as rows of Dk (row stride ldk) */
static void FN(scalar_scores_rows)(REAL *s, int64_t lds, const ELEM *q, int64_t ldq,
                                   const ELEM *k, int64_t ldk, int64_t m, int64_t n, int64_t Dk,
                                   REAL scale) {
    for (int64_t r = 0; r < m; r++) {
        for (int64_t j = 0; j < n; j++) {
            REAL dot = 0;
            for (int64_t d = 0; d < Dk; d++)
                dot += TO_REAL(q[r * ldq + d]) * TO_REAL(k[j * ldk + d]);
            s[r * lds + j] = dot * scale;
        }
    }
}

/* s (m, n) = scale · q (m, Dk) · kpᵀ (Dk, n): the packed keys are rows of Dk */
static void FN(scalar_scores)(REAL *s, int64_t lds, const ELEM *q, int64_t ldq,
                              const PACKED *kp, int64_t m, int64_t n, int64_t Dk, REAL scale) {
    for (int64_t r = 0; r < m; r++) {
        for (int64_t j = 0; j < n; j++) {
            REAL dot = 0;
            for (int64_t d = 0; d < Dk; d++)
                dot += TO_REAL(q[r * ldq + d]) * PACKED_TO_REAL(kp[j * Dk + d]);
            s[r * lds + j] = dot * scale;
        }
    }
}

static void FN(scalar_softmax)(REAL *s, int64_t n, REAL *mx, REAL *sum, REAL *alpha) {
    /* pass 1: the tile's max, and the row's new running max; a NaN score is passed over here
       and makes the sum NaN in pass 2 */
    REAL top = -INFINITY;
    for (int64_t j = 0; j < n; j++) top = s[j] > top ? s[j] : top;
    REAL old = *mx, now = top > old ? top : old;
    /* pass 2: p = exp(s - shift) and their sum; P·V takes p as ROUND_P leaves it */
    const REAL shift = SOFTMAX_SHIFT(now);
    REAL total = 0;
    for (int64_t j = 0; j < n; j++) {
        const REAL e = EXP(s[j] - shift);
        total += e;
        s[j] = ROUND_P(e);
    }
    REAL a = now == old ? 1 : EXP(old - now); /* old = -inf: exp(-inf) = 0, nothing to keep */
    *sum = *sum * a + total;
    *mx = now;
    *alpha = a;
}

/* o (m, Dv) = alpha ⊙ o + p (m, n) · v (n, Dv), leaving out keys with vis 0 */
static void FN(scalar_weigh)(REAL *o, int64_t ldo, const REAL *p, int64_t ldp, const uint8_t *vis,
                             int64_t ldvis, const REAL *alpha, const ELEM *v, int64_t ldv,
                             int64_t m, int64_t n, int64_t Dv) {
    for (int64_t r = 0; r < m; r++) {
        REAL *orow = o + r * ldo;
        if (alpha[r] != 1)
            for (int64_t d = 0; d < Dv; d++) orow[d] *= alpha[r];
        for (int64_t j = 0; j < n; j++) {
            if (vis && !vis[r * ldvis + j]) continue;
            REAL pj = p[r * ldp + j];
            for (int64_t d = 0; d < Dv; d++) orow[d] += pj * TO_REAL(v[j * ldv + d]);
        }
    }
}

static const OPS FN(scalar_ops) = {
    .bq = 32,
    .bk = 64,
    .kstep = 1,
    .pack_keys = FN(scalar_pack_keys),
    .scores = FN(scalar_scores),
    .few_rows = 2, /* the same arithmetic either way here: both paths stay exercised */
    .scores_rows = FN(scalar_scores_rows),
    .softmax = FN(scalar_softmax),
    .weigh = FN(scalar_weigh),
};

/* ------------------------------------------------------------------------------------------ */
/* The driver.                                                                                */

/* What every thread of one call shares. */
typedef struct FN(plan) {
    const refattn_call *c;
    const OPS *ops;
    int64_t G;             /* query heads per kv head */
    int64_t bq, bk;        /* tile: query rows, keys */
    int64_t nqt;           /* query tiles per head */
    int64_t nsplit, chunk; /* split-K: key chunks per query tile, keys per chunk */
    int64_t offset;        /* the diagonal: key i + offset is query i's own position */
    int64_t wl, wr;        /* window sides, -1 = unbounded */
    REAL scale, softcap;
    REAL *lse;  /* (B, Hq, Lq): the caller's, or ours when weights or split-K need it */
    REAL *part; /* (B, Hq, Lq, nsplit, Dv + 2): split-K partials [max, sum, o...] */
    int64_t dkp;        /* Dk rounded up to ops->kstep: a packed key's elements */
    PACKED *kpack;      /* (group, nkt, Dkp·bk): the key tiles of a group of kv heads, or NULL */
    int64_t nkt;        /* key tiles per kv head */
    int64_t kv_group;   /* kv heads (b, hk) packed at a time: all of them without packing */
    int64_t vp_elems;   /* a thread's packed values (ops->pack_values), 0 without them */
} FN(plan);

/* One thread's tiles. */
typedef struct FN(work) {
    PACKED *kp;       /* packed keys, Dkp·bk */
    PACKED *vp;       /* packed values, for ops->weigh_packed (plan.vp_elems) */
    REAL *s;          /* scores, then probabilities, (bq, bk) */
    uint8_t *vis;     /* visibility of the tile when some key is hidden, (bq, bk) */
    REAL *o;          /* unnormalised output rows, (bq, Dv) */
    REAL *mx, *sum;   /* running max and sum per row, (bq) */
    REAL *alpha;      /* rescale factor per row for the tile, (bq) */
} FN(work);

/* One thread's tiles laid out from `mine`, each piece 64-byte aligned: with mine NULL, only
   the size in bytes (w is not touched); otherwise w's pointers too. The one statement of the
   layout, for sizing the block and for carving it. */
static size_t FN(work_layout)(FN(work) *w, char *mine, int64_t Dkp, int64_t Dv, int64_t bq,
                              int64_t bk, int64_t vp_elems) {
    size_t at = 0;
    LAYOUT_PIECE(kp, PACKED, Dkp * bk);
    LAYOUT_PIECE(vp, PACKED, vp_elems);
    LAYOUT_PIECE(s, REAL, bq * bk);
    LAYOUT_PIECE(vis, uint8_t, bq * bk);
    LAYOUT_PIECE(o, REAL, bq * Dv);
    LAYOUT_PIECE(mx, REAL, bq);
    LAYOUT_PIECE(sum, REAL, bq);
    LAYOUT_PIECE(alpha, REAL, bq);
    return at;
}

/* The keys query i of batch b may see under the structural masks: [*lo, *hi), both ends in
   [0, Lk]; a row that sees no key gets the empty [end, end). Both ends grow with i (each is a
   min or max of non-decreasing bounds), so the keys of rows [i0, i1) lie in
   [lo(i0), hi(i1 - 1)). */
static inline void FN(visible_range)(const FN(plan) *p, int64_t b, int64_t i, int64_t *lo,
                                     int64_t *hi) {
    const refattn_call *c = p->c;
    int64_t first = 0, end = c->Lk;
    int64_t diagonal = i + p->offset;
    if (c->kv_lengths) end = min64(end, c->kv_lengths[b]);
    if (c->causal != REFATTN_CAUSAL_NONE) end = min64(end, diagonal + 1);
    if (p->wl >= 0) first = max64(first, diagonal - p->wl);
    if (p->wr >= 0) end = min64(end, diagonal + p->wr + 1);
    end = max64(end, 0);
    *lo = min64(first, end);
    *hi = end;
}

/* Row i of head h against keys [j0, j0 + n), its scores s already scaled and softcapped:
   the bias added, vis[j] set to whether key j0 + j is visible (causal and window bounds,
   kv_lengths, the mask, a -inf bias) and every hidden score set to -inf. Returns whether some
   key of the run is hidden. Shared by the forward's score_tile and the backward's. */
static int FN(mask_row)(const FN(plan) *p, int64_t b, int64_t h, int64_t i, int64_t j0,
                        int64_t n, REAL *s, uint8_t *vis) {
    const refattn_call *c = p->c;
    int64_t lo, hi;
    FN(visible_range)(p, b, i, &lo, &hi);
    const int64_t jl = min64(max64(lo - j0, 0), n), jh = max64(jl, min64(hi - j0, n));
    if (!c->mask.data && !c->bias.data) {
        /* Only causal, window and kv_lengths: the row sees the run [jl, jh), hidden on either
           side; no per-key tests (the diagonal tiles of every causal call). */
        memset(vis, 0, (size_t)jl);
        memset(vis + jl, 1, (size_t)(jh - jl));
        memset(vis + jh, 0, (size_t)(n - jh));
        for (int64_t j = 0; j < jl; j++) s[j] = -INFINITY;
        for (int64_t j = jh; j < n; j++) s[j] = -INFINITY;
        return jl > 0 || jh < n;
    }
    for (int64_t j = 0; j < n; j++) vis[j] = j >= jl && j < jh;
    if (c->mask.data) {
        const refattn_tensor *t = &c->mask;
        const uint8_t *mrow = (const uint8_t *)t->data + batch_offset(t, b) + h * t->stride[1] +
                              i * t->stride[2] + j0 * t->stride[3];
        for (int64_t j = 0; j < n; j++) vis[j] &= mrow[j * t->stride[3]] != 0;
    }
    if (c->bias.data) {
        const refattn_tensor *t = &c->bias;
        const REAL *brow = (const REAL *)t->data + batch_offset(t, b) + h * t->stride[1] +
                           i * t->stride[2] + j0 * t->stride[3];
        for (int64_t j = 0; j < n; j++) {
            const REAL add = brow[j * t->stride[3]];
            if (add == -INFINITY) vis[j] = 0; /* hides the key even if its score is NaN */
            s[j] += add;
        }
    }
    int hidden = 0;
    for (int64_t j = 0; j < n; j++) {
        if (!vis[j]) {
            s[j] = -INFINITY;
            hidden = 1;
        }
    }
    return hidden;
}

/* Scores of rows [i0, i0 + m) of head h against keys [j0, j0 + n) into w->s, with hidden keys
   at -inf. Returns 1 when some key of the tile is hidden from some row (w->vis then says
   which), 0 when every row sees every key of the tile. kp: keys j0 onwards already packed
   (panels of keys are independent: a prefix of them serves a shorter n), or NULL to pack
   them into w->kp here. */
static int FN(score_tile)(const FN(plan) *p, FN(work) *w, int64_t b, int64_t h, int64_t i0,
                          int64_t m, int64_t j0, int64_t n, const PACKED *kp) {
    const refattn_call *c = p->c;
    const OPS *ops = p->ops;
    const int64_t bk = p->bk, Dk = c->Dk;
    /* pass 1: scale · q·k for the tile */
    const ELEM *q = (const ELEM *)c->query.data + batch_offset(&c->query, b) +
                    h * c->query.stride[1] + i0 * c->query.stride[2];
    const ELEM *k = (const ELEM *)c->key.data + batch_offset(&c->key, b) +
                    (h / p->G) * c->key.stride[1] + j0 * c->key.stride[2];
    if (m <= ops->few_rows) {
        ops->scores_rows(w->s, bk, q, c->query.stride[2], k, c->key.stride[2], m, n, Dk, p->scale);
    } else {
        if (!kp) {
            ops->pack_keys(w->kp, k, c->key.stride[2], n, Dk);
            kp = w->kp;
        }
        ops->scores(w->s, bk, q, c->query.stride[2], kp, m, n, Dk, p->scale);
    }

    /* pass 2: softcap, bias and masks; a tile inside every row's structural range with none
       of them needs nothing more */
    int64_t lo_last, hi_last, lo_first, hi_first;
    FN(visible_range)(p, b, i0 + m - 1, &lo_last, &hi_last);
    FN(visible_range)(p, b, i0, &lo_first, &hi_first);
    int inside = lo_last <= j0 && hi_first >= j0 + n;
    int has_mask = c->mask.data != NULL, has_bias = c->bias.data != NULL;
    if (inside && !has_mask && !has_bias && p->softcap == 0) return 0;

    int hidden_any = 0;
    for (int64_t r = 0; r < m; r++) {
        const int64_t i = i0 + r;
        REAL *s = w->s + r * bk;
        uint8_t *vis = w->vis + r * bk;
        if (p->softcap != 0) {
            const REAL cap = p->softcap;
            for (int64_t j = 0; j < n; j++) s[j] = cap * TANH(s[j] / cap);
        }
        hidden_any |= FN(mask_row)(p, b, h, i, j0, n, s, vis);
    }
    return hidden_any;
}

#define DIAG_ROWS 24    /* rows per block in a tile that crosses the diagonal */
#define PREPACK_MAX_BYTES ((size_t)32 << 20) /* the most memory pass 0's packed keys may take */
/* Pass 0 packs keys only for heads of at least this many query tiles: with fewer, each tile
   packing its own keys costs less than the pass and its barrier ((1,8,128,64), two tiles a head:
   0.211 ms against 0.223 packed once; from four tiles up, packing once gains 1-5 %). */
#define PREPACK_MIN_TILES 4

/* Query rows [i0, i0 + m) of head h of batch b, over the keys of chunk `split`. kpack: this
   head's key tiles packed by pass 0, or NULL. */
static void FN(attend_tile)(const FN(plan) *p, FN(work) *w, int64_t b, int64_t h, int64_t qt,
                            int64_t split, const PACKED *kpack) {
    const refattn_call *c = p->c;
    const OPS *ops = p->ops;
    const int64_t Hq = c->Hq, Lq = c->Lq, Dv = c->Dv, bk = p->bk;
    const int64_t i0 = qt * p->bq, m = min64(p->bq, Lq - i0);
    const int64_t c0 = split * p->chunk, c1 = min64(c->Lk, c0 + p->chunk);
    for (int64_t r = 0; r < m; r++) {
        w->mx[r] = -INFINITY;
        w->sum[r] = 0;
    }
    memset(w->o, 0, (size_t)(m * Dv) * sizeof(REAL));

    /* The keys some row of the tile may see; keys outside them are never read. Key tiles
       start at multiples of bk from the chunk start, so the work depends on shapes alone. */
    int64_t lo, hi, lo_last, hi_last;
    FN(visible_range)(p, b, i0, &lo, &hi);
    FN(visible_range)(p, b, i0 + m - 1, &lo_last, &hi_last);
    const int64_t jlo = max64(c0, lo), jhi = min64(c1, hi_last);
    const ELEM *v = (const ELEM *)c->value.data + batch_offset(&c->value, b) +
                    (h / p->G) * c->value.stride[1];
    const int64_t ldv = c->value.stride[2];
    const ELEM *k = (const ELEM *)c->key.data + batch_offset(&c->key, b) +
                    (h / p->G) * c->key.stride[1];
    const int64_t ldk = c->key.stride[2];
    for (int64_t jt = jlo < jhi ? c0 + (jlo - c0) / bk * bk : jhi; jt < jhi; jt += bk) {
        const int64_t j0 = max64(jt, jlo), n = min64(jt + bk, jhi) - j0;
        /* A tile that crosses the diagonal (its first row does not see its last key) goes in
           blocks of DIAG_ROWS rows, each over the keys up to its own last row's end: the
           triangle above the diagonal is mostly skipped rather than computed and hidden. */
        int64_t lo_row, hi_row;
        FN(visible_range)(p, b, i0, &lo_row, &hi_row);
        const int64_t block = hi_row < j0 + n && m > DIAG_ROWS ? DIAG_ROWS : m;
        const PACKED *kp = NULL;
        if (kpack && j0 == jt) {
            kp = kpack + (jt / bk) * p->dkp * bk; /* packed once for every query tile (pass 0) */
        } else if (block < m && m > ops->few_rows) {
            ops->pack_keys(w->kp, k + j0 * ldk, ldk, n, c->Dk);
            kp = w->kp;
        }
        /* values packed for weigh_packed once per key tile, where the table has it, the rows
           are many enough and every value of the tile is finite (else weigh takes them all) */
        const int packed = p->vp_elems > 0 && m > ops->few_rows && Dv > 0 &&
                           ops->pack_values(w->vp, v + j0 * ldv, ldv, n, Dv);
        for (int64_t r0 = 0; r0 < m; r0 += block) {
            const int64_t mb = min64(block, m - r0);
            int64_t nb = n;
            if (block < m) {
                FN(visible_range)(p, b, i0 + r0 + mb - 1, &lo_row, &hi_row);
                nb = min64(n, hi_row - j0);
                if (nb <= 0) continue; /* these rows see none of the tile: their state holds */
            }
            const int hidden = FN(score_tile)(p, w, b, h, i0 + r0, mb, j0, nb, kp);
            for (int64_t r = r0; r < r0 + mb; r++)
                ops->softmax(w->s + (r - r0) * bk, nb, &w->mx[r], &w->sum[r], &w->alpha[r]);
            if (packed && !hidden && mb > ops->few_rows)
                ops->weigh_packed(w->o + r0 * Dv, Dv, w->s, bk, w->alpha + r0, w->vp, mb, nb, Dv);
            else
                ops->weigh(w->o + r0 * Dv, Dv, w->s, bk, hidden ? w->vis : NULL, bk,
                           w->alpha + r0, v + j0 * ldv, ldv, mb, nb, Dv);
        }
    }

    /* Finish: out = o / sum and lse = max + log(sum), or keep the partial state for merging */
    for (int64_t r = 0; r < m; r++) {
        const int64_t row = (b * Hq + h) * Lq + i0 + r; /* (b, h, i) */
        const REAL *o = w->o + r * Dv;
        if (p->nsplit > 1) {
            REAL *part = p->part + (row * p->nsplit + split) * (Dv + 2);
            part[0] = w->mx[r];
            part[1] = w->sum[r];
            memcpy(part + 2, o, (size_t)Dv * sizeof(REAL));
            continue;
        }
        ELEM *out = (ELEM *)c->out + row * Dv;
        if (w->sum[r] == 0) {
            /* The row saw no key (fully masked): its sum is 0, and its output is 0 and its lse
               -inf by the spec, rather than 0/0. (All bits 0 is +0 in every ELEM.) */
            memset(out, 0, (size_t)Dv * sizeof(ELEM));
            if (p->lse) p->lse[row] = -INFINITY;
            continue;
        }
        const REAL inv = 1 / w->sum[r]; /* the one division of the row */
        for (int64_t d = 0; d < Dv; d++) out[d] = FROM_REAL(o[d] * inv);
        if (p->lse) p->lse[row] = w->mx[r] + LOG(w->sum[r]);
    }
}

/* Split-K: merge the chunks of one row (b, h, i) with log-sum-exp rescaling, summing into the
   first chunk's accumulator (the row's partials are this call's alone). */
static void FN(merge_row)(const FN(plan) *p, int64_t row) {
    const int64_t Dv = p->c->Dv, nsplit = p->nsplit;
    REAL *part = p->part + row * nsplit * (Dv + 2);
    ELEM *out = (ELEM *)p->c->out + row * Dv;
    REAL top = -INFINITY;
    for (int64_t s = 0; s < nsplit; s++) top = part[s * (Dv + 2)] > top ? part[s * (Dv + 2)] : top;
    if (top == -INFINITY) {
        /* No chunk saw a finite score: the row is fully masked (every sum 0: out 0, lse
           -inf), unless a NaN score made some chunk's sum NaN. */
        REAL total = 0;
        for (int64_t s = 0; s < nsplit; s++) total += part[s * (Dv + 2) + 1];
        for (int64_t d = 0; d < Dv; d++) out[d] = FROM_REAL(total == 0 ? 0 : total);
        p->lse[row] = total == 0 ? -INFINITY : total;
        return;
    }
    /* Every chunk is merged, also one whose max is -inf (it saw only -inf scores or NaN ones):
       it weighs exp(-inf - top) = 0, but its NaN sum (a NaN score) or NaN accumulator (0·Inf,
       a value of Inf at a -inf score) reaches the row, as in the unsplit sum. */
    REAL total = 0;
    REAL *acc = part + 2; /* the first chunk's accumulator, then the row's */
    for (int64_t s = 0; s < nsplit; s++) {
        const REAL *chunk = part + s * (Dv + 2);
        const REAL weight = chunk[0] == top ? 1 : EXP(chunk[0] - top);
        total += weight * chunk[1];
        if (s == 0) {
            for (int64_t d = 0; d < Dv; d++) acc[d] *= weight;
        } else {
            for (int64_t d = 0; d < Dv; d++) acc[d] += weight * chunk[2 + d];
        }
    }
    /* total >= 1: the chunk holding the max has sum >= exp(0) (or NaN, which propagates). */
    const REAL inv = 1 / total;
    for (int64_t d = 0; d < Dv; d++) out[d] = FROM_REAL(acc[d] * inv);
    p->lse[row] = top + LOG(total);
}

/* Weights of rows [i0, i0 + m) of head h: exp(s - lse) at visible keys, 0 elsewhere (NaN
   everywhere in a NaN row, as the reference's softmax gives). A straightforward pass. */
static void FN(weights_tile)(const FN(plan) *p, FN(work) *w, int64_t b, int64_t h, int64_t qt) {
    const refattn_call *c = p->c;
    const int64_t Lq = c->Lq, Lk = c->Lk, bk = p->bk;
    const int64_t i0 = qt * p->bq, m = min64(p->bq, Lq - i0);
    const int64_t row0 = (b * c->Hq + h) * Lq + i0;
    REAL *weights = (REAL *)c->weights + row0 * Lk;
    const REAL *lse = p->lse + row0;
    for (int64_t r = 0; r < m; r++) {
        const REAL hidden = isnan(lse[r]) ? lse[r] : 0; /* exp(-inf - lse) */
        for (int64_t j = 0; j < Lk; j++) weights[r * Lk + j] = hidden;
    }
    int64_t lo, hi, lo_last, hi_last;
    FN(visible_range)(p, b, i0, &lo, &hi);
    FN(visible_range)(p, b, i0 + m - 1, &lo_last, &hi_last);
    for (int64_t jt = lo < hi_last ? lo / bk * bk : hi_last; jt < hi_last; jt += bk) {
        const int64_t j0 = max64(jt, lo), n = min64(jt + bk, hi_last) - j0;
        FN(score_tile)(p, w, b, h, i0, m, j0, n, NULL);
        for (int64_t r = 0; r < m; r++) {
            if (lse[r] == -INFINITY) continue; /* fully masked row: weights stay 0, not NaN */
            const REAL *s = w->s + r * bk;
            for (int64_t j = 0; j < n; j++) weights[r * Lk + j0 + j] = EXP(s[j] - lse[r]);
        }
    }
}

/* Split-K when the query tiles alone are too few to keep threads busy (decode: Lq = 1 with
   few heads). The split depends on the shapes only, never on the thread count, so results
   are the same bit for bit whatever the number of threads. */
#define SPLIT_ITEMS 64       /* aim for at least this many work items */
#define SPLIT_MIN_KEYS 512   /* and no chunk shorter than this */

static int FN(flash)(const refattn_call *c, const OPS *ops, int num_threads) {
    FN(plan) p = {0};
    p.c = c;
    p.ops = ops;
    p.G = c->Hq / c->Hkv;
    p.bk = ops->bk;
    p.bq = c->Lq < ops->bq ? (c->Lq > 0 ? c->Lq : 1) : ops->bq;
    p.nqt = cdiv(c->Lq, p.bq);
    p.offset = c->causal == REFATTN_CAUSAL_BOTTOM_RIGHT ? c->Lk - c->Lq : 0;
    /* A window side longer than Lq + Lk hides nothing: clamp it so index sums cannot overflow. */
    p.wl = c->window_left < 0 ? -1 : min64(c->window_left, c->Lq + c->Lk);
    p.wr = c->window_right < 0 ? -1 : min64(c->window_right, c->Lq + c->Lk);
    p.scale = (REAL)c->scale;
    p.softcap = (REAL)c->softcap;
    p.dkp = cdiv(c->Dk, ops->kstep) * ops->kstep;
    const int64_t BH = c->B * c->Hq, rows = BH * c->Lq, Dv = c->Dv;

    p.nsplit = 1;
    p.chunk = c->Lk > 0 ? c->Lk : 1;
    const int64_t tiles = BH * p.nqt;
    if (tiles > 0 && tiles < SPLIT_ITEMS && c->Lk >= 2 * SPLIT_MIN_KEYS) {
        int64_t want = min64(cdiv(c->Lk, SPLIT_MIN_KEYS), cdiv(SPLIT_ITEMS, tiles));
        p.chunk = cdiv(cdiv(c->Lk, want), p.bk) * p.bk;
        p.nsplit = cdiv(c->Lk, p.chunk);
    }
    const int64_t items = tiles * p.nsplit;

    /* Threads: no more than the work items, and one when the call is too small to share. */
    int64_t threads = num_threads;
    const double work = (double)rows * (double)c->Lk * (double)(c->Dk + Dv);
    if (threads > items) threads = items > 0 ? items : 1;
    if (work < 65536.0) threads = 1;

    /* Allocate everything before the parallel region, so a failure is one clean return. */
    const int64_t bq = p.bq, bk = p.bk;
    p.vp_elems = ops->pack_values ? ops->values_elems(bk, Dv) : 0;
    const size_t per_thread = FN(work_layout)(NULL, NULL, p.dkp, Dv, bq, bk, p.vp_elems);
    const int need_lse = c->weights != NULL || p.nsplit > 1;
    const size_t lse_bytes = need_lse && !c->lse ? round_up(sizeof(REAL) * (size_t)rows) : 0;
    size_t part_bytes = 0;
    if (p.nsplit > 1) {
        part_bytes = size_mul_add((size_t)rows, (size_t)p.nsplit, 0);
        part_bytes = size_mul_add(part_bytes, sizeof(REAL) * (size_t)(Dv + 2), 0);
        if (part_bytes == SIZE_MAX) return REFATTN_ENOMEM;
        part_bytes = round_up(part_bytes);
    }
    /* Pack every key tile once when enough query tiles would each pack it again, for as many
       kv heads at a time as fit in PREPACK_MAX_BYTES; tiles of few rows read the key rows
       unpacked. */
    const int64_t BHkv = c->B * c->Hkv;
    p.nkt = cdiv(c->Lk, bk);
    size_t head_bytes = size_mul_add((size_t)p.nkt, (size_t)(p.dkp * bk), 0);
    head_bytes = size_mul_add(head_bytes, sizeof(PACKED), 0);
    const int prepack = p.nqt >= PREPACK_MIN_TILES && bq > ops->few_rows && c->Lk > 0 &&
                        head_bytes <= PREPACK_MAX_BYTES;
    p.kv_group = prepack ? min64(BHkv, (int64_t)(PREPACK_MAX_BYTES / head_bytes)) : max64(BHkv, 1);
    const size_t kpack_bytes = prepack ? (size_t)p.kv_group * head_bytes : 0;
    size_t total = size_mul_add((size_t)threads, per_thread, ALIGN);
    total = size_mul_add(1, total, lse_bytes);
    total = size_mul_add(1, total, part_bytes);
    total = size_mul_add(1, total, round_up(kpack_bytes));
    if (total == SIZE_MAX) return REFATTN_ENOMEM;
    char *block = malloc(total);
    if (!block) return REFATTN_ENOMEM;
    char *base = (char *)round_up((size_t)(uintptr_t)block); /* 64-byte aligned */
    char *shared = base + (size_t)threads * per_thread;
    p.lse = c->lse ? (REAL *)c->lse : (need_lse ? (REAL *)shared : NULL);
    p.part = p.nsplit > 1 ? (REAL *)(shared + lse_bytes) : NULL;
    p.kpack = kpack_bytes ? (PACKED *)(shared + lse_bytes + part_bytes) : NULL;

    /* Work items (b, h, query tile, key chunk), a group of kv heads at a time. Causal and
       windowed tiles cost more the later they sit, so those go first, heaviest first;
       otherwise head by head, for the caches. Dynamic scheduling balances what remains; which
       thread runs an item never changes its result. */
    const int heaviest_first = c->causal != REFATTN_CAUSAL_NONE || p.wl >= 0 || p.wr >= 0;
    const int64_t nsplit = p.nsplit, nqt = p.nqt;

    refattn_team_starts(threads);
#pragma omp parallel num_threads((int)threads) if (threads > 1)
    {
        FN(work) w;
        FN(work_layout)(&w, base + (size_t)THREAD_ID() * per_thread, p.dkp, Dv, bq, bk,
                        p.vp_elems);

        for (int64_t g0 = 0; g0 < BHkv; g0 += p.kv_group) {
            const int64_t g1 = min64(BHkv, g0 + p.kv_group), Dk = c->Dk, Dkp = p.dkp;
            /* pass 0: pack the key tiles of kv heads [g0, g1), when the plan says so */
            if (p.kpack) {
                const int64_t nkt = p.nkt, ldk = c->key.stride[2];
#pragma omp for schedule(static)
                for (int64_t t = 0; t < (g1 - g0) * nkt; t++) {
                    const int64_t bkv = g0 + t / nkt, kt = t % nkt;
                    const ELEM *k = (const ELEM *)c->key.data +
                                    batch_offset(&c->key, bkv / c->Hkv) +
                                    (bkv % c->Hkv) * c->key.stride[1] + kt * bk * ldk;
                    ops->pack_keys(p.kpack + t * Dkp * bk, k, ldk, min64(bk, c->Lk - kt * bk), Dk);
                }
            }

            /* pass 1: every (b, h, query tile, key chunk) of query heads whose kv head is in
               [g0, g1): the heads bh = b·Hq + h with bh / G in it, one run of them */
            const int64_t BHg = (g1 - g0) * p.G, items_g = BHg * nqt * nsplit;
#pragma omp for schedule(dynamic, 1)
            for (int64_t item = 0; item < items_g; item++) {
                const int64_t split = item % nsplit, rest = item / nsplit;
                int64_t bh, qt;
                if (heaviest_first) {
                    qt = nqt - 1 - rest / BHg;
                    bh = g0 * p.G + rest % BHg;
                } else {
                    qt = rest % nqt;
                    bh = g0 * p.G + rest / nqt;
                }
                const PACKED *kpack =
                    p.kpack ? p.kpack + (bh / p.G - g0) * p.nkt * Dkp * bk : NULL;
                FN(attend_tile)(&p, &w, bh / c->Hq, bh % c->Hq, qt, split, kpack);
            }
        }

        /* pass 2: merge the key chunks of each row */
        if (nsplit > 1) {
#pragma omp for schedule(static)
            for (int64_t row = 0; row < rows; row++) FN(merge_row)(&p, row);
        }

        /* pass 3: weights, when asked, from the final lse */
        if (c->weights) {
#pragma omp for schedule(dynamic, 1)
            for (int64_t t = 0; t < tiles; t++)
                FN(weights_tile)(&p, &w, (t / nqt) / c->Hq, (t / nqt) % c->Hq, t % nqt);
        }
    }
    free(block);
    return REFATTN_OK;
}
