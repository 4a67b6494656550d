// The time loops of rnnbench.kernels' LSTM family and GRUs, compiled (rnnbench/native.py builds this file at
// first use). Each function is the loop of the matching Python scan in kernels.py, step for step: one GEMM per
// step through ATen (MKL or oneDNN), and the gate arithmetic of every element in one pass of plain loops that the
// compiler vectorises, instead of about 20 ATen calls per step. Layouts and saved tensors are the Python scans'
// (K stacked weight sets, sequences (K, T, B, F)), so either path's forward pairs with either path's backward.
//
// float uses the polynomial exp/tanh below (Cephes, within a few ulp); double uses the C library (the tests
// compare in float64). On x86-64 each elementwise pass is compiled three times (AVX-512, AVX2+FMA, baseline SSE2)
// and the loader picks one at run time, so one build serves every CPU that shares the cache.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace {

using at::Tensor;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RNNBENCH_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RNNBENCH_CLONES
#endif
#define RNNBENCH_INLINE inline __attribute__((always_inline))

enum Act : int64_t { TANH = 0, SIGMOID = 1, IDENTITY = 2, RELU = 3 };

// ---- scalar functions: float polynomial (branch-free, vectorisable), double from libm -----------------------
RNNBENCH_INLINE float exp_(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float fx = x * 1.44269504088896341f + 0.5f;
  int32_t n = static_cast<int32_t>(fx);
  n -= static_cast<float>(n) > fx ? 1 : 0;  // floor
  float nf = static_cast<float>(n);
  x = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  float z = x * x;
  float y = ((((1.9875691500e-4f * x + 1.3981999507e-3f) * x + 8.3334519073e-3f) * x + 4.1665795894e-2f) * x +
             1.6666665459e-1f) * x + 5.0000001201e-1f;
  y = y * z + x + 1.0f;
  int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}
RNNBENCH_INLINE double exp_(double x) { return std::exp(x); }

template <typename T>
RNNBENCH_INLINE T sigmoid_(T x) { return T(1) / (T(1) + exp_(-x)); }

RNNBENCH_INLINE float tanh_(float x) {
  float a = x < 0.0f ? -x : x;
  float z = x * x;  // |x| < 0.625: odd polynomial; otherwise 1 - 2 / (exp(2|x|) + 1) with the sign of x
  float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z -
                 3.33332819422e-1f) * z * x + x;
  float large = 1.0f - 2.0f / (exp_(2.0f * a) + 1.0f);
  large = x < 0.0f ? -large : large;
  return a < 0.625f ? small : large;
}
RNNBENCH_INLINE double tanh_(double x) { return std::tanh(x); }

template <typename T>
RNNBENCH_INLINE T act_(int64_t code, T x) {
  switch (code) {
    case TANH: return tanh_(x);
    case SIGMOID: return sigmoid_(x);
    case RELU: return x > T(0) ? x : T(0);
    default: return x;
  }
}

// ---- elementwise passes over one row of n elements ----------------------------------------------------------
// out = act(a + w * c): a gate from its pre-activation with a peephole (w, c may be the zero row).
template <typename T>
RNNBENCH_INLINE void gate_(int64_t code, T* __restrict out, const T* __restrict a, const T* __restrict w,
                           const T* __restrict c, int64_t n) {
  switch (code) {
    case TANH:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = tanh_(a[j] + w[j] * c[j]);
      break;
    case SIGMOID:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = sigmoid_(a[j] + w[j] * c[j]);
      break;
    case RELU:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        T v = a[j] + w[j] * c[j];
        out[j] = v > T(0) ? v : T(0);
      }
      break;
    default:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = a[j] + w[j] * c[j];
  }
}

// out = g * act'(y) for y = act(pre), from the output y.
template <typename T>
RNNBENCH_INLINE void act_backward_(int64_t code, T* __restrict out, const T* __restrict g, const T* __restrict y,
                                   int64_t n) {
  switch (code) {
    case TANH:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = g[j] * (T(1) - y[j] * y[j]);
      break;
    case SIGMOID:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = g[j] * ((T(1) - y[j]) * y[j]);
      break;
    case RELU:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = y[j] > T(0) ? g[j] : T(0);
      break;
    default:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = g[j];
  }
}

// ---- LSTM family ---------------------------------------------------------------------------------------------
// flags: the indices of the i, f, g, o blocks in a row of G (-1: absent); peephole rows of i, f, o in peep (-1:
// none); coupled; gate recurrence; phi_in; phi_out; the number of blocks; then the block indices of the S recurrent gates.
struct LSTMShape {
  int64_t K, T, B, G, H, Z, P;
  int64_t oi, of, og, oo, pi, pf, po, coupled, fgr, phi_in, phi_out;
  std::vector<int64_t> rec;
  explicit LSTMShape(const Tensor& xp, const Tensor& wrec, const at::IntArrayRef flags, int64_t P_)
      : K(xp.size(0)), T(xp.size(1)), B(xp.size(2)), G(xp.size(3)), Z(wrec.size(2)), P(P_) {
    TORCH_CHECK(flags.size() >= 12, "rnnbench lstm: 12 flags expected");
    oi = flags[0]; of = flags[1]; og = flags[2]; oo = flags[3];
    pi = flags[4]; pf = flags[5]; po = flags[6];
    coupled = flags[7]; fgr = flags[8]; phi_in = flags[9]; phi_out = flags[10];
    H = G / flags[11];  // flags[11]: the number of blocks
    for (int64_t* o : {&oi, &of, &og, &oo}) *o = *o < 0 ? -1 : *o * H;  // block index -> element offset
    for (auto it = flags.begin() + 12; it != flags.end(); ++it) rec.push_back(*it * H);
  }
};

