// HyenaLens' CPU kernels for the training step (model.kernels=cpp; models/kernels/__init__.py).
//
// Each kernel fuses passes that eager PyTorch runs as separate ops over the same [rows, C]
// float32 tensor, so the tensor is read once instead of three to six times (BENCHMARKS.md,
// "Levers"). Every loop is elementwise along the contiguous channel axis C and vectorized by the
// compiler (`#pragma omp simd`; expf through glibc's vector math library under -ffast-math).
// Sums over rows (bias and tap gradients) accumulate a float per channel for 64 rows, then add
// that into a double, so their rounding does not grow with the batch. Results are deterministic
// for a given binary and input; they differ from torch's kernels in the last bits.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr float kC0 = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kC1 = 0.044715f;
constexpr int64_t kBlock = 64;  // rows summed in float before the double accumulator

// GELU-tanh's two factors from e = exp(−2|u|), u = c0·(x + c1·x³), without cancellation:
// 1 + tanh(u) = 2/(1+e) for u ≥ 0 and 2e/(1+e) for u < 0;  1 − tanh²(u) = 4e/(1+e)².
// The exponent is never positive, so nothing overflows (expf may underflow to 0: then the
// factors are exactly 2 or 0, and 0, as torch's kernel saturates).
struct GeluParts {
  float one_plus_tanh, sech2;
};
inline GeluParts gelu_parts(float x) {
  const float u = kC0 * (x + kC1 * x * x * x);
  const float e = expf(-2.f * fabsf(u));
  const float r = 1.f / (1.f + e);
  return {2.f * r * (u >= 0.f ? 1.f : e), 4.f * e * r * r};
}

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU (model.kernels=cpp is a CPU path)");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Per-channel sums of rows, in float over kBlock rows, then into double.
struct ColumnSum {
  std::vector<float> part;
  std::vector<double> total;
  explicit ColumnSum(int64_t n) : part(n, 0.f), total(n, 0.0) {}
  void flush() {
    for (size_t j = 0; j < part.size(); ++j) { total[j] += part[j]; part[j] = 0.f; }
  }
  void write(float* out) {
    flush();
    for (size_t j = 0; j < total.size(); ++j) out[j] = static_cast<float>(total[j]);
  }
};

}  // namespace

// GELU-tanh of h + b, h = x·W1ᵀ [M, N] from a bias-free matmul. h is overwritten with the
// pre-activation h + b (what the backward reads); returns the activation [M, N].
torch::Tensor bias_gelu_forward(torch::Tensor h, torch::Tensor b) {
  check(h, "h"); check(b, "b");
  const int64_t N = b.numel(), M = h.numel() / N;
  TORCH_CHECK(h.size(-1) == N, "h's last axis must match the bias");
  auto y = torch::empty_like(h);
  float* hp = h.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t i = 0; i < M; ++i) {
    float* hr = hp + i * N;
    float* yr = yp + i * N;
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) {
      const float x = hr[j] + bp[j];
      hr[j] = x;
      yr[j] = 0.5f * x * gelu_parts(x).one_plus_tanh;
    }
  }
  return y;
}

// (∂pre, ∂b) for the incoming gradient g [M, N] and the saved pre-activation [M, N].
std::vector<torch::Tensor> bias_gelu_backward(torch::Tensor g, torch::Tensor pre) {
  check(g, "g"); check(pre, "pre");
  TORCH_CHECK(g.sizes() == pre.sizes(), "g and pre must have one shape");
  const int64_t N = pre.size(-1), M = pre.numel() / N;
  auto gp = torch::empty_like(pre);
  auto gb = torch::empty({N}, pre.options());
  const float* gg = g.data_ptr<float>();
  const float* pp = pre.data_ptr<float>();
  float* op = gp.data_ptr<float>();
  ColumnSum sum(N);
  float* part = sum.part.data();
  for (int64_t i = 0; i < M; ++i) {
    const float* gr = gg + i * N;
    const float* pr = pp + i * N;
    float* orow = op + i * N;
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) {
      const float x = pr[j];
      const GeluParts q = gelu_parts(x);
      const float d = 0.5f * q.one_plus_tanh + 0.5f * x * q.sech2 * kC0 * (1.f + 3.f * kC1 * x * x);
      const float v = gr[j] * d;
      orow[j] = v;
      part[j] += v;
    }
    if (i % kBlock == kBlock - 1) sum.flush();
  }
  sum.write(gb.data_ptr<float>());
  return {gp, gb};
}

