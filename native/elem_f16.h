/* elem_f16.h: float16 inputs for the SIMD kernel body (kernels_simd.h), over vec_avx512.h or
   vec_avx2.h (with F16C).

   What it does: names what the body does with a float16 input element (its bits, uint16_t):
   widen it to float32 as it is loaded (vcvtph2ps, exact), then do what elem_f32.h does, one
   dim per step of a dot product by FMA (KSTEP 1). Keys are packed widened (pelem float), and a
   block of scores widens its query rows once (WIDEN_QUERY), so the arithmetic of Q·Kᵀ is that
   of float32 from there on; values are widened as P·V loads them. P·V takes p unrounded:
   float16 products and sums in float32, as the spec's tolerance model for float16
   (spec/tolerance.py, 5) allows with room to spare.
   Not AVX512-FP16 arithmetic: it accumulates in float16, which that model rejects.
   The loads differ by vector width: AVX-512 masks 16-bit lanes; AVX2 has no such masked load,
   so a partial run is copied into a zeroed run first (never reading past it).
   What it does not do: compile on its own (kernels_avx512_f16.c and kernels_avx2_f16.c
   include it after their vec header, inside their target pragma, then the body).

   Legend: VW lanes a vector; a run is the VW·KSTEP elements one vector of lanes holds. */
#ifndef REFATTN_ELEM_F16_H
#define REFATTN_ELEM_F16_H

#include <string.h>

typedef uint16_t elem;
typedef float pelem;             /* packed keys: widened */
#define KSTEP 1                  /* dims per step of a dot product, in each lane */
#define ELEM_OPS refattn_ops_f16 /* the table type of these kernels */
#define WIDEN_QUERY              /* scores_block widens its query rows first (widen_dims) */

/* A run of VW elements widened exactly (count of them, the rest 0 and not read) */
#if VW == 16
INLINE vec vload_dims(const elem *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
INLINE vec vload_dims_part(const elem *p, int64_t count) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16((__mmask16)((1u << count) - 1), p));
}
/* VW value elements as floats, the lanes of k (0 elsewhere, not read) */
INLINE vec vload_values(vmask k, const elem *p) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
}
#else
INLINE vec vload_dims(const elem *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
INLINE vec vload_dims_part(const elem *p, int64_t count) {
    elem run[VW] = {0};
    memcpy(run, p, (size_t)count * sizeof(elem));
    return vload_dims(run);
}
/* k's lanes are a prefix (vlanes): whole runs, the common case, load as they are */
INLINE vec vload_values(vmask k, const elem *p) {
    const int lanes = _mm256_movemask_ps(_mm256_castsi256_ps(k));
    if (lanes == (1 << VW) - 1) return vload_dims(p);
    return vload_dims_part(p, __builtin_popcount((unsigned)lanes));
}
#endif
/* A run of packed elements, and its store */
INLINE vec vload_packed(const pelem *p) { return vload(p); }
INLINE void vstore_packed(pelem *p, vec x) { vstore(p, x); }
/* count elements of p widened into w */
INLINE void widen_dims(float *w, const elem *p, int64_t count) {
    int64_t d = 0;
    for (; d + VW <= count; d += VW) vstore(w + d, vload_dims(p + d));
    if (d < count) vstore_part(w + d, vlanes(count - d), vload_dims_part(p + d, count - d));
}
/* One step of a query row in every lane: p[0] widened */
INLINE vec vbroadcast_dims(const elem *p) { return vset1(_cvtsh_ss(p[0])); }
INLINE vec vbroadcast_dims_part(const elem *p, int64_t count) {
    (void)count;
    return vbroadcast_dims(p);
}
/* acc + a·b, lane by lane */
INLINE vec vdot(vec a, vec b, vec acc) { return vfmadd(a, b, acc); }
/* p as P·V takes it: unrounded */
INLINE vec vround_p(vec p) { return p; }

#endif
