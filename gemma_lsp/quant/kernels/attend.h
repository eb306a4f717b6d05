// Causal attention for the few query rows of a decode or verify step (lean.py), over the KV
// cache as it is kept (bf16 or float32, strided views of buffers with room to grow).
//
// Why. torch's CPU flash attention costs ~0.5 ms per call whatever the size: at 300 cached
// tokens it was 15 ms of a 50 ms one-token step of the default model (28 layers), and a
// 4-row verify paid it 4 times (row by row, for exactness). The work itself is tiny:
// per query row and head, n dot products of head_dim, a softmax and n multiply-adds.
//
// Math, per query row r (position start + r) and head h (key/value head h / (H / KV)):
//   s_j = scale · q·k_j for j = 0..start + r;  p_j = exp(s_j − max s) / Σ exp(s − max s)
//   out = Σ_j p_j · v_j
// in float32, eight lanes of head_dim at a time (a scalar tail past the last eight), e^x by
// vec.h's exp8 (a scalar tail past the last eight positions), the sums over j in order. Each (row, head) is computed by one thread from its own inputs: a
// k-row verify yields bit for bit what k one-row steps yield.
#pragma once
#include <vector>

#include "common.h"
#include "vec.h"

namespace gl {

constexpr int64_t MAX_HEAD_DIM = 512;

struct Strided {  // [heads, positions, dim] with the last stride 1
  int64_t head, pos;
};

// one (row, head): q [D] (float), keys/values of its KV head, n positions -> out [D]
template <typename T>
void attend_one(const float* q, const T* k, const T* v, Strided ks, Strided vs, int64_t n, int64_t D, float scale,
                float* out, std::vector<float>& s) {
  s.resize(n);
  const int64_t D8 = D / 8 * 8;
  float top = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {  // four accumulators: one FMA chain per 8 lanes would wait on itself
    const T* kj = k + j * ks.pos;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t d = 0;
    for (; d + 32 <= D8; d += 32) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(kj + d), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8), load8(kj + d + 8), a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 16), load8(kj + d + 16), a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 24), load8(kj + d + 24), a3);
    }
    for (; d < D8; d += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(kj + d), a0);
    float dot = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (d = D8; d < D; ++d) dot += q[d] * to_float(kj[d]);
    s[j] = dot * scale;
    top = std::max(top, s[j]);
  }
  int64_t j = 0;  // e^(s − top), eight positions at a time; which lane a position takes depends on j only
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(&s[j], exp8(_mm256_sub_ps(_mm256_loadu_ps(&s[j]), _mm256_set1_ps(top))));
  for (; j < n; ++j) s[j] = std::exp(s[j] - top);
  float total = 0.f;
  for (j = 0; j < n; ++j) total += s[j];
  const float inv = 1.f / total;
  __m256 acc8[MAX_HEAD_DIM / 8];
  for (int64_t d = 0; d < D8; d += 8) acc8[d / 8] = _mm256_setzero_ps();
  std::fill(out + D8, out + D, 0.f);
  for (int64_t j = 0; j < n; ++j) {
    const T* vj = v + j * vs.pos;
    const __m256 p = _mm256_set1_ps(s[j] * inv);
    for (int64_t d = 0; d < D8; d += 8) acc8[d / 8] = _mm256_fmadd_ps(p, load8(vj + d), acc8[d / 8]);
    for (int64_t d = D8; d < D; ++d) out[d] += s[j] * inv * to_float(vj[d]);
  }
  for (int64_t d = 0; d < D8; d += 8) _mm256_storeu_ps(out + d, acc8[d / 8]);
}

}  // namespace gl