// Depthwise short conv along L of z [B, L, C]: out[t] = bias + Σ_m wt[m] ⊙ z[t + m − pad]
// (zero outside 0…L−1), wt [K, C] tap-major; one pass instead of one per tap.
torch::Tensor short_conv_forward(torch::Tensor z, torch::Tensor wt, c10::optional<torch::Tensor> bias, int64_t pad) {
  check(z, "z"); check(wt, "wt");
  const int64_t C = z.size(-1), L = z.size(-2), B = z.numel() / (C * L), K = wt.size(0);
  TORCH_CHECK(wt.size(1) == C, "wt must be [K, C]");
  const float* bp = nullptr;
  if (bias.has_value()) { check(*bias, "bias"); bp = bias->data_ptr<float>(); }
  auto out = torch::empty_like(z);
  const float* zp = z.data_ptr<float>();
  const float* w = wt.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < L; ++t) {
      float* o = op + (b * L + t) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = bp ? bp[c] : 0.f;
      for (int64_t m = 0; m < K; ++m) {
        const int64_t s = t + m - pad;
        if (s < 0 || s >= L) continue;
        const float* zr = zp + (b * L + s) * C;
        const float* wr = w + m * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] += wr[c] * zr[c];
      }
    }
  }
  return out;
}

// (∂z, ∂wt, ∂bias) of short_conv_forward for the incoming gradient g [B, L, C], in one pass:
// ∂z[t] = Σ_m wt[m] ⊙ g[t − m + pad],  ∂wt[m] = Σ_{b,t} g[t] ⊙ z[t + m − pad],  ∂bias = Σ g.
std::vector<torch::Tensor> short_conv_backward(torch::Tensor g, torch::Tensor z, torch::Tensor wt, int64_t pad) {
  check(g, "g"); check(z, "z"); check(wt, "wt");
  TORCH_CHECK(g.sizes() == z.sizes(), "g and z must have one shape");
  const int64_t C = z.size(-1), L = z.size(-2), B = z.numel() / (C * L), K = wt.size(0);
  auto gz = torch::empty_like(z);
  auto gw = torch::empty_like(wt);
  auto gb = torch::empty({C}, z.options());
  const float* gp = g.data_ptr<float>();
  const float* zp = z.data_ptr<float>();
  const float* w = wt.data_ptr<float>();
  float* gzp = gz.data_ptr<float>();
  ColumnSum sw(K * C), sb(C);
  int64_t rows = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < L; ++t, ++rows) {
      float* o = gzp + (b * L + t) * C;
      const float* gr = gp + (b * L + t) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = 0.f;
      for (int64_t m = 0; m < K; ++m) {
        const int64_t s = t - m + pad;  // the output row whose tap m read row t
        if (s >= 0 && s < L) {
          const float* gs = gp + (b * L + s) * C;
          const float* wr = w + m * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] += wr[c] * gs[c];
        }
        const int64_t u = t + m - pad;  // the input row tap m reads for output row t
        if (u >= 0 && u < L) {
          const float* zu = zp + (b * L + u) * C;
          float* r = sw.part.data() + m * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) r[c] += gr[c] * zu[c];
        }
      }
      float* rb = sb.part.data();
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) rb[c] += gr[c];
      if (rows % kBlock == kBlock - 1) { sw.flush(); sb.flush(); }
    }
  }
  sw.write(gw.data_ptr<float>());
  sb.write(gb.data_ptr<float>());
  return {gz, gw, gb};
}

// ---- the operator core's gate products around the FFT convolutions (models/kernels/gated.py) ----
//
// Row operands are [B, L, d] tensors or channel-block views of a [B, L, W] tensor (contiguous
// channels, rows `stride` apart); FFT operands are [B, d, n] contiguous, time along the last axis
// and zero past L. Transposes go through a tile of kTile rows held in a local buffer.

namespace {

constexpr int64_t kTile = 16;

struct Rows {  // a [B, L, d] operand: row r = b·L + t starts at p + r·stride
  float* p;
  int64_t stride;
};

Rows rows(const torch::Tensor& t, int64_t L, int64_t d, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32, name, " must be float32 on the CPU");
  TORCH_CHECK(t.dim() == 3 && t.size(1) == L && t.size(2) == d, name, " must be [B, L, d]");
  TORCH_CHECK(t.stride(2) == 1 && t.stride(0) == L * t.stride(1), name, " must have contiguous channels and rows");
  return {t.data_ptr<float>(), t.stride(1)};
}

// tile [tn, d] (row-major, row t0 + i at tile + i·d) → buf[b, c, t0 + i]
inline void tile_to_fft(const float* tile, int64_t tn, int64_t d, float* bufb, int64_t n, int64_t t0) {
  for (int64_t c = 0; c < d; ++c) {
    float* dst = bufb + c * n + t0;
    for (int64_t i = 0; i < tn; ++i) dst[i] = tile[i * d + c];
  }
}