template <typename T>
struct LSTMForwardRow {
  const LSTMShape& s;
  const T* peep;  // (K, P, H) or null
  const T* zero;  // H zeros
  const T* one;   // H ones
  RNNBENCH_INLINE void operator()(const T* __restrict p, T* __restrict a, const T* __restrict cp, T* __restrict cn,
                                  T* __restrict y, T* __restrict zrow, T* __restrict scratch, int64_t k) const {
    const int64_t H = s.H;
    auto w = [&](int64_t row) { return row < 0 ? zero : peep + (k * s.P + row) * H; };
    const T* ai = one;
    const T* af = one;
    if (s.oi >= 0) { gate_<T>(SIGMOID, a + s.oi, p + s.oi, w(s.pi), cp, H); ai = a + s.oi; }
    if (s.of >= 0) { gate_<T>(SIGMOID, a + s.of, p + s.of, w(s.pf), cp, H); af = a + s.of; }
    T* g = a + s.og;
    gate_<T>(s.phi_in, g, p + s.og, zero, zero, H);
    if (s.coupled) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) cn[j] = cp[j] + ai[j] * (g[j] - cp[j]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) cn[j] = af[j] * cp[j] + ai[j] * g[j];
    }
    const T* yo = cn;
    if (s.phi_out != IDENTITY) { gate_<T>(s.phi_out, y, cn, zero, zero, H); yo = y; }
    if (s.oo >= 0) {
      T* ao = a + s.oo;
      gate_<T>(SIGMOID, ao, p + s.oo, w(s.po), cn, H);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) zrow[j] = ao[j] * yo[j];
    } else {
      std::memcpy(zrow, yo, H * sizeof(T));
    }
    for (size_t n = 0; n < s.rec.size(); ++n) std::memcpy(zrow + H + n * H, a + s.rec[n], H * sizeof(T));
    (void)scratch;
  }
};

template <typename T>
struct LSTMBackwardRow {
  const LSTMShape& s;
  const T* peep;
  const T* zero;
  const T* one;
  T* dpeep;  // (K, P, H): the peephole gradients, summed over steps and batch here; null without peepholes
  // dh_in: d h_t from the output; dz: d (recurrent input) from the step after (K, B, Z) row; dc: carried d c;
  // cp, c: the cell state before and after the step.
  RNNBENCH_INLINE void operator()(const T* __restrict dh_in, const T* __restrict dz, T* __restrict dc,
                                  const T* __restrict a, const T* __restrict cp, const T* __restrict c,
                                  const T* __restrict y, T* __restrict d, T* __restrict scratch, int64_t k) const {
    const int64_t H = s.H;
    auto w = [&](int64_t row) { return row < 0 ? zero : peep + (k * s.P + row) * H; };
    auto dz_gate = [&](int64_t off) {  // the gate's recurrent column block in dz (FGR), else zeros
      if (!s.fgr) return zero;
      for (size_t n = 0; n < s.rec.size(); ++n)
        if (s.rec[n] == off) return dz + H + static_cast<int64_t>(n) * H;
      return zero;
    };
    T* dh = scratch;
    T* dy = scratch + H;
    T* tmp = scratch + 2 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dh[j] = dh_in[j] + dz[j];
    const T* dpo = zero;
    if (s.oo >= 0) {
      const T* ao = a + s.oo;
      const T* dzo = dz_gate(s.oo);
      T* out = d + s.oo;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        T v = dh[j] * y[j] + dzo[j];
        out[j] = v * ((T(1) - ao[j]) * ao[j]);
        dy[j] = dh[j] * ao[j];
      }
      dpo = out;
    } else {
      std::memcpy(dy, dh, H * sizeof(T));
    }
    act_backward_<T>(s.phi_out, tmp, dy, y, H);
    const T* wo = w(s.po);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dc[j] = dc[j] + tmp[j] + dpo[j] * wo[j];
    const T* g = a + s.og;
    const T* ai = one;
    const T* dpi = zero;
    const T* dpf = zero;
    if (s.oi >= 0) {
      ai = a + s.oi;
      const T* dzi = dz_gate(s.oi);
      T* out = d + s.oi;
      if (s.coupled) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) out[j] = (dc[j] * (g[j] - cp[j]) + dzi[j]) * ((T(1) - ai[j]) * ai[j]);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) out[j] = (dc[j] * g[j] + dzi[j]) * ((T(1) - ai[j]) * ai[j]);
      }
      dpi = out;
    }
    const T* af = one;
    if (s.of >= 0) {
      af = a + s.of;
      const T* dzf = dz_gate(s.of);
      T* out = d + s.of;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) out[j] = (dc[j] * cp[j] + dzf[j]) * ((T(1) - af[j]) * af[j]);
      dpf = out;
    }
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) tmp[j] = dc[j] * ai[j];
    act_backward_<T>(s.phi_in, d + s.og, tmp, g, H);
    const T* wi = w(s.pi);
    const T* wf = w(s.pf);
    if (s.coupled) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) dc[j] = dc[j] - dc[j] * ai[j] + dpi[j] * wi[j] + dpf[j] * wf[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) dc[j] = dc[j] * af[j] + dpi[j] * wi[j] + dpf[j] * wf[j];
    }
    if (dpeep == nullptr) return;
    const std::pair<int64_t, std::pair<const T*, const T*>> terms[] = {{s.pi, {dpi, cp}}, {s.pf, {dpf, cp}},
                                                                       {s.po, {dpo, c}}};
    for (const auto& [row, term] : terms) {
      if (row < 0) continue;
      T* __restrict acc = dpeep + (k * s.P + row) * H;
      const T* __restrict dg = term.first;
      const T* __restrict state = term.second;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) acc[j] += dg[j] * state[j];
    }
  }
};

