/* r1kit's CPU decode kernels (x86-64 with AVX-512, fp32), built and loaded by cpu.py. Plain C over raw pointers,
   threaded with OpenMP: the library links the libgomp that torch has already loaded, so the two share one thread
   pool, and every threaded call takes torch's thread count explicitly.

   r1k_linear: y (M, N) = x (M, K) @ W.T + bias for W prepacked as (blocks, K, NB), zero-padded: block b holds NB
   output features with its K inputs outermost. A block's outputs for 16 rows (8 when M <= 8) live in NB vector
   registers, one per output feature, so the inner step is NB fused multiply-adds of one weight (broadcast from
   memory) with 16 rows of one input column. Every weight is read from memory once per call and used for 16 rows:
   at decode shapes (8-16 rows) this runs at the machine's fp32 matmul peak, where oneDNN's prepacked GEMM reaches
   60-75% of it (SmolLM2's 30 layers + head at 16 rows: 25 vs 32 ms on 2 Zen 4 cores). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define NB 24 /* 24 accumulators + the input column: 25 of the 32 vector registers */

int r1k_block(void) { return NB; }

/* the first min(n, 16) lanes */
static inline __mmask16 first_lanes(int64_t n) { return n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1); }

/* exp(x): Cephes' expf polynomial on x - n ln2, scaled by 2^n; relative error ~1e-7, as libm's expf. Below -88 it
   returns ~0, above 88 inf (silu's g / (1 + inf) is then the right 0), and NaN for NaN: a diverged policy shows. */
static inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-88.f), x); /* in this order a NaN passes through (max returns operand 2) */
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  f = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), f);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, f), f, _mm512_add_ps(f, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

/* tmp (NB, L) = W block (K, NB) outer-multiplied with xt (K, L), for L = 16 (zmm) or 8 (ymm) lanes */
#define BLOCK_KERNEL(NAME, VEC, L, ZERO, LOAD, FMA, SET1, STORE)                                                \
  static void NAME(const float* wb, const float* xt, int64_t K, float* tmp) {                                   \
    VEC acc[NB];                                                                                                 \
    for (int j = 0; j < NB; j++) acc[j] = ZERO();                                                               \
    for (int64_t k = 0; k < K; k++) {                                                                           \
      VEC xv = LOAD(xt + k * L);                                                                                 \
      _mm_prefetch((const char*)(wb + (k + 16) * NB), _MM_HINT_T0);                                             \
      _Pragma("GCC unroll 32") for (int j = 0; j < NB; j++) acc[j] = FMA(SET1(wb[k * NB + j]), xv, acc[j]);     \
    }                                                                                                            \
    for (int j = 0; j < NB; j++) STORE(tmp + j * L, acc[j]);                                                    \
  }
BLOCK_KERNEL(block16, __m512, 16, _mm512_setzero_ps, _mm512_load_ps, _mm512_fmadd_ps, _mm512_set1_ps,
             _mm512_store_ps)
BLOCK_KERNEL(block8, __m256, 8, _mm256_setzero_ps, _mm256_load_ps, _mm256_fmadd_ps, _mm256_set1_ps,
             _mm256_store_ps)

/* Returns 0, or -1 when the scratch cannot be allocated. bias may be NULL (and is, with swiglu).
   swiglu: W packs the gate and up projections, NB/2 features of each per block (pack_swiglu in cpu.py), and
   y (M, N) = silu(x @ Wg.T) * (x @ Wu.T), SwiGLU's hidden state, without writing gate and up out. */
int r1k_linear(const float* x, int64_t M, int64_t K, const float* w, int64_t N, const float* bias, float* y,
               int swiglu, int nthreads) {
  if (M == 0) return 0;
  const int64_t L = M <= 8 ? 8 : 16, chunks = (M + L - 1) / L, per = swiglu ? NB / 2 : NB, nb = (N + per - 1) / per;
  /* x transposed in chunks of L rows, (chunks, K, L): all chunks go through a weight block while it is in cache */
  float* xt = aligned_alloc(64, (size_t)(chunks * K * L * sizeof(float) + 63) / 64 * 64);
  if (!xt) return -1;
  for (int64_t c = 0; c < chunks; c++)
    for (int64_t k = 0; k < K; k++)
      for (int64_t l = 0; l < L; l++) {
        int64_t m = c * L + l;
        xt[(c * K + k) * L + l] = m < M ? x[m * K + k] : 0.f;
      }
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t b = 0; b < nb; b++) {
    float tmp[NB * 16] __attribute__((aligned(64)));
    const int64_t n0 = b * per, nj = N - n0 < per ? N - n0 : per;
    const __mmask16 lanes = first_lanes(L);
    for (int64_t c = 0; c < chunks; c++) {
      if (L == 16)
        block16(w + b * K * NB, xt + c * K * L, K, tmp);
      else
        block8(w + b * K * NB, xt + c * K * L, K, tmp);
      if (swiglu)
        for (int64_t j = 0; j < per; j++) { /* gate j in row j of tmp, up j in row per + j */
          __m512 g = _mm512_maskz_loadu_ps(lanes, tmp + j * L), u = _mm512_maskz_loadu_ps(lanes, tmp + (per + j) * L);
          __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
          _mm512_mask_storeu_ps(tmp + j * L, lanes,
                               _mm512_div_ps(_mm512_mul_ps(g, u), _mm512_add_ps(e, _mm512_set1_ps(1.f))));
        }
      for (int64_t m = c * L; m < M && m < (c + 1) * L; m++) {
        float* yr = y + m * N + n0;
        for (int64_t j = 0; j < nj; j++) yr[j] = tmp[j * L + m - c * L] + (bias ? bias[n0 + j] : 0.f);
      }
    }
  }
  free(xt);
  return 0;
}

