// AVX512-VNNI kernels: 64 weights per vpmaddubsw + vpdpwssd pair. Compiled for these
// instructions by function attribute; ops.cpp calls them only where the CPU has them.
#pragma once
#include "common.h"

#define GL_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

namespace gl {

// Q4_K, or Q5_K (Q5: the fifth bit of each weight from qh)
template <int M, typename O, bool Q5>
GL_AVX512 void q45k_rows_512(const uint8_t* W, int64_t n0, int64_t n1, int64_t nb, const Rows& x, int64_t m0, O* out,
              int64_t ldo) {
  constexpr int bytes = Q5 ? Q5K_BYTES : Q4K_BYTES, qs = Q5 ? 52 : 20;
  const __m512i low = _mm512_set1_epi8(0x0F), sixteen = _mm512_set1_epi8(16);
  // qh bit g holds group g's fifth bit; q0 holds groups 0 (bytes 0..31) and 2 (32..63): bits 0 and 2
  const __m512i bit02 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi8(1)), _mm256_set1_epi8(4), 1);
  // int16 lane indices picking scale a into lanes 0..15 and scale b into lanes 16..31
  const __m512i pick02 = _mm512_set_epi16(2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
                                          0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i pick13 = _mm512_add_epi16(pick02, _mm512_set1_epi16(1));
  const __m512i pick46 = _mm512_add_epi16(pick02, _mm512_set1_epi16(4));
  const __m512i pick57 = _mm512_add_epi16(pick02, _mm512_set1_epi16(5));
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t n = n0; n < n1; ++n) {
    __m512 acc[M];
    __m256 mins[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps(), mins[m] = _mm256_setzero_ps();
    const uint8_t* row = W + n * nb * bytes;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * bytes;
      prefetch(blk, bytes);
      const float d = _cvtsh_ss(*(const uint16_t*)blk), dmin = _cvtsh_ss(*(const uint16_t*)(blk + 2));
      const __m512i sc = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i*)(blk + 4))));
      const __m256 mn = q4k_mins(blk + 12, dmin);
      const __m512i s0 = _mm512_permutexvar_epi16(pick02, sc), s1 = _mm512_permutexvar_epi16(pick13, sc);
      const __m512i s2 = _mm512_permutexvar_epi16(pick46, sc), s3 = _mm512_permutexvar_epi16(pick57, sc);
      const __m512i r0 = _mm512_loadu_si512(blk + qs), r1 = _mm512_loadu_si512(blk + qs + 64);
      __m512i q0 = _mm512_and_si512(r0, low), q1 = _mm512_and_si512(_mm512_srli_epi16(r0, 4), low);
      __m512i q2 = _mm512_and_si512(r1, low), q3 = _mm512_and_si512(_mm512_srli_epi16(r1, 4), low);
      if constexpr (Q5) {  // + 16 where the weight's bit in qh is set
        const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(blk + 20)));
        q0 = _mm512_mask_add_epi8(q0, _mm512_test_epi8_mask(qh, bit02), q0, sixteen);
        q1 = _mm512_mask_add_epi8(q1, _mm512_test_epi8_mask(qh, _mm512_slli_epi16(bit02, 1)), q1, sixteen);
        q2 = _mm512_mask_add_epi8(q2, _mm512_test_epi8_mask(qh, _mm512_slli_epi16(bit02, 4)), q2, sixteen);
        q3 = _mm512_mask_add_epi8(q3, _mm512_test_epi8_mask(qh, _mm512_slli_epi16(bit02, 5)), q3, sixteen);
      }
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const int64_t mb = (m0 + m) * nb + b;
        const int8_t* xb = x.q.data() + mb * QK;
        const float* dv = x.dxv.data() + mb * 64;
        // Σ_g dx_g·sc_g·Σ q·xq: each product holds two groups (lanes 0..7, 8..15), as dv does
        __m512 s = _mm512_mul_ps(
            _mm512_cvtepi32_ps(_mm512_dpwssd_epi32(zero, _mm512_maddubs_epi16(q0, _mm512_loadu_si512(xb)), s0)),
            _mm512_loadu_ps(dv));
        s = _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(_mm512_dpwssd_epi32(zero, _mm512_maddubs_epi16(q1, _mm512_loadu_si512(xb + 64)), s1)),
            _mm512_loadu_ps(dv + 16), s);
        s = _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(_mm512_dpwssd_epi32(zero, _mm512_maddubs_epi16(q2, _mm512_loadu_si512(xb + 128)), s2)),
            _mm512_loadu_ps(dv + 32), s);
        s = _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(_mm512_dpwssd_epi32(zero, _mm512_maddubs_epi16(q3, _mm512_loadu_si512(xb + 192)), s3)),
            _mm512_loadu_ps(dv + 48), s);
        acc[m] = _mm512_fmadd_ps(s, _mm512_set1_ps(d), acc[m]);
        mins[m] = _mm256_fmadd_ps(mn, _mm256_loadu_ps(x.gx.data() + mb * 8), mins[m]);
      }
    }
    for (int m = 0; m < M; ++m) out[m * ldo + n] = static_cast<O>(_mm512_reduce_add_ps(acc[m]) - hsum256(mins[m]));
  }
}

