/* AVX-512 tile kernels, float32: the fast path of the native core.

   What they do: the four tile kernels of internal.h with 16-float vectors.
     pack_keys  transposes keys into panels of 16 (kp[panel][d][16]), so that
     scores     computes a block of 6 query rows × 64 keys held in 24 accumulators,
                one broadcast query element times 4 key vectors per step of d;
     softmax    does one row: vector max, vectorised exp, vector sum;
     weigh      accumulates p·V into a block of 6 rows × 64 value columns (1–2 rows × 128).
     scores_rows  scores for 1–2 query rows straight from unpacked key rows (decode).
   What they do not do: decide anything about masks or tiles (the driver does), or run on a
   CPU without AVX-512 (refattn_cpu_has is asked first). This file is compiled with a target
   pragma rather than -mavx512f, so the rest of the build stays portable.

   Legend: m query rows against n keys; Dk, Dv head dims; r row, j key, d dim. */
#include "internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(REFATTN_NO_AVX512)

#include <immintrin.h>
#include <math.h>

#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma"))), \
                             apply_to = function)
#define UNROLL _Pragma("unroll")
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#define UNROLL _Pragma("GCC unroll 16")
#endif

#define INLINE static inline __attribute__((always_inline))

#define MR 6 /* query rows per register block */
#define NP 4 /* panels of 16 keys per block in scores; vectors of 16 columns in weigh */
#define WIDE 8 /* vectors of 16 columns in weigh for blocks of one or two rows */

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

/* exp(x) = 2^n · e^r with n = round(x·log2 e) and r = x - n·ln 2 (ln 2 in two parts, so r is
   exact to a few ulps), e^r by Cephes' degree-6 polynomial for expf, 2^n by scalef, which
   rounds correctly through gradual underflow: every x below -104 gives exactly 0. Clamping x
   at -150 is all that exp(-inf) = 0 needs (it is the weight of a hidden key; unclamped, r
   would be -inf + inf). For x <= 0 (scores minus their max), or NaN, which stays NaN. */
INLINE __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-150.0f), x); /* operands in this order keep NaN */
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
    /* Cephes' polynomial by Estrin's scheme rather than Horner's: the same terms in a shorter
       chain of dependent steps, so more vectors are in flight at once */
#define C(x) _mm512_set1_ps(x)
    const __m512 r2 = _mm512_mul_ps(r, r), r4 = _mm512_mul_ps(r2, r2);
    const __m512 c12 = _mm512_fmadd_ps(C(EXP_C2), r, C(EXP_C1));
    const __m512 c34 = _mm512_fmadd_ps(C(EXP_C4), r, C(EXP_C3));
    const __m512 c56 = _mm512_fmadd_ps(C(EXP_C6), r, C(EXP_C5));
#undef C
    __m512 p = _mm512_fmadd_ps(r4, c56, _mm512_fmadd_ps(r2, c34, c12));
    p = _mm512_fmadd_ps(p, r2, r);
    p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* Rows r[0..15] become columns: afterwards r[c] holds element c of each of the 16 rows. */
INLINE void transpose16(__m512 r[16]) {
    __m512 a[16], b[16];
    UNROLL for (int i = 0; i < 8; i++) {
        a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* b[4i + c] holds, in each 128-bit lane L, column 4L + c of rows 4i .. 4i + 3 */
    UNROLL for (int i = 0; i < 4; i++) {
        const __m512d x0 = _mm512_castps_pd(a[4 * i]), x1 = _mm512_castps_pd(a[4 * i + 1]);
        const __m512d x2 = _mm512_castps_pd(a[4 * i + 2]), x3 = _mm512_castps_pd(a[4 * i + 3]);
        b[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(x0, x2));
        b[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x0, x2));
        b[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(x1, x3));
        b[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(x1, x3));
    }
    /* gather lane L of b[c], b[4 + c], b[8 + c], b[12 + c] into column 4L + c */
    UNROLL for (int c = 0; c < 4; c++) {
        const __m512 e0 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0x88);
        const __m512 e1 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0xDD);
        const __m512 f0 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0x88);
        const __m512 f1 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0xDD);
        r[c] = _mm512_shuffle_f32x4(e0, f0, 0x88);
        r[4 + c] = _mm512_shuffle_f32x4(e1, f1, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(e0, f0, 0xDD);
        r[12 + c] = _mm512_shuffle_f32x4(e1, f1, 0xDD);
    }
}

