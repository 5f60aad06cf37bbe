/* vec_avx2.h: the vector operations and blocking constants of the SIMD kernel body
   (kernels_simd.h) for AVX2 + FMA, 8 floats a vector.

   What it does: names each operation the body needs (a vector `vec` of VW floats, a lane mask
   `vmask`, loads and stores whole or under a mask, arithmetic, exp, reductions, transposes) as
   an inline function over AVX2 intrinsics, and says how big the body's blocks are here.
   Everything that differs from AVX-512 on purpose stands in this file: 16 registers (blocks of
   6 rows × 2 panels in scores and weigh, no wider decode blocks), key tiles of 128, masks as
   vectors of lanes for vmaskmov (slow on AMD: the body loads whole vectors and masks only the
   tails where it can), 2^n built in the exponent field in exp, an 8 × 8 transpose, and the
   horizontal-add tree of the decode scores.
   What it does not do: compile on its own. kernels_avx2.c includes it inside its target pragma,
   then the body.

   Legend: VW lanes a vector; a mask has lanes [0, count) on for a tail of count < VW. */
#ifndef REFATTN_VEC_AVX2_H
#define REFATTN_VEC_AVX2_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "internal.h"

#ifdef __clang__
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif
#define INLINE static inline __attribute__((always_inline))

#define VW 8        /* floats per vector */
#define MR 6        /* query rows per register block */
#define NP 2        /* panels of VW keys per block in scores; vectors of VW columns in weigh */
#define WIDE NP     /* no wider weigh blocks for one or two rows: 16 registers are all used */
#define BQ 96       /* query rows per tile */
#define BK 128      /* keys per tile */
#define FEW_ROWS 2  /* tiles of at most this many rows score straight from the key rows */
#define GRAD_BQ 96  /* the backward's tiles (kernels_grad.h): query rows (16 blocks of 6) */
#define GRAD_BK 96  /* and keys (16 blocks of 6 rows in dK, dV; 6 of 2 panels in scores);
                       4 (bq, bk) tiles and the packed keys and values take 190 KB at D = 64 */

typedef __m256 vec;
typedef __m256i vmask; /* lanes of all ones where a masked operation acts, for vmaskmov */

INLINE vec vzero(void) { return _mm256_setzero_ps(); }
INLINE vec vset1(float x) { return _mm256_set1_ps(x); }
INLINE vec vbroadcast(const float *p) { return _mm256_broadcast_ss(p); }
INLINE vec vload(const float *p) { return _mm256_loadu_ps(p); }
INLINE void vstore(float *p, vec x) { _mm256_storeu_ps(p, x); }
INLINE vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
INLINE vec vsub(vec a, vec b) { return _mm256_sub_ps(a, b); }
INLINE vec vmul(vec a, vec b) { return _mm256_mul_ps(a, b); }
INLINE vec vfmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); } /* a·b + c */
/* max(a, b), or b when either is NaN (vmaxps): vmax(x, top) leaves a NaN x out of top */
INLINE vec vmax(vec a, vec b) { return _mm256_max_ps(a, b); }
INLINE float vlane0(vec x) { return _mm256_cvtss_f32(x); }

INLINE float vreduce_max(vec x) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

INLINE float vreduce_add(vec x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* Masks: the first count lanes (0..VW, more counts as VW), every lane, or every lane when on
   is 1 and none when it is 0 (a key's visibility byte). */
INLINE vmask vlanes(int64_t count) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
INLINE vmask vwhole(void) { return _mm256_set1_epi32(-1); }
INLINE vmask vif(uint8_t on) { return _mm256_set1_epi32(-(int)on); }
/* The lanes of k from p, 0 elsewhere (nothing is read there); or `fill` elsewhere. */
INLINE vec vload_part(vmask k, const float *p) { return _mm256_maskload_ps(p, k); }
INLINE vec vload_part_or(vec fill, vmask k, const float *p) {
    return _mm256_blendv_ps(fill, _mm256_maskload_ps(p, k), _mm256_castsi256_ps(k));
}
INLINE void vstore_part(float *p, vmask k, vec x) { _mm256_maskstore_ps(p, k, x); }
/* acc + x in the lanes of k, acc elsewhere; a·b + c in the lanes of k, c elsewhere. */
INLINE vec vadd_part(vec acc, vmask k, vec x) {
    return _mm256_add_ps(acc, _mm256_and_ps(x, _mm256_castsi256_ps(k)));
}
INLINE vec vfmadd_part(vmask k, vec a, vec b, vec c) {
    return _mm256_blendv_ps(c, _mm256_fmadd_ps(a, b, c), _mm256_castsi256_ps(k));
}

/* exp(x) as in the AVX-512 kernels (Cephes' expf polynomial), but 2^n built in the exponent
   field, in two halves 2^(n/2)·2^(n - n/2) so that n from -150 to 128 stays representable:
   gradual underflow and overflow to inf come out right. x below -104 gives exactly 0. */
INLINE vec vexp(vec x) {
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
INLINE void vtranspose(vec r[VW]) {
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

/* Lane t of the result: the sum of the lanes of acc[t] (VW partial dot products into VW dot
   products). Here a tree of horizontal adds rather than a transpose. */
INLINE vec vsum_each(vec acc[VW]) {
    /* h[i]: lane L holds pair sums of keys 2i, 2i+1 within 128-bit lane L */
    const __m256 h0 = _mm256_hadd_ps(acc[0], acc[1]), h1 = _mm256_hadd_ps(acc[2], acc[3]);
    const __m256 h2 = _mm256_hadd_ps(acc[4], acc[5]), h3 = _mm256_hadd_ps(acc[6], acc[7]);
    const __m256 g0 = _mm256_hadd_ps(h0, h1), g1 = _mm256_hadd_ps(h2, h3);
    return _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20),
                         _mm256_permute2f128_ps(g0, g1, 0x31));
}

#endif
