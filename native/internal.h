/* What the pieces of the native core share, and nothing a caller needs.

   The driver (flash.h, instantiated for float32, float64, and bfloat16 and float16 inputs
   computed in float32) walks tiles of queries and keys and keeps the online softmax; the tile
   kernels below
   do the arithmetic of one tile. Each instruction set provides one table of tile kernels per
   input type; the scalar tables are written in plain C beside the driver, the SIMD tables come
   from one body (kernels_simd.h) over a header of vector operations per instruction set
   (vec_avx512.h, vec_avx2.h) and one of element operations per input type (elem_f32.h,
   elem_bf16.h, elem_f16.h), and every SIMD table is checked against the scalar one.

   Legend: B batch, Hq/Hkv heads, Lq/Lk lengths, Dk/Dv head dims; in a tile, m query rows
   (m <= bq) against n keys (n <= bk). */
#ifndef REFATTN_INTERNAL_H
#define REFATTN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "attention.h"

/* Tile kernels for one compute type T over inputs of element type E (query, key and value:
   T itself, or bfloat16 or float16 bits for float), with keys and values packed as elements of
   type K (E, or float for float16: widened once when packed, not at every use). Strides (ld*)
   are in elements. */
#define REFATTN_DECLARE_OPS(T, E, K, NAME)                                                     \
    typedef struct NAME {                                                                      \
        int64_t bq; /* query rows per tile */                                                  \
        int64_t bk; /* keys per tile, a multiple of 16 */                                      \
        int64_t kstep; /* dims per step of the packed keys: Dk rounded up to it is packed */   \
        /* Copy keys [0, n) of k (rows of Dk, row stride ldk) into kp, in whatever layout      \
           `scores` reads; kp holds Dkp·bk elements, Dkp = Dk rounded up to kstep. */          \
        void (*pack_keys)(K *kp, const E *k, int64_t ldk, int64_t n, int64_t Dk);              \
        /* s[r·lds + j] = scale·(q_r · k_j) for r < m, j < n; columns up to the next multiple  \
           of 16 may be written too (lds >= bk). */                                            \
        void (*scores)(T *s, int64_t lds, const E *q, int64_t ldq, const K *kp, int64_t m,     \
                       int64_t n, int64_t Dk, T scale);                                        \
        /* The same scores straight from the key rows k (row stride ldk), with no packing:     \
           for tiles of at most few_rows query rows (decode), where packing would cost more   \
           than the arithmetic it feeds. Columns up to the next multiple of 16 may be written. */\
        int64_t few_rows;                                                                      \
        void (*scores_rows)(T *s, int64_t lds, const E *q, int64_t ldq, const E *k,            \
                            int64_t ldk, int64_t m, int64_t n, int64_t Dk, T scale);           \
        /* One row of the online softmax: s[0, n) holds scores (-inf where hidden). Updates    \
           the running max *mx and sum *sum, overwrites s with p = exp(s - max), and sets     \
           *alpha to the factor that rescales the row's accumulator (1 when the max holds).    \
           With bfloat16 inputs, p is then rounded to bfloat16 (the sum is of p unrounded). */ \
        void (*softmax)(T *s, int64_t n, T *mx, T *sum, T *alpha);                             \
        /* o[r] = alpha[r]·o[r] + Σ_j p[r·ldp + j]·v_j for r < m, over j < n (v rows of Dv,    \
           row stride ldv). With vis, keys with vis[r·ldvis + j] == 0 are left out entirely    \
           (not multiplied by 0: a NaN value of a hidden key must not reach the row). */      \
        void (*weigh)(T *o, int64_t ldo, const T *p, int64_t ldp, const uint8_t *vis,         \
                      int64_t ldvis, const T *alpha, const E *v, int64_t ldv, int64_t m,       \
                      int64_t n, int64_t Dv);                                                  \
        /* Optional (NULL where weigh is all there is): values packed for weigh_packed.        \
           pack_values copies values [0, n) of v into vp (values_elems(bk, Dv) elements) and   \
           returns 1 when all of them are finite, 0 otherwise (vp then unusable). weigh_packed \
           is weigh with no vis (every key of the tile visible to every row) over the first n  \
           of the packed values, for more than few_rows rows. */                              \
        int64_t (*values_elems)(int64_t bk, int64_t Dv);                                       \
        int (*pack_values)(K *vp, const E *v, int64_t ldv, int64_t n, int64_t Dv);             \
        void (*weigh_packed)(T *o, int64_t ldo, const T *p, int64_t ldp, const T *alpha,       \
                             const K *vp, int64_t m, int64_t n, int64_t Dv);                   \
    } NAME;

