// GGUF quantized blocks times int8-quantized activations, for the few-row forwards of decode
// and verify on x86 CPUs (AVX512-VNNI, or AVX2). Built at run time by native.py (torch's JIT
// extension loader), registered as torch ops gemma_lsp::q4k_mm, q5k_mm, q6k_mm, q8_0_mm,
// q5_0_mm, q4_0_mm, q4_1_mm and q5_1_mm (ops.cpp); tiles.h regroups Q4_K and Q6_K in tiles of
// 16 output columns (q4k_tiled_mm, q6k_tiled_mm), attend.h is the few-row attention (attend).
//
// Why: a one-token step is bound by the bytes of weights it reads. torch's int4 kernel
// needs a bf16 scale and zero per 32 weights (5 bits per weight) and its int8 kernel 8;
// these kernels read the file's own blocks: Q4_K at 4.625 bits and Q5_K at 5.625 (their
// 6-bit scales unpacked to bytes), Q6_K at 6.5625, Q8_0 at 8.5, Q5_0 at 5.5, Q4_0 at 4.5,
// Q4_1 at 5 and Q5_1 at 6, as stored. They multiply in integers (vpmaddubsw + vpdpwssd /
// vpmaddwd, vpdpbusd) so that the work per byte stays below what memory delivers.
//
// Math. Each activation row is quantized per 32 values: x ≈ dx_g·xq, xq = round(x/dx_g) in
// [-127, 127], dx_g = max|x|/127 over the 32 (the error per value is at most dx_g/2). Per 32,
// not per 256 as llama.cpp rounds for K-quants: a model's few huge activation channels then
// coarsen only their own 32 values; measured on the default model, mean KL from its float32
// forward 0.0002 instead of 0.0085. Then for one block of 256 (g: its eight groups of 32)
//   Q4_K: w = d·sc_g·q − dmin·mn_g (q in 0..15)
//         Σ w·x ≈ d·Σ_g dx_g·sc_g·Σ q·xq − dmin·Σ_g mn_g·(dx_g·Σ xq)
//   Q5_K: the same, with q in 0..31 (a fifth bit per weight from qh)
//   Q6_K: w = d·sc_j·(q − 32) (q in 0..63, 16 groups j of 16, sc_j int8; two per g)
//         Σ w·x ≈ d·Σ_g dx_g·(Σ_{j∈g} sc_j·Σ q·xq − 32·Σ_{j∈g} sc_j·Σ xq)
//   Q8_0, Q5_0, Q4_0: w = d_g·q' (blocks of 32, one float16 d_g each; q' = q, q − 16, q − 8)
//         Σ w·x ≈ Σ_g d_g·dx_g·Σ |q'|·(xq·sign q')   (u8 × s8 products, as the instructions take them)
//   Q4_1, Q5_1: w = d_g·q + m_g, the same plus Σ_g m_g·dx_g·Σ xq
// All sums within a group are exact in int32; groups and blocks accumulate in float32.
//
// Exactness across row counts. Output (m, n) is computed by the same instructions in the
// same order whatever the number of rows M and however the output columns are split
// between threads: a k-row verify yields bit for bit what k one-row steps yield.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace gl {


constexpr int QK = 256;          // weights per super-block
constexpr int Q4K_BYTES = 148;   // d f16, dmin f16, sc[8] u8, mn[8] u8, qs[128] (GGUF's nibble order)
constexpr int Q5K_BYTES = 180;   // d, dmin, sc[8], mn[8] as Q4_K, qh[32] (bit g: group g's fifth bit), qs[128]
constexpr int Q6K_BYTES = 210;   // ql[128], qh[64], sc[16] i8, d f16 (GGUF's own block)
constexpr int MAX_ROWS = 8;      // rows per kernel pass; more rows run in passes of 8
constexpr int PREFETCH = 2048;   // bytes ahead of the block being read

