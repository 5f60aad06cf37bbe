/* The float32 drivers: flash.h (forward) and backward.h for float, with the tile kernels of the
   chosen instruction set (AVX-512, AVX2+FMA, or the scalar ones from flash.h and backward.h). */
#define REAL float
#define ELEM float
#define TO_REAL(x) (x)
#define FROM_REAL(x) (x)
#define ROUND_P(x) (x)
#define OPS refattn_ops_f32
#define FN(name) name##_f32
#define EXP expf
#define LOG logf
#define TANH tanhf
#define GRAD_OPS refattn_grad_ops_f32
#include "flash.h"
#include "backward.h"

int refattn_flash_f32(const refattn_call *call, int isa, int num_threads) {
    const refattn_ops_f32 *ops = &scalar_ops_f32;
    /* AVX512_BF16 and AMX add bfloat16 instructions only: float32 runs the AVX-512 kernels there */
    if (isa >= REFATTN_ISA_AVX512 && refattn_avx512_ops)
        ops = refattn_avx512_ops;
    if (isa == REFATTN_ISA_AVX2 && refattn_avx2_ops) ops = refattn_avx2_ops;
    return flash_f32(call, ops, num_threads);
}

int refattn_backward_f32(const refattn_grad_call *call, int isa, int num_threads) {
    const refattn_ops_f32 *ops = &scalar_ops_f32;
    const refattn_grad_ops_f32 *gops = &scalar_grad_ops_f32;
    /* the backward's kernels come with the forward's of the same instruction set (its scores) */
    if (isa >= REFATTN_ISA_AVX512 && refattn_avx512_ops && refattn_avx512_grad_ops) {
        ops = refattn_avx512_ops;
        gops = refattn_avx512_grad_ops;
    }
    if (isa == REFATTN_ISA_AVX2 && refattn_avx2_ops && refattn_avx2_grad_ops) {
        ops = refattn_avx2_ops;
        gops = refattn_avx2_grad_ops;
    }
    return backward_f32(call, ops, gops, num_threads);
}
