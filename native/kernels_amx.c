/* AMX tile kernels, bfloat16 inputs computed in float32: Q·Kᵀ and P·V on the AMX tile unit.

   What they do: the bfloat16 tile kernels of internal.h with the scores on AMX: a block of
   32 query rows × 32 keys is four 16 × 16 float32 accumulator tiles, and each step of 32 dims
   adds two query tiles (16 rows × 32 bfloat16, straight from the query rows) times two key
   tiles (16 pairs of dims × 16 keys × 2, as pack_keys lays them out) by tdpbf16ps, which
   multiplies bfloat16 pairs exactly and accumulates in float32, as vdpbf16ps does (and, like
   it, treats subnormal inputs as 0: elem_bf16.h says what that costs). The scale multiplies
   the float32 sums on their way out of the tile, as in every other scores kernel. P·V
   (amx_weigh) likewise: P, which softmax has rounded to bfloat16, as tiles of 16 rows × 32 keys,
   times the tile's values packed by pairs of keys (pack_values), into float32 accumulator
   tiles of the output rows. It takes tiles whose every key every row sees and whose values are
   all finite (pack_values says): elsewhere the driver calls weigh, which leaves hidden keys
   out and multiplies a subnormal weight by an infinite value as the spec does (tdpbf16ps
   would take the weight as 0, and 0·inf is NaN). The other kernels (pack_keys, with Dk padded
   to 32 with 0; scores_rows for decode; softmax; weigh) are those of the AVX-512 BF16 body
   (kernels_simd.h), compiled here once more.
   What they do not do: run without the tile state (refattn_cpu_has asks Linux for it before
   anything here runs), or keep the tiles between calls: each scores and weigh call configures
   them and releases them, so a thread holds no tile state outside it.

   Legend: m query rows against n keys; Dk head dim, Dkp = Dk rounded up to 32; a panel is 16
   keys; r row, j key, d dim. */
#include "internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) &&                         \
    !defined(REFATTN_NO_AVX512) && !defined(REFATTN_NO_AVX512_BF16) && !defined(REFATTN_NO_AMX)

#ifdef __clang__
#pragma clang attribute push(                                                                  \
    __attribute__((target("amx-tile,amx-bf16,avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,"  \
                          "avx2,fma"))),                                                       \
    apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,avx2,fma")
#endif

#include "vec_avx512.h"
#include "elem_bf16.h"
#define PACK_ROUND (VW * KSTEP) /* a key tile row: 16 keys × one pair of dims = 64 bytes */
#define SIMD_BODY_NO_TABLE
#include "kernels_simd.h"

#define TILE_ROWS 16 /* query rows of a query tile, keys of a key tile (a panel) */
#define TILE_DIMS 32 /* bfloat16 dims of a query tile row: 64 bytes */

/* The palette-1 configuration: tiles 0-3 accumulators (16 rows × 16 floats), 4-5 query tiles
   (16 rows × 32 bfloat16), 6-7 key tiles (16 pairs of dims × 16 keys × 2): all 16 × 64 bytes. */
typedef struct tile_config {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

static void configure_tiles(void) {
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = TILE_ROWS;
    }
    _tile_loadconfig(&cfg);
}

/* Query tile `tile` (4 or 5) from rows [0, rows) and dims [d0, d0 + 32) of q: straight from q
   when all 16 rows and 32 dims are there, else through `pad`, the rest 0 (nothing past the
   rows or dims is read). */
#define LOAD_QUERY_TILE(tile, q, ldq, rows, d0, Dk, pad)                                        \
    do {                                                                                        \
        if ((rows) == TILE_ROWS && (d0) + TILE_DIMS <= (Dk)) {                                  \
            _tile_loadd(tile, (q) + (d0), (ldq) * (int64_t)sizeof(elem));                       \
        } else {                                                                                \
            pad_query(pad, q, ldq, rows, d0, Dk);                                               \
            _tile_loadd(tile, pad, TILE_DIMS * sizeof(elem));                                   \
        }                                                                                       \
    } while (0)