REFATTN_DECLARE_OPS(float, float, float, refattn_ops_f32)
REFATTN_DECLARE_OPS(double, double, double, refattn_ops_f64)
REFATTN_DECLARE_OPS(float, uint16_t, uint16_t, refattn_ops_bf16) /* bfloat16, float32 compute */
REFATTN_DECLARE_OPS(float, uint16_t, float, refattn_ops_f16)     /* float16, float32 compute */

/* Tile kernels of the backward pass for one compute type T (float32 and float64 only: bfloat16
   and float16 are converted by the wrapper). It scores with the forward table's pack_keys and
   scores (query rows against keys, and dO rows against values); these do the rest. A tile is m
   rows against n columns; strides (ld*, and the row/column steps *r, *c) are in elements. */
#define REFATTN_DECLARE_GRAD_OPS(T, NAME)                                                      \
    typedef struct NAME {                                                                      \
        int64_t bq; /* query rows per tile */                                                  \
        int64_t bk; /* keys per tile, a multiple of 16 */                                      \
        /* p[r·ldp + j] = exp(p[r·ldp + j] - shift[r]) for r < m, j < n: scores to weights. */  \
        void (*probs)(T *p, int64_t ldp, const T *shift, int64_t m, int64_t n);                \
        /* ds = p ⊙ (dp - t[r]) and dx = ds ⊙ slope · scale (no slope when NULL) for r < m,    \
           j < n, all with row stride ld but ds (ldds; not stored when NULL). Writes exactly    \
           n columns of dx and ds. */                                                          \
        void (*dscores)(T *dx, T *ds, int64_t ldds, const T *p, const T *dp, const T *slope,   \
                        int64_t ld, const T *t, T scale, int64_t m, int64_t n);                \
        /* o[r·ldo + d] += Σ_j p[r·pr + j·pc]·v[j·ldv + d] for r < m, d < D, over j < n in     \
           order. With vis, pairs with vis[r·vr + j·vc] == 0 are left out entirely (not        \
           multiplied by 0: a NaN in a hidden key or a fully masked row must not get in). */   \
        void (*accumulate)(T *o, int64_t ldo, const T *p, int64_t pr, int64_t pc,              \
                           const uint8_t *vis, int64_t vr, int64_t vc, const T *v, int64_t ldv, \
                           int64_t m, int64_t n, int64_t D);                                   \
    } NAME;

REFATTN_DECLARE_GRAD_OPS(float, refattn_grad_ops_f32)
REFATTN_DECLARE_GRAD_OPS(double, refattn_grad_ops_f64)

/* a where cond, else b, by masks: the narrowings below pick so, since gcc vectorises a loop of
   them (the driver's over a row of out) with picks, not with branches or ?: */
static inline uint32_t refattn_pick(int cond, uint32_t a, uint32_t b) {
    const uint32_t where = -(uint32_t)(cond != 0);
    return (a & where) | (b & ~where);
}

/* bfloat16: the upper half of a float32's bits. Widening is exact; narrowing rounds to nearest
   even, through gradual underflow and to ±inf past the largest bfloat16 (as ml_dtypes does), and
   keeps a NaN a (quiet) NaN, which truncating its payload could turn into an infinity. */
