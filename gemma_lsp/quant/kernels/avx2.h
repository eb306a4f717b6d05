// AVX2 kernels (most laptop and desktop CPUs): 32 weights per vpmaddubsw + vpmaddwd pair,
// the same math and the same block layouts as avx512.h; activations in natural order.
#pragma once
#include "common.h"

namespace gl {

// Q4_K, or Q5_K (Q5: the fifth bit of each weight from qh)
template <int M, typename O, bool Q5>
void q45k_rows_256(const uint8_t* W, int64_t n0, int64_t n1, int64_t nb, const Rows& x, int64_t m0, O* out,
                   int64_t ldo) {
  constexpr int bytes = Q5 ? Q5K_BYTES : Q4K_BYTES, qs = Q5 ? 52 : 20;
  const __m256i low = _mm256_set1_epi8(0x0F), sixteen = _mm256_set1_epi8(16);
  for (int64_t n = n0; n < n1; ++n) {
    __m256 acc[M], mins[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps(), mins[m] = _mm256_setzero_ps();
    const uint8_t* row = W + n * nb * bytes;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * bytes;
      prefetch(blk, bytes);
      const float d = _cvtsh_ss(*(const uint16_t*)blk), dmin = _cvtsh_ss(*(const uint16_t*)(blk + 2));
      const uint8_t* sc = blk + 4;
      const __m256 mn = q4k_mins(blk + 12, dmin);
      __m256i q[8];
      for (int c = 0; c < 4; ++c) {  // 32 bytes: group 2c in the low nibbles, 2c+1 in the high
        const __m256i r = _mm256_loadu_si256((const __m256i*)(blk + qs + 32 * c));
        q[2 * c] = _mm256_and_si256(r, low);
        q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(r, 4), low);
      }
      if constexpr (Q5) {  // + 16 where the weight's bit g in qh is set
        const __m256i qh = _mm256_loadu_si256((const __m256i*)(blk + 20));
        for (int g = 0; g < 8; ++g) {
          const __m256i bit = _mm256_set1_epi8((char)(1 << g));
          const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
          q[g] = _mm256_or_si256(q[g], _mm256_and_si256(set, sixteen));
        }
      }
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const int64_t mb = (m0 + m) * nb + b;
        const int8_t* xb = x.q.data() + mb * QK;
        const float* dv = x.dxv.data() + mb * 64;
        __m256 s = _mm256_setzero_ps();  // Σ_g dx_g·sc_g·Σ q·xq, spread over 8 lanes
        for (int g = 0; g < 8; ++g) {
          const __m256i p = _mm256_maddubs_epi16(q[g], _mm256_loadu_si256((const __m256i*)(xb + 32 * g)));
          const __m256i t = _mm256_madd_epi16(p, _mm256_set1_epi16(sc[g]));
          s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_loadu_ps(dv + 8 * g), s);
        }
        acc[m] = _mm256_fmadd_ps(s, _mm256_set1_ps(d), acc[m]);
        mins[m] = _mm256_fmadd_ps(mn, _mm256_loadu_ps(x.gx.data() + mb * 8), mins[m]);
      }
    }
    for (int m = 0; m < M; ++m) out[m * ldo + n] = static_cast<O>(hsum256(acc[m]) - hsum256(mins[m]));
  }
}

