/* The float64 drivers: flash.h (forward) and backward.h for double, with their scalar tile
   kernels. */
#define REAL double
#define ELEM double
#define TO_REAL(x) (x)
#define FROM_REAL(x) (x)
#define ROUND_P(x) (x)
#define OPS refattn_ops_f64
#define FN(name) name##_f64
#define EXP exp
#define LOG log
#define TANH tanh
#define GRAD_OPS refattn_grad_ops_f64
#include "flash.h"
#include "backward.h"

int refattn_flash_f64(const refattn_call *call, int num_threads) {
    return flash_f64(call, &scalar_ops_f64, num_threads);
}

int refattn_backward_f64(const refattn_grad_call *call, int num_threads) {
    return backward_f64(call, &scalar_ops_f64, &scalar_grad_ops_f64, num_threads);
}
