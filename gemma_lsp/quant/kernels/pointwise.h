// The small ops between the matmuls of a decode or verify step (lean.py): RMSNorm, rotary
// embedding, SiLU-gated product. One call each instead of the 5-14 torch ops each takes.
//
// Why. With the block kernels near the memory ceiling, a one-token step of the default model
// (28 layers) spent ~15 ms of ~49 in the ~1,100 small torch ops around them and the Python
// between them: each op costs a few µs of dispatch for a few µs of work on 1,536 values.
//
// Math, per row (each row computed alone, in float32, rounded to the storage type T where
// transformers' Llama/Qwen2 modules round, so bf16 results match theirs up to the order of
// the one float sum):
//   rms_norm:  y = w · T(x / sqrt(mean(x²) + eps))
//   rope:      y_d = T(T(x_d·cos_d) + T(x'_d·sin_d)),  x' = [−x₂, x₁] (the halves of the head)
//   silu_mul:  y = T(T(g / (1 + exp(−g))) · u)
// A k-row verify yields bit for bit what k one-row steps yield: nothing mixes rows.
#pragma once
#include <ATen/Parallel.h>

#include "vec.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace gl {

template <typename T>
inline T round_to(float v) { return static_cast<T>(v); }

// x, y [M, D] with row strides sx, sy; w [D]
template <typename T>
void rms_norm_rows(const T* x, int64_t sx, const T* w, T* y, int64_t sy, int64_t M, int64_t D, float eps) {
  at::parallel_for(0, M, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * sx;
      T* yr = y + r * sy;
      float ss = 0.f;
      for (int64_t d = 0; d < D; ++d) {
        const float v = static_cast<float>(xr[d]);
        ss += v * v;
      }
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(D) + eps);
      for (int64_t d = 0; d < D; ++d)
        yr[d] = round_to<T>(static_cast<float>(w[d]) * static_cast<float>(round_to<T>(static_cast<float>(xr[d]) * inv)));
    }
  });
}

// x [m, heads·D] (row stride sx) -> y [heads, m, D] contiguous; cos, sin [m, D] contiguous
template <typename T>
void rope_rows(const T* x, int64_t sx, const T* cos, const T* sin, T* y, int64_t m, int64_t heads, int64_t D) {
  const int64_t half = D / 2;
  at::parallel_for(0, heads * m, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {  // i = h·m + r
      const int64_t h = i / m, r = i % m;
      const T* xr = x + r * sx + h * D;
      const T *c = cos + r * D, *s = sin + r * D;
      T* yr = y + i * D;
      for (int64_t d = 0; d < D; ++d) {
        const float other = d < half ? -static_cast<float>(xr[d + half]) : static_cast<float>(xr[d - half]);
        const float a = static_cast<float>(round_to<T>(static_cast<float>(xr[d]) * static_cast<float>(c[d])));
        const float b = static_cast<float>(round_to<T>(other * static_cast<float>(s[d])));
        yr[d] = round_to<T>(a + b);
      }
    }
  });
}

constexpr int64_t SPAN = 512;  // columns per unit of work: a unit never starts mid-vector

// g, u [M, I] (row strides sg, su) -> y [M, I] contiguous. Each value's lane (vector or the
// row's scalar tail) depends only on its column, so it is computed the same whatever M is.
template <typename T>
void silu_mul_rows(const T* g, int64_t sg, const T* u, int64_t su, T* y, int64_t M, int64_t I) {
  const int64_t spans = (I + SPAN - 1) / SPAN;
  at::parallel_for(0, M * spans, 2, [&](int64_t j0, int64_t j1) {
    float act[SPAN];
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t r = j / spans, c0 = j % spans * SPAN, n = std::min(SPAN, I - c0);
      const T* gr = g + r * sg + c0;
      int64_t d = 0;
      for (; d + 8 <= n; d += 8) {  // silu(v) = v / (1 + e^−v)
        const __m256 v = load8(gr + d);
        const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), v));
        _mm256_storeu_ps(act + d, _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.f), e)));
      }
      for (; d < n; ++d) {
        const float v = static_cast<float>(gr[d]);
        act[d] = v / (1.f + std::exp(-v));
      }
      const T* ur = u + r * su + c0;
      T* yr = y + r * I + c0;
      for (d = 0; d < n; ++d) yr[d] = round_to<T>(static_cast<float>(round_to<T>(act[d])) * static_cast<float>(ur[d]));
    }
  });
}

}  // namespace gl