static void pad_query(elem *pad, const elem *q, int64_t ldq, int64_t rows, int64_t d0,
                      int64_t Dk) {
    const int64_t dims = imin(TILE_DIMS, Dk - d0);
    memset(pad, 0, TILE_ROWS * TILE_DIMS * sizeof(elem));
    for (int64_t r = 0; r < rows; r++)
        memcpy(pad + r * TILE_DIMS, q + r * ldq + d0, (size_t)dims * sizeof(elem));
}

/* s[r·lds + j] = scale · acc[r][j] for the rows [0, rows) of an accumulator tile stored in
   `sums` (16 × 16 floats): the tile's 16 columns, whole (lds >= the keys rounded up to 16). */
static void scale_out(float *s, int64_t lds, const float *sums, int64_t rows, float scale) {
    const vec sc = vset1(scale);
    for (int64_t r = 0; r < rows; r++)
        vstore(s + r * lds, vmul(vload(sums + r * TILE_ROWS), sc));
}

/* s (m, n) = scale · q (m, Dk) · kp panels, in blocks of 32 rows × 32 keys (16 where fewer are
   left), summing tiles of 32 dims. */
static void amx_scores(float *s, int64_t lds, const elem *q, int64_t ldq, const elem *kp,
                       int64_t m, int64_t n, int64_t Dk, float scale) {
    const int64_t Dkp = packed_dk(Dk), panels = (n + TILE_ROWS - 1) / TILE_ROWS;
    const int64_t panel = Dkp * TILE_ROWS; /* elements of a packed panel */
    elem pad[TILE_ROWS * TILE_DIMS] __attribute__((aligned(64)));
    float sums[TILE_ROWS * TILE_ROWS] __attribute__((aligned(64)));
    configure_tiles();
    for (int64_t r0 = 0; r0 < m; r0 += 2 * TILE_ROWS) {
        const elem *q0 = q + r0 * ldq, *q1 = q0 + TILE_ROWS * ldq;
        const int64_t rows0 = imin(TILE_ROWS, m - r0), rows1 = imin(TILE_ROWS, m - r0 - rows0);
        for (int64_t p0 = 0; p0 < panels; p0 += 2) {
            const int two = p0 + 1 < panels;
            const elem *k0 = kp + p0 * panel;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int64_t d0 = 0; d0 < Dkp; d0 += TILE_DIMS) {
                /* the key tile of dims [d0, d0 + 32): 16 rows of pairs, 64 bytes each */
                const elem *k = k0 + d0 * TILE_ROWS;
                _tile_loadd(6, k, 64);
                if (two) _tile_loadd(7, k + panel, 64);
                LOAD_QUERY_TILE(4, q0, ldq, rows0, d0, Dk, pad);
                _tile_dpbf16ps(0, 4, 6);
                if (two) _tile_dpbf16ps(1, 4, 7);
                if (rows1 > 0) {
                    LOAD_QUERY_TILE(5, q1, ldq, rows1, d0, Dk, pad);
                    _tile_dpbf16ps(2, 5, 6);
                    if (two) _tile_dpbf16ps(3, 5, 7);
                }
            }
            float *out = s + r0 * lds + p0 * TILE_ROWS;
            const int64_t ld = TILE_ROWS * sizeof(float);
            _tile_stored(0, sums, ld);
            scale_out(out, lds, sums, rows0, scale);
            if (two) {
                _tile_stored(1, sums, ld);
                scale_out(out + TILE_ROWS, lds, sums, rows0, scale);
            }
            if (rows1 > 0) {
                _tile_stored(2, sums, ld);
                scale_out(out + TILE_ROWS * lds, lds, sums, rows1, scale);
                if (two) {
                    _tile_stored(3, sums, ld);
                    scale_out(out + TILE_ROWS * lds + TILE_ROWS, lds, sums, rows1, scale);
                }
            }
        }
    }
    _tile_release();
}

/* ---- P·V ---------------------------------------------------------------------------------- */

/* Packed values: column block cb (16 columns) of key pair t, (v[2t][c], v[2t + 1][c]) for its
   16 columns c, at vp[(cb·BK/2 + t)·32 + 2c]: the rows of a value tile (16 pairs of keys × 16
   columns × 2). Pairs past the keys, and columns past Dv, are 0. */
#define VALUE_BLOCK ((BK / 2) * 2 * TILE_ROWS) /* elements of a column block's pairs */

