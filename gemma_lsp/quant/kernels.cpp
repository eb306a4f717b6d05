// GGUF k-quant blocks times int8-quantized activations, for the few-row forwards of decode
// and verify on x86 CPUs with AVX512-VNNI. Built at run time by native.py (torch's JIT
// extension loader), registered as torch ops gemma_lsp::q4k_mm and gemma_lsp::q6k_mm.
//
// Why: a one-token step is bound by the bytes of weights it reads. torch's int4 kernel
// needs a bf16 scale and zero per 32 weights (5 bits per weight) and its int8 kernel 8;
// these kernels read the file's own blocks: Q4_K at 4.625 bits (repacked 6-bit scales),
// Q6_K at 6.5625. They multiply in integers (vpmaddubsw + vpdpwssd) so that the work per
// byte stays below what memory delivers.
//
// Math. Each activation row is quantized per 256 values: x ≈ dx·xq, xq = round(x/dx) in
// [-127, 127], dx = max|x|/127 (the error per value is at most dx/2). Then for one block
//   Q4_K: w = d·sc_g·q − dmin·mn_g (q in 0..15, 8 groups of 32)
//         Σ w·x ≈ dx·(d·Σ_g sc_g·Σ q·xq − dmin·Σ_g mn_g·Σ xq)
//   Q6_K: w = d·sc_j·(q − 32) (q in 0..63, 16 groups of 16, sc_j int8)
//         Σ w·x ≈ dx·d·(Σ_j sc_j·Σ q·xq − 32·Σ_j sc_j·Σ xq)
// All sums within a block are exact in int32; blocks accumulate in float32.
//
// Exactness across row counts. Output (m, n) is computed by the same instructions in the
// same order whatever the number of rows M and however the output columns are split
// between threads: a k-row verify yields bit for bit what k one-row steps yield.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int QK = 256;          // weights per super-block
constexpr int Q4K_BYTES = 148;   // d f16, dmin f16, sc[8] u8, mn[8] u8, qs[128] (GGUF's nibble order)
constexpr int Q6K_BYTES = 210;   // ql[128], qh[64], sc[16] i8, d f16 (GGUF's own block)
constexpr int MAX_ROWS = 8;      // rows per kernel pass; more rows run in passes of 8
constexpr int PREFETCH = 2048;   // bytes ahead of the block being read

struct Rows {  // activation rows quantized per block of 256
  std::vector<int8_t> q;     // [M, nb, 256], in the order the kernel reads
  std::vector<float> dx;     // [M, nb]
  std::vector<int16_t> sum;  // [M, nb, groups]: Σ xq per group of the weight format
};

// Q4_K reads its 128 bytes as two 64-byte vectors; the low nibbles of the first hold groups
// 0 and 2, the high nibbles groups 1 and 3 (GGUF packs group 2c low, 2c+1 high in 32 bytes).
constexpr int Q4K_ORDER[8] = {0, 2, 1, 3, 4, 6, 5, 7};
constexpr int NATURAL[8] = {0, 1, 2, 3, 4, 5, 6, 7};

template <typename T>
Rows quantize(const T* x, int64_t M, int64_t K, const int* order, int group) {
  const int64_t nb = K / QK;
  const int groups = QK / group;
  Rows r{std::vector<int8_t>(M * K), std::vector<float>(M * nb), std::vector<int16_t>(M * nb * groups)};
  for (int64_t mb = 0; mb < M * nb; ++mb) {
    float xb[QK];
    for (int j = 0; j < QK; ++j) xb[j] = static_cast<float>(x[mb * QK + j]);
    float amax = 0.f;
    for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    r.dx[mb] = amax / 127.f;
    int8_t* qb = r.q.data() + mb * QK;
    for (int s = 0; s < 8; ++s) {  // 8 slices of 32, placed in `order`
      const int src = order[s];
      for (int j = 0; j < 32; ++j) qb[s * 32 + j] = (int8_t)std::nearbyint(xb[src * 32 + j] * inv);
    }
    for (int g = 0; g < groups; ++g) {  // sums in the weights' own (natural) group order
      int32_t s = 0;
      for (int j = 0; j < group; ++j) s += (int)std::nearbyint(xb[g * group + j] * inv);
      r.sum[mb * groups + g] = (int16_t)s;
    }
  }
  return r;
}

