/* AVX2 + FMA tile kernels, float32: the fast path for x86-64 CPUs without AVX-512.

   What they do: the four tile kernels of internal.h with 8-float vectors and 16 registers.
     pack_keys  transposes keys into panels of 8 (kp[panel][d][8]), so that
     scores     computes a block of 6 query rows × 16 keys held in 12 accumulators;
     softmax    does one row: vector max, vectorised exp, vector sum;
     weigh      accumulates p·V into a block of 6 rows × 16 value columns.
   What they do not do: decide anything about masks or tiles (the driver does), or run on a
   CPU without AVX2 and FMA (refattn_cpu_has is asked first). Compiled with a target pragma.

   Legend: m query rows against n keys; Dk, Dv head dims; r row, j key, d dim. */
#include "internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(REFATTN_NO_AVX2)

#include <immintrin.h>
#include <math.h>

#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#define UNROLL _Pragma("unroll")
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define UNROLL _Pragma("GCC unroll 16")
#endif

#define INLINE static inline __attribute__((always_inline))

#define MR 6 /* query rows per register block */
#define NP 2 /* panels of 8 keys per block in scores; vectors of 8 columns in weigh */

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

/* A lane mask with the first `count` (0..8) lanes on, for maskload and maskstore. */
INLINE __m256i first_lanes(int64_t count) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* exp(x) as in the AVX-512 kernels (Cephes' expf polynomial), but 2^n built in the exponent
   field, in two halves 2^(n/2)·2^(n - n/2) so that n from -150 to 128 stays representable:
   gradual underflow and overflow to inf come out right. x below -104 gives exactly 0. */
INLINE __m256 exp256(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-104.0f), hi = _mm256_set1_ps(88.8f);
    const __m256 below = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(hi, _mm256_max_ps(lo, x)); /* operands in this order keep NaN */
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
#define C(x) _mm256_set1_ps(x)
    const __m256 r2 = _mm256_mul_ps(r, r), r4 = _mm256_mul_ps(r2, r2); /* Estrin's scheme */
    const __m256 c12 = _mm256_fmadd_ps(C(EXP_C2), r, C(EXP_C1));
    const __m256 c34 = _mm256_fmadd_ps(C(EXP_C4), r, C(EXP_C3));
    const __m256 c56 = _mm256_fmadd_ps(C(EXP_C6), r, C(EXP_C5));
#undef C
    __m256 p = _mm256_fmadd_ps(r4, c56, _mm256_fmadd_ps(r2, c34, c12));
    p = _mm256_fmadd_ps(p, r2, r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    const __m256i whole = _mm256_cvtps_epi32(n);
    const __m256i half = _mm256_srai_epi32(whole, 1), rest = _mm256_sub_epi32(whole, half);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 two_half = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
    const __m256 two_rest = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(rest, bias), 23));
    const __m256 e = _mm256_mul_ps(_mm256_mul_ps(p, two_half), two_rest);
    return _mm256_blendv_ps(e, _mm256_setzero_ps(), below);
}