static int64_t values_elems(int64_t bk, int64_t Dv) {
    (void)bk; /* the table's own BK */
    return (Dv + TILE_ROWS - 1) / TILE_ROWS * VALUE_BLOCK;
}

static int pack_values(elem *vp, const elem *v, int64_t ldv, int64_t n, int64_t Dv) {
    const int64_t pairs = (n + 2 * TILE_ROWS - 1) / (2 * TILE_ROWS) * TILE_ROWS;
    const __m512i exponent = _mm512_set1_epi16(0x7F80); /* all ones: ±inf or NaN */
    const __m256i none = _mm256_setzero_si256();
    __mmask32 bad = 0;
    for (int64_t c0 = 0; c0 < Dv; c0 += TILE_ROWS) {
        const __mmask16 cols = (__mmask16)((1u << imin(TILE_ROWS, Dv - c0)) - 1);
        elem *block = vp + c0 / TILE_ROWS * VALUE_BLOCK;
        for (int64_t t = 0; t < pairs; t++) {
            const int64_t j = 2 * t;
            const __m256i a = j < n ? _mm256_maskz_loadu_epi16(cols, v + j * ldv + c0) : none;
            const __m256i b = j + 1 < n ? _mm256_maskz_loadu_epi16(cols, v + (j + 1) * ldv + c0)
                                        : none;
            const __m512i pair = _mm512_or_si512(_mm512_cvtepu16_epi32(a),
                                                 _mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
            bad |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(pair, exponent), exponent);
            _mm512_storeu_si512(block + t * 2 * TILE_ROWS, pair);
        }
    }
    return bad == 0;
}

/* Accumulator tile T (0-3) from rows [0, rows) and columns [0, cols) of o: straight from o
   when the tile is whole, else through acc (the rest 0); and back the same way. */
#define LOAD_ACC(T, o, ldo, rows, cols, acc)                                                    \
    do {                                                                                        \
        if ((rows) == TILE_ROWS && (cols) == TILE_ROWS) {                                       \
            _tile_loadd(T, o, (ldo) * (int64_t)sizeof(float));                                  \
        } else {                                                                                \
            memset(acc, 0, sizeof(float) * TILE_ROWS * TILE_ROWS);                             \
            for (int64_t r_ = 0; r_ < (rows); r_++)                                             \
                memcpy((acc) + r_ * TILE_ROWS, (o) + r_ * (ldo), sizeof(float) * (size_t)(cols)); \
            _tile_loadd(T, acc, TILE_ROWS * sizeof(float));                                     \
        }                                                                                       \
    } while (0)
#define STORE_ACC(T, o, ldo, rows, cols, acc)                                                   \
    do {                                                                                        \
        if ((rows) == TILE_ROWS && (cols) == TILE_ROWS) {                                       \
            _tile_stored(T, o, (ldo) * (int64_t)sizeof(float));                                 \
        } else {                                                                                \
            _tile_stored(T, acc, TILE_ROWS * sizeof(float));                                    \
            for (int64_t r_ = 0; r_ < (rows); r_++)                                             \
                memcpy((o) + r_ * (ldo), (acc) + r_ * TILE_ROWS, sizeof(float) * (size_t)(cols)); \
        }                                                                                       \
    } while (0)

/* o (m, Dv) = alpha ⊙ o + p (m, n) · the packed values: blocks of 32 rows × 32 columns in
   four accumulator tiles, each step of 32 keys two tiles of P (16 rows × 32 keys, rounded to
   bfloat16: p already holds bfloat16 values, so the conversion is exact) times two value
   tiles. Every key is visible (the driver passes a tile with hidden keys to weigh). */