inline float hsum128(__m128 v) {
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_movehdup_ps(v));
  return _mm_cvtss_f32(v);
}

inline void prefetch(const uint8_t* p, int bytes) {
  for (int o = 0; o < bytes; o += 64) _mm_prefetch((const char*)(p + PREFETCH + o), _MM_HINT_T0);
}

template <int M, typename O>
void q4k_rows(const uint8_t* W, int64_t n0, int64_t n1, int64_t nb, const Rows& x, int64_t m0, O* out,
              int64_t ldo) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  // int16 lane indices picking scale a into lanes 0..15 and scale b into lanes 16..31
  const __m512i pick02 = _mm512_set_epi16(2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
                                          0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i pick13 = _mm512_add_epi16(pick02, _mm512_set1_epi16(1));
  const __m512i pick46 = _mm512_add_epi16(pick02, _mm512_set1_epi16(4));
  const __m512i pick57 = _mm512_add_epi16(pick02, _mm512_set1_epi16(5));
  for (int64_t n = n0; n < n1; ++n) {
    __m512 acc[M];
    __m128 mins[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps(), mins[m] = _mm_setzero_ps();
    const uint8_t* row = W + n * nb * Q4K_BYTES;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * Q4K_BYTES;
      prefetch(blk, Q4K_BYTES);
      const float d = _cvtsh_ss(*(const uint16_t*)blk), dmin = _cvtsh_ss(*(const uint16_t*)(blk + 2));
      const __m512i sc = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i*)(blk + 4))));
      const __m128i mn = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i*)(blk + 12)));
      const __m512i s0 = _mm512_permutexvar_epi16(pick02, sc), s1 = _mm512_permutexvar_epi16(pick13, sc);
      const __m512i s2 = _mm512_permutexvar_epi16(pick46, sc), s3 = _mm512_permutexvar_epi16(pick57, sc);
      const __m512i r0 = _mm512_loadu_si512(blk + 20), r1 = _mm512_loadu_si512(blk + 84);
      const __m512i q0 = _mm512_and_si512(r0, low), q1 = _mm512_and_si512(_mm512_srli_epi16(r0, 4), low);
      const __m512i q2 = _mm512_and_si512(r1, low), q3 = _mm512_and_si512(_mm512_srli_epi16(r1, 4), low);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const int64_t mb = (m0 + m) * nb + b;
        const int8_t* xb = x.q.data() + mb * QK;
        __m512i t = _mm512_setzero_si512();  // Σ_g sc_g·Σ q·xq, spread over 16 lanes
        t = _mm512_dpwssd_epi32(t, _mm512_maddubs_epi16(q0, _mm512_loadu_si512(xb)), s0);
        t = _mm512_dpwssd_epi32(t, _mm512_maddubs_epi16(q1, _mm512_loadu_si512(xb + 64)), s1);
        t = _mm512_dpwssd_epi32(t, _mm512_maddubs_epi16(q2, _mm512_loadu_si512(xb + 128)), s2);
        t = _mm512_dpwssd_epi32(t, _mm512_maddubs_epi16(q3, _mm512_loadu_si512(xb + 192)), s3);
        const float dx = x.dx[mb];
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_set1_ps(d * dx), acc[m]);
        const __m128i ms = _mm_madd_epi16(mn, _mm_loadu_si128((const __m128i*)(x.sum.data() + mb * 8)));
        mins[m] = _mm_fmadd_ps(_mm_cvtepi32_ps(ms), _mm_set1_ps(dmin * dx), mins[m]);
      }
    }
    for (int m = 0; m < M; ++m) out[m * ldo + n] = static_cast<O>(_mm512_reduce_add_ps(acc[m]) - hsum128(mins[m]));
  }
}