template <int M, typename O>
void q6k_rows_256(const uint8_t* W, int64_t n0, int64_t n1, int64_t nb, const Rows& x, int64_t m0, O* out,
                  int64_t ldo) {
  const __m256i low4 = _mm256_set1_epi8(0x0F), low2 = _mm256_set1_epi8(0x03);
  for (int64_t n = n0; n < n1; ++n) {
    __m256 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    const uint8_t* row = W + n * nb * Q6K_BYTES;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * Q6K_BYTES;
      prefetch(blk, Q6K_BYTES);
      const float d = _cvtsh_ss(*(const uint16_t*)(blk + 208));
      const int8_t* sc = (const int8_t*)(blk + 192);
      const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)sc));
      __m256i q[8], s[8];
      for (int h = 0; h < 2; ++h) {  // 128 weights: ql 64 bytes, qh 32 bytes
        const __m256i l0 = _mm256_loadu_si256((const __m256i*)(blk + 64 * h));
        const __m256i l1 = _mm256_loadu_si256((const __m256i*)(blk + 64 * h + 32));
        const __m256i hb = _mm256_loadu_si256((const __m256i*)(blk + 128 + 32 * h));
        const auto high = [&](int shift) {
          return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, shift), low2), 4);
        };
        q[4 * h] = _mm256_or_si256(_mm256_and_si256(l0, low4), high(0));
        q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, low4), high(2));
        q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4), high(4));
        q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4), high(6));
      }
      for (int j = 0; j < 8; ++j)  // 32 weights: scale 2j for the first 16, 2j+1 for the next
        s[j] = _mm256_set_m128i(_mm_set1_epi16(sc[2 * j + 1]), _mm_set1_epi16(sc[2 * j]));
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const int64_t mb = (m0 + m) * nb + b;
        const int8_t* xb = x.q.data() + mb * QK;
        const float* dv = x.dxv.data() + mb * 64;
        // 32·Σ_{j∈g} sc_j·Σ xq per group g (lane g), times dx_g, subtracted from the sum below
        const __m256i corr = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i*)(x.sum.data() + mb * 16)));
        __m256 f = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_slli_epi32(corr, 5)),
                                                                    _mm256_loadu_ps(x.dx.data() + mb * 8)));
        for (int j = 0; j < 8; ++j) {  // + Σ_g dx_g·Σ_{j∈g} sc_j·Σ q·xq (group j: 32 weights)
          const __m256i t =
              _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], _mm256_loadu_si256((const __m256i*)(xb + 32 * j))), s[j]);
          f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_loadu_ps(dv + 8 * j), f);
        }
        acc[m] = _mm256_fmadd_ps(f, _mm256_set1_ps(d), acc[m]);
      }
    }
    for (int m = 0; m < M; ++m) out[m * ldo + n] = static_cast<O>(hsum256(acc[m]));
  }
}

// Blocks of 32 (Q8_0, Q5_0, Q4_0, Q4_1, Q5_1: common.h), read as stored, one block per vector. nb counts
// blocks of 32 here; whole groups of 8 are unpacked once for all rows, the rest run in b32_tail.
template <int M, typename O, typename F>
void b32_rows_256(const uint8_t* W, int64_t n0, int64_t n1, int64_t nb, const Rows& x, int64_t m0, O* out,
                  int64_t ldo) {
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t full = nb / 8;
  const int tail = (int)(nb % 8);
  for (int64_t n = n0; n < n1; ++n) {
    __m256 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    const uint8_t* row = W + n * nb * F::bytes;
    for (int64_t b = 0; b < full; ++b) {
      const uint8_t* blk = row + b * 8 * F::bytes;
      prefetch(blk, 8 * F::bytes);
      __m256i w[8], aw[8];
      float d[8];
      for (int g = 0; g < 8; ++g) {
        w[g] = F::weights(blk + F::bytes * g);
        aw[g] = _mm256_sign_epi8(w[g], w[g]);  // |q'| as unsigned bytes (|−128| = 128 fits)
        d[g] = _cvtsh_ss(*(const uint16_t*)(blk + F::bytes * g));
      }
      const __m256 mins = F::has_min ? b32_mins<F>(blk) : _mm256_setzero_ps();
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const int64_t mb = (m0 + m) * x.nb + b;
        const int8_t* xb = x.q.data() + mb * QK;
        const float* dx = x.dx.data() + mb * 8;
        for (int g = 0; g < 8; ++g) {  // Σ_g d_g·dx_g·Σ q'·xq, as b32_tail
          const __m256i xs = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i*)(xb + 32 * g)), w[g]);
          const __m256i t = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[g], xs), ones);
          acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(d[g] * dx[g]), acc[m]);
        }
        if constexpr (F::has_min) acc[m] = _mm256_fmadd_ps(mins, _mm256_loadu_ps(x.gx.data() + mb * 8), acc[m]);
      }
    }
    if (tail)
      for (int m = 0; m < M; ++m) acc[m] = b32_tail<F>(row, full, tail, x, m0 + m, acc[m]);
    for (int m = 0; m < M; ++m) out[m * ldo + n] = static_cast<O>(hsum256(acc[m]));
  }
}

}  // namespace gl