struct Rows {  // activation rows in blocks of 256 (the last one may be shorter: zeros after it)
  int64_t nb;                // blocks of 256 per row, ceil(K / 256)
  std::vector<int8_t> q;     // [M, nb, 256], eight slices of 32 in the order the kernel reads
  std::vector<float> dx;     // [M, nb, 8]: the step of each group of 32, natural order
  std::vector<float> dxv;    // [M, nb, 64]: per slice as read, its group's step 8 times (a vector of lanes)
  std::vector<float> gx;     // [M, nb, 8]: dx_g·Σ xq over group g (Q4_K/Q5_K's min term)
  std::vector<int16_t> sum;  // [M, nb, 16]: Σ xq per 16 values (Q6_K's scale groups)
};

// The order of the eight 32-value slices of a block of activations as a kernel reads them.
// AVX512's Q4_K kernel reads its 128 bytes as two 64-byte vectors: the low nibbles of the
// first hold groups 0 and 2, the high nibbles 1 and 3 (GGUF packs group 2c in the low and
// 2c+1 in the high nibbles of 32 bytes). The other kernels read groups in order.
constexpr int Q4K_ORDER_512[8] = {0, 2, 1, 3, 4, 6, 5, 7};
constexpr int NATURAL[8] = {0, 1, 2, 3, 4, 5, 6, 7};

template <typename T>
Rows quantize(const T* x, int64_t M, int64_t K, const int* order) {
  const int64_t nb = (K + QK - 1) / QK;
  Rows r{nb, std::vector<int8_t>(M * nb * QK), std::vector<float>(M * nb * 8), std::vector<float>(M * nb * 64),
         std::vector<float>(M * nb * 8), std::vector<int16_t>(M * nb * 16)};
  for (int64_t mb = 0; mb < M * nb; ++mb) {
    const T* xs = x + (mb / nb) * K + (mb % nb) * QK;
    const int len = (int)std::min<int64_t>(QK, K - (mb % nb) * QK);  // shorter last block: rows of 32·k
    int8_t xq[QK] = {};  // natural order
    float* dx = r.dx.data() + mb * 8;
    for (int g = 0; g < 8; ++g) {
      const int lo = g * 32, hi = std::min(len, lo + 32);
      float amax = 0.f;
      for (int j = lo; j < hi; ++j) amax = std::max(amax, std::fabs(static_cast<float>(xs[j])));
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      dx[g] = amax / 127.f;
      int32_t s = 0;
      for (int j = lo; j < hi; ++j) s += xq[j] = (int8_t)std::nearbyint(static_cast<float>(xs[j]) * inv);
      r.gx[mb * 8 + g] = dx[g] * (float)s;
    }
    int8_t* qb = r.q.data() + mb * QK;
    for (int s = 0; s < 8; ++s) {  // 8 slices of 32, placed in `order`, with their steps
      std::copy(xq + order[s] * 32, xq + order[s] * 32 + 32, qb + s * 32);
      std::fill_n(r.dxv.data() + mb * 64 + s * 8, 8, dx[order[s]]);
    }
    for (int g = 0; g < 16; ++g) {  // sums per 16, natural order
      int32_t s = 0;
      for (int j = 0; j < 16; ++j) s += xq[g * 16 + j];
      r.sum[mb * 16 + g] = (int16_t)s;
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


// Q4_K/Q5_K's min values of one block as 8 float lanes, times dmin: the min term of a row is
// then one multiply-add with its gx (dx_g·Σ xq per group).
inline __m256 q4k_mins(const uint8_t* mn, float dmin) {
  return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)mn))),
                       _mm256_set1_ps(dmin));
}

// Blocks of 32 weights with one float16 d first: Q8_0 (w = d·q, q int8 as stored), Q5_0
// (w = d·(q − 16), q = nibble + 16·bit of qh), Q4_0 (w = d·(q − 8)), and with a float16 min m
// after d, Q4_1 (w = d·q + m) and Q5_1 (w = d·q + m, q 5 bits). `weights` unpacks a block to
// 32 int8 values q' (w = d·q' [+ m]); one dot then serves all five, the min adding m·dx·Σ xq
// per block. Nibbles: weight j < 16 in the low half of qs[j], weight j + 16 in the high half.
inline __m256i nibbles32(const uint8_t* qs) {
  const __m128i b = _mm_loadu_si128((const __m128i*)qs), low = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), low), _mm_and_si128(b, low));
}

