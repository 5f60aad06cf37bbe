/* elem_f16.h: float16 inputs for the SIMD kernel body (kernels_simd.h), over vec_avx512.h.

   What it does: names what the body does with a float16 input element (its bits, uint16_t):
   widen it to float32 as it is loaded (vcvtph2ps, exact), then do what elem_f32.h does, one
   dim per step of a dot product by FMA (KSTEP 1). Packed keys stay float16 (half the bytes of
   float32 to keep in cache), narrowed back exactly (vcvtps2ph of a widened float16 is that
   float16; a NaN stays a NaN). P·V takes p unrounded: float16 products and sums in float32,
   as the spec's tolerance model for float16 (spec/tolerance.py, 5) allows with room to spare.
   Not AVX512-FP16 arithmetic: it accumulates in float16, which that model rejects.
   What it does not do: compile on its own (kernels_avx512_f16.c includes it after
   vec_avx512.h, inside its target pragma, then the body).

   Legend: VW lanes a vector; a run is the VW·KSTEP elements one vector of lanes holds. */
#ifndef REFATTN_ELEM_F16_H
#define REFATTN_ELEM_F16_H

typedef uint16_t elem;
#define KSTEP 1                  /* dims per step of a dot product, in each lane */
#define ELEM_OPS refattn_ops_f16 /* the table type of these kernels */

/* 16 float16 (bits) as 16 floats, exactly */
INLINE vec vwiden(__m256i x) { return _mm512_cvtph_ps(x); }

/* A run of elements (count of them, the rest 0 and not read), and its store */
INLINE vec vload_dims(const elem *p) { return vwiden(_mm256_loadu_si256((const __m256i *)p)); }
INLINE vec vload_dims_part(const elem *p, int64_t count) {
    return vwiden(_mm256_maskz_loadu_epi16((__mmask16)((1u << count) - 1), p));
}
INLINE void vstore_dims(elem *p, vec x) {
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
}
/* One step of a query row in every lane: p[0] widened */
INLINE vec vbroadcast_dims(const elem *p) { return _mm512_set1_ps(_cvtsh_ss(p[0])); }
INLINE vec vbroadcast_dims_part(const elem *p, int64_t count) {
    (void)count;
    return vbroadcast_dims(p);
}
/* acc + a·b, lane by lane */
INLINE vec vdot(vec a, vec b, vec acc) { return vfmadd(a, b, acc); }
/* VW value elements as floats, the lanes of k (0 elsewhere, not read) */
INLINE vec vload_values(vmask k, const elem *p) { return vwiden(_mm256_maskz_loadu_epi16(k, p)); }
/* p as P·V takes it: unrounded */
INLINE vec vround_p(vec p) { return p; }

#endif
