/* AVX-512 BF16 tile kernels, bfloat16 inputs computed in float32: the fast path of bfloat16.

   What they do: the tile kernels of internal.h for bfloat16 query, key and value, from the one
   SIMD body (kernels_simd.h) over the AVX-512 operations of vec_avx512.h and the bfloat16
   element operations of elem_bf16.h:
     pack_keys  transposes keys into panels of 16 keys × pairs of dims (kp[panel][d/2][16][2]),
     scores     computes a block of 6 query rows × 64 keys in 24 float32 accumulators, one
                broadcast pair of query elements times 4 key vectors per vdpbf16ps step;
     softmax    the float32 one, with p rounded to bfloat16 for P·V after the row's sum;
     weigh      accumulates p·V in float32, value elements widened to float;
     scores_rows  scores for 1–2 query rows straight from unpacked key rows (decode).
   What they do not do: round anything but p (the driver rounds out once, flash_bf16.c), or run
   on a CPU without AVX512_BF16 (refattn_cpu_has is asked first). Compiled with a target
   pragma, like the other kernels.

   Legend: m query rows against n keys; Dk, Dv head dims; r row, j key, d dim. */
#include "internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) &&                         \
    !defined(REFATTN_NO_AVX512) && !defined(REFATTN_NO_AVX512_BF16)

#ifdef __clang__
#pragma clang attribute push(                                                                  \
    __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,avx2,fma"))),          \
    apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,avx2,fma")
#endif

#include "vec_avx512.h"
#include "elem_bf16.h"
#include "kernels_simd.h"

#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

const refattn_ops_bf16 *const refattn_avx512_bf16_ops = &ops;

#else

const refattn_ops_bf16 *const refattn_avx512_bf16_ops = 0;

#endif