// Rows [begin, end) of one step; instantiated once per (float, double) and, for float, per CPU target.
template <typename T>
RNNBENCH_INLINE void lstm_forward_rows(const LSTMShape& s, const T* peep, const T* zero, const T* one, const T* pre, T* acts,
                       const T* cprev, T* cs, T* ys, T* zs, int64_t t, int64_t begin, int64_t end) {
  LSTMForwardRow<T> row{s, peep, zero, one};
  for (int64_t r = begin; r < end; ++r) {
    const int64_t k = r / s.B, b = r % s.B, at = (k * s.T + t) * s.B + b;
    const T* cp = cprev ? cprev + ((k * s.T) * s.B + b) * s.H : zero;  // cprev: cs at the previous step
    row(pre + r * s.G, acts + at * s.G, cp, cs + at * s.H, ys + at * s.H, zs + at * s.Z, nullptr, k);
  }
}

template <typename T>
RNNBENCH_INLINE void lstm_backward_rows(const LSTMShape& s, const T* peep, T* dpeep, const T* zero, const T* one,
                                        const T* dhs, const T* dz, T* dc, const T* acts, const T* cprev,
                                        const T* cs, const T* ys, T* dpre, int64_t t, int64_t begin, int64_t end) {
  LSTMBackwardRow<T> row{s, peep, zero, one, dpeep};
  std::vector<T> scratch(3 * s.H);
  for (int64_t r = begin; r < end; ++r) {
    const int64_t k = r / s.B, b = r % s.B, at = (k * s.T + t) * s.B + b;
    const T* cp = cprev ? cprev + ((k * s.T) * s.B + b) * s.H : zero;
    row(dhs + at * s.H, dz + r * s.Z, dc + r * s.H, acts + at * s.G, cp, cs + at * s.H, ys + at * s.H,
        dpre + at * s.G, scratch.data(), k);
  }
}

RNNBENCH_CLONES void lstm_forward_rows_f(const LSTMShape& s, const float* peep, const float* zero, const float* one,
                                         const float* pre, float* acts, const float* cprev, float* cs, float* ys,
                                         float* zs, int64_t t, int64_t begin, int64_t end) {
  lstm_forward_rows<float>(s, peep, zero, one, pre, acts, cprev, cs, ys, zs, t, begin, end);
}
RNNBENCH_CLONES void lstm_backward_rows_f(const LSTMShape& s, const float* peep, float* dpeep, const float* zero,
                                          const float* one, const float* dhs, const float* dz, float* dc,
                                          const float* acts, const float* cprev, const float* cs, const float* ys,
                                          float* dpre, int64_t t, int64_t begin, int64_t end) {
  lstm_backward_rows<float>(s, peep, dpeep, zero, one, dhs, dz, dc, acts, cprev, cs, ys, dpre, t, begin, end);
}
void lstm_forward_rows_any(const LSTMShape& s, const double* peep, const double* zero, const double* one,
                           const double* pre, double* acts, const double* cprev, double* cs, double* ys, double* zs,
                           int64_t t, int64_t begin, int64_t end) {
  lstm_forward_rows<double>(s, peep, zero, one, pre, acts, cprev, cs, ys, zs, t, begin, end);
}
void lstm_forward_rows_any(const LSTMShape& s, const float* peep, const float* zero, const float* one,
                           const float* pre, float* acts, const float* cprev, float* cs, float* ys, float* zs,
                           int64_t t, int64_t begin, int64_t end) {
  lstm_forward_rows_f(s, peep, zero, one, pre, acts, cprev, cs, ys, zs, t, begin, end);
}
void lstm_backward_rows_any(const LSTMShape& s, const double* peep, double* dpeep, const double* zero,
                            const double* one, const double* dhs, const double* dz, double* dc, const double* acts,
                            const double* cprev, const double* cs, const double* ys, double* dpre, int64_t t,
                            int64_t begin, int64_t end) {
  lstm_backward_rows<double>(s, peep, dpeep, zero, one, dhs, dz, dc, acts, cprev, cs, ys, dpre, t, begin, end);
}
void lstm_backward_rows_any(const LSTMShape& s, const float* peep, float* dpeep, const float* zero,
                            const float* one, const float* dhs, const float* dz, float* dc, const float* acts,
                            const float* cprev, const float* cs, const float* ys, float* dpre, int64_t t,
                            int64_t begin, int64_t end) {
  lstm_backward_rows_f(s, peep, dpeep, zero, one, dhs, dz, dc, acts, cprev, cs, ys, dpre, t, begin, end);
}