/* kp[panel][d][16]: key 16·panel + t at kp[panel·Dk·16 + d·16 + t]; keys past n are 0. */
static void pack_keys(float *kp, const float *k, int64_t ldk, int64_t n, int64_t Dk) {
    for (int64_t j0 = 0; j0 < n; j0 += 16) {
        const int64_t count = imin(16, n - j0);
        float *panel = kp + (j0 / 16) * Dk * 16;
        for (int64_t d0 = 0; d0 < Dk; d0 += 16) {
            const int64_t dims = imin(16, Dk - d0);
            const __mmask16 dmask = (__mmask16)((1u << dims) - 1);
            __m512 rows[16];
            UNROLL for (int t = 0; t < 16; t++)
                rows[t] = t < count ? _mm512_maskz_loadu_ps(dmask, k + (j0 + t) * ldk + d0)
                                    : _mm512_setzero_ps();
            transpose16(rows);
            /* t runs over constants: a variable index would keep rows[] in memory */
            UNROLL for (int t = 0; t < 16; t++)
                if (t < dims) _mm512_storeu_ps(panel + (d0 + t) * 16, rows[t]);
        }
    }
}

/* s (ROWS, 16·PANELS) = scale · q (ROWS, Dk) · kp panels */
INLINE void scores_block(float *s, int64_t lds, const float *q, int64_t ldq, const float *kp,
                         int64_t Dk, float scale, const int ROWS, const int PANELS) {
    __m512 acc[MR][NP];
    UNROLL for (int r = 0; r < ROWS; r++) UNROLL for (int v = 0; v < PANELS; v++)
        acc[r][v] = _mm512_setzero_ps();
    for (int64_t d = 0; d < Dk; d++) {
        __m512 key[NP];
        UNROLL for (int v = 0; v < PANELS; v++) key[v] = _mm512_loadu_ps(kp + (v * Dk + d) * 16);
        UNROLL for (int r = 0; r < ROWS; r++) {
            const __m512 qd = _mm512_set1_ps(q[r * ldq + d]);
            UNROLL for (int v = 0; v < PANELS; v++) acc[r][v] = _mm512_fmadd_ps(qd, key[v], acc[r][v]);
        }
    }
    const __m512 sc = _mm512_set1_ps(scale);
    UNROLL for (int r = 0; r < ROWS; r++) UNROLL for (int v = 0; v < PANELS; v++)
        _mm512_storeu_ps(s + r * lds + v * 16, _mm512_mul_ps(acc[r][v], sc));
}

typedef void (*scores_fn)(float *, int64_t, const float *, int64_t, const float *, int64_t, float);
#define SCORES(R, P)                                                                            \
    static void scores_##R##x##P(float *s, int64_t lds, const float *q, int64_t ldq,            \
                                 const float *kp, int64_t Dk, float scale) {                    \
        scores_block(s, lds, q, ldq, kp, Dk, scale, R, P);                                      \
    }
#define SCORES_ROW(R) SCORES(R, 1) SCORES(R, 2) SCORES(R, 3) SCORES(R, 4)
SCORES_ROW(1) SCORES_ROW(2) SCORES_ROW(3) SCORES_ROW(4) SCORES_ROW(5) SCORES_ROW(6)
#define SCORES_ENTRY(R) {scores_##R##x1, scores_##R##x2, scores_##R##x3, scores_##R##x4}
static const scores_fn scores_table[MR][NP] = {SCORES_ENTRY(1), SCORES_ENTRY(2), SCORES_ENTRY(3),
                                               SCORES_ENTRY(4), SCORES_ENTRY(5), SCORES_ENTRY(6)};