/* Rows r[0..7] become columns: afterwards r[c] holds element c of each of the 8 rows. */
INLINE void transpose8(__m256 r[8]) {
    __m256 t[8], s[8];
    UNROLL for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* s[4h + c] holds, in each 128-bit lane L, column 4L + c of rows 4h .. 4h + 3 */
    UNROLL for (int h = 0; h < 2; h++) {
        s[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
        s[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
        s[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
        s[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
    }
    UNROLL for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x20);
        r[4 + c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x31);
    }
}

/* kp[panel][d][8]: key 8·panel + t at kp[panel·Dk·8 + d·8 + t]; keys past n are 0. */
static void pack_keys(float *kp, const float *k, int64_t ldk, int64_t n, int64_t Dk) {
    for (int64_t j0 = 0; j0 < n; j0 += 8) {
        const int64_t count = imin(8, n - j0);
        float *panel = kp + (j0 / 8) * Dk * 8;
        for (int64_t d0 = 0; d0 < Dk; d0 += 8) {
            const int64_t dims = imin(8, Dk - d0);
            const __m256i dmask = first_lanes(dims);
            __m256 rows[8];
            UNROLL for (int t = 0; t < 8; t++)
                rows[t] = t < count ? _mm256_maskload_ps(k + (j0 + t) * ldk + d0, dmask)
                                    : _mm256_setzero_ps();
            transpose8(rows);
            /* t runs over constants: a variable index would keep rows[] in memory */
            UNROLL for (int t = 0; t < 8; t++)
                if (t < dims) _mm256_storeu_ps(panel + (d0 + t) * 8, rows[t]);
        }
    }
}

/* s (ROWS, 8·PANELS) = scale · q (ROWS, Dk) · kp panels */
INLINE void scores_block(float *s, int64_t lds, const float *q, int64_t ldq, const float *kp,
                         int64_t Dk, float scale, const int ROWS, const int PANELS) {
    __m256 acc[MR][NP];
    UNROLL for (int r = 0; r < ROWS; r++) UNROLL for (int v = 0; v < PANELS; v++)
        acc[r][v] = _mm256_setzero_ps();
    for (int64_t d = 0; d < Dk; d++) {
        __m256 key[NP];
        UNROLL for (int v = 0; v < PANELS; v++) key[v] = _mm256_loadu_ps(kp + (v * Dk + d) * 8);
        UNROLL for (int r = 0; r < ROWS; r++) {
            const __m256 qd = _mm256_broadcast_ss(q + r * ldq + d);
            UNROLL for (int v = 0; v < PANELS; v++) acc[r][v] = _mm256_fmadd_ps(qd, key[v], acc[r][v]);
        }
    }
    const __m256 sc = _mm256_set1_ps(scale);
    UNROLL for (int r = 0; r < ROWS; r++) UNROLL for (int v = 0; v < PANELS; v++)
        _mm256_storeu_ps(s + r * lds + v * 8, _mm256_mul_ps(acc[r][v], sc));
}

typedef void (*scores_fn)(float *, int64_t, const float *, int64_t, const float *, int64_t, float);
#define SCORES(R, P)                                                                            \
    static void scores_##R##x##P(float *s, int64_t lds, const float *q, int64_t ldq,            \
                                 const float *kp, int64_t Dk, float scale) {                    \
        scores_block(s, lds, q, ldq, kp, Dk, scale, R, P);                                      \
    }
#define SCORES_ROW(R) SCORES(R, 1) SCORES(R, 2)
SCORES_ROW(1) SCORES_ROW(2) SCORES_ROW(3) SCORES_ROW(4) SCORES_ROW(5) SCORES_ROW(6)
#define SCORES_ENTRY(R) {scores_##R##x1, scores_##R##x2}
static const scores_fn scores_table[MR][NP] = {SCORES_ENTRY(1), SCORES_ENTRY(2), SCORES_ENTRY(3),
                                               SCORES_ENTRY(4), SCORES_ENTRY(5), SCORES_ENTRY(6)};

static void scores(float *s, int64_t lds, const float *q, int64_t ldq, const float *kp, int64_t m,
                   int64_t n, int64_t Dk, float scale) {
    const int64_t panels = (n + 7) / 8;
    for (int64_t p0 = 0; p0 < panels; p0 += NP) {
        const int64_t np = imin(NP, panels - p0);
        for (int64_t r0 = 0; r0 < m; r0 += MR) {
            const int64_t mr = imin(MR, m - r0);
            scores_table[mr - 1][np - 1](s + r0 * lds + p0 * 8, lds, q + r0 * ldq, ldq,
                                         kp + p0 * Dk * 8, Dk, scale);
        }
    }
}

INLINE float reduce_max(__m256 x) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

INLINE float reduce_add(__m256 x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* s (m, n) = scale · q (m, Dk) · kᵀ straight from the key rows, for decode-sized tiles: per
   row and 8 keys, one accumulator per key along d, then a tree of horizontal adds turns the
   8 partial vectors into 8 dot products. Packs nothing. */
static void scores_rows(float *s, int64_t lds, const float *q, int64_t ldq, const float *k,
                        int64_t ldk, int64_t m, int64_t n, int64_t Dk, float scale) {
    const __m256 sc = _mm256_set1_ps(scale);
    for (int64_t r = 0; r < m; r++) {
        const float *qr = q + r * ldq;
        for (int64_t j0 = 0; j0 < n; j0 += 8) {
            const int64_t count = imin(8, n - j0);
            __m256 acc[8];
            UNROLL for (int t = 0; t < 8; t++) acc[t] = _mm256_setzero_ps();
            /* key by key, each row read front to back: the order memory streams best in */
            for (int t = 0; t < count; t++) {
                const float *kr = k + (j0 + t) * ldk;
                int64_t d0 = 0;
                for (; d0 + 8 <= Dk; d0 += 8) {
                    const __m256 qd = _mm256_loadu_ps(qr + d0);
                    acc[t] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kr + d0), acc[t]);
                }
                if (d0 < Dk) {
                    const __m256i dmask = first_lanes(Dk - d0);
                    acc[t] = _mm256_fmadd_ps(_mm256_maskload_ps(qr + d0, dmask),
                                             _mm256_maskload_ps(kr + d0, dmask), acc[t]);
                }
            }
            /* h[i]: lane L holds pair sums of keys 2i, 2i+1 within 128-bit lane L */
            const __m256 h0 = _mm256_hadd_ps(acc[0], acc[1]), h1 = _mm256_hadd_ps(acc[2], acc[3]);
            const __m256 h2 = _mm256_hadd_ps(acc[4], acc[5]), h3 = _mm256_hadd_ps(acc[6], acc[7]);
            const __m256 g0 = _mm256_hadd_ps(h0, h1), g1 = _mm256_hadd_ps(h2, h3);
            const __m256 dot = _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20),
                                             _mm256_permute2f128_ps(g0, g1, 0x31));
            _mm256_storeu_ps(s + r * lds + j0, _mm256_mul_ps(dot, sc));
        }
    }
}