// out = self + a @ b (self undefined: 0), batched over K. One weight set (K = 1) in float32 with a large weight
// goes through oneDNN's matmul, the library nn.LSTM uses on the CPU (measured 1.3x MKL's sgemm at hidden 256-512
// on an AMD EPYC, the same at 128, slower below); it is looked up at run time because torch does not declare it in
// its headers, and without it (another torch build) every GEMM stays with ATen's bmm.
using OneDnnMatmul = void (*)(const Tensor&, const Tensor&, const Tensor&, float, float);

OneDnnMatmul onednn_matmul() {
  static const auto fn = reinterpret_cast<OneDnnMatmul>(
      dlsym(RTLD_DEFAULT, "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff"));  // at::native::mkldnn_matmul
  return fn;
}

constexpr int64_t kOneDnnMinWeight = 256 * 1024;  // elements of b

void gemm_out(Tensor& out, const Tensor& self, const Tensor& a, const Tensor& b) {
  if (out.scalar_type() == at::kFloat && out.size(0) == 1 && b.size(1) * b.size(2) >= kOneDnnMinWeight &&
      onednn_matmul() != nullptr) {
    Tensor o = out.select(0, 0);
    if (self.defined()) o.copy_(self.select(0, 0));
    onednn_matmul()(a.select(0, 0), b.select(0, 0), o, self.defined() ? 1.0f : 0.0f, 1.0f);
    return;
  }
  if (self.defined()) {
    at::baddbmm_out(out, self, a, b);
  } else {
    at::bmm_out(out, a, b);
  }
}

void check_cpu(const Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "rnnbench native: ", name, " must be a contiguous CPU tensor");
}

// Returns zs (K, T, B, Z), cs (K, T, B, H), ys (K, T, B, H; cs itself when phi_out is identity), acts (K, T, B, G).
std::vector<Tensor> lstm_forward(const Tensor& xp, const Tensor& wrec, const std::optional<Tensor>& peep,
                                 at::IntArrayRef flags, bool reverse) {
  check_cpu(xp, "xp");
  const int64_t P = peep.has_value() ? peep->size(1) : 0;
  LSTMShape s(xp, wrec, flags, P);
  auto opt = xp.options();
  Tensor zs = at::empty({s.K, s.T, s.B, s.Z}, opt), cs = at::empty({s.K, s.T, s.B, s.H}, opt);
  Tensor ys = s.phi_out == IDENTITY ? cs : at::empty({s.K, s.T, s.B, s.H}, opt);
  Tensor acts = at::empty({s.K, s.T, s.B, s.G}, opt), pre = at::empty({s.K, s.B, s.G}, opt);
  Tensor z = at::zeros({s.K, s.B, s.Z}, opt), wrec_t = wrec.transpose(1, 2).contiguous();
  Tensor peep_c = peep.has_value() ? peep->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnbench_lstm_forward", [&] {
    std::vector<scalar_t> zero(s.H, scalar_t(0)), one(s.H, scalar_t(1));
    const scalar_t* pp = peep_c.defined() ? peep_c.data_ptr<scalar_t>() : nullptr;
    scalar_t *a = acts.data_ptr<scalar_t>(), *c = cs.data_ptr<scalar_t>(), *y = ys.data_ptr<scalar_t>();
    scalar_t *zp = zs.data_ptr<scalar_t>(), *pr = pre.data_ptr<scalar_t>();
    for (int64_t n = 0; n < s.T; ++n) {
      const int64_t t = reverse ? s.T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
      gemm_out(pre, xp.select(1, t), z, wrec_t);
      const scalar_t* cprev = n == 0 ? nullptr : c + prev * s.B * s.H;
      lstm_forward_rows_any(s, pp, zero.data(), one.data(), pr, a, cprev, c, y, zp, t, 0, s.K * s.B);
      z = zs.select(1, t);
    }
  });
  return {zs, cs, ys, acts};
}

// Returns dpre (K, T, B, G) and the peephole gradients (K, P, H) (empty without peepholes); the weight gradient
// is one GEMM the caller forms from dpre.
std::vector<Tensor> lstm_backward(const Tensor& dhs, const Tensor& zs, const Tensor& cs, const Tensor& ys, const Tensor& acts,
                     const Tensor& wrec, const std::optional<Tensor>& peep, at::IntArrayRef flags, bool reverse) {
  const int64_t P = peep.has_value() ? peep->size(1) : 0;
  LSTMShape s(acts, wrec, flags, P);
  Tensor dh_c = dhs.contiguous();
  check_cpu(acts, "acts");
  auto opt = acts.options();
  Tensor dpre = at::empty({s.K, s.T, s.B, s.G}, opt), dz = at::zeros({s.K, s.B, s.Z}, opt);
  Tensor dc = at::zeros({s.K, s.B, s.H}, opt);
  Tensor peep_c = peep.has_value() ? peep->contiguous() : Tensor();
  Tensor dpeep = at::zeros({s.K, s.P, s.H}, opt);
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "rnnbench_lstm_backward", [&] {
    std::vector<scalar_t> zero(s.Z, scalar_t(0)), one(s.H, scalar_t(1));
    const scalar_t* pp = peep_c.defined() ? peep_c.data_ptr<scalar_t>() : nullptr;
    const scalar_t *a = acts.data_ptr<scalar_t>(), *c = cs.data_ptr<scalar_t>(), *y = ys.data_ptr<scalar_t>();
    const scalar_t* dh = dh_c.data_ptr<scalar_t>();
    scalar_t *d = dpre.data_ptr<scalar_t>(), *dzp = dz.data_ptr<scalar_t>(), *dcp = dc.data_ptr<scalar_t>();
    scalar_t* dpp = s.P > 0 ? dpeep.data_ptr<scalar_t>() : nullptr;
    for (int64_t n = s.T - 1; n >= 0; --n) {
      const int64_t t = reverse ? s.T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
      const scalar_t* cprev = n == 0 ? nullptr : c + prev * s.B * s.H;
      lstm_backward_rows_any(s, pp, dpp, zero.data(), one.data(), dh, dzp, dcp, a, cprev, c, y, d, t, 0,
                             s.K * s.B);
      if (n > 0) gemm_out(dz, Tensor(), dpre.select(1, t), wrec);
    }
  });
  return {dpre, dpeep};
}