static void scores(float *s, int64_t lds, const float *q, int64_t ldq, const float *kp, int64_t m,
                   int64_t n, int64_t Dk, float scale) {
    const int64_t panels = (n + 15) / 16;
    for (int64_t p0 = 0; p0 < panels; p0 += NP) {
        const int64_t np = imin(NP, panels - p0);
        for (int64_t r0 = 0; r0 < m; r0 += MR) {
            const int64_t mr = imin(MR, m - r0);
            scores_table[mr - 1][np - 1](s + r0 * lds + p0 * 16, lds, q + r0 * ldq, ldq,
                                         kp + p0 * Dk * 16, Dk, scale);
        }
    }
}

/* s (m, n) = scale · q (m, Dk) · kᵀ straight from the key rows, for decode-sized tiles: per
   row and 16 keys, one accumulator per key along d, then one transpose turns the 16 partial
   vectors into 16 dot products. Reads each key row once per query row and packs nothing. */
static void scores_rows(float *s, int64_t lds, const float *q, int64_t ldq, const float *k,
                        int64_t ldk, int64_t m, int64_t n, int64_t Dk, float scale) {
    const __m512 sc = _mm512_set1_ps(scale);
    for (int64_t r = 0; r < m; r++) {
        const float *qr = q + r * ldq;
        for (int64_t j0 = 0; j0 < n; j0 += 16) {
            const int64_t count = imin(16, n - j0);
            __m512 acc[16];
            UNROLL for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();
            /* key by key, each row read front to back: the order memory streams best in */
            UNROLL for (int t = 0; t < 16; t++) {
                if (t >= count) break;
                const float *kr = k + (j0 + t) * ldk;
                for (int64_t d0 = 0; d0 < Dk; d0 += 16) {
                    const __mmask16 dmask = (__mmask16)((1u << imin(16, Dk - d0)) - 1);
                    acc[t] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(dmask, qr + d0),
                                             _mm512_maskz_loadu_ps(dmask, kr + d0), acc[t]);
                }
            }
            transpose16(acc); /* acc[c] holds lane c of each key's partial sums */
            __m512 dot = acc[0];
            UNROLL for (int c = 1; c < 16; c++) dot = _mm512_add_ps(dot, acc[c]);
            _mm512_storeu_ps(s + r * lds + j0, _mm512_mul_ps(dot, sc));
        }
    }
}

static void softmax(float *s, int64_t n, float *mx, float *sum, float *alpha) {
    /* pass 1: the tile's max, and the row's new running max */
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 top = ninf, top2 = ninf; /* two chains of max, so they overlap */
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        top = _mm512_max_ps(top, _mm512_loadu_ps(s + j));
        top2 = _mm512_max_ps(top2, _mm512_loadu_ps(s + j + 16));
    }
    for (; j < n; j += 16) {
        const __mmask16 k = (__mmask16)(n - j >= 16 ? 0xFFFF : (1u << (n - j)) - 1);
        top = _mm512_max_ps(top, _mm512_mask_loadu_ps(ninf, k, s + j));
    }
    const float tile = _mm512_reduce_max_ps(_mm512_max_ps(top, top2)), old = *mx;
    const float now = tile > old ? tile : old;
    if (now == -INFINITY) {
        /* Nothing visible so far: shift by 0, so hidden keys weigh exp(-inf) = 0, not NaN;
           a NaN score still makes the row NaN. */
        float total = 0;
        for (int64_t j = 0; j < n; j++) {
            s[j] = isnan(s[j]) ? s[j] : 0.0f;
            total += s[j];
        }
        *sum += total;
        *alpha = 1;
        return;
    }
    /* pass 2: p = exp(s - max) and their sum */
    const __m512 shift = _mm512_set1_ps(now);
    __m512 total = _mm512_setzero_ps();
    j = 0;
    for (; j + 16 <= n; j += 16) { /* whole vectors unmasked: masked stores are slow on Zen 4 */
        const __m512 p = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), shift));
        _mm512_storeu_ps(s + j, p);
        total = _mm512_add_ps(total, p);
    }
    if (j < n) {
        const __mmask16 k = (__mmask16)((1u << (n - j)) - 1);
        const __m512 p = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), shift));
        _mm512_mask_storeu_ps(s + j, k, p);
        total = _mm512_mask_add_ps(total, k, total, p);
    }
    /* old = -inf: 0, nothing to keep */
    const float a = now == old ? 1.0f : _mm512_cvtss_f32(exp512(_mm512_set1_ps(old - now)));
    *sum = *sum * a + _mm512_reduce_add_ps(total);
    *mx = now;
    *alpha = a;
}