template <int M, typename O>
void q6k_rows(const uint8_t* W, int64_t n0, int64_t n1, int64_t nb, const Rows& x, int64_t m0, O* out,
              int64_t ldo) {
  const __m512i low4 = _mm512_set1_epi8(0x0F), low2 = _mm512_set1_epi8(0x03);
  // int16 lane indices: lanes 8i..8i+7 take scale base+i (16 weights = 8 pairs per scale)
  const __m512i pick0 = _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2,
                                         1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i pick[4] = {pick0, _mm512_add_epi16(pick0, _mm512_set1_epi16(4)),
                           _mm512_add_epi16(pick0, _mm512_set1_epi16(8)),
                           _mm512_add_epi16(pick0, _mm512_set1_epi16(12))};
  for (int64_t n = n0; n < n1; ++n) {
    __m512 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
    const uint8_t* row = W + n * nb * Q6K_BYTES;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * Q6K_BYTES;
      prefetch(blk, Q6K_BYTES);
      const float d = _cvtsh_ss(*(const uint16_t*)(blk + 208));
      const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(blk + 192)));
      const __m512i sc = _mm512_broadcast_i64x4(sc16);
      __m512i q[4];
      for (int h = 0; h < 2; ++h) {  // 128 weights: ql 64 bytes, qh 32 bytes
        const __m512i l = _mm512_loadu_si512(blk + 64 * h);
        const __m256i hb = _mm256_loadu_si256((const __m256i*)(blk + 128 + 32 * h));
        const __m512i h02 = _mm512_inserti64x4(_mm512_castsi256_si512(hb), _mm256_srli_epi16(hb, 2), 1);
        const __m512i h46 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_srli_epi16(hb, 4)),
                                               _mm256_srli_epi16(hb, 6), 1);
        q[2 * h] = _mm512_or_si512(_mm512_and_si512(l, low4), _mm512_slli_epi16(_mm512_and_si512(h02, low2), 4));
        q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), low4),
                                       _mm512_slli_epi16(_mm512_and_si512(h46, low2), 4));
      }
      __m512i s[4];
      for (int j = 0; j < 4; ++j) s[j] = _mm512_permutexvar_epi16(pick[j], sc);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const int64_t mb = (m0 + m) * nb + b;
        const int8_t* xb = x.q.data() + mb * QK;
        __m512i t = _mm512_setzero_si512();  // Σ_j sc_j·Σ q·xq
        for (int j = 0; j < 4; ++j)
          t = _mm512_dpwssd_epi32(t, _mm512_maddubs_epi16(q[j], _mm512_loadu_si512(xb + 64 * j)), s[j]);
        // − 32·Σ_j sc_j·Σ xq: 8 int32 lanes, subtracted from the low half
        const __m256i corr = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i*)(x.sum.data() + mb * 16)));
        t = _mm512_sub_epi32(t, _mm512_zextsi256_si512(_mm256_slli_epi32(corr, 5)));
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_set1_ps(d * x.dx[mb]), acc[m]);
      }
    }
    for (int m = 0; m < M; ++m) out[m * ldo + n] = static_cast<O>(_mm512_reduce_add_ps(acc[m]));
  }
}

template <typename O>
using Kernel = void (*)(const uint8_t*, int64_t, int64_t, int64_t, const Rows&, int64_t, O*, int64_t);

// one instantiation per row count 1..MAX_ROWS and output type
#define GEMMA_LSP_TABLE(fn, O) \
  constexpr Kernel<O> fn##_##O[MAX_ROWS] = {fn<1, O>, fn<2, O>, fn<3, O>, fn<4, O>, fn<5, O>, fn<6, O>, fn<7, O>, fn<8, O>};
using bf16 = c10::BFloat16;
GEMMA_LSP_TABLE(q4k_rows, float)
GEMMA_LSP_TABLE(q4k_rows, bf16)
GEMMA_LSP_TABLE(q6k_rows, float)
GEMMA_LSP_TABLE(q6k_rows, bf16)

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
  return run(x, w, Q4K_BYTES, q4k_rows_float, q4k_rows_bf16, Q4K_ORDER, 32, "q4k_mm");
}

at::Tensor q6k_mm(const at::Tensor& x, const at::Tensor& w) {
  return run(x, w, Q6K_BYTES, q6k_rows_float, q6k_rows_bf16, NATURAL, 16, "q6k_mm");
}

}  // namespace

TORCH_LIBRARY(gemma_lsp, m) {
  m.def("q4k_mm(Tensor x, Tensor w) -> Tensor", &q4k_mm);
  m.def("q6k_mm(Tensor x, Tensor w) -> Tensor", &q6k_mm);
}