// ---- GRU (torch's: r scales W_hn h + b_hn) --------------------------------------------------------------------
template <typename T>
RNNBENCH_INLINE void gru_forward_rows(int64_t T_, int64_t B, int64_t H, const T* xp, const T* ghs, const T* hprev, T* rzs, T* ns,
                      T* hs, const T* zero, int64_t t, int64_t begin, int64_t end) {
  const int64_t G = 3 * H;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t k = r / B, b = r % B, at = (k * T_ + t) * B + b;
    const T* __restrict x = xp + at * G;
    const T* __restrict gh = ghs + at * G;
    const T* __restrict hp = hprev ? hprev + (k * T_ * B + b) * H : zero;
    T* __restrict rz = rzs + at * 2 * H;
    T* __restrict n = ns + at * H;
    T* __restrict h = hs + at * H;
#pragma omp simd
    for (int64_t j = 0; j < 2 * H; ++j) rz[j] = sigmoid_(x[j] + gh[j]);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T nv = tanh_(x[2 * H + j] + rz[j] * gh[2 * H + j]);
      n[j] = nv;
      h[j] = nv + rz[H + j] * (hp[j] - nv);
    }
  }
}

template <typename T>
RNNBENCH_INLINE void gru_backward_rows(int64_t T_, int64_t B, int64_t H, const T* dhs, T* dh, const T* rzs, const T* ns,
                       const T* ghs, const T* hprev, T* dxp, T* dhn, T* dg, T* dhz, const T* zero, int64_t t,
                       int64_t begin, int64_t end) {
  const int64_t G = 3 * H;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t k = r / B, b = r % B, at = (k * T_ + t) * B + b;
    const T* __restrict rz = rzs + at * 2 * H;
    const T* __restrict n = ns + at * H;
    const T* __restrict hn = ghs + at * G + 2 * H;
    const T* __restrict hp = hprev ? hprev + (k * T_ * B + b) * H : zero;
    const T* __restrict dho = dhs + at * H;
    T* __restrict d = dh + r * H;
    T* __restrict dx = dxp + at * G;
    T* __restrict dn_h = dhn + at * H;
    T* __restrict g = dg + r * G;
    T* __restrict hz = dhz + r * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T dv = d[j] + dho[j];
      T z = rz[H + j], rr = rz[j], nv = n[j];
      T dn = (dv - dv * z) * (T(1) - nv * nv);
      T dr = dn * hn[j] * ((T(1) - rr) * rr);
      T dzv = dv * (hp[j] - nv) * ((T(1) - z) * z);
      T dnh = dn * rr;
      dx[j] = dr; dx[H + j] = dzv; dx[2 * H + j] = dn;
      g[j] = dr; g[H + j] = dzv; g[2 * H + j] = dnh;
      dn_h[j] = dnh;
      hz[j] = dv * z;
    }
  }
}

RNNBENCH_CLONES void gru_forward_rows_f(int64_t T_, int64_t B, int64_t H, const float* xp, const float* ghs,
                                        const float* hprev, float* rzs, float* ns, float* hs, const float* zero,
                                        int64_t t, int64_t begin, int64_t end) {
  gru_forward_rows<float>(T_, B, H, xp, ghs, hprev, rzs, ns, hs, zero, t, begin, end);
}
RNNBENCH_CLONES void gru_backward_rows_f(int64_t T_, int64_t B, int64_t H, const float* dhs, float* dh,
                                         const float* rzs, const float* ns, const float* ghs, const float* hprev,
                                         float* dxp, float* dhn, float* dg, float* dhz, const float* zero, int64_t t,
                                         int64_t begin, int64_t end) {
  gru_backward_rows<float>(T_, B, H, dhs, dh, rzs, ns, ghs, hprev, dxp, dhn, dg, dhz, zero, t, begin, end);
}
void gru_forward_rows_any(int64_t T_, int64_t B, int64_t H, const float* xp, const float* ghs, const float* hprev,
                          float* rzs, float* ns, float* hs, const float* zero, int64_t t, int64_t begin, int64_t end) {
  gru_forward_rows_f(T_, B, H, xp, ghs, hprev, rzs, ns, hs, zero, t, begin, end);
}
void gru_forward_rows_any(int64_t T_, int64_t B, int64_t H, const double* xp, const double* ghs,
                          const double* hprev, double* rzs, double* ns, double* hs, const double* zero, int64_t t,
                          int64_t begin, int64_t end) {
  gru_forward_rows<double>(T_, B, H, xp, ghs, hprev, rzs, ns, hs, zero, t, begin, end);
}
void gru_backward_rows_any(int64_t T_, int64_t B, int64_t H, const float* dhs, float* dh, const float* rzs,
                           const float* ns, const float* ghs, const float* hprev, float* dxp, float* dhn, float* dg,
                           float* dhz, const float* zero, int64_t t, int64_t begin, int64_t end) {
  gru_backward_rows_f(T_, B, H, dhs, dh, rzs, ns, ghs, hprev, dxp, dhn, dg, dhz, zero, t, begin, end);
}
void gru_backward_rows_any(int64_t T_, int64_t B, int64_t H, const double* dhs, double* dh, const double* rzs,
                           const double* ns, const double* ghs, const double* hprev, double* dxp, double* dhn,
                           double* dg, double* dhz, const double* zero, int64_t t, int64_t begin, int64_t end) {
  gru_backward_rows<double>(T_, B, H, dhs, dh, rzs, ns, ghs, hprev, dxp, dhn, dg, dhz, zero, t, begin, end);
}

