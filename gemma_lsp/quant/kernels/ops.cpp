// The torch ops over the kernels: quantize the activations, pick the kernel for this CPU
// and row count, split the output columns between threads. See common.h for the math.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

#include "avx2.h"
#include "avx512.h"
#include "tiles.h"
#include "attend.h"
#include "pointwise.h"

namespace gl {
namespace {

template <typename O>
using Kernel = void (*)(const uint8_t*, int64_t, int64_t, int64_t, const Rows&, int64_t, O*, int64_t);

// one instantiation per row count 1..MAX_ROWS and output type: name_float, name_bf16
#define GEMMA_LSP_TABLE(name, O, fn, ...)                                                         \
  constexpr Kernel<O> name##_##O[MAX_ROWS] = {fn<1, O, ##__VA_ARGS__>, fn<2, O, ##__VA_ARGS__>, \
                                              fn<3, O, ##__VA_ARGS__>, fn<4, O, ##__VA_ARGS__>, \
                                              fn<5, O, ##__VA_ARGS__>, fn<6, O, ##__VA_ARGS__>, \
                                              fn<7, O, ##__VA_ARGS__>, fn<8, O, ##__VA_ARGS__>};
#define GEMMA_LSP_TABLES(name, fn, ...) \
  GEMMA_LSP_TABLE(name, float, fn, ##__VA_ARGS__) GEMMA_LSP_TABLE(name, bf16, fn, ##__VA_ARGS__)
// both instruction sets of one block type: name_512_float, ..., name_256_bf16
#define GEMMA_LSP_KIND(name, fn, ...) \
  GEMMA_LSP_TABLES(name##_512, fn##_512, ##__VA_ARGS__) GEMMA_LSP_TABLES(name##_256, fn##_256, ##__VA_ARGS__)
using bf16 = c10::BFloat16;
GEMMA_LSP_KIND(q4k, q45k_rows, false)
GEMMA_LSP_KIND(q5k, q45k_rows, true)
GEMMA_LSP_KIND(q6k, q6k_rows)
GEMMA_LSP_KIND(q8_0, b32_rows, Q8_0)
GEMMA_LSP_KIND(q5_0, b32_rows, Q5_0)
GEMMA_LSP_KIND(q4_0, b32_rows, Q4_0)
GEMMA_LSP_KIND(q4_1, b32_rows, Q4_1)
GEMMA_LSP_KIND(q5_1, b32_rows, Q5_1)

GEMMA_LSP_TABLES(q4k_tiles, q4k_tiles_512)
GEMMA_LSP_TABLES(q6k_tiles, q6k_tiles_512)

struct Kernels {  // one block format on one instruction set
  const Kernel<float>* f32;
  const Kernel<bf16>* b16;
  const int* order;  // the order the kernel reads the 32-value slices of activations in
};

struct Format {
  const char* name;
  int block_weights, block_bytes;  // a block of the weights tensor [N, K / block_weights, block_bytes]
  Kernels wide, narrow;  // AVX512, AVX2
};

// one block type: its op's name, block shape, and kernels (AVX512 reads activation slices
// in `order`, AVX2 in natural order)
#define GEMMA_LSP_FORMAT(var, name, weights, bytes, order)                                     \
  const Format var{#name "_mm", weights, bytes, {name##_512_float, name##_512_bf16, order}, \
                   {name##_256_float, name##_256_bf16, NATURAL}};
GEMMA_LSP_FORMAT(Q4K, q4k, QK, Q4K_BYTES, Q4K_ORDER_512)
GEMMA_LSP_FORMAT(Q5K, q5k, QK, Q5K_BYTES, Q4K_ORDER_512)
GEMMA_LSP_FORMAT(Q6K, q6k, QK, Q6K_BYTES, NATURAL)
GEMMA_LSP_FORMAT(Q80, q8_0, 32, Q8_0::bytes, NATURAL)
GEMMA_LSP_FORMAT(Q50, q5_0, 32, Q5_0::bytes, NATURAL)
GEMMA_LSP_FORMAT(Q40, q4_0, 32, Q4_0::bytes, NATURAL)
GEMMA_LSP_FORMAT(Q41, q4_1, 32, Q4_1::bytes, NATURAL)
GEMMA_LSP_FORMAT(Q51, q5_1, 32, Q5_1::bytes, NATURAL)

bool has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

bool use_512 = has_avx512();  // one choice per process: every forward runs the same kernels

constexpr int64_t L2_WEIGHTS = 256 << 10;  // bytes of weights one thread keeps in L2 across the passes

// Quantize x's rows, then run `table`'s kernel on each pass of up to MAX_ROWS rows over `units`
// units of output (columns, or tiles of TN columns), split between threads in chunks of `grain`.
// Each thread walks its units in blocks of ~L2_WEIGHTS bytes and runs every pass on a block
// before the next: weights come from memory once per forward, not once per pass (a prompt
// chunk of 128 rows is 16 passes). Each row's result is independent of the passes.
template <typename T>
at::Tensor run_typed(const at::Tensor& x, const at::Tensor& w, int64_t N, const Kernel<T>* table, const int* order,
                     int64_t units, int64_t grain) {
  const int64_t K = x.size(-1), nb = w.size(1), M = x.numel() / K;
  const Rows rows = quantize(x.data_ptr<T>(), M, K, order);
  at::Tensor out = at::empty({M, N}, x.options());
  T* o = out.data_ptr<T>();
  const uint8_t* W = w.data_ptr<uint8_t>();
  const int64_t block = M <= MAX_ROWS ? units  // one pass: a thread's columns in one call, as a decode step always ran
                                      : std::max<int64_t>(1, L2_WEIGHTS / std::max<int64_t>(1, w.numel() / units) / grain) * grain;
  at::parallel_for(0, units, grain, [&](int64_t u0, int64_t u1) {
    for (int64_t b0 = u0; b0 < u1; b0 += block) {
      const int64_t b1 = std::min(u1, b0 + block);
      for (int64_t m0 = 0; m0 < M; m0 += MAX_ROWS)
        table[std::min<int64_t>(MAX_ROWS, M - m0) - 1](W, b0, b1, nb, rows, m0, o + m0 * N, N);
    }
  });
  return out;
}

// x [..., K] -> [..., N]: bf16 in and out as they are; any other dtype through float32
at::Tensor run_any(const at::Tensor& x_, const at::Tensor& w, int64_t N, const Kernel<float>* f32,
                   const Kernel<bf16>* b16, const int* order, int64_t units, int64_t grain) {
  const int64_t K = x_.size(-1);
  const bool is_bf16 = x_.scalar_type() == at::kBFloat16;
  const at::Tensor x = (is_bf16 ? x_ : x_.to(at::kFloat)).reshape({-1, K}).contiguous();
  at::Tensor out = is_bf16 ? run_typed<bf16>(x, w, N, b16, order, units, grain)
                           : run_typed<float>(x, w, N, f32, order, units, grain);
  auto sizes = x_.sizes().vec();
  sizes.back() = N;
  return out.to(x_.scalar_type()).reshape(sizes);
}

at::Tensor run(const at::Tensor& x_, const at::Tensor& w, const Format& f) {
  TORCH_CHECK(w.dim() == 3 && w.size(2) == f.block_bytes && w.scalar_type() == at::kByte && w.is_contiguous(),
              f.name, ": weights must be contiguous uint8 [N, K/", f.block_weights, ", ", f.block_bytes, "]");
  const int64_t K = x_.size(-1), N = w.size(0), nb = w.size(1);
  TORCH_CHECK(K == nb * f.block_weights, f.name, ": input has ", K, " features, the weights ", nb * f.block_weights);
  const Kernels& k = use_512 ? f.wide : f.narrow;
  return run_any(x_, w, N, k.f32, k.b16, k.order, N, 16);
}

// Tiled weights (tiles.h): [N/16, nb, 16·block_bytes], AVX512-VNNI only; out [.., N].
struct TiledFormat {
  const char* name;
  int block_bytes;
  const Kernel<float>* f32;
  const Kernel<bf16>* b16;
  void (*tile)(const uint8_t*, uint8_t*, int64_t, int64_t);
};
const TiledFormat Q4KT{"q4k_tiled_mm", Q4K_BYTES, q4k_tiles_float, q4k_tiles_bf16, tile_q4k};
const TiledFormat Q6KT{"q6k_tiled_mm", Q6K_BYTES, q6k_tiles_float, q6k_tiles_bf16, tile_q6k};

at::Tensor run_tiled(const at::Tensor& x_, const at::Tensor& w, const TiledFormat& f) {
  TORCH_CHECK(has_avx512(), f.name, ": needs AVX512-VNNI");
  TORCH_CHECK(w.dim() == 3 && w.size(2) == TN * f.block_bytes && w.scalar_type() == at::kByte && w.is_contiguous(),
              f.name, ": weights must be contiguous uint8 tiles [N/16, K/256, ", TN * f.block_bytes, "]");
  const int64_t K = x_.size(-1), nb = w.size(1);
  TORCH_CHECK(K == nb * QK, f.name, ": input has ", K, " features, the weights ", nb * QK);
  return run_any(x_, w, w.size(0) * TN, f.f32, f.b16, NATURAL, w.size(0), 1);
}

// row blocks [N, K/256, bytes] -> tiles [N/16, K/256, 16·bytes]: the same bytes, rearranged
at::Tensor tile(const at::Tensor& w, const TiledFormat& f) {
  TORCH_CHECK(w.dim() == 3 && w.size(2) == f.block_bytes && w.scalar_type() == at::kByte && w.is_contiguous(),
              f.name, ": blocks must be contiguous uint8 [N, K/256, ", f.block_bytes, "]");
  TORCH_CHECK(w.size(0) % TN == 0, f.name, ": ", w.size(0), " output rows are not a multiple of ", TN);
  at::Tensor out = at::empty({w.size(0) / TN, w.size(1), TN * f.block_bytes}, w.options());
  f.tile(w.data_ptr<uint8_t>(), out.data_ptr<uint8_t>(), w.size(0), w.size(1));
  return out;
}

at::Tensor q4k_tile(const at::Tensor& w) { return tile(w, Q4KT); }
at::Tensor q6k_tile(const at::Tensor& w) { return tile(w, Q6KT); }
at::Tensor q4k_tiled_mm(const at::Tensor& x, const at::Tensor& w) { return run_tiled(x, w, Q4KT); }
at::Tensor q6k_tiled_mm(const at::Tensor& x, const at::Tensor& w) { return run_tiled(x, w, Q6KT); }

template <typename T>
void attend_typed(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start, float scale,
                  at::Tensor& out) {
  const int64_t H = q.size(1), m = q.size(2), D = q.size(3), group = H / k.size(1);
  const float* qp = q.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const T *kp = k.data_ptr<T>(), *vp = v.data_ptr<T>();
  const Strided ks{k.stride(1), k.stride(2)}, vs{v.stride(1), v.stride(2)};
  at::parallel_for(0, H * m, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> s;
    for (int64_t i = i0; i < i1; ++i) {  // i = h·m + r
      const int64_t h = i / m, r = i % m, kv = h / group;
      attend_one<T>(qp + i * D, kp + kv * ks.head, vp + kv * vs.head, ks, vs, start + r + 1, D, scale, op + i * D, s);
    }
  });
}

// q [1, H, m, D], k and v [1, KV, ≥ start + m, D] (last stride 1): row r attends positions 0..start + r
at::Tensor attend(const at::Tensor& q_, const at::Tensor& k, const at::Tensor& v, int64_t start, double scale) {
  TORCH_CHECK(q_.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q_.size(0) == 1 && k.size(0) == 1 && v.size(0) == 1,
              "attend: q, k, v must be [1, heads, positions, head_dim]");
  TORCH_CHECK(k.sizes() == v.sizes() && k.scalar_type() == v.scalar_type() && q_.size(3) == k.size(3),
              "attend: k and v must match, and head_dim q's");
  TORCH_CHECK(k.size(1) > 0 && q_.size(1) % k.size(1) == 0, "attend: query heads must be a multiple of KV heads");
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "attend: k and v need head_dim contiguous");
  TORCH_CHECK(q_.size(3) <= MAX_HEAD_DIM, "attend: head_dim over ", MAX_HEAD_DIM);
  TORCH_CHECK(start >= 0 && k.size(2) >= start + q_.size(2), "attend: ", k.size(2), " cached positions, need ",
              start + q_.size(2));
  const at::Tensor q = q_.to(at::kFloat).contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options());
  if (k.scalar_type() == at::kBFloat16)
    attend_typed<bf16>(q, k, v, start, (float)scale, out);
  else {
    TORCH_CHECK(k.scalar_type() == at::kFloat, "attend: k and v must be bfloat16 or float32");
    attend_typed<float>(q, k, v, start, (float)scale, out);
  }
  return out.to(q_.scalar_type());
}

// [1, m, D]-shaped activations as rows: (pointer offset 0, rows m, row stride), last stride 1
// f(T{}) with T the kernel type of a bfloat16 or float32 tensor (check_rows admits only those)
template <typename F>
void typed(at::ScalarType t, F f) {
  if (t == at::kBFloat16)
    f(bf16{});
  else
    f(float{});
}

void check_rows(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 3 && x.size(0) == 1 && x.stride(2) == 1, op, ": wants [1, rows, features], features contiguous");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat, op, ": bfloat16 or float32");
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w_, double eps) {
  check_rows(x, "rms_norm");
  const at::Tensor w = w_.to(x.scalar_type()).contiguous();
  TORCH_CHECK(w.numel() == x.size(2), "rms_norm: ", w.numel(), " weights for ", x.size(2), " features");
  at::Tensor y = at::empty(x.sizes(), x.options());
  typed(x.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    rms_norm_rows<scalar_t>(x.data_ptr<scalar_t>(), x.stride(1), w.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                            x.size(2), x.size(1), x.size(2), (float)eps);
  });
  return y;
}

