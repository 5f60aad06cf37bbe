/* vec_avx512.h: the vector operations and blocking constants of the SIMD kernel body
   (kernels_simd.h) for AVX-512 F/DQ/BW/VL, 16 floats a vector.

   What it does: names each operation the body needs (a vector `vec` of VW floats, a lane mask
   `vmask`, loads and stores whole or under a mask, arithmetic, exp, reductions, transposes) as
   an inline function over AVX-512 intrinsics, and says how big the body's blocks are here.
   Everything that differs from AVX2 on purpose stands in this file: 32 registers (blocks of
   6 rows × 4 panels in scores, up to 8 vectors in weigh for one or two rows), key tiles of 256,
   cheap masked loads and stores (opmasks), 2^n by scalef in exp, a 16 × 16 transpose, and the
   transpose-then-add reduction of the decode scores.
   What it does not do: compile on its own. kernels_avx512.c includes it inside its target
   pragma, then the body.

   Legend: VW lanes a vector; a mask has lanes [0, count) on for a tail of count < VW. */
#ifndef REFATTN_VEC_AVX512_H
#define REFATTN_VEC_AVX512_H

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

#define VW 16       /* floats per vector */
#define MR 6        /* query rows per register block */
#define NP 4        /* panels of VW keys per block in scores; vectors of VW columns in weigh */
#define WIDE 8      /* vectors of VW columns in weigh for blocks of one or two rows (decode) */
#define BQ 96       /* query rows per tile */
#define BK 256      /* keys per tile: half the accumulator rescaling and reloading of 128 */
#define FEW_ROWS 2  /* tiles of at most this many rows score straight from the key rows */
#define GRAD_BQ 96  /* the backward's tiles (kernels_grad.h): query rows (16 blocks of 6) */
#define GRAD_BK 128 /* and keys (2 blocks of 4 panels); 4 (bq, bk) tiles and the packed keys
                       and values take 260 KB at D = 64: they stay in L2 */

typedef __m512 vec;
typedef __mmask16 vmask; /* which lanes a masked operation touches */

INLINE vec vzero(void) { return _mm512_setzero_ps(); }
INLINE vec vset1(float x) { return _mm512_set1_ps(x); }
INLINE vec vbroadcast(const float *p) { return _mm512_set1_ps(*p); }
INLINE vec vload(const float *p) { return _mm512_loadu_ps(p); }
INLINE void vstore(float *p, vec x) { _mm512_storeu_ps(p, x); }
INLINE vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
INLINE vec vsub(vec a, vec b) { return _mm512_sub_ps(a, b); }
INLINE vec vmul(vec a, vec b) { return _mm512_mul_ps(a, b); }
INLINE vec vfmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); } /* a·b + c */
/* max(a, b), or b when either is NaN (vmaxps): vmax(x, top) leaves a NaN x out of top */
INLINE vec vmax(vec a, vec b) { return _mm512_max_ps(a, b); }
INLINE float vlane0(vec x) { return _mm512_cvtss_f32(x); }
INLINE float vreduce_max(vec x) { return _mm512_reduce_max_ps(x); }
INLINE float vreduce_add(vec x) { return _mm512_reduce_add_ps(x); }

/* Masks: the first count lanes (0..VW), every lane, or every lane when on is 1 and none when
   it is 0 (a key's visibility byte). Masked loads and stores cost next to nothing here. */
INLINE vmask vlanes(int64_t count) { return (vmask)((1u << count) - 1); }
INLINE vmask vwhole(void) { return (vmask)0xFFFF; }
INLINE vmask vif(uint8_t on) { return (vmask)(-(int)on); }
/* The lanes of k from p, 0 elsewhere (nothing is read there); or `fill` elsewhere. */
INLINE vec vload_part(vmask k, const float *p) { return _mm512_maskz_loadu_ps(k, p); }
INLINE vec vload_part_or(vec fill, vmask k, const float *p) {
    return _mm512_mask_loadu_ps(fill, k, p);
}
INLINE void vstore_part(float *p, vmask k, vec x) { _mm512_mask_storeu_ps(p, k, x); }
/* acc + x in the lanes of k, acc elsewhere; a·b + c in the lanes of k, c elsewhere. */
INLINE vec vadd_part(vec acc, vmask k, vec x) { return _mm512_mask_add_ps(acc, k, acc, x); }
INLINE vec vfmadd_part(vmask k, vec a, vec b, vec c) { return _mm512_mask3_fmadd_ps(a, b, c, k); }

/* exp(x) = 2^n · e^r with n = round(x·log2 e) and r = x - n·ln 2 (ln 2 in two parts, so r is
   exact to a few ulps), e^r by Cephes' degree-6 polynomial for expf, 2^n by scalef, which
   rounds correctly through gradual underflow: every x below -104 gives exactly 0. Clamping x
   at -150 is all that exp(-inf) = 0 needs (it is the weight of a hidden key; unclamped, r
   would be -inf + inf). For x <= 0 (scores minus their max), or NaN, which stays NaN. */
INLINE vec vexp(vec x) {
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
INLINE void vtranspose(vec r[VW]) {
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

/* Lane t of the result: the sum of the lanes of acc[t] (VW partial dot products into VW dot
   products). Here one transpose, then 15 vector adds in lane order. acc is overwritten. */
INLINE vec vsum_each(vec acc[VW]) {
    vtranspose(acc); /* acc[c] holds lane c of each key's partial sums */
    __m512 dot = acc[0];
    UNROLL for (int c = 1; c < 16; c++) dot = _mm512_add_ps(dot, acc[c]);
    return dot;
}

#endif