/* o (ROWS, 16·VECS) = alpha ⊙ o + p (ROWS, n) · v (n, 16·VECS); the last vector holds `tail`
   columns. CAREFUL: keys with vis 0 are left out through a zero write mask. */
INLINE void weigh_block(float *o, int64_t ldo, const float *p, int64_t ldp, const uint8_t *vis,
                        int64_t ldvis, const float *alpha, const float *v, int64_t ldv, int64_t n,
                        __mmask16 tail, const int ROWS, const int VECS, const int CAREFUL) {
    __m512 acc[MR][WIDE];
    __mmask16 cols[WIDE];
    UNROLL for (int c = 0; c < VECS; c++) cols[c] = c == VECS - 1 ? tail : (__mmask16)0xFFFF;
    UNROLL for (int r = 0; r < ROWS; r++) {
        UNROLL for (int c = 0; c < VECS; c++) {
            acc[r][c] = _mm512_maskz_loadu_ps(cols[c], o + r * ldo + c * 16);
            if (alpha[r] != 1.0f) acc[r][c] = _mm512_mul_ps(acc[r][c], _mm512_set1_ps(alpha[r]));
        }
    }
    for (int64_t j = 0; j < n; j++) {
        __m512 val[WIDE];
        UNROLL for (int c = 0; c < VECS; c++) val[c] = _mm512_maskz_loadu_ps(cols[c], v + j * ldv + c * 16);
        UNROLL for (int r = 0; r < ROWS; r++) {
            const __m512 pj = _mm512_set1_ps(p[r * ldp + j]);
            if (CAREFUL) {
                const __mmask16 seen = (__mmask16)(-(int)vis[r * ldvis + j]);
                UNROLL for (int c = 0; c < VECS; c++)
                    acc[r][c] = _mm512_mask3_fmadd_ps(pj, val[c], acc[r][c], seen);
            } else {
                UNROLL for (int c = 0; c < VECS; c++) acc[r][c] = _mm512_fmadd_ps(pj, val[c], acc[r][c]);
            }
        }
    }
    UNROLL for (int r = 0; r < ROWS; r++) UNROLL for (int c = 0; c < VECS; c++)
        _mm512_mask_storeu_ps(o + r * ldo + c * 16, cols[c], acc[r][c]);
}

typedef void (*weigh_fn)(float *, int64_t, const float *, int64_t, const uint8_t *, int64_t,
                         const float *, const float *, int64_t, int64_t, __mmask16);
#define WEIGH(R, V, C)                                                                          \
    static void weigh_##R##x##V##_##C(float *o, int64_t ldo, const float *p, int64_t ldp,       \
                                      const uint8_t *vis, int64_t ldvis, const float *alpha,    \
                                      const float *v, int64_t ldv, int64_t n, __mmask16 tail) { \
        weigh_block(o, ldo, p, ldp, vis, ldvis, alpha, v, ldv, n, tail, R, V, C);               \
    }