// x [1, m, heads·D] -> [1, heads, m, D]; cos, sin [1, m, D] in x's dtype
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos_, const at::Tensor& sin_, int64_t heads) {
  check_rows(x, "rope");
  TORCH_CHECK(heads > 0 && x.size(2) % heads == 0, "rope: ", x.size(2), " features are not ", heads, " heads");
  const int64_t m = x.size(1), D = x.size(2) / heads;
  TORCH_CHECK(D % 2 == 0 && cos_.numel() == m * D && sin_.numel() == m * D, "rope: cos and sin must be [m, ", D, "]");
  const at::Tensor cos = cos_.to(x.scalar_type()).contiguous(), sin = sin_.to(x.scalar_type()).contiguous();
  at::Tensor y = at::empty({1, heads, m, D}, x.options());
  typed(x.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    rope_rows<scalar_t>(x.data_ptr<scalar_t>(), x.stride(1), cos.data_ptr<scalar_t>(), sin.data_ptr<scalar_t>(),
                        y.data_ptr<scalar_t>(), m, heads, D);
  });
  return y;
}

at::Tensor silu_mul(const at::Tensor& g, const at::Tensor& u) {
  check_rows(g, "silu_mul");
  check_rows(u, "silu_mul");
  TORCH_CHECK(g.sizes() == u.sizes() && g.scalar_type() == u.scalar_type(), "silu_mul: g and u must match");
  at::Tensor y = at::empty(g.sizes(), g.options());
  typed(g.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    silu_mul_rows<scalar_t>(g.data_ptr<scalar_t>(), g.stride(1), u.data_ptr<scalar_t>(), u.stride(1),
                            y.data_ptr<scalar_t>(), g.size(1), g.size(2));
  });
  return y;
}

