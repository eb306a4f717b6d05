// Q4_K and Q6_K in tiles of 16 output columns, for AVX512-VNNI: the per-row work of a verify
// forward cut to what the integer dot products need.
//
// Why. The row kernels (avx512.h) read one output column's block and, for each activation
// row, turn its products into floats per group of 32: 4 vpmaddubsw + 4 vpdpwssd + 4 int→float
// conversions + 6 float multiply-adds per 256 weights and row. At 4 rows that is more work
// than a 2-core machine does in the time memory takes to deliver the weights, so a 4-row
// verify cost 2.3x one row. Here 16 columns share each activation value instead: a dword of
// four activations is broadcast to all lanes and vpdpbusd multiplies it with four weights of
// each of 16 columns (lane i: column i). The 6-bit scales then apply per lane (per column)
// in float, once per group, so a row costs 8 vpdpbusd + 4 float ops per 32·16 weights
// (Q4_K: 6 instructions per 256 weights and row, Q6_K: 8), a third of the row kernels'.
//
// Math: that of common.h, regrouped. For tile column i, activation row m, block b, group g
// (32 weights) of Q4_K:
//   y[m, i] += d_i·sc_gi·dx_g·(Σ_k q_ik·xq_k) − dmin_i·mn_gi·(dx_g·Σ_k xq_k)
// with the integer sum exact in int32 lanes (at most 32·15·127) and the float sums taken per
// group in a fixed order. Q6_K per 16 weights j (its scale groups): d_i·sc_ji·dx_g·(Σ q·xq −
// 32·Σ xq). Each row runs the same instructions in the same order whatever the number of
// rows, and the threads split whole tiles: a k-row verify yields bit for bit k one-row steps.
//
// Layouts (the same bytes as the row blocks, rearranged by tile_q4k / tile_q6k at load time):
//   Q4_K tile of one block of 256 (2368 bytes): d[16] f16, dmin[16] f16, sc[8][16] u8,
//     mn[8][16] u8, then per group g 256 bytes: 4 chunks of 64; byte 4i+j of chunk c holds
//     column i's weight 32g+8c+j in its low nibble and 32g+8c+4+j in its high nibble, so one
//     mask gives 16 columns × 4 consecutive weights, a vpdpbusd operand.
//   Q6_K tile of one block (3360 bytes): d[16] f16, sc[16][16] i8, then per 16 weights s
//     192 bytes: 2 chunks of low nibbles as above (weights 16s+8c+j, +4) and 64 bytes of high
//     bits: byte 4i+j holds the top 2 bits of weights 16s+j, +4, +8, +12 at bits 0, 2, 4, 6.
#pragma once
#include "common.h"

#define GL_TILES __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

namespace gl {

constexpr int TN = 16;                    // output columns per tile (int32 lanes of a zmm)
constexpr int Q4K_TILE = TN * Q4K_BYTES;  // 2368
constexpr int Q6K_TILE = TN * Q6K_BYTES;  // 3360

// weight k (0..255) of a row block, as stored: Q4_K's 4-bit q, Q6_K's 6-bit q
inline int q4k_at(const uint8_t* blk, int k) {
  const uint8_t byte = blk[20 + 32 * (k / 64) + k % 32];  // group 2c low nibbles, 2c+1 high
  return (k % 64) < 32 ? byte & 0x0F : byte >> 4;
}

inline int q6k_at(const uint8_t* blk, int k) {
  const int h = k / 128, l = k % 32, part = (k % 128) / 32;
  const uint8_t lo = blk[64 * h + l + 32 * (part & 1)], hi = blk[128 + 32 * h + l];
  return ((part < 2 ? lo & 0x0F : lo >> 4) | (((hi >> (2 * part)) & 3) << 4));
}

// [N, nb, BYTES] row blocks -> [N/16, nb, 16·BYTES] tiles: place(s, t, i) writes row block s
// into its tile t as column i (dst zeroed first: places OR their bits in)
template <int BYTES, typename Place>
inline void tile_blocks(const uint8_t* src, uint8_t* dst, int64_t N, int64_t nb, Place place) {
  std::memset(dst, 0, N * nb * BYTES);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < nb; ++b)
      place(src + (n * nb + b) * BYTES, dst + ((n / TN) * nb + b) * TN * BYTES, (int)(n % TN));
}

inline void tile_q4k(const uint8_t* src, uint8_t* dst, int64_t N, int64_t nb) {
  tile_blocks<Q4K_BYTES>(src, dst, N, nb, [](const uint8_t* s, uint8_t* t, int i) {
    std::memcpy(t + 2 * i, s, 2);           // d
    std::memcpy(t + 32 + 2 * i, s + 2, 2);  // dmin
    for (int g = 0; g < 8; ++g) t[64 + TN * g + i] = s[4 + g], t[192 + TN * g + i] = s[12 + g];
    for (int k = 0; k < QK; ++k) {
      const int g = k / 32, c = (k % 32) / 8, j = k % 4, high = (k % 8) / 4;
      t[320 + 256 * g + 64 * c + 4 * i + j] |= (uint8_t)(q4k_at(s, k) << (4 * high));
    }
  });
}