// Returns hs (K, T, B, H), rzs (K, T, B, 2H), ns (K, T, B, H), ghs (K, T, B, 3H) = W_hh h + b_hh per step.
std::vector<Tensor> gru_forward(const Tensor& xp, const Tensor& whh, const Tensor& bhh, bool reverse) {
  check_cpu(xp, "xp");
  const int64_t K = xp.size(0), T = xp.size(1), B = xp.size(2), G = xp.size(3), H = G / 3;
  auto opt = xp.options();
  Tensor hs = at::empty({K, T, B, H}, opt), rzs = at::empty({K, T, B, 2 * H}, opt);
  Tensor ns = at::empty({K, T, B, H}, opt), ghs = at::empty({K, T, B, G}, opt), gh = at::empty({K, B, G}, opt);
  Tensor h = at::zeros({K, B, H}, opt), whh_t = whh.transpose(1, 2).contiguous(), bias = bhh.unsqueeze(1);
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnbench_gru_forward", [&] {
    std::vector<scalar_t> zero(H, scalar_t(0));
    const scalar_t* x = xp.data_ptr<scalar_t>();
    scalar_t *g = ghs.data_ptr<scalar_t>(), *rz = rzs.data_ptr<scalar_t>(), *np = ns.data_ptr<scalar_t>();
    scalar_t* hp = hs.data_ptr<scalar_t>();
    for (int64_t n = 0; n < T; ++n) {
      const int64_t t = reverse ? T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
      gemm_out(gh, bias, h, whh_t);
      ghs.select(1, t).copy_(gh);
      const scalar_t* hprev = n == 0 ? nullptr : hp + prev * B * H;
      gru_forward_rows_any(T, B, H, x, g, hprev, rz, np, hp, zero.data(), t, 0, K * B);
      h = hs.select(1, t);
    }
  });
  return {hs, rzs, ns, ghs};
}

// Returns dxp (K, T, B, 3H) (d pre-activations r, z and the x side of n) and dhn (K, T, B, H) = d (W_hn h + b_hn).
std::vector<Tensor> gru_backward(const Tensor& dhs, const Tensor& hs, const Tensor& rzs, const Tensor& ns,
                                 const Tensor& ghs, const Tensor& whh, bool reverse) {
  const int64_t K = hs.size(0), T = hs.size(1), B = hs.size(2), H = hs.size(3), G = 3 * H;
  Tensor dh_c = dhs.contiguous();
  auto opt = hs.options();
  Tensor dxp = at::empty({K, T, B, G}, opt), dhn = at::empty({K, T, B, H}, opt);
  Tensor dh = at::zeros({K, B, H}, opt), dg = at::empty({K, B, G}, opt), dhz = at::empty({K, B, H}, opt);
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "rnnbench_gru_backward", [&] {
    std::vector<scalar_t> zero(H, scalar_t(0));
    const scalar_t *dho = dh_c.data_ptr<scalar_t>(), *rz = rzs.data_ptr<scalar_t>(), *np = ns.data_ptr<scalar_t>();
    const scalar_t *g = ghs.data_ptr<scalar_t>(), *hp = hs.data_ptr<scalar_t>();
    scalar_t *d = dh.data_ptr<scalar_t>(), *dx = dxp.data_ptr<scalar_t>(), *dn = dhn.data_ptr<scalar_t>();
    scalar_t *dgp = dg.data_ptr<scalar_t>(), *hz = dhz.data_ptr<scalar_t>();
    for (int64_t n = T - 1; n >= 0; --n) {
      const int64_t t = reverse ? T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
      const scalar_t* hprev = n == 0 ? nullptr : hp + prev * B * H;
      gru_backward_rows_any(T, B, H, dho, d, rz, np, g, hprev, dx, dn, dgp, hz, zero.data(), t, 0, K * B);
      gemm_out(dh, dhz, dg, whh);
    }
  });
  return {dxp, dhn};
}

// ---- GRU of Cho et al. 2014 (r scales h before W_hn) -----------------------------------------------------------
template <typename T>
RNNBENCH_INLINE void cho_gates_rows(int64_t T_, int64_t B, int64_t H, const T* pre_rz, const T* hprev, T* rzs, T* rhs,
                    const T* zero, int64_t t, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t k = r / B, b = r % B, at = (k * T_ + t) * B + b;
    const T* __restrict p = pre_rz + r * 2 * H;
    const T* __restrict hp = hprev ? hprev + (k * T_ * B + b) * H : zero;
    T* __restrict rz = rzs + at * 2 * H;
    T* __restrict rh = rhs + at * H;
#pragma omp simd
    for (int64_t j = 0; j < 2 * H; ++j) rz[j] = sigmoid_(p[j]);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) rh[j] = rz[j] * hp[j];
  }
}