at::Tensor q4k_mm(const at::Tensor& x, const at::Tensor& w) { return run(x, w, Q4K); }
at::Tensor q5k_mm(const at::Tensor& x, const at::Tensor& w) { return run(x, w, Q5K); }
at::Tensor q6k_mm(const at::Tensor& x, const at::Tensor& w) { return run(x, w, Q6K); }
at::Tensor q8_0_mm(const at::Tensor& x, const at::Tensor& w) { return run(x, w, Q80); }
at::Tensor q5_0_mm(const at::Tensor& x, const at::Tensor& w) { return run(x, w, Q50); }
at::Tensor q4_0_mm(const at::Tensor& x, const at::Tensor& w) { return run(x, w, Q40); }
at::Tensor q4_1_mm(const at::Tensor& x, const at::Tensor& w) { return run(x, w, Q41); }
at::Tensor q5_1_mm(const at::Tensor& x, const at::Tensor& w) { return run(x, w, Q51); }

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
  m.def("q5k_mm(Tensor x, Tensor w) -> Tensor", &gl::q5k_mm);
  m.def("q6k_mm(Tensor x, Tensor w) -> Tensor", &gl::q6k_mm);
  m.def("q8_0_mm(Tensor x, Tensor w) -> Tensor", &gl::q8_0_mm);
  m.def("q5_0_mm(Tensor x, Tensor w) -> Tensor", &gl::q5_0_mm);
  m.def("q4_0_mm(Tensor x, Tensor w) -> Tensor", &gl::q4_0_mm);
  m.def("q4_1_mm(Tensor x, Tensor w) -> Tensor", &gl::q4_1_mm);
  m.def("q5_1_mm(Tensor x, Tensor w) -> Tensor", &gl::q5_1_mm);
  m.def("q4k_tile(Tensor w) -> Tensor", &gl::q4k_tile);
  m.def("q6k_tile(Tensor w) -> Tensor", &gl::q6k_tile);
  m.def("q4k_tiled_mm(Tensor x, Tensor w) -> Tensor", &gl::q4k_tiled_mm);
  m.def("q6k_tiled_mm(Tensor x, Tensor w) -> Tensor", &gl::q6k_tiled_mm);
  m.def("attend(Tensor q, Tensor k, Tensor v, int start, float scale) -> Tensor", &gl::attend);
  m.def("rms_norm(Tensor x, Tensor w, float eps) -> Tensor", &gl::rms_norm);
  m.def("rope(Tensor x, Tensor cos, Tensor sin, int heads) -> Tensor", &gl::rope);
  m.def("silu_mul(Tensor g, Tensor u) -> Tensor", &gl::silu_mul);
  m.def("isa(str want) -> str", &gl::isa);
}