template <int M, typename O>
GL_AVX512 void q6k_rows_512(const uint8_t* W, int64_t n0, int64_t n1, int64_t nb, const Rows& x, int64_t m0, O* out,
              int64_t ldo) {
  const __m512i low4 = _mm512_set1_epi8(0x0F), low2 = _mm512_set1_epi8(0x03);
  // int16 lane indices: lanes 8i..8i+7 take scale base+i (16 weights = 8 pairs per scale)
  const __m512i pick0 = _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2,
                                         1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i pick[4] = {pick0, _mm512_add_epi16(pick0, _mm512_set1_epi16(4)),
                           _mm512_add_epi16(pick0, _mm512_set1_epi16(8)),
                           _mm512_add_epi16(pick0, _mm512_set1_epi16(12))};
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t n = n0; n < n1; ++n) {
    __m512 acc[M];
    __m256 offs[M];  // the −32 term, 8 lanes: one per group of 32
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps(), offs[m] = _mm256_setzero_ps();
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
        const float* dv = x.dxv.data() + mb * 64;
        __m512 f = _mm512_setzero_ps();  // Σ_g dx_g·Σ_{j∈g} sc_j·Σ q·xq: two groups per product
        for (int j = 0; j < 4; ++j)
          f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpwssd_epi32(
                                  zero, _mm512_maddubs_epi16(q[j], _mm512_loadu_si512(xb + 64 * j)), s[j])),
                              _mm512_loadu_ps(dv + 16 * j), f);
        // 32·Σ_{j∈g} sc_j·Σ xq per group g (lane g), times dx_g
        const __m256i corr = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i*)(x.sum.data() + mb * 16)));
        const __m256 c =
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_slli_epi32(corr, 5)), _mm256_loadu_ps(x.dx.data() + mb * 8));
        acc[m] = _mm512_fmadd_ps(f, _mm512_set1_ps(d), acc[m]);
        offs[m] = _mm256_fmadd_ps(c, _mm256_set1_ps(d), offs[m]);
      }
    }
    for (int m = 0; m < M; ++m) out[m * ldo + n] = static_cast<O>(_mm512_reduce_add_ps(acc[m]) - hsum256(offs[m]));
  }
}

// Blocks of 32 (Q8_0, Q5_0, Q4_0, Q4_1, Q5_1: common.h), read as stored: per 64 bytes of activations two
// blocks' weights and scales. nb counts blocks of 32 here; whole groups of 8 run 512 bits wide,
// the rest in b32_dot.
template <int M, typename O, typename F>
GL_AVX512 void b32_rows_512(const uint8_t* W, int64_t n0, int64_t n1, int64_t nb, const Rows& x, int64_t m0, O* out,
              int64_t ldo) {
  const __m512i zero = _mm512_setzero_si512();
  const int64_t full = nb / 8;
  const int tail = (int)(nb % 8);
  for (int64_t n = n0; n < n1; ++n) {
    __m512 acc[M];
    __m256 rest[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps(), rest[m] = _mm256_setzero_ps();
    const uint8_t* row = W + n * nb * F::bytes;
    for (int64_t b = 0; b < full; ++b) {
      const uint8_t* blk = row + b * 8 * F::bytes;
      prefetch(blk, 8 * F::bytes);
      __m512i aw[4];     // |q'| as unsigned bytes (|−128| = 128 fits)
      __mmask64 neg[4];  // where q' < 0: the activation's sign flips instead
      __m512 dv[4];      // d of the first block in lanes 0..7, of the second in 8..15
      for (int p = 0; p < 4; ++p) {
        const uint8_t* g = blk + 2 * F::bytes * p;
        const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(F::weights(g)), F::weights(g + F::bytes), 1);
        aw[p] = _mm512_abs_epi8(w);
        neg[p] = _mm512_movepi8_mask(w);
        dv[p] = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(_cvtsh_ss(*(const uint16_t*)g)),
                                     _mm512_set1_ps(_cvtsh_ss(*(const uint16_t*)(g + F::bytes))));
      }
      const __m256 mins = F::has_min ? b32_mins<F>(blk) : _mm256_setzero_ps();
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const int64_t mb = (m0 + m) * x.nb + b;
        const int8_t* xb = x.q.data() + mb * QK;
        const float* dx = x.dxv.data() + mb * 64;  // dx_{2p} in lanes 0..7, dx_{2p+1} in 8..15
        for (int p = 0; p < 4; ++p) {  // Σ_g d_g·dx_g·Σ q'·xq, spread over 16 lanes
          const __m512i xv = _mm512_loadu_si512(xb + 64 * p);
          const __m512i t = _mm512_dpbusd_epi32(zero, aw[p], _mm512_mask_sub_epi8(xv, neg[p], zero, xv));
          acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(dv[p], _mm512_loadu_ps(dx + 16 * p)), acc[m]);
        }
        if constexpr (F::has_min) rest[m] = _mm256_fmadd_ps(mins, _mm256_loadu_ps(x.gx.data() + mb * 8), rest[m]);
      }
    }
    if (tail)
      for (int m = 0; m < M; ++m) rest[m] = b32_tail<F>(row, full, tail, x, m0 + m, rest[m]);
    for (int m = 0; m < M; ++m) out[m * ldo + n] = static_cast<O>(_mm512_reduce_add_ps(acc[m]) + hsum256(rest[m]));
  }
}

}  // namespace gl
