/* The float16 driver: flash.h computing in float over float16 query, key, value and out, with
   the tile kernels of kernels_avx512_f16.c or kernels_avx2_f16.c, or the scalar ones from
   flash.h.

   What it computes: products of float16 inputs (exact in float32) accumulated in float32, the
   online softmax in float32 as for float32 inputs, P·V in float32 with p unrounded, and out
   rounded to float16 once, at the end; lse and weights stay float32. Within the spec's
   tolerance model for float16 (spec/tolerance.py, 5), which also admits P rounded to float16.
   "avx512_bf16" and "amx_bf16" run the AVX-512 ones, as they do for float32. */
#define REAL float
#define ELEM uint16_t
#define TO_REAL(x) refattn_f16_to_float(x)
#define FROM_REAL(x) refattn_f16_from_float(x)
#define ROUND_P(x) (x)
#define PACKED float /* keys packed widened: once per key tile, not at each use */
#define TO_PACKED(x) refattn_f16_to_float(x)
#define PACKED_TO_REAL(x) (x)
#define OPS refattn_ops_f16
#define FN(name) name##_f16
#define EXP expf
#define LOG logf
#define TANH tanhf
#include "flash.h"

int refattn_flash_f16(const refattn_call *call, int isa, int num_threads) {
    const refattn_ops_f16 *ops = &scalar_ops_f16;
    if (isa == REFATTN_ISA_AVX2 && refattn_avx2_f16_ops) ops = refattn_avx2_f16_ops;
    if (isa >= REFATTN_ISA_AVX512 && refattn_avx512_f16_ops) ops = refattn_avx512_f16_ops;
    return flash_f16(call, ops, num_threads);
}
