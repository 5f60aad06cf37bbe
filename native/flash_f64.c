/* The float64 driver: flash.h for double, with its scalar tile kernels. */
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
#include "flash.h"

int refattn_flash_f64(const refattn_call *call, int num_threads) {
    return flash_f64(call, &scalar_ops_f64, num_threads);
}
