/* AVX-512 tile kernels, float32: the fast path of the native core.

   What they do: the tile kernels of internal.h with 16-float vectors, from the one SIMD body
   (kernels_simd.h) over the AVX-512 operations of vec_avx512.h:
     pack_keys  transposes keys into panels of 16 (kp[panel][d][16]), so that
     scores     computes a block of 6 query rows × 64 keys held in 24 accumulators,
                one broadcast query element times 4 key vectors per step of d;
     softmax    does one row: vector max, vectorised exp, vector sum;
     weigh      accumulates p·V into a block of 6 rows × 64 value columns (1–2 rows × 128).
     scores_rows  scores for 1–2 query rows straight from unpacked key rows (decode).
   and the backward's (kernels_grad.h): probs, dscores and accumulate, o += p·v for any steps
   through p (Pᵀ·dO, dXᵀ·Q, dX·K).
   What they do not do: decide anything about masks or tiles (the driver does), or run on a
   CPU without AVX-512 (refattn_cpu_has is asked first). This file is compiled with a target
   pragma rather than -mavx512f, so the rest of the build stays portable.

   Legend: m query rows against n keys; Dk, Dv head dims; r row, j key, d dim. */
#include "internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(REFATTN_NO_AVX512)

#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#endif

#include "vec_avx512.h"
#include "elem_f32.h"
#include "kernels_simd.h"
#include "kernels_grad.h"

#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

const refattn_ops_f32 *const refattn_avx512_ops = &ops;
const refattn_grad_ops_f32 *const refattn_avx512_grad_ops = &grad_ops;

#else

const refattn_ops_f32 *const refattn_avx512_ops = 0;
const refattn_grad_ops_f32 *const refattn_avx512_grad_ops = 0;

#endif
