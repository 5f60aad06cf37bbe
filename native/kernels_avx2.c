/* AVX2 + FMA tile kernels, float32: the fast path for x86-64 CPUs without AVX-512.

   What they do: the tile kernels of internal.h with 8-float vectors and 16 registers, from the
   one SIMD body (kernels_simd.h) over the AVX2 operations of vec_avx2.h:
     pack_keys  transposes keys into panels of 8 (kp[panel][d][8]), so that
     scores     computes a block of 6 query rows × 16 keys held in 12 accumulators;
     softmax    does one row: vector max, vectorised exp, vector sum;
     weigh      accumulates p·V into a block of 6 rows × 16 value columns.
     scores_rows  scores for 1–2 query rows straight from unpacked key rows (decode).
   and the backward's (kernels_grad.h): probs, dscores and accumulate, o += p·v for any steps
   through p (Pᵀ·dO, dXᵀ·Q, dX·K).
   What they do not do: decide anything about masks or tiles (the driver does), or run on a
   CPU without AVX2 and FMA (refattn_cpu_has is asked first). Compiled with a target pragma.

   Legend: m query rows against n keys; Dk, Dv head dims; r row, j key, d dim. */
#include "internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(REFATTN_NO_AVX2)

#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#include "vec_avx2.h"
#include "elem_f32.h"
#include "kernels_simd.h"
#include "kernels_grad.h"

#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

const refattn_ops_f32 *const refattn_avx2_ops = &ops;
const refattn_grad_ops_f32 *const refattn_avx2_grad_ops = &grad_ops;

#else

const refattn_ops_f32 *const refattn_avx2_ops = 0;
const refattn_grad_ops_f32 *const refattn_avx2_grad_ops = 0;

#endif