template <typename T>
RNNBENCH_INLINE void cho_state_rows(int64_t T_, int64_t B, int64_t H, const T* pre_n, const T* hprev, const T* rzs, T* ns, T* hs,
                    const T* zero, int64_t t, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t k = r / B, b = r % B, at = (k * T_ + t) * B + b;
    const T* __restrict p = pre_n + r * H;
    const T* __restrict hp = hprev ? hprev + (k * T_ * B + b) * H : zero;
    const T* __restrict z = rzs + at * 2 * H + H;
    T* __restrict n = ns + at * H;
    T* __restrict h = hs + at * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T nv = tanh_(p[j]);
      n[j] = nv;
      h[j] = nv + z[j] * (hp[j] - nv);
    }
  }
}

// dn (x side of n) from the carried dh; dh + dhs[t] kept in dsum for the second pass.
template <typename T>
RNNBENCH_INLINE void cho_dn_rows(int64_t T_, int64_t B, int64_t H, const T* dhs, const T* dh, T* dsum, const T* rzs, const T* ns,
                 T* dxp, int64_t t, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t k = r / B, b = r % B, at = (k * T_ + t) * B + b;
    const T* __restrict z = rzs + at * 2 * H + H;
    const T* __restrict n = ns + at * H;
    const T* __restrict dho = dhs + at * H;
    const T* __restrict d = dh + r * H;
    T* __restrict s = dsum + r * H;
    T* __restrict dn = dxp + at * 3 * H + 2 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T dv = d[j] + dho[j];
      s[j] = dv;
      dn[j] = (dv - dv * z[j]) * (T(1) - n[j] * n[j]);
    }
  }
}

template <typename T>
RNNBENCH_INLINE void cho_drz_rows(int64_t T_, int64_t B, int64_t H, const T* dsum, const T* drh, const T* rzs, const T* ns,
                  const T* hprev, T* dxp, T* carry, const T* zero, int64_t t, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t k = r / B, b = r % B, at = (k * T_ + t) * B + b;
    const T* __restrict s = dsum + r * H;
    const T* __restrict q = drh + r * H;
    const T* __restrict rz = rzs + at * 2 * H;
    const T* __restrict n = ns + at * H;
    const T* __restrict hp = hprev ? hprev + (k * T_ * B + b) * H : zero;
    T* __restrict dx = dxp + at * 3 * H;
    T* __restrict c = carry + r * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T rr = rz[j], z = rz[H + j];
      dx[j] = q[j] * hp[j] * ((T(1) - rr) * rr);
      dx[H + j] = s[j] * (hp[j] - n[j]) * ((T(1) - z) * z);
      c[j] = s[j] * z + q[j] * rr;
    }
  }
}

#define RNNBENCH_CHO(name, params, args)                                                \
  RNNBENCH_CLONES void name##_f params(float) { name<float> args; }                     \
  void name##_any params(float) { name##_f args; }                                      \
  void name##_any params(double) { name<double> args; }
#define P_GATES(T) (int64_t T_, int64_t B, int64_t H, const T* pre_rz, const T* hprev, T* rzs, T* rhs, const T* zero, \
                    int64_t t, int64_t begin, int64_t end)
#define A_GATES (T_, B, H, pre_rz, hprev, rzs, rhs, zero, t, begin, end)
#define P_STATE(T) (int64_t T_, int64_t B, int64_t H, const T* pre_n, const T* hprev, const T* rzs, T* ns, T* hs, \
                    const T* zero, int64_t t, int64_t begin, int64_t end)
#define A_STATE (T_, B, H, pre_n, hprev, rzs, ns, hs, zero, t, begin, end)
#define P_DN(T) (int64_t T_, int64_t B, int64_t H, const T* dhs, const T* dh, T* dsum, const T* rzs, const T* ns, \
                 T* dxp, int64_t t, int64_t begin, int64_t end)
#define A_DN (T_, B, H, dhs, dh, dsum, rzs, ns, dxp, t, begin, end)
#define P_DRZ(T) (int64_t T_, int64_t B, int64_t H, const T* dsum, const T* drh, const T* rzs, const T* ns, \
                  const T* hprev, T* dxp, T* carry, const T* zero, int64_t t, int64_t begin, int64_t end)
#define A_DRZ (T_, B, H, dsum, drh, rzs, ns, hprev, dxp, carry, zero, t, begin, end)
RNNBENCH_CHO(cho_gates_rows, P_GATES, A_GATES)
RNNBENCH_CHO(cho_state_rows, P_STATE, A_STATE)
RNNBENCH_CHO(cho_dn_rows, P_DN, A_DN)
RNNBENCH_CHO(cho_drz_rows, P_DRZ, A_DRZ)