// 16 where bit j of the 32 bits at qh is set (byte j: weight j's fifth bit), else 0
inline __m256i fifth_bits(const uint8_t* qh) {
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  // byte j of the vector gets byte j/8 of the bits, then keeps only its bit j%8
  const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits),
                                             _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                                               0x0101010101010101, 0x0000000000000000));
  const __m256i bit = _mm256_set1_epi64x((int64_t)0x8040201008040201);
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(16));
}

struct Q8_0 {
  static constexpr bool has_min = false;
  static constexpr int bytes = 34;  // d, qs[32]
  static __m256i weights(const uint8_t* b) { return _mm256_loadu_si256((const __m256i*)(b + 2)); }
};

struct Q4_0 {
  static constexpr bool has_min = false;
  static constexpr int bytes = 18;  // d, qs[16]
  static __m256i weights(const uint8_t* b) { return _mm256_sub_epi8(nibbles32(b + 2), _mm256_set1_epi8(8)); }
};

struct Q5_0 {
  static constexpr bool has_min = false;
  static constexpr int bytes = 22;  // d, qh (32 bits), qs[16]
  static __m256i weights(const uint8_t* b) {
    return _mm256_sub_epi8(_mm256_or_si256(nibbles32(b + 6), fifth_bits(b + 2)), _mm256_set1_epi8(16));
  }
};

struct Q4_1 {
  static constexpr bool has_min = true;
  static constexpr int bytes = 20;  // d, m, qs[16]
  static __m256i weights(const uint8_t* b) { return nibbles32(b + 4); }
};

struct Q5_1 {
  static constexpr bool has_min = true;
  static constexpr int bytes = 24;  // d, m, qh (32 bits), qs[16]
  static __m256i weights(const uint8_t* b) { return _mm256_or_si256(nibbles32(b + 8), fifth_bits(b + 4)); }
};

// The mins m_g of 8 blocks of 32 as float lanes (a row's min term is then one multiply-add
// with its gx: m_g·dx_g·Σ xq)
template <typename F>
inline __m256 b32_mins(const uint8_t* blk) {
  float m[8];
  for (int g = 0; g < 8; ++g) m[g] = _cvtsh_ss(*(const uint16_t*)(blk + F::bytes * g + 2));
  return _mm256_loadu_ps(m);
}

// The blocks of 32 past the last whole 256 of weight row `row` (those of activation block
// `full`, `tail` of them) for activation row r, added to s: d_g·dx_g·Σ q'·xq in 8 float lanes,
// |q'| × (xq·sign q') as the u8 × s8 instructions take them (at most 2·128·127 per pair:
// inside int16), as the kernels' main loops compute it.
template <typename F>
inline __m256 b32_tail(const uint8_t* row, int64_t full, int tail, const Rows& x, int64_t r, __m256 s) {
  const int64_t mb = r * x.nb + full;
  const uint8_t* blk = row + full * 8 * F::bytes;
  const int8_t* xb = x.q.data() + mb * QK;
  const float *dx = x.dx.data() + mb * 8, *gx = x.gx.data() + mb * 8;
  for (int g = 0; g < tail; ++g) {
    const uint8_t* b = blk + F::bytes * g;
    const __m256i w = F::weights(b);
    const __m256i xs = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i*)(xb + 32 * g)), w);
    const __m256i t = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), xs), _mm256_set1_epi16(1));
    s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(_cvtsh_ss(*(const uint16_t*)b) * dx[g]), s);
    if constexpr (F::has_min)  // + m·dx·Σ xq, in lane 0
      s = _mm256_add_ps(s, _mm256_set_ps(0, 0, 0, 0, 0, 0, 0, _cvtsh_ss(*(const uint16_t*)(b + 2)) * gx[g]));
  }
  return s;
}

inline float hsum256(__m256 v) { return hsum128(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1))); }

}  // namespace gl