static void softmax(float *s, int64_t n, float *mx, float *sum, float *alpha) {
    /* pass 1: the tile's max, and the row's new running max */
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 top = ninf, top2 = ninf; /* two chains of max, so they overlap */
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) { /* whole vectors unmasked: vmaskmov is slow on AMD */
        top = _mm256_max_ps(top, _mm256_loadu_ps(s + j));
        top2 = _mm256_max_ps(top2, _mm256_loadu_ps(s + j + 8));
    }
    for (; j < n; j += 8) {
        const __m256i k = first_lanes(n - j);
        const __m256 x = _mm256_blendv_ps(ninf, _mm256_maskload_ps(s + j, k), _mm256_castsi256_ps(k));
        top = _mm256_max_ps(top, x);
    }
    const float tile = reduce_max(_mm256_max_ps(top, top2)), old = *mx;
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
    const __m256 shift = _mm256_set1_ps(now);
    __m256 total = _mm256_setzero_ps();
    j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 p = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), shift));
        _mm256_storeu_ps(s + j, p);
        total = _mm256_add_ps(total, p);
    }
    if (j < n) {
        const __m256i k = first_lanes(n - j);
        const __m256 p = exp256(_mm256_sub_ps(_mm256_maskload_ps(s + j, k), shift));
        _mm256_maskstore_ps(s + j, k, p);
        total = _mm256_add_ps(total, _mm256_and_ps(p, _mm256_castsi256_ps(k)));
    }
    /* old = -inf: 0, nothing to keep */
    const float a = now == old ? 1.0f : _mm256_cvtss_f32(exp256(_mm256_set1_ps(old - now)));
    *sum = *sum * a + reduce_add(total);
    *mx = now;
    *alpha = a;
}

/* o (ROWS, 8·VECS) = alpha ⊙ o + p (ROWS, n) · v (n, 8·VECS); the last vector holds the
   lanes of `tail`. CAREFUL: keys with vis 0 are left out (the old accumulator is kept). */