static void amx_weigh(float *o, int64_t ldo, const float *p, int64_t ldp, const float *alpha,
                      const elem *vp, int64_t m, int64_t n, int64_t Dv) {
    const int64_t chunks = (n + 2 * TILE_ROWS - 1) / (2 * TILE_ROWS), keys = chunks * 32;
    const int64_t blocks = (Dv + TILE_ROWS - 1) / TILE_ROWS;
    elem pb[2 * TILE_ROWS * BK] __attribute__((aligned(64)));
    float acc[4][TILE_ROWS * TILE_ROWS] __attribute__((aligned(64)));
    for (int64_t r = 0; r < m; r++) {
        if (alpha[r] == 1.0f) continue;
        const vec a = vset1(alpha[r]);
        for (int64_t d = 0; d < Dv; d += VW) {
            const vmask k = vlanes(imin(VW, Dv - d));
            vstore_part(o + r * ldo + d, k, vmul(vload_part(k, o + r * ldo + d), a));
        }
    }
    configure_tiles();
    for (int64_t r0 = 0; r0 < m; r0 += 2 * TILE_ROWS) {
        const int64_t rows0 = imin(TILE_ROWS, m - r0), rows1 = imin(TILE_ROWS, m - r0 - rows0);
        for (int64_t r = 0; r < 2 * TILE_ROWS; r++) { /* P as bfloat16, 0 past n and m */
            elem *row = pb + r * BK;
            for (int64_t j = 0; j < keys; j += VW) {
                const int64_t count = r < rows0 + rows1 ? imin(VW, n - j) : 0;
                const vec x = count > 0 ? vload_part(vlanes(count), p + (r0 + r) * ldp + j) : vzero();
                _mm256_storeu_si256((__m256i *)(row + j), (__m256i)_mm512_cvtneps_pbh(x));
            }
        }
        float *o0 = o + r0 * ldo, *o1 = o0 + TILE_ROWS * ldo;
        for (int64_t cb = 0; cb < blocks; cb += 2) {
            const int two = cb + 1 < blocks;
            const int64_t c0 = cb * TILE_ROWS, cols0 = imin(TILE_ROWS, Dv - c0);
            const int64_t cols1 = two ? imin(TILE_ROWS, Dv - c0 - TILE_ROWS) : 0;
            const elem *v0 = vp + cb * VALUE_BLOCK, *v1 = v0 + VALUE_BLOCK;
            LOAD_ACC(0, o0 + c0, ldo, rows0, cols0, acc[0]);
            if (two) LOAD_ACC(1, o0 + c0 + TILE_ROWS, ldo, rows0, cols1, acc[1]);
            if (rows1 > 0) {
                LOAD_ACC(2, o1 + c0, ldo, rows1, cols0, acc[2]);
                if (two) LOAD_ACC(3, o1 + c0 + TILE_ROWS, ldo, rows1, cols1, acc[3]);
            }
            for (int64_t c = 0; c < chunks; c++) {
                const int64_t pstride = BK * sizeof(elem), at = c * 2 * TILE_ROWS * TILE_ROWS;
                _tile_loadd(4, pb + c * 32, pstride);
                _tile_loadd(6, v0 + at, 64);
                _tile_dpbf16ps(0, 4, 6);
                if (two) {
                    _tile_loadd(7, v1 + at, 64);
                    _tile_dpbf16ps(1, 4, 7);
                }
                if (rows1 > 0) {
                    _tile_loadd(5, pb + TILE_ROWS * BK + c * 32, pstride);
                    _tile_dpbf16ps(2, 5, 6);
                    if (two) _tile_dpbf16ps(3, 5, 7);
                }
            }
            STORE_ACC(0, o0 + c0, ldo, rows0, cols0, acc[0]);
            if (two) STORE_ACC(1, o0 + c0 + TILE_ROWS, ldo, rows0, cols1, acc[1]);
            if (rows1 > 0) {
                STORE_ACC(2, o1 + c0, ldo, rows1, cols0, acc[2]);
                if (two) STORE_ACC(3, o1 + c0 + TILE_ROWS, ldo, rows1, cols1, acc[3]);
            }
        }
    }
    _tile_release();
}

static const ELEM_OPS amx_ops = {
    .bq = BQ,
    .bk = BK,
    .kstep = PACK_ROUND,
    .pack_keys = pack_keys,
    .scores = amx_scores,
    .few_rows = FEW_ROWS,
    .scores_rows = scores_rows,
    .softmax = softmax,
    .weigh = weigh,
    .values_elems = values_elems,
    .pack_values = pack_values,
    .weigh_packed = amx_weigh,
};

#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

const refattn_ops_bf16 *const refattn_amx_bf16_ops = &amx_ops;

#else

const refattn_ops_bf16 *const refattn_amx_bf16_ops = 0;

#endif