/* y (M, D) = w * (x * rsqrt(mean(x^2) + eps)): RMSNorm in the reference implementations' order. */
void r1k_rmsnorm(const float* x, const float* w, float* y, int64_t M, int64_t D, float eps) {
  for (int64_t m = 0; m < M; m++) {
    const float* xr = x + m * D;
    __m512 ss = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16) {
      __mmask16 live = first_lanes(D - d);
      __m512 v = _mm512_maskz_loadu_ps(live, xr + d);
      ss = _mm512_fmadd_ps(v, v, ss);
    }
    const float r = 1.f / sqrtf(_mm512_reduce_add_ps(ss) / (float)D + eps);
    for (int64_t d = 0; d < D; d++) y[m * D + d] = w[d] * (xr[d] * r);
  }
}

/* Half-split rotary embedding (Llama/Qwen's rotate_half) of one head: out = x * cos + rotate_half(x) * sin. */
static inline void rope(const float* x, const float* cos, const float* sin, float* out, int64_t D) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < h; i++) {
    out[i] = x[i] * cos[i] - x[i + h] * sin[i];
    out[i + h] = x[i + h] * cos[i] + x[i] * sin[i];
  }
}

/* A decode step's attention for one layer, one query token per row, from the fused q|k|v projection to the heads'
   outputs: RoPE on q and k, k and v written into the cache at position len[b] - 1, then each row attends over its
   own first len[b] positions (no mask). qkv (B, (H + 2 Hkv) D); cos, sin (B, D/2); kc, vc the cache's rows
   (B, Hkv, S, D), S its max_seq; y (B, H D). D a multiple of 16, <= 256. One task per (row, kv head): the H / Hkv
   query heads sharing a kv head read its keys and values once. Returns 0, or -1 when scratch cannot be allocated. */
int r1k_decode_attention(const float* qkv, const float* cos, const float* sin, float* kc, float* vc, float* y,
                         const int64_t* len, int64_t B, int64_t H, int64_t Hkv, int64_t S, int64_t D, float scale,
                         int nthreads) {
  const int64_t rep = H / Hkv, nd = D / 16, width = (H + 2 * Hkv) * D;
  int64_t maxlen = 0;
  for (int64_t b = 0; b < B; b++) maxlen = len[b] > maxlen ? len[b] : maxlen;
  const int64_t ns = (maxlen + 15) / 16 * 16;
  int failed = 0;
#pragma omp parallel num_threads(nthreads)
  {
    float* s = aligned_alloc(64, (size_t)(rep * (ns + D)) * sizeof(float)); /* scores, then probabilities; q */
    if (!s) failed = 1;
#pragma omp for schedule(static)
    for (int64_t task = 0; task < B * Hkv; task++) {
      if (!s) continue;
      const int64_t b = task / Hkv, g = task % Hkv, n = len[b];
      float *kb = kc + task * S * D, *vb = vc + task * S * D, *qb = s + rep * ns;
      const float *row = qkv + b * width, *cb = cos + b * (D / 2), *sb = sin + b * (D / 2);
      rope(row + (H + g) * D, cb, sb, kb + (n - 1) * D, D);
      for (int64_t d = 0; d < D; d++) vb[(n - 1) * D + d] = row[(H + Hkv + g) * D + d];
      for (int64_t r = 0; r < rep; r++) rope(row + (g * rep + r) * D, cb, sb, qb + r * D, D);
      for (int64_t t = 0; t < n; t++)
        for (int64_t r = 0; r < rep; r++) {
          __m512 a = _mm512_setzero_ps();
          for (int64_t c = 0; c < nd; c++)
            a = _mm512_fmadd_ps(_mm512_loadu_ps(kb + t * D + c * 16), _mm512_loadu_ps(qb + r * D + c * 16), a);
          s[r * ns + t] = _mm512_reduce_add_ps(a) * scale;
        }
      for (int64_t r = 0; r < rep; r++) {
        float* sr = s + r * ns;
        float m = sr[0];
        for (int64_t t = 1; t < n; t++) m = sr[t] > m ? sr[t] : m;
        __m512 sum = _mm512_setzero_ps();
        for (int64_t t = 0; t < n; t += 16) {
          __mmask16 live = first_lanes(n - t);
          __m512 e = _mm512_maskz_mov_ps(live, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, sr + t),
                                                                     _mm512_set1_ps(m))));
          _mm512_store_ps(sr + t, e);
          sum = _mm512_add_ps(sum, e);
        }
        __m512 acc[16];
        for (int64_t c = 0; c < nd; c++) acc[c] = _mm512_setzero_ps();
        for (int64_t t = 0; t < n; t++) {
          __m512 p = _mm512_set1_ps(sr[t]);
          for (int64_t c = 0; c < nd; c++) acc[c] = _mm512_fmadd_ps(p, _mm512_loadu_ps(vb + t * D + c * 16), acc[c]);
        }
        __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sum));
        float* yr = y + b * H * D + (g * rep + r) * D;
        for (int64_t c = 0; c < nd; c++) _mm512_storeu_ps(yr + c * 16, _mm512_mul_ps(acc[c], inv));
      }
    }
    free(s);
  }
  return failed ? -1 : 0;
}
