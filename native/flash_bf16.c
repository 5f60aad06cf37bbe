/* The bfloat16 driver: flash.h computing in float over bfloat16 query, key, value and out, with
   the AVX-512 BF16 tile kernels or the scalar ones from flash.h.

   What it computes is what the spec's low-precision tolerance model (spec/tolerance.py, 5)
   takes: products of bfloat16 inputs (exact in float32) accumulated in float32, the online
   softmax in float32 as for float32 inputs, P rounded to bfloat16 before P·V (the row's sum is
   of P unrounded), P·V accumulated in float32, and out rounded to bfloat16 once, at the end;
   lse and weights stay float32. The scalar kernels do each step exactly so; the AVX-512 BF16
   ones use vdpbf16ps, and the AMX ones tdpbf16ps for Q·Kᵀ, both of which treat subnormal bfloat16
   inputs as 0 (kernels_avx512_bf16.c, kernels_amx.c). */
#define REAL float
#define ELEM uint16_t
#define TO_REAL(x) refattn_bf16_to_float(x)
#define FROM_REAL(x) refattn_bf16_from_float(x)
#define ROUND_P(x) refattn_bf16_to_float(refattn_bf16_from_float(x))
#define OPS refattn_ops_bf16
#define FN(name) name##_bf16
#define EXP expf
#define LOG logf
#define TANH tanhf
#include "flash.h"

int refattn_flash_bf16(const refattn_call *call, int isa, int num_threads) {
    const refattn_ops_bf16 *ops = &scalar_ops_bf16;
    if (isa == REFATTN_ISA_AVX512_BF16 && refattn_avx512_bf16_ops) ops = refattn_avx512_bf16_ops;
    if (isa == REFATTN_ISA_AMX_BF16 && refattn_amx_bf16_ops) ops = refattn_amx_bf16_ops;
    return flash_bf16(call, ops, num_threads);
}