static inline float refattn_bf16_to_float(uint16_t x) {
    const uint32_t bits = (uint32_t)x << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t refattn_bf16_from_float(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    return (uint16_t)refattn_pick((bits & 0x7FFFFFFFu) > 0x7F800000u, (bits >> 16) | 0x0040u,
                                  rounded);
}

/* float16 (IEEE binary16: 5 exponent bits, 10 fraction bits), in portable C, bit for bit what
   F16C's vcvtph2ps and vcvtps2ph (to nearest even) give: widening is exact (a signalling NaN
   comes out quiet); narrowing rounds to nearest even, through gradual underflow and to ±inf
   from 65520 up, and keeps a NaN a quiet NaN with the top of its payload. */
static inline float refattn_f16_to_float(uint16_t x) {
    const uint32_t sign = (uint32_t)(x & 0x8000u) << 16, exponent = (x >> 10) & 0x1Fu;
    const uint32_t fraction = x & 0x3FFu;
    uint32_t bits;
    if (exponent == 0x1Fu) {
        bits = sign | 0x7F800000u | (fraction << 13) | (fraction ? 0x00400000u : 0);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (fraction << 13);
    } else {
        const float tiny = (float)fraction * 0x1p-24f; /* a subnormal (or 0): exact */
        memcpy(&bits, &tiny, sizeof bits);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t refattn_f16_from_float(float f) {
    /* Every case computed, then one picked: no branches, so the driver's loop over a row of out
       vectorises (a case out of its range computes garbage that is not picked). */
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    const uint32_t sign = (bits >> 16) & 0x8000u, magnitude = bits & 0x7FFFFFFFu;
    /* normal: rebias the exponent and round the 13 bits dropped to nearest even; a carry out of
       the fraction steps the exponent, up to ±inf from 65520 */
    const uint32_t normal = (magnitude - 0x38000000u + 0x0FFFu + ((magnitude >> 13) & 1u)) >> 13;
    /* below 2^-14, float16's subnormals: adding 0.5 rounds |f| to a multiple of 2^-24 (float32's
       spacing at 0.5), to nearest even, and the fraction bits count them */
    float scaled;
    memcpy(&scaled, &magnitude, sizeof scaled);
    scaled += 0.5f;
    uint32_t subnormal;
    memcpy(&subnormal, &scaled, sizeof subnormal);
    subnormal -= 0x3F000000u;
    uint32_t half = refattn_pick(magnitude < 0x38800000u, subnormal, normal);
    half = refattn_pick(magnitude >= 0x47800000u, 0x7C00u, half); /* 2^16 and up: ±inf */
    half = refattn_pick(magnitude > 0x7F800000u, 0x7E00u | ((magnitude >> 13) & 0x3FFu), half);
    return (uint16_t)(sign | half); /* (the last: a NaN, quiet, the top of its payload kept) */
}

/* The shift of a row's exponentials p = exp(s - shift) in every softmax kernel (the scalar ones
   and the SIMD body), given the row's running max `now` after a tile: `now` itself, or 0 while
   it is -inf (the row has seen only hidden keys and -inf scores so far). Shifting by 0 is what
   the reference does there: every score is then -inf and weighs exp(-inf) = 0 rather than
   exp(-inf - -inf) = NaN, and the accumulator holds nothing to rescale; a NaN score still
   makes the row NaN (exp(NaN) is NaN). Type-generic: float and double. */
#define SOFTMAX_SHIFT(now) ((now) == -INFINITY ? 0 : (now))

/* The vector exp of the SIMD kernels, one set of constants for every ISA: exp(x) = 2^n · e^r
   with n = round(x · EXP_LOG2E), r = x - n·EXP_LN2_HI - n·EXP_LN2_LO (ln 2 in two parts, so r
   is exact to a few ulps), and e^r = 1 + r + r²·(C1 + C2·r + C3·r² + C4·r³ + C5·r⁴ + C6·r⁵),
   Cephes' polynomial for expf. */
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO -2.12194440e-4f
#define EXP_C1 5.0000001201e-1f
#define EXP_C2 1.6666665459e-1f
#define EXP_C3 4.1665795894e-2f
#define EXP_C4 8.3334519073e-3f
#define EXP_C5 1.3981999507e-3f
#define EXP_C6 1.9875691500e-4f

/* The SIMD tables; NULL when this build has no such kernels (not x86-64, or a compiler
   that cannot target them). */
extern const refattn_ops_f32 *const refattn_avx512_ops;
extern const refattn_ops_f32 *const refattn_avx2_ops;
extern const refattn_ops_bf16 *const refattn_avx512_bf16_ops;
extern const refattn_ops_bf16 *const refattn_amx_bf16_ops;
extern const refattn_ops_f16 *const refattn_avx512_f16_ops;
extern const refattn_ops_f16 *const refattn_avx2_f16_ops;
extern const refattn_grad_ops_f32 *const refattn_avx512_grad_ops;
extern const refattn_grad_ops_f32 *const refattn_avx2_grad_ops;

/* Does this CPU, with this OS, run the instruction set? (CPUID, and XGETBV for the register
   state the OS saves.) Cached after the first call. */
int refattn_cpu_has(int isa);

/* A driver is about to start a team of `threads` (the fork rule of attention.c: from the
   first team of 2 or more, a child forked from this process runs on one thread). */
void refattn_team_starts(int64_t threads);

/* The drivers, one per dtype; `call` has been checked by refattn_attention. */
int refattn_flash_f32(const refattn_call *call, int isa, int num_threads);
int refattn_flash_f64(const refattn_call *call, int num_threads);
int refattn_flash_bf16(const refattn_call *call, int isa, int num_threads);
int refattn_flash_f16(const refattn_call *call, int isa, int num_threads);

/* The backward drivers (backward.h, in flash_f32.c and flash_f64.c); `call` has been checked
   by refattn_attention_backward. */
int refattn_backward_f32(const refattn_grad_call *call, int isa, int num_threads);
int refattn_backward_f64(const refattn_grad_call *call, int num_threads);

#endif
