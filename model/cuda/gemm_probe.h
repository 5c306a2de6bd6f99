// The measured bf16 GEMM rate of a CUDA device through cuBLAS, for `ringtrain
// bench` (the roofline the training step is compared against). Compiled only
// with CUDA (RINGTRAIN_HAVE_CUDA); no CUDA types in this header.
#pragma once

namespace rt::cuda {

// Dense bf16 GEMM rate of device `device` in TFLOP/s: cublasGemmEx, bf16 A, B
// and C, CUBLAS_COMPUTE_32F, n x n x n (default 8192), uniform random inputs in
// [-1, 1) (never zeros: they run faster), 3 warm-up calls, then the median of
// `reps` calls each timed with CUDA events. Throws rt::Error (exit 1) with the
// failing call when CUDA or cuBLAS fails. Allocates 3 n^2 bf16 (384 MiB at
// 8192) and frees them before returning.
double measure_gemm_bf16_tflops(int device, int n = 8192, int reps = 10);

}  // namespace rt::cuda