#define WEIGH_ROW(R)                                                                            \
    WEIGH(R, 1, 0) WEIGH(R, 2, 0) WEIGH(R, 3, 0) WEIGH(R, 4, 0)                                 \
    WEIGH(R, 1, 1) WEIGH(R, 2, 1) WEIGH(R, 3, 1) WEIGH(R, 4, 1)
#define WEIGH_WIDE(R)                                                                           \
    WEIGH(R, 5, 0) WEIGH(R, 6, 0) WEIGH(R, 7, 0) WEIGH(R, 8, 0)                                 \
    WEIGH(R, 5, 1) WEIGH(R, 6, 1) WEIGH(R, 7, 1) WEIGH(R, 8, 1)
WEIGH_ROW(1) WEIGH_ROW(2) WEIGH_ROW(3) WEIGH_ROW(4) WEIGH_ROW(5) WEIGH_ROW(6)
WEIGH_WIDE(1) WEIGH_WIDE(2)
#define WEIGH_ENTRY(R, C) {weigh_##R##x1_##C, weigh_##R##x2_##C, weigh_##R##x3_##C, weigh_##R##x4_##C}
#define WEIGH_ENTRY_WIDE(R, C)                                                                  \
    {weigh_##R##x1_##C, weigh_##R##x2_##C, weigh_##R##x3_##C, weigh_##R##x4_##C,                \
     weigh_##R##x5_##C, weigh_##R##x6_##C, weigh_##R##x7_##C, weigh_##R##x8_##C}
static const weigh_fn weigh_table[2][MR][WIDE] = {
    {WEIGH_ENTRY_WIDE(1, 0), WEIGH_ENTRY_WIDE(2, 0), WEIGH_ENTRY(3, 0), WEIGH_ENTRY(4, 0),
     WEIGH_ENTRY(5, 0), WEIGH_ENTRY(6, 0)},
    {WEIGH_ENTRY_WIDE(1, 1), WEIGH_ENTRY_WIDE(2, 1), WEIGH_ENTRY(3, 1), WEIGH_ENTRY(4, 1),
     WEIGH_ENTRY(5, 1), WEIGH_ENTRY(6, 1)},
};

static void weigh(float *o, int64_t ldo, const float *p, int64_t ldp, const uint8_t *vis,
                  int64_t ldvis, const float *alpha, const float *v, int64_t ldv, int64_t m,
                  int64_t n, int64_t Dv) {
    const int careful = vis != NULL;
    for (int64_t r0 = 0; r0 < m; r0 += MR) {
        const int64_t mr = imin(MR, m - r0);
        /* one or two rows (decode) take up to WIDE vectors: one pass over the value rows */
        const int64_t block = (mr <= 2 ? WIDE : NP) * 16;
        for (int64_t c0 = 0; c0 < Dv; c0 += block) {
            const int64_t width = imin(block, Dv - c0), vecs = (width + 15) / 16;
            const int64_t last = width - (vecs - 1) * 16; /* columns in the last vector, 1..16 */
            const __mmask16 tail = (__mmask16)((1u << last) - 1);
            weigh_table[careful][mr - 1][vecs - 1](
                o + r0 * ldo + c0, ldo, p + r0 * ldp, ldp, careful ? vis + r0 * ldvis : NULL,
                ldvis, alpha + r0, v + c0, ldv, n, tail);
        }
    }
}

static const refattn_ops_f32 ops = {
    .bq = 96,
    .bk = 256,
    .pack_keys = pack_keys,
    .scores = scores,
    .few_rows = 2,
    .scores_rows = scores_rows,
    .softmax = softmax,
    .weigh = weigh,
};

#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

const refattn_ops_f32 *const refattn_avx512_ops = &ops;

#else

const refattn_ops_f32 *const refattn_avx512_ops = 0;

#endif
