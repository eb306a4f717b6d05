// The torch ops over the kernels: quantize the activations, pick the kernel for this CPU
// and row count, split the output columns between threads. See common.h for the math.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

#include "avx2.h"
#include "avx512.h"

namespace gl {
namespace {

template <typename O>
using Kernel = void (*)(const uint8_t*, int64_t, int64_t, int64_t, const Rows&, int64_t, O*, int64_t);

// one instantiation per row count 1..MAX_ROWS, output type and instruction set
#define GEMMA_LSP_TABLE(fn, O) \
  constexpr Kernel<O> fn##_##O[MAX_ROWS] = {fn<1, O>, fn<2, O>, fn<3, O>, fn<4, O>, fn<5, O>, fn<6, O>, fn<7, O>, fn<8, O>};
using bf16 = c10::BFloat16;
GEMMA_LSP_TABLE(q4k_rows_512, float)
GEMMA_LSP_TABLE(q4k_rows_512, bf16)
GEMMA_LSP_TABLE(q6k_rows_512, float)
GEMMA_LSP_TABLE(q6k_rows_512, bf16)
GEMMA_LSP_TABLE(q4k_rows_256, float)
GEMMA_LSP_TABLE(q4k_rows_256, bf16)
GEMMA_LSP_TABLE(q6k_rows_256, float)
GEMMA_LSP_TABLE(q6k_rows_256, bf16)

bool has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

bool use_512 = has_avx512();  // one choice per process: every forward runs the same kernels

template <typename T>
at::Tensor run_typed(const at::Tensor& x, const at::Tensor& w, const Kernel<T>* table, const int* order, int group) {
  const int64_t K = x.size(-1), N = w.size(0), nb = w.size(1), M = x.numel() / K;
  const Rows rows = quantize(x.data_ptr<T>(), M, K, order, group);
  at::Tensor out = at::empty({M, N}, x.options());
  T* o = out.data_ptr<T>();
  const uint8_t* W = w.data_ptr<uint8_t>();
  for (int64_t m0 = 0; m0 < M; m0 += MAX_ROWS) {  // each row's result is independent of the passes
    const Kernel<T> k = table[std::min<int64_t>(MAX_ROWS, M - m0) - 1];
    at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) { k(W, n0, n1, nb, rows, m0, o + m0 * N, N); });
  }
  return out;
}

at::Tensor run(const at::Tensor& x_, const at::Tensor& w, int block_bytes, const Kernel<float>* f32,
               const Kernel<bf16>* b16, const int* order, int group, const char* what) {
  TORCH_CHECK(w.dim() == 3 && w.size(2) == block_bytes && w.scalar_type() == at::kByte && w.is_contiguous(),
              what, ": weights must be contiguous uint8 [N, K/256, ", block_bytes, "]");
  const int64_t K = x_.size(-1), N = w.size(0), nb = w.size(1);
  TORCH_CHECK(K == nb * QK, what, ": input has ", K, " features, the weights ", nb * QK);
  // bf16 in and out as they are; any other dtype through float32
  const bool is_bf16 = x_.scalar_type() == at::kBFloat16;
  const at::Tensor x = (is_bf16 ? x_ : x_.to(at::kFloat)).reshape({-1, K}).contiguous();
  at::Tensor out = is_bf16 ? run_typed<bf16>(x, w, b16, order, group) : run_typed<float>(x, w, f32, order, group);
  auto sizes = x_.sizes().vec();
  sizes.back() = N;
  return out.to(x_.scalar_type()).reshape(sizes);
}

at::Tensor q4k_mm(const at::Tensor& x, const at::Tensor& w) {
  if (use_512) return run(x, w, Q4K_BYTES, q4k_rows_512_float, q4k_rows_512_bf16, Q4K_ORDER_512, 32, "q4k_mm");
  return run(x, w, Q4K_BYTES, q4k_rows_256_float, q4k_rows_256_bf16, NATURAL, 32, "q4k_mm");
}

at::Tensor q6k_mm(const at::Tensor& x, const at::Tensor& w) {
  if (use_512) return run(x, w, Q6K_BYTES, q6k_rows_512_float, q6k_rows_512_bf16, NATURAL, 16, "q6k_mm");
  return run(x, w, Q6K_BYTES, q6k_rows_256_float, q6k_rows_256_bf16, NATURAL, 16, "q6k_mm");
}

// "avx512" or "avx2": the kernels this process runs. `want` "avx2" switches to the AVX2 kernels
// (tests run both on one machine); "avx512" switches back where the CPU has it; "" only asks.
std::string isa(const std::string& want) {
  if (want == "avx2") use_512 = false;
  if (want == "avx512") use_512 = has_avx512();
  return use_512 ? "avx512" : "avx2";
}

}  // namespace
}  // namespace gl

TORCH_LIBRARY(gemma_lsp, m) {
  m.def("q4k_mm(Tensor x, Tensor w) -> Tensor", &gl::q4k_mm);
  m.def("q6k_mm(Tensor x, Tensor w) -> Tensor", &gl::q6k_mm);
  m.def("isa(str want) -> str", &gl::isa);
}
