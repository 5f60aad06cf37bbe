/* AVX-512 tile kernels, float16 inputs computed in float32: the fast path of float16.

   What they do: the tile kernels of internal.h for float16 query, key and value, from the one
   SIMD body (kernels_simd.h) over the AVX-512 operations of vec_avx512.h and the float16
   element operations of elem_f16.h: the float32 kernels of kernels_avx512.c with each element
   widened as it is loaded (vcvtph2ps), keys packed widened and query rows widened once per
   block of scores.
   What they do not do: round anything (the driver rounds out once, flash_f16.c), or run on a
   CPU without AVX-512 (refattn_cpu_has is asked first; F16C comes with every AVX-512 CPU).
   Compiled with a target pragma, like the other kernels.

   Legend: m query rows against n keys; Dk, Dv head dims; r row, j key, d dim. */
#include "internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(REFATTN_NO_AVX512)

#ifdef __clang__
#pragma clang attribute push(                                                                  \
    __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c"))),                \
    apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")
#endif

#include "vec_avx512.h"
#include "elem_f16.h"
#include "kernels_simd.h"

#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

const refattn_ops_f16 *const refattn_avx512_f16_ops = &ops;

#else

const refattn_ops_f16 *const refattn_avx512_f16_ops = 0;

#endif