// Returns hs, rzs (K, T, B, 2H), rhs (K, T, B, H) = r * h_{t-1}, ns.
std::vector<Tensor> gru_cho_forward(const Tensor& xp, const Tensor& w_rz, const Tensor& w_n, bool reverse) {
  check_cpu(xp, "xp");
  const int64_t K = xp.size(0), T = xp.size(1), B = xp.size(2), H = xp.size(3) / 3;
  auto opt = xp.options();
  Tensor hs = at::empty({K, T, B, H}, opt), rzs = at::empty({K, T, B, 2 * H}, opt);
  Tensor rhs = at::empty({K, T, B, H}, opt), ns = at::empty({K, T, B, H}, opt);
  Tensor pre_rz = at::empty({K, B, 2 * H}, opt), pre_n = at::empty({K, B, H}, opt), h = at::zeros({K, B, H}, opt);
  Tensor w_rz_t = w_rz.transpose(1, 2).contiguous(), w_n_t = w_n.transpose(1, 2).contiguous();
  Tensor x_rz = xp.narrow(3, 0, 2 * H), x_n = xp.narrow(3, 2 * H, H);
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnbench_gru_cho_forward", [&] {
    std::vector<scalar_t> zero(H, scalar_t(0));
    scalar_t *rz = rzs.data_ptr<scalar_t>(), *rh = rhs.data_ptr<scalar_t>(), *np = ns.data_ptr<scalar_t>();
    scalar_t *hp = hs.data_ptr<scalar_t>(), *prz = pre_rz.data_ptr<scalar_t>(), *pn = pre_n.data_ptr<scalar_t>();
    for (int64_t n = 0; n < T; ++n) {
      const int64_t t = reverse ? T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
      const scalar_t* hprev = n == 0 ? nullptr : hp + prev * B * H;
      gemm_out(pre_rz, x_rz.select(1, t), h, w_rz_t);
      cho_gates_rows_any(T, B, H, prz, hprev, rz, rh, zero.data(), t, 0, K * B);
      gemm_out(pre_n, x_n.select(1, t), rhs.select(1, t), w_n_t);
      cho_state_rows_any(T, B, H, pn, hprev, rz, np, hp, zero.data(), t, 0, K * B);
      h = hs.select(1, t);
    }
  });
  return {hs, rzs, rhs, ns};
}

// Returns dxp (K, T, B, 3H): d pre-activations of r, z, n.
Tensor gru_cho_backward(const Tensor& dhs, const Tensor& hs, const Tensor& rzs, const Tensor& ns,
                        const Tensor& w_rz, const Tensor& w_n, bool reverse) {
  const int64_t K = hs.size(0), T = hs.size(1), B = hs.size(2), H = hs.size(3);
  Tensor dh_c = dhs.contiguous();
  auto opt = hs.options();
  Tensor dxp = at::empty({K, T, B, 3 * H}, opt), dh = at::zeros({K, B, H}, opt), dsum = at::empty({K, B, H}, opt);
  Tensor drh = at::empty({K, B, H}, opt), carry = at::empty({K, B, H}, opt);
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "rnnbench_gru_cho_backward", [&] {
    std::vector<scalar_t> zero(H, scalar_t(0));
    const scalar_t *dho = dh_c.data_ptr<scalar_t>(), *rz = rzs.data_ptr<scalar_t>(), *np = ns.data_ptr<scalar_t>();
    const scalar_t* hp = hs.data_ptr<scalar_t>();
    scalar_t *d = dh.data_ptr<scalar_t>(), *s = dsum.data_ptr<scalar_t>(), *dx = dxp.data_ptr<scalar_t>();
    scalar_t *q = drh.data_ptr<scalar_t>(), *c = carry.data_ptr<scalar_t>();
    for (int64_t n = T - 1; n >= 0; --n) {
      const int64_t t = reverse ? T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
      const scalar_t* hprev = n == 0 ? nullptr : hp + prev * B * H;
      cho_dn_rows_any(T, B, H, dho, d, s, rz, np, dx, t, 0, K * B);
      Tensor dxt = dxp.select(1, t);
      gemm_out(drh, Tensor(), dxt.narrow(2, 2 * H, H), w_n);
      cho_drz_rows_any(T, B, H, s, q, rz, np, hprev, dx, c, zero.data(), t, 0, K * B);
      gemm_out(dh, carry, dxt.narrow(2, 0, 2 * H), w_rz);
    }
  });
  return dxp;
}

}  // namespace

TORCH_LIBRARY(rnnbench, m) {
  m.def("lstm_forward(Tensor xp, Tensor wrec, Tensor? peep, int[] flags, bool reverse) -> Tensor[]", &lstm_forward);
  m.def("lstm_backward(Tensor dhs, Tensor zs, Tensor cs, Tensor ys, Tensor acts, Tensor wrec, Tensor? peep, "
        "int[] flags, bool reverse) -> Tensor[]", &lstm_backward);
  m.def("gru_forward(Tensor xp, Tensor whh, Tensor bhh, bool reverse) -> Tensor[]", &gru_forward);
  m.def("gru_backward(Tensor dhs, Tensor hs, Tensor rzs, Tensor ns, Tensor ghs, Tensor whh, bool reverse) -> Tensor[]",
        &gru_backward);
  m.def("gru_cho_forward(Tensor xp, Tensor w_rz, Tensor w_n, bool reverse) -> Tensor[]", &gru_cho_forward);
  m.def("gru_cho_backward(Tensor dhs, Tensor hs, Tensor rzs, Tensor ns, Tensor w_rz, Tensor w_n, bool reverse) -> "
        "Tensor", &gru_cho_backward);
}
