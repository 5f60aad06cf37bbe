/* elem_bf16.h: bfloat16 inputs for the SIMD kernel body (kernels_simd.h), over vec_avx512.h
   with AVX512_BF16.

   What it does: names what the body does with a bfloat16 input element (its bits, uint16_t):
   two dims per step of a dot product (KSTEP 2), a pair of bfloat16 in each 32-bit lane, and
   vdpbf16ps adds both products to the lane's float32 accumulator. A bfloat16 product is exact
   in float32, so a dot product rounds as often as one of FMAs, Dk times, within the spec's
   float32 bound. But vdpbf16ps treats subnormal inputs (below 2^-126) as 0 and flushes
   subnormal sums to 0: a score moves by up to 2^-126·|the other factor| per such input, far
   inside the tolerance unless that factor is near bfloat16's largest, and an infinite element
   against a subnormal one gives NaN where the spec has ±inf (a known limit of this path; the
   scalar kernels are exact there). Values are widened to float exactly (a shift), and p is
   rounded to bfloat16 for P·V (to nearest even, subnormals kept) and widened back, so weigh
   keeps its float FMAs.
   What it does not do: compile on its own (kernels_avx512_bf16.c includes it after
   vec_avx512.h, inside its target pragma, then the body), or run without AVX512_BF16.

   Legend: VW lanes a vector; a run is the VW·KSTEP elements one vector of lanes holds. */
#ifndef REFATTN_ELEM_BF16_H
#define REFATTN_ELEM_BF16_H

#include <string.h>

typedef uint16_t elem;
typedef elem pelem;               /* packed keys: as they are (pairs of bfloat16 a lane) */
#define KSTEP 2                   /* dims per step of a dot product, in each lane */
#define ELEM_OPS refattn_ops_bf16 /* the table type of these kernels */

/* A run of 32 elements (count of them, the rest 0 and not read): raw bits. */
INLINE vec vload_dims(const elem *p) { return _mm512_castsi512_ps(_mm512_loadu_si512(p)); }
INLINE vec vload_dims_part(const elem *p, int64_t count) {
    const __mmask32 k = (__mmask32)((1ull << count) - 1);
    return _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(k, p));
}
/* A run of packed elements, and its store: raw bits too */
INLINE vec vload_packed(const pelem *p) { return vload_dims(p); }
INLINE void vstore_packed(pelem *p, vec x) { _mm512_storeu_si512(p, _mm512_castps_si512(x)); }
/* One step of a query row in every lane: the pair (p[0], p[1]); or (p[0], 0) for the last
   step of an odd Dk (count 1), which reads nothing past p[0]. */
INLINE vec vbroadcast_dims(const elem *p) {
    uint32_t pair;
    memcpy(&pair, p, sizeof pair);
    return _mm512_castsi512_ps(_mm512_set1_epi32((int)pair));
}
INLINE vec vbroadcast_dims_part(const elem *p, int64_t count) {
    (void)count;
    return _mm512_castsi512_ps(_mm512_set1_epi32((int)p[0]));
}
/* acc + a[2t]·b[2t] + a[2t + 1]·b[2t + 1] in lane t */
INLINE vec vdot(vec a, vec b, vec acc) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }

/* 16 bfloat16 (bits) as 16 floats: each in the upper half of a lane, exactly */
INLINE vec vwiden(__m256i x) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(x), 16));
}
/* VW value elements as floats, the lanes of k (0 elsewhere, not read) */
INLINE vec vload_values(vmask k, const elem *p) { return vwiden(_mm256_maskz_loadu_epi16(k, p)); }
/* p rounded to bfloat16, as P·V takes it: to nearest even on the bits, as
   refattn_bf16_from_float does, a NaN kept as it is. Not vcvtneps2bf16: it flushes p below
   2^-126 to 0, and a visible value of ±Inf times a weight of 0 is NaN, where the spec's
   weight is small but not 0 (ATT-N8). */
INLINE vec vround_p(vec p) {
    const __m512i bits = _mm512_castps_si512(p);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i half = _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd); /* ties to even */
    const __m512i top = _mm512_and_si512(_mm512_add_epi32(bits, half),
                                         _mm512_set1_epi32((int)0xFFFF0000u));
    const __mmask16 nan = _mm512_cmp_ps_mask(p, p, _CMP_UNORD_Q);
    return _mm512_mask_blend_ps(nan, _mm512_castsi512_ps(top), p);
}

#endif