// buf[b, c, t0 + i] → tile [tn, d]
inline void fft_to_tile(const float* bufb, int64_t n, int64_t t0, int64_t tn, int64_t d, float* tile) {
  for (int64_t c = 0; c < d; ++c) {
    const float* src = bufb + c * n + t0;
    for (int64_t i = 0; i < tn; ++i) tile[i * d + c] = src[i];
  }
}

}  // namespace

// Forward, into a long convolution: p = a ⊙ g; returns (p [B, L, d], pᵀ zero-padded [B, d, n]).
std::vector<torch::Tensor> gate_pad(torch::Tensor a, torch::Tensor g, int64_t n) {
  const int64_t B = a.size(0), L = a.size(1), d = a.size(2);
  TORCH_CHECK(n >= L, "n must be at least L");
  const Rows A = rows(a, L, d, "a"), G = rows(g, L, d, "g");
  auto p = torch::empty({B, L, d}, a.options());
  auto buf = torch::empty({B, d, n}, a.options());
  float* pp = p.data_ptr<float>();
  float* bp = buf.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    float* bufb = bp + b * d * n;
    for (int64_t t0 = 0; t0 < L; t0 += kTile) {
      const int64_t tn = std::min(kTile, L - t0);
      float* tile = pp + (b * L + t0) * d;  // p's rows double as the tile
      for (int64_t i = 0; i < tn; ++i) {
        const int64_t r = b * L + t0 + i;
        const float* ar = A.p + r * A.stride;
        const float* gr = G.p + r * G.stride;
        float* o = tile + i * d;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) o[c] = ar[c] * gr[c];
      }
      tile_to_fft(tile, tn, d, bufb, n, t0);
    }
    for (int64_t c = 0; c < d; ++c) std::fill(bufb + c * n + L, bufb + (c + 1) * n, 0.f);
  }
  return {p, buf};
}

// Forward, out of a long convolution: z = Y[:, :, :L]ᵀ + D ⊙ p (Y = irfft(...) [B, d, n]); with
// a gate g also y = z ⊙ g. Returns (z, y) (y undefined without g).
std::vector<torch::Tensor> unpad_skip(torch::Tensor Y, torch::Tensor p, torch::Tensor D, c10::optional<torch::Tensor> g) {
  const int64_t B = p.size(0), L = p.size(1), d = p.size(2), n = Y.size(2);
  check(Y, "Y"); check(D, "D");
  const Rows P = rows(p, L, d, "p");
  Rows G{nullptr, 0};
  if (g.has_value()) G = rows(*g, L, d, "g");
  auto z = torch::empty({B, L, d}, p.options());
  torch::Tensor y = g.has_value() ? torch::empty({B, L, d}, p.options()) : torch::Tensor();
  const float* Yp = Y.data_ptr<float>();
  const float* Dp = D.data_ptr<float>();
  float* zp = z.data_ptr<float>();
  float* yp = g.has_value() ? y.data_ptr<float>() : nullptr;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t0 = 0; t0 < L; t0 += kTile) {
      const int64_t tn = std::min(kTile, L - t0);
      float* tile = zp + (b * L + t0) * d;  // z's rows receive Yᵀ, then the skip term
      fft_to_tile(Yp + b * d * n, n, t0, tn, d, tile);
      for (int64_t i = 0; i < tn; ++i) {
        const int64_t r = b * L + t0 + i;
        const float* pr = P.p + r * P.stride;
        float* zr = tile + i * d;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) zr[c] = zr[c] + pr[c] * Dp[c];
        if (yp) {
          const float* gr = G.p + r * G.stride;
          float* yr = yp + r * d;
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) yr[c] = zr[c] * gr[c];
        }
      }
    }
  }
  return {z, y};
}