inline void tile_q6k(const uint8_t* src, uint8_t* dst, int64_t N, int64_t nb) {
  tile_blocks<Q6K_BYTES>(src, dst, N, nb, [](const uint8_t* s, uint8_t* t, int i) {
    std::memcpy(t + 2 * i, s + 208, 2);  // d
    for (int j = 0; j < 16; ++j) t[32 + TN * j + i] = s[192 + j];
    for (int k = 0; k < QK; ++k) {
      const int q = q6k_at(s, k), sub = k / 16, quad = (k % 16) / 4, j = k % 4;
      uint8_t* p = t + 288 + 192 * sub;
      p[64 * (quad / 2) + 4 * i + j] |= (uint8_t)((q & 0x0F) << (4 * (quad % 2)));
      p[128 + 4 * i + j] |= (uint8_t)((q >> 4) << (2 * quad));
    }
  });
}

GL_TILES inline __m512 scales16(const uint8_t* sc, __m512 d, bool is_signed) {  // 16 scale bytes × d, as floats
  const __m128i b = _mm_loadu_si128((const __m128i*)sc);
  return _mm512_mul_ps(d, _mm512_cvtepi32_ps(is_signed ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b)));
}

GL_TILES inline __m512i dword(const int8_t* p) {  // four activations in every lane
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

template <typename O>
GL_TILES inline void store16(O* out, __m512 v) {
  alignas(64) float f[TN];
  _mm512_store_ps(f, v);
  for (int i = 0; i < TN; ++i) out[i] = static_cast<O>(f[i]);
}

// tiles t0..t1 of W against activation rows m0..m0+M: out[m, 16t + i]
template <int M, typename O>
GL_TILES void q4k_tiles_512(const uint8_t* W, int64_t t0, int64_t t1, int64_t nb, const Rows& x, int64_t m0,
                            O* out, int64_t ldo) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  for (int64_t t = t0; t < t1; ++t) {
    __m512 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = W + (t * nb + b) * Q4K_TILE;
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)blk));
      const __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(blk + 32)));
      for (int g = 0; g < 8; ++g) {
        const uint8_t* qs = blk + 320 + 256 * g;
        prefetch(qs, 256);
        __m512i q[8];  // q[j]: 16 columns × weights 32g+4j .. 32g+4j+3
        for (int c = 0; c < 4; ++c) {
          const __m512i r = _mm512_loadu_si512(qs + 64 * c);
          q[2 * c] = _mm512_and_si512(r, low);
          q[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16(r, 4), low);
        }
        const __m512 scd = scales16(blk + 64 + TN * g, d, false), mnd = scales16(blk + 192 + TN * g, dmin, false);
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          const int64_t mb = (m0 + m) * x.nb + b;
          const int8_t* xg = x.q.data() + mb * QK + 32 * g;
          __m512i s = _mm512_setzero_si512();
          for (int j = 0; j < 8; ++j) s = _mm512_dpbusd_epi32(s, q[j], dword(xg + 4 * j));
          acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(scd, _mm512_set1_ps(x.dx[mb * 8 + g])), acc[m]);
          acc[m] = _mm512_fnmadd_ps(mnd, _mm512_set1_ps(x.gx[mb * 8 + g]), acc[m]);
        }
      }
    }
    for (int m = 0; m < M; ++m) store16(out + m * ldo + t * TN, acc[m]);
  }
}

template <int M, typename O>
GL_TILES void q6k_tiles_512(const uint8_t* W, int64_t t0, int64_t t1, int64_t nb, const Rows& x, int64_t m0,
                            O* out, int64_t ldo) {
  const __m512i low4 = _mm512_set1_epi8(0x0F), low2 = _mm512_set1_epi8(0x03);
  for (int64_t t = t0; t < t1; ++t) {
    __m512 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = W + (t * nb + b) * Q6K_TILE;
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)blk));
      for (int sub = 0; sub < 16; ++sub) {  // 16 weights per scale
        const uint8_t* p = blk + 288 + 192 * sub;
        prefetch(p, 192);
        const __m512i l0 = _mm512_loadu_si512(p), l1 = _mm512_loadu_si512(p + 64), h = _mm512_loadu_si512(p + 128);
        __m512i q[4];  // q[j]: 16 columns × weights 16·sub+4j .. +3, in 0..63
        q[0] = _mm512_or_si512(_mm512_and_si512(l0, low4), _mm512_slli_epi16(_mm512_and_si512(h, low2), 4));
        q[1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l0, 4), low4),
                               _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(h, 2), low2), 4));
        q[2] = _mm512_or_si512(_mm512_and_si512(l1, low4),
                               _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(h, 4), low2), 4));
        q[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l1, 4), low4),
                               _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(h, 6), low2), 4));
        const __m512 scd = scales16(blk + 32 + TN * sub, d, true);
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          const int64_t mb = (m0 + m) * x.nb + b;
          const int8_t* xs = x.q.data() + mb * QK + 16 * sub;
          __m512i s = _mm512_set1_epi32(-32 * (int32_t)x.sum[mb * 16 + sub]);  // Σ (q − 32)·xq
          for (int j = 0; j < 4; ++j) s = _mm512_dpbusd_epi32(s, q[j], dword(xs + 4 * j));
          acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(scd, _mm512_set1_ps(x.dx[mb * 8 + sub / 2])),
                                   acc[m]);
        }
      }
    }
    for (int m = 0; m < M; ++m) store16(out + m * ldo + t * TN, acc[m]);
  }
}

}  // namespace gl