INLINE void weigh_block(float *o, int64_t ldo, const float *p, int64_t ldp, const uint8_t *vis,
                        int64_t ldvis, const float *alpha, const float *v, int64_t ldv, int64_t n,
                        __m256i tail, const int ROWS, const int VECS, const int CAREFUL) {
    __m256 acc[MR][NP];
    __m256i cols[NP];
    UNROLL for (int c = 0; c < VECS; c++) cols[c] = c == VECS - 1 ? tail : _mm256_set1_epi32(-1);
    UNROLL for (int r = 0; r < ROWS; r++) {
        UNROLL for (int c = 0; c < VECS; c++) {
            acc[r][c] = _mm256_maskload_ps(o + r * ldo + c * 8, cols[c]);
            if (alpha[r] != 1.0f) acc[r][c] = _mm256_mul_ps(acc[r][c], _mm256_set1_ps(alpha[r]));
        }
    }
    for (int64_t j = 0; j < n; j++) {
        __m256 val[NP];
        UNROLL for (int c = 0; c < VECS; c++) val[c] = _mm256_maskload_ps(v + j * ldv + c * 8, cols[c]);
        UNROLL for (int r = 0; r < ROWS; r++) {
            const __m256 pj = _mm256_broadcast_ss(p + r * ldp + j);
            if (CAREFUL) {
                const __m256 seen = _mm256_castsi256_ps(_mm256_set1_epi32(-(int)vis[r * ldvis + j]));
                UNROLL for (int c = 0; c < VECS; c++)
                    acc[r][c] = _mm256_blendv_ps(acc[r][c], _mm256_fmadd_ps(pj, val[c], acc[r][c]), seen);
            } else {
                UNROLL for (int c = 0; c < VECS; c++) acc[r][c] = _mm256_fmadd_ps(pj, val[c], acc[r][c]);
            }
        }
    }
    UNROLL for (int r = 0; r < ROWS; r++) UNROLL for (int c = 0; c < VECS; c++)
        _mm256_maskstore_ps(o + r * ldo + c * 8, cols[c], acc[r][c]);
}

typedef void (*weigh_fn)(float *, int64_t, const float *, int64_t, const uint8_t *, int64_t,
                         const float *, const float *, int64_t, int64_t, __m256i);
#define WEIGH(R, V, C)                                                                          \
    static void weigh_##R##x##V##_##C(float *o, int64_t ldo, const float *p, int64_t ldp,       \
                                      const uint8_t *vis, int64_t ldvis, const float *alpha,    \
                                      const float *v, int64_t ldv, int64_t n, __m256i tail) {   \
        weigh_block(o, ldo, p, ldp, vis, ldvis, alpha, v, ldv, n, tail, R, V, C);               \
    }
#define WEIGH_ROW(R) WEIGH(R, 1, 0) WEIGH(R, 2, 0) WEIGH(R, 1, 1) WEIGH(R, 2, 1)
WEIGH_ROW(1) WEIGH_ROW(2) WEIGH_ROW(3) WEIGH_ROW(4) WEIGH_ROW(5) WEIGH_ROW(6)
#define WEIGH_ENTRY(R, C) {weigh_##R##x1_##C, weigh_##R##x2_##C}
static const weigh_fn weigh_table[2][MR][NP] = {
    {WEIGH_ENTRY(1, 0), WEIGH_ENTRY(2, 0), WEIGH_ENTRY(3, 0), WEIGH_ENTRY(4, 0), WEIGH_ENTRY(5, 0),
     WEIGH_ENTRY(6, 0)},
    {WEIGH_ENTRY(1, 1), WEIGH_ENTRY(2, 1), WEIGH_ENTRY(3, 1), WEIGH_ENTRY(4, 1), WEIGH_ENTRY(5, 1),
     WEIGH_ENTRY(6, 1)},
};

static void weigh(float *o, int64_t ldo, const float *p, int64_t ldp, const uint8_t *vis,
                  int64_t ldvis, const float *alpha, const float *v, int64_t ldv, int64_t m,
                  int64_t n, int64_t Dv) {
    const int careful = vis != NULL;
    for (int64_t r0 = 0; r0 < m; r0 += MR) {
        const int64_t mr = imin(MR, m - r0);
        for (int64_t c0 = 0; c0 < Dv; c0 += NP * 8) {
            const int64_t width = imin(NP * 8, Dv - c0), vecs = (width + 7) / 8;
            const __m256i tail = first_lanes(width - (vecs - 1) * 8);
            weigh_table[careful][mr - 1][vecs - 1](
                o + r0 * ldo + c0, ldo, p + r0 * ldp, ldp, careful ? vis + r0 * ldvis : NULL,
                ldvis, alpha + r0, v + c0, ldv, n, tail);
        }
    }
}

static const refattn_ops_f32 ops = {
    .bq = 96,
    .bk = 128,
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

const refattn_ops_f32 *const refattn_avx2_ops = &ops;

#else

const refattn_ops_f32 *const refattn_avx2_ops = 0;

#endif