// Backward, into a long convolution's adjoint: gz = g ⊙ m (m optional: gz = g), and with
// (zs, out) also out = g ⊙ zs (the gradient of the gate that multiplied zs). Returns
// (gzᵀ zero-padded [B, d, n], ∂D = Σ_{b,t} gz ⊙ zin).
std::vector<torch::Tensor> grad_pad(torch::Tensor g, c10::optional<torch::Tensor> m, c10::optional<torch::Tensor> zs,
                                    c10::optional<torch::Tensor> out, torch::Tensor zin, int64_t n) {
  const int64_t B = g.size(0), L = g.size(1), d = g.size(2);
  const Rows Gr = rows(g, L, d, "g"), Z = rows(zin, L, d, "zin");
  Rows M{nullptr, 0}, S{nullptr, 0}, O{nullptr, 0};
  if (m.has_value()) M = rows(*m, L, d, "m");
  TORCH_CHECK(zs.has_value() == out.has_value(), "zs and out go together");
  if (zs.has_value()) { S = rows(*zs, L, d, "zs"); O = rows(*out, L, d, "out"); }
  auto buf = torch::empty({B, d, n}, g.options());
  auto gD = torch::empty({d}, g.options());
  float* bp = buf.data_ptr<float>();
  std::vector<float> tile(kTile * d);
  ColumnSum sum(d);
  int64_t count = 0;
  for (int64_t b = 0; b < B; ++b) {
    float* bufb = bp + b * d * n;
    for (int64_t t0 = 0; t0 < L; t0 += kTile) {
      const int64_t tn = std::min(kTile, L - t0);
      for (int64_t i = 0; i < tn; ++i, ++count) {
        const int64_t r = b * L + t0 + i;
        const float* gr = Gr.p + r * Gr.stride;
        const float* zr = Z.p + r * Z.stride;
        float* o = tile.data() + i * d;
        float* part = sum.part.data();
        if (M.p) {
          const float* mr = M.p + r * M.stride;
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) o[c] = gr[c] * mr[c];
        } else {
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) o[c] = gr[c];
        }
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) part[c] += o[c] * zr[c];
        if (S.p) {
          const float* sr = S.p + r * S.stride;
          float* orow = O.p + r * O.stride;
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) orow[c] = gr[c] * sr[c];
        }
        if (count % kBlock == kBlock - 1) sum.flush();
      }
      tile_to_fft(tile.data(), tn, d, bufb, n, t0);
    }
    for (int64_t c = 0; c < d; ++c) std::fill(bufb + c * n + L, bufb + (c + 1) * n, 0.f);
  }
  sum.write(gD.data_ptr<float>());
  return {buf, gD};
}

// Backward, out of the adjoint: gzin = GY[:, :, :L]ᵀ + D ⊙ gz (gz read back from its padded
// transpose gbuf), then out_gate = gzin ⊙ prev and out_prev = gzin ⊙ gate (both [B, L, d] views).
void unpad_grad(torch::Tensor GY, torch::Tensor gbuf, torch::Tensor D, torch::Tensor prev, torch::Tensor gate,
                torch::Tensor out_gate, torch::Tensor out_prev) {
  const int64_t B = prev.size(0), L = prev.size(1), d = prev.size(2), n = GY.size(2);
  check(GY, "GY"); check(gbuf, "gbuf"); check(D, "D");
  const Rows P = rows(prev, L, d, "prev"), Gt = rows(gate, L, d, "gate");
  const Rows OG = rows(out_gate, L, d, "out_gate"), OP = rows(out_prev, L, d, "out_prev");
  const float* Yp = GY.data_ptr<float>();
  const float* Bp = gbuf.data_ptr<float>();
  const float* Dp = D.data_ptr<float>();
  std::vector<float> ty(kTile * d), tg(kTile * d);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t0 = 0; t0 < L; t0 += kTile) {
      const int64_t tn = std::min(kTile, L - t0);
      fft_to_tile(Yp + b * d * n, n, t0, tn, d, ty.data());
      fft_to_tile(Bp + b * d * n, n, t0, tn, d, tg.data());
      for (int64_t i = 0; i < tn; ++i) {
        const int64_t r = b * L + t0 + i;
        const float* yr = ty.data() + i * d;
        const float* gr = tg.data() + i * d;
        const float* pr = P.p + r * P.stride;
        const float* qr = Gt.p + r * Gt.stride;
        float* og = OG.p + r * OG.stride;
        float* op = OP.p + r * OP.stride;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) {
          const float gzin = yr[c] + gr[c] * Dp[c];
          og[c] = gzin * pr[c];
          op[c] = gzin * qr[c];
        }
      }
    }
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bias_gelu_forward", &bias_gelu_forward, "GELU-tanh of h + b; h becomes the pre-activation");
  m.def("bias_gelu_backward", &bias_gelu_backward, "(grad pre-activation, grad bias)");
  m.def("short_conv_forward", &short_conv_forward, "depthwise short conv along L, [B, L, C]");
  m.def("short_conv_backward", &short_conv_backward, "(grad z, grad taps, grad bias)");
  m.def("gate_pad", &gate_pad, "(a ⊙ g, its transpose zero-padded for the FFT)");
  m.def("unpad_skip", &unpad_skip, "(conv output + D ⊙ p, times a gate if given)");
  m.def("grad_pad", &grad_pad, "(the gradient's padded transpose for the adjoint FFT, grad D)");
  m.def("unpad_grad", &unpad_grad, "the two gate gradients from the adjoint's output");
}
