// The time loops of rnnbench.kernels, compiled (rnnbench/native.py builds this file at first use): the LSTM
// family, the GRUs, minGRU/minLSTM, IndRNN, sLSTM, the LRU and S6. Each function is the loop of the matching Python
// scan in kernels.py, step for step: one GEMM per step through ATen (MKL or oneDNN) where the cell has a recurrent
// matrix, and the arithmetic of every element in one pass of plain loops that the compiler vectorises, instead of
// about 20 ATen calls per step. Layouts and saved tensors are the Python scans' (K stacked weight sets, sequences
// (K, T, B, F)), so either path's forward pairs with either path's backward.
//
// Rows (one example of one stacked model) are independent within a step, so each step's elementwise pass is split
// across torch's intra-op threads (at::parallel_for, torch's own OpenMP pool, as its GEMMs use); the recurrences
// without a recurrent matrix (minGRU/minLSTM, IndRNN, the LRU, S6) split whole sequences of rows, one fork per
// call. A parameter gradient summed over rows is summed per thread, then added (kernels.py's callers never see
// the split). Results do not depend on the thread count but for those sums' rounding.
//
// float uses the polynomial exp/tanh below (Cephes, within a few ulp); double uses the C library (the tests
// compare in float64). On x86-64 each elementwise pass is compiled three times (AVX-512, AVX2+FMA, baseline SSE2)
// and the loader picks one at run time, so one build serves every CPU that shares the cache.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

using at::Tensor;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RNNBENCH_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RNNBENCH_CLONES
#endif
#define RNNBENCH_INLINE inline __attribute__((always_inline))
constexpr int64_t kParallelElements = 1024;  // per thread, at least: below it one thread does a step's pass

// For a template `name<T>` with parameters params(T) and arguments args: `name_f`, its float instance compiled
// for each CPU target, and `name_any`, one overload per type, which the time loops call.
#define RNNBENCH_CLONED(name, params, args)                         \
  RNNBENCH_CLONES void name##_f params(float) { name<float> args; } \
  void name##_any params(float) { name##_f args; }                  \
  void name##_any params(double) { name<double> args; }

enum Act : int64_t { TANH = 0, SIGMOID = 1, IDENTITY = 2, RELU = 3 };

// ---- scalar functions: float polynomial (branch-free, vectorisable), double from libm -----------------------
RNNBENCH_INLINE float exp_(float x_in) {  // 0 below ln(FLT_MIN) (a subnormal result), as with FTZ
  float x = x_in < -87.3365f ? -87.3365f : (x_in > 88.0f ? 88.0f : x_in);
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
  const float keep = x_in < -87.3365f ? 0.0f : 1.0f;  // a product, not a select, which would become a branch
  return y * scale * keep;
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

// log(1 + e) for e in [0, 1]: u = 1 + e = 2^k x with x in [sqrt(1/2), sqrt(2)), Cephes' logf polynomial in x - 1,
// then the rounding of 1 + e undone to first order (log1p(e) = log(u) e / (u - 1)).
RNNBENCH_INLINE float log1p_unit_(float e) {
  const float u = 1.0f + e;
  const float k = u > 1.41421356f ? 1.0f : 0.0f;
  const float x = (k > 0.0f ? 0.5f * u : u) - 1.0f;
  const float z = x * x;
  float y = ((((((((7.0376836292e-2f * x - 1.1514610310e-1f) * x + 1.1676998740e-1f) * x - 1.2420140846e-1f) * x +
                1.4249322787e-1f) * x - 1.6668057665e-1f) * x + 2.0000714765e-1f) * x - 2.4999993993e-1f) * x +
             3.3333331174e-1f) * x * z;
  y += -2.12194440e-4f * k - 0.5f * z;
  const float r = x + y + 0.693359375f * k;
  const float d = u - 1.0f;
  return d == 0.0f ? e : r * (e / d);
}
RNNBENCH_INLINE double log1p_unit_(double e) { return std::log1p(e); }

// log sigmoid(x) = min(x, 0) - log(1 + exp(-|x|)).
template <typename T>
RNNBENCH_INLINE T log_sigmoid_(T x) {
  const T a = x < T(0) ? -x : x;
  return (x < T(0) ? x : T(0)) - log1p_unit_(exp_(-a));
}

template <typename T, int64_t A>
RNNBENCH_INLINE T act(T x) {
  if constexpr (A == TANH) return tanh_(x);
  else if constexpr (A == SIGMOID) return sigmoid_(x);
  else if constexpr (A == RELU) return x > T(0) ? x : T(0);
  else return x;
}

// d pre from d out for out = act(pre), written with the output y.
template <typename T, int64_t A>
RNNBENCH_INLINE T act_grad(T grad, T y) {
  if constexpr (A == TANH) return grad * (T(1) - y * y);
  else if constexpr (A == SIGMOID) return grad * ((T(1) - y) * y);
  else if constexpr (A == RELU) return y > T(0) ? grad : T(0);
  else return grad;
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

// One row of one step, every element in one vectorised pass. A variant's missing parts read constant rows and
// write scratch rows, so one loop serves every flag combination: a missing gate reads the pre-activation `big`
// (its sigmoid is exactly 1; its gradient (1 - 1) * 1 is exactly 0), a missing peephole the zero row, and a
// missing gate's outputs and gradients go to scratch rows that nothing reads. (With a missing peephole, an
// infinite cell state makes that gate NaN here where the Python loop leaves it finite: the run has diverged
// either way.) Templates: phi_in, phi_out and coupled gates, the parts that change the arithmetic.
template <typename T>
struct LSTMForwardRow {
  const T *pi, *pf, *pg, *po;  // pre-activations
  const T *wi, *wf, *wo;       // peepholes
  const T* cp;                 // c_{t-1}
  T *ai, *af, *g, *ao, *c, *y, *h;
};

template <typename T, int64_t PhiIn, int64_t PhiOut, bool Coupled>
RNNBENCH_INLINE void lstm_forward_row(const LSTMForwardRow<T>& r, int64_t H) {
  const T *pi = r.pi, *pf = r.pf, *pg = r.pg, *po = r.po;  // may be the outputs below (in place, same index)
  const T *__restrict wi = r.wi, *__restrict wf = r.wf, *__restrict wo = r.wo, *__restrict cp = r.cp;
  T *ai_out = r.ai, *af_out = r.af, *g_out = r.g, *ao_out = r.ao;
  T *__restrict c_out = r.c, *__restrict y_out = r.y, *__restrict h_out = r.h;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T c0 = cp[j];
    const T ai = sigmoid_(pi[j] + wi[j] * c0);
    const T af = Coupled ? T(1) - ai : sigmoid_(pf[j] + wf[j] * c0);
    const T g = act<T, PhiIn>(pg[j]);
    const T c = Coupled ? c0 + ai * (g - c0) : af * c0 + ai * g;
    const T y = act<T, PhiOut>(c);
    const T ao = sigmoid_(po[j] + wo[j] * c);
    ai_out[j] = ai; af_out[j] = af; g_out[j] = g; ao_out[j] = ao;
    c_out[j] = c; y_out[j] = y; h_out[j] = ao * y;
  }
}

template <typename T>
struct LSTMBackwardRow {
  const T *dh, *dzh, *dzi, *dzf, *dzo;  // d h_t from the output; d of the recurrent input from the step after
  const T *ai, *af, *g, *ao, *cp, *y;
  const T *wi, *wf, *wo;
  T* dc;                               // carried d c
  T *dpi, *dpf, *dpg, *dpo;            // d pre-activations
};

template <typename T, int64_t PhiIn, int64_t PhiOut, bool Coupled>
RNNBENCH_INLINE void lstm_backward_row(const LSTMBackwardRow<T>& r, int64_t H) {
  const T *__restrict dh_in = r.dh, *__restrict dzh = r.dzh, *__restrict dzi = r.dzi, *__restrict dzf = r.dzf;
  const T *__restrict dzo = r.dzo, *__restrict ai_ = r.ai, *__restrict af_ = r.af, *__restrict g_ = r.g;
  const T *__restrict ao_ = r.ao, *__restrict cp = r.cp, *__restrict y_ = r.y;
  const T *__restrict wi = r.wi, *__restrict wf = r.wf, *__restrict wo = r.wo;
  T *__restrict dc = r.dc, *__restrict dpi_out = r.dpi, *__restrict dpf_out = r.dpf, *__restrict dpg_out = r.dpg;
  T *__restrict dpo_out = r.dpo;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T dh = dh_in[j] + dzh[j];
    const T ao = ao_[j], y = y_[j], ai = ai_[j], af = af_[j], g = g_[j], c0 = cp[j];
    const T dpo = (dh * y + dzo[j]) * ((T(1) - ao) * ao);
    const T dct = dc[j] + act_grad<T, PhiOut>(dh * ao, y) + dpo * wo[j];
    const T dpi = ((Coupled ? dct * (g - c0) : dct * g) + dzi[j]) * ((T(1) - ai) * ai);
    const T dpf = (dct * c0 + dzf[j]) * ((T(1) - af) * af);
    dpg_out[j] = act_grad<T, PhiIn>(dct * ai, g);
    dc[j] = (Coupled ? dct - dct * ai : dct * af) + dpi * wi[j] + dpf * wf[j];
    dpi_out[j] = dpi; dpf_out[j] = dpf; dpo_out[j] = dpo;
  }
}

// The rows of one step: pointers per row, then the loop chosen by (phi_in, phi_out, coupled). No lambda wraps
// the loop, so that it is compiled inside each CPU target's clone.
template <typename T, template <typename, int64_t, int64_t, bool> class Body, int64_t PI, int64_t PO, bool C,
          typename MakeRow>
RNNBENCH_INLINE void run_rows(int64_t r0, int64_t r1, int64_t H, const MakeRow& make_row) {
  for (int64_t r = r0; r < r1; ++r) Body<T, PI, PO, C>::run(make_row(r), H);
}

template <typename T, template <typename, int64_t, int64_t, bool> class Body, typename MakeRow>
RNNBENCH_INLINE void lstm_rows(const LSTMShape& s, int64_t r0, int64_t r1, const MakeRow& make_row) {
#define RNNBENCH_LSTM_CASE(PI, PO)                                                  \
  if (s.phi_in == PI && s.phi_out == PO) {                                          \
    if (s.coupled) run_rows<T, Body, PI, PO, true>(r0, r1, s.H, make_row);          \
    else run_rows<T, Body, PI, PO, false>(r0, r1, s.H, make_row);                   \
    return;                                                                         \
  }
#define RNNBENCH_LSTM_OUT(PI) \
  RNNBENCH_LSTM_CASE(PI, TANH) RNNBENCH_LSTM_CASE(PI, SIGMOID) RNNBENCH_LSTM_CASE(PI, IDENTITY) RNNBENCH_LSTM_CASE(PI, RELU)
  RNNBENCH_LSTM_OUT(TANH) RNNBENCH_LSTM_OUT(SIGMOID) RNNBENCH_LSTM_OUT(IDENTITY) RNNBENCH_LSTM_OUT(RELU)
#undef RNNBENCH_LSTM_OUT
#undef RNNBENCH_LSTM_CASE
  TORCH_CHECK(false, "rnnbench lstm: unknown activation codes ", s.phi_in, ", ", s.phi_out);
}

template <typename T, int64_t PI, int64_t PO, bool C>
struct ForwardBody {
  static RNNBENCH_INLINE void run(const LSTMForwardRow<T>& r, int64_t H) { lstm_forward_row<T, PI, PO, C>(r, H); }
};
template <typename T, int64_t PI, int64_t PO, bool C>
struct BackwardBody {
  static RNNBENCH_INLINE void run(const LSTMBackwardRow<T>& r, int64_t H) { lstm_backward_row<T, PI, PO, C>(r, H); }
};

// Constant and scratch rows of one call: zero, one, big (a missing gate's pre-activation), and sinks, six rows
// for each of torch's threads (the rows of a step are split across them).
template <typename T>
struct LSTMConstants {
  std::vector<T> zero, one, big;
  mutable std::vector<T> sink;
  explicit LSTMConstants(int64_t width, int64_t H)
      : zero(width, T(0)), one(H, T(1)), big(H, T(1e30)), sink(6 * H * at::get_num_threads(), T(0)) {}
  T* sink_row(int64_t n) const {
    return sink.data() + (6 * at::get_thread_num() + n) * static_cast<int64_t>(one.size());
  }
};

template <typename T>
RNNBENCH_INLINE void lstm_forward_step(const LSTMShape& s, const T* peep, const LSTMConstants<T>& k0, T* acts,
                                       const T* cprev, T* cs, T* ys, T* zs, int64_t t, int64_t r0, int64_t r1) {
  const int64_t H = s.H;
  lstm_rows<T, ForwardBody>(s, r0, r1, [&](int64_t r) {
    const int64_t k = r / s.B, b = r % s.B, at = (k * s.T + t) * s.B + b;
    T* a = acts + at * s.G;  // the pre-activations in, the gates out (in place, element by element)
    const T* p = a;
    auto w = [&](int64_t row) { return row < 0 ? k0.zero.data() : peep + (k * s.P + row) * H; };
    auto in = [&](int64_t off) { return off < 0 ? k0.big.data() : p + off; };
    auto out = [&](int64_t off, int64_t n) { return off < 0 ? k0.sink_row(n) : a + off; };
    T* c = cs + at * H;
    return LSTMForwardRow<T>{in(s.oi), in(s.of), p + s.og, in(s.oo), w(s.pi), w(s.pf), w(s.po),
                             cprev ? cprev + (k * s.T * s.B + b) * H : k0.zero.data(),
                             out(s.oi, 0), out(s.of, 1), a + s.og, out(s.oo, 2), c,
                             s.phi_out == IDENTITY ? k0.sink_row(3) : ys + at * H, zs + at * s.Z};
  });
  if (s.rec.empty()) return;
  for (int64_t r = r0; r < r1; ++r) {  // the gates of this step into the next step's recurrent input
    const int64_t at = ((r / s.B) * s.T + t) * s.B + r % s.B;
    for (size_t n = 0; n < s.rec.size(); ++n)
      std::memcpy(zs + at * s.Z + H + static_cast<int64_t>(n) * H, acts + at * s.G + s.rec[n], H * sizeof(T));
  }
}

template <typename T>
RNNBENCH_INLINE void lstm_backward_step(const LSTMShape& s, const T* peep, const LSTMConstants<T>& k0,
                                        const T* dhs, const T* dz, T* dc, const T* acts, const T* cprev,
                                        const T* cs, const T* ys, T* dpre, int64_t t, int64_t r0, int64_t r1) {
  const int64_t H = s.H;
  lstm_rows<T, BackwardBody>(s, r0, r1, [&](int64_t r) {
    const int64_t k = r / s.B, b = r % s.B, at = (k * s.T + t) * s.B + b;
    const T* a = acts + at * s.G;
    T* d = dpre + at * s.G;
    const T* dzr = dz + r * s.Z;
    auto w = [&](int64_t row) { return row < 0 ? k0.zero.data() : peep + (k * s.P + row) * H; };
    auto gate = [&](int64_t off) { return off < 0 ? k0.one.data() : a + off; };
    auto dgate = [&](int64_t off, int64_t n) { return off < 0 ? k0.sink_row(n) : d + off; };
    auto dz_gate = [&](int64_t off) {  // the gate's column block of the recurrent input (FGR), else zeros
      for (size_t n = 0; n < s.rec.size(); ++n)
        if (off >= 0 && s.rec[n] == off) return dzr + H + static_cast<int64_t>(n) * H;
      return static_cast<const T*>(k0.zero.data());
    };
    const T* c = cs + at * H;
    return LSTMBackwardRow<T>{dhs + at * H, dzr, dz_gate(s.oi), dz_gate(s.of), dz_gate(s.oo),
                              gate(s.oi), gate(s.of), a + s.og, gate(s.oo),
                              cprev ? cprev + (k * s.T * s.B + b) * H : k0.zero.data(),
                              s.phi_out == IDENTITY ? c : ys + at * H, w(s.pi), w(s.pf), w(s.po), dc + r * H,
                              dgate(s.oi, 0), dgate(s.of, 1), d + s.og, dgate(s.oo, 2)};
  });
}

#define P_LSTM_FORWARD(T)                                                                                 \
  (const LSTMShape& s, const T* peep, const LSTMConstants<T>& k0, T* acts, const T* cprev, T* cs, T* ys, T* zs, \
   int64_t t, int64_t r0, int64_t r1)
#define A_LSTM_FORWARD (s, peep, k0, acts, cprev, cs, ys, zs, t, r0, r1)
#define P_LSTM_BACKWARD(T)                                                                                \
  (const LSTMShape& s, const T* peep, const LSTMConstants<T>& k0, const T* dhs, const T* dz, T* dc,        \
   const T* acts, const T* cprev, const T* cs, const T* ys, T* dpre, int64_t t, int64_t r0, int64_t r1)
#define A_LSTM_BACKWARD (s, peep, k0, dhs, dz, dc, acts, cprev, cs, ys, dpre, t, r0, r1)
RNNBENCH_CLONED(lstm_forward_step, P_LSTM_FORWARD, A_LSTM_FORWARD)
RNNBENCH_CLONED(lstm_backward_step, P_LSTM_BACKWARD, A_LSTM_BACKWARD)

// out = self + a @ b (self undefined: 0; self the same tensor as out: in place), batched over K. One weight set (K = 1) in float32 with a large weight
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
    if (self.defined() && !self.is_same(out)) o.copy_(self.select(0, 0));
    onednn_matmul()(a.select(0, 0), b.select(0, 0), o, self.defined() ? 1.0f : 0.0f, 1.0f);
    return;
  }
  if (self.defined() && self.is_same(out)) {
    out.baddbmm_(a, b);
  } else if (self.defined()) {
    at::baddbmm_out(out, self, a, b);
  } else {
    at::bmm_out(out, a, b);
  }
}

// One step's elementwise pass over `rows` rows of width `width`, split across torch's intra-op threads (the
// OpenMP pool of at::parallel_for, which the GEMMs use too) when there is enough work; rows are independent.
template <typename F>
void parallel_rows(int64_t rows, int64_t width, const F& f) {
  at::parallel_for(0, rows, std::max<int64_t>(1, kParallelElements / std::max<int64_t>(width, 1)), f);
}

// A sum over rows that each thread keeps apart (rows split by parallel_rows): `threads` copies of `shape`, zeroed;
// own<T>() is the calling thread's copy, total() their sum.
struct PerThreadSum {
  Tensor parts;
  PerThreadSum(at::IntArrayRef shape, const at::TensorOptions& opt) {
    std::vector<int64_t> sizes{at::get_num_threads()};
    sizes.insert(sizes.end(), shape.begin(), shape.end());
    parts = at::zeros(sizes, opt);
  }
  template <typename T>
  T* own() const { return parts.data_ptr<T>() + at::get_thread_num() * parts.stride(0); }
  Tensor total() const { return parts.sum(0); }
};

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
  Tensor acts = xp.clone(at::MemoryFormat::Contiguous);  // each step's pre-activations, then its gates in place
  Tensor z = at::zeros({s.K, s.B, s.Z}, opt), wrec_t = wrec.transpose(1, 2).contiguous();
  Tensor peep_c = peep.has_value() ? peep->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnbench_lstm_forward", [&] {
    LSTMConstants<scalar_t> k0(s.H, s.H);
    const scalar_t* pp = peep_c.defined() ? peep_c.data_ptr<scalar_t>() : nullptr;
    scalar_t *a = acts.data_ptr<scalar_t>(), *c = cs.data_ptr<scalar_t>(), *y = ys.data_ptr<scalar_t>();
    scalar_t* zp = zs.data_ptr<scalar_t>();
    for (int64_t n = 0; n < s.T; ++n) {
      const int64_t t = reverse ? s.T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
      Tensor at_t = acts.select(1, t);
      gemm_out(at_t, at_t, z, wrec_t);
      const scalar_t* cprev = n == 0 ? nullptr : c + prev * s.B * s.H;
      parallel_rows(s.K * s.B, s.G, [&](int64_t r0, int64_t r1) {
        lstm_forward_step_any(s, pp, k0, a, cprev, c, y, zp, t, r0, r1);
      });
      z = zs.select(1, t);
    }
  });
  return {zs, cs, ys, acts};
}

// Returns dpre (K, T, B, G); the caller forms the weight and peephole gradients from it (one GEMM, one product).
Tensor lstm_backward(const Tensor& dhs, const Tensor& cs, const Tensor& ys, const Tensor& acts,
                     const Tensor& wrec, const std::optional<Tensor>& peep, at::IntArrayRef flags, bool reverse) {
  const int64_t P = peep.has_value() ? peep->size(1) : 0;
  LSTMShape s(acts, wrec, flags, P);
  Tensor dh_c = dhs.contiguous();
  check_cpu(acts, "acts");
  auto opt = acts.options();
  Tensor dpre = at::empty({s.K, s.T, s.B, s.G}, opt), dz = at::zeros({s.K, s.B, s.Z}, opt);
  Tensor dc = at::zeros({s.K, s.B, s.H}, opt);
  Tensor peep_c = peep.has_value() ? peep->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "rnnbench_lstm_backward", [&] {
    LSTMConstants<scalar_t> k0(s.Z, s.H);
    const scalar_t* pp = peep_c.defined() ? peep_c.data_ptr<scalar_t>() : nullptr;
    const scalar_t *a = acts.data_ptr<scalar_t>(), *c = cs.data_ptr<scalar_t>(), *y = ys.data_ptr<scalar_t>();
    const scalar_t* dh = dh_c.data_ptr<scalar_t>();
    scalar_t *d = dpre.data_ptr<scalar_t>(), *dzp = dz.data_ptr<scalar_t>(), *dcp = dc.data_ptr<scalar_t>();
    for (int64_t n = s.T - 1; n >= 0; --n) {
      const int64_t t = reverse ? s.T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
      const scalar_t* cprev = n == 0 ? nullptr : c + prev * s.B * s.H;
      parallel_rows(s.K * s.B, s.G, [&](int64_t r0, int64_t r1) {
        lstm_backward_step_any(s, pp, k0, dh, dzp, dcp, a, cprev, c, y, d, t, r0, r1);
      });
      if (n > 0) gemm_out(dz, Tensor(), dpre.select(1, t), wrec);
    }
  });
  return dpre;
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

#define P_GRU_FORWARD(T) (int64_t T_, int64_t B, int64_t H, const T* xp, const T* ghs, const T* hprev, T* rzs, \
                          T* ns, T* hs, const T* zero, int64_t t, int64_t begin, int64_t end)
#define A_GRU_FORWARD (T_, B, H, xp, ghs, hprev, rzs, ns, hs, zero, t, begin, end)
#define P_GRU_BACKWARD(T) (int64_t T_, int64_t B, int64_t H, const T* dhs, T* dh, const T* rzs, const T* ns, \
                           const T* ghs, const T* hprev, T* dxp, T* dhn, T* dg, T* dhz, const T* zero, int64_t t, \
                           int64_t begin, int64_t end)
#define A_GRU_BACKWARD (T_, B, H, dhs, dh, rzs, ns, ghs, hprev, dxp, dhn, dg, dhz, zero, t, begin, end)
RNNBENCH_CLONED(gru_forward_rows, P_GRU_FORWARD, A_GRU_FORWARD)
RNNBENCH_CLONED(gru_backward_rows, P_GRU_BACKWARD, A_GRU_BACKWARD)

// Returns hs (K, T, B, H), rzs (K, T, B, 2H), ns (K, T, B, H), ghs (K, T, B, 3H) = W_hh h + b_hh per step.
std::vector<Tensor> gru_forward(const Tensor& xp, const Tensor& whh, const Tensor& bhh, bool reverse) {
  check_cpu(xp, "xp");
  const int64_t K = xp.size(0), T = xp.size(1), B = xp.size(2), G = xp.size(3), H = G / 3;
  auto opt = xp.options();
  Tensor hs = at::empty({K, T, B, H}, opt), rzs = at::empty({K, T, B, 2 * H}, opt);
  Tensor ns = at::empty({K, T, B, H}, opt), ghs = at::empty({K, T, B, G}, opt);
  Tensor h = at::zeros({K, B, H}, opt), whh_t = whh.transpose(1, 2).contiguous(), bias = bhh.unsqueeze(1);
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnbench_gru_forward", [&] {
    std::vector<scalar_t> zero(H, scalar_t(0));
    const scalar_t* x = xp.data_ptr<scalar_t>();
    scalar_t *g = ghs.data_ptr<scalar_t>(), *rz = rzs.data_ptr<scalar_t>(), *np = ns.data_ptr<scalar_t>();
    scalar_t* hp = hs.data_ptr<scalar_t>();
    for (int64_t n = 0; n < T; ++n) {
      const int64_t t = reverse ? T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
      Tensor gh_t = ghs.select(1, t);
      gemm_out(gh_t, bias, h, whh_t);
      const scalar_t* hprev = n == 0 ? nullptr : hp + prev * B * H;
      parallel_rows(K * B, G, [&](int64_t r0, int64_t r1) {
        gru_forward_rows_any(T, B, H, x, g, hprev, rz, np, hp, zero.data(), t, r0, r1);
      });
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
      parallel_rows(K * B, G, [&](int64_t r0, int64_t r1) {
        gru_backward_rows_any(T, B, H, dho, d, rz, np, g, hprev, dx, dn, dgp, hz, zero.data(), t, r0, r1);
      });
      if (n > 0) gemm_out(dh, dhz, dg, whh);
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
RNNBENCH_CLONED(cho_gates_rows, P_GATES, A_GATES)
RNNBENCH_CLONED(cho_state_rows, P_STATE, A_STATE)
RNNBENCH_CLONED(cho_dn_rows, P_DN, A_DN)
RNNBENCH_CLONED(cho_drz_rows, P_DRZ, A_DRZ)

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
      parallel_rows(K * B, 2 * H, [&](int64_t r0, int64_t r1) {
        cho_gates_rows_any(T, B, H, prz, hprev, rz, rh, zero.data(), t, r0, r1);
      });
      gemm_out(pre_n, x_n.select(1, t), rhs.select(1, t), w_n_t);
      parallel_rows(K * B, H, [&](int64_t r0, int64_t r1) {
        cho_state_rows_any(T, B, H, pn, hprev, rz, np, hp, zero.data(), t, r0, r1);
      });
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
      parallel_rows(K * B, H, [&](int64_t r0, int64_t r1) {
        cho_dn_rows_any(T, B, H, dho, d, s, rz, np, dx, t, r0, r1);
      });
      Tensor dxt = dxp.select(1, t);
      gemm_out(drh, Tensor(), dxt.narrow(2, 2 * H, H), w_n);
      parallel_rows(K * B, 2 * H, [&](int64_t r0, int64_t r1) {
        cho_drz_rows_any(T, B, H, s, q, rz, np, hprev, dx, c, zero.data(), t, r0, r1);
      });
      if (n > 0) gemm_out(dh, carry, dxt.narrow(2, 0, 2 * H), w_rz);
    }
  });
  return dxp;
}

// ---- recurrences without a recurrent matmul: minGRU, minLSTM, IndRNN --------------------------------------------
// The state of each unit depends on its own previous value only, so the whole loop is elementwise: per step and
// row one vectorised pass, no GEMM. pre (K, T, B, G) holds every step's pre-activations (one GEMM before the
// loop); nothing but hs is saved (the backward recomputes the gates from pre).
enum MinKind : int64_t { MINGRU = 0, MINLSTM = 1 };

// minGRU/minLSTM's positive candidate g(v) = v + 1/2 (v >= 0), sigmoid(v) (v < 0), and g'(v), from s = sigmoid(v).
// Both branches are computed and blended (a select of the two would be compiled as a branch, which does not
// vectorise).
template <typename T>
RNNBENCH_INLINE T min_g(T v, T s) {
  const T m = v >= T(0) ? T(1) : T(0);
  return s + m * ((v + T(0.5)) - s);
}
template <typename T>
RNNBENCH_INLINE T min_g_grad(T v, T s) {
  const T m = v >= T(0) ? T(1) : T(0);
  return (T(1) - s) * s + m * (T(1) - (T(1) - s) * s);
}

template <typename T>
RNNBENCH_INLINE void min_forward_rows(int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, int64_t kind, const T* pre,
                                      const T* hprev, const T* zero, T* hs, int64_t t) {
  const int64_t G = kind == MINGRU ? 2 * H : 3 * H;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t k = r / B, b = r % B, at = (k * T_ + t) * B + b;
    const T* __restrict p = pre + at * G;
    T* __restrict h = hs + at * H;
    const T* __restrict hp = hprev ? hprev + (k * T_ * B + b) * H : zero;
    if (kind == MINGRU) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T z = sigmoid_(p[j]), v = p[H + j], g = min_g(v, sigmoid_(v)), h0 = hp[j];
        h[j] = h0 + z * (g - h0);
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T f = sigmoid_(p[j]), i = sigmoid_(p[H + j]), v = p[2 * H + j], g = min_g(v, sigmoid_(v));
        const T total = f + i, h0 = hp[j];
        h[j] = (f / total) * h0 + (i / total) * g;
      }
    }
  }
}

// d pre of step t from the carried gradient dh (updated in place to d h_{t-1}) and d h_t from the output.
template <typename T>
RNNBENCH_INLINE void min_backward_rows(int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, int64_t kind, const T* pre,
                                       const T* hprev, const T* zero, const T* dhs, T* dh, T* dpre, int64_t t) {
  const int64_t G = kind == MINGRU ? 2 * H : 3 * H;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t k = r / B, b = r % B, at = (k * T_ + t) * B + b;
    const T* __restrict p = pre + at * G;
    const T* __restrict dho = dhs + at * H;
    const T* __restrict hp = hprev ? hprev + (k * T_ * B + b) * H : zero;
    T* __restrict d = dh + r * H;
    T* __restrict dp = dpre + at * G;
    if (kind == MINGRU) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T z = sigmoid_(p[j]), v = p[H + j], s = sigmoid_(v), g = min_g(v, s), h0 = hp[j];
        const T dv = d[j] + dho[j];
        dp[j] = dv * (g - h0) * ((T(1) - z) * z);
        dp[H + j] = dv * z * min_g_grad(v, s);
        d[j] = dv - dv * z;
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T f = sigmoid_(p[j]), i = sigmoid_(p[H + j]), v = p[2 * H + j], s = sigmoid_(v), g = min_g(v, s);
        const T total = f + i, h0 = hp[j], dv = d[j] + dho[j];
        const T q = dv * (h0 - g) / (total * total);  // d f' = dv h0, d i' = dv g; f' = f / (f + i)
        dp[j] = q * i * ((T(1) - f) * f);
        dp[H + j] = -q * f * ((T(1) - i) * i);
        dp[2 * H + j] = dv * (i / total) * min_g_grad(v, s);
        d[j] = dv * (f / total);
      }
    }
  }
}

template <typename T>
RNNBENCH_INLINE void ind_forward_rows(int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, int64_t activation,
                                      const T* xp, const T* u, const T* hprev, const T* zero, T* hs, int64_t t) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t k = r / B, b = r % B, at = (k * T_ + t) * B + b;
    const T* __restrict x = xp + at * H;
    const T* __restrict w = u + k * H;
    const T* __restrict hp = hprev ? hprev + (k * T_ * B + b) * H : zero;
    T* __restrict h = hs + at * H;
    if (activation == RELU) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) h[j] = act<T, RELU>(x[j] + w[j] * hp[j]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) h[j] = act<T, TANH>(x[j] + w[j] * hp[j]);
    }
  }
}

template <typename T, int64_t A>
RNNBENCH_INLINE void ind_backward_row(int64_t H, const T* __restrict w, const T* __restrict h, const T* __restrict hp,
                                      const T* __restrict dho, T* __restrict d, T* __restrict dx,
                                      T* __restrict acc) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T dp = act_grad<T, A>(d[j] + dho[j], h[j]);
    dx[j] = dp;
    acc[j] += dp * hp[j];
    d[j] = dp * w[j];
  }
}

template <typename T>
RNNBENCH_INLINE void ind_backward_rows(int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, int64_t activation,
                                       const T* u, const T* hs, const T* hprev, const T* zero, const T* dhs,
                                       T* dh, T* dxp, T* du, int64_t t) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t k = r / B, b = r % B, at = (k * T_ + t) * B + b;
    const T *w = u + k * H, *h = hs + at * H, *hp = hprev ? hprev + (k * T_ * B + b) * H : zero, *dho = dhs + at * H;
    T *d = dh + r * H, *dx = dxp + at * H, *acc = du + k * H;
    if (activation == RELU) ind_backward_row<T, RELU>(H, w, h, hp, dho, d, dx, acc);
    else ind_backward_row<T, TANH>(H, w, h, hp, dho, d, dx, acc);
  }
}

#define P_MIN_FORWARD(T) (int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, int64_t kind, const T* pre, \
                          const T* hprev, const T* zero, T* hs, int64_t t)
#define A_MIN_FORWARD (T_, r0, r1, B, H, kind, pre, hprev, zero, hs, t)
#define P_MIN_BACKWARD(T) (int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, int64_t kind, const T* pre, \
                           const T* hprev, const T* zero, const T* dhs, T* dh, T* dpre, int64_t t)
#define A_MIN_BACKWARD (T_, r0, r1, B, H, kind, pre, hprev, zero, dhs, dh, dpre, t)
#define P_IND_FORWARD(T) (int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, int64_t activation, const T* xp, \
                          const T* u, const T* hprev, const T* zero, T* hs, int64_t t)
#define A_IND_FORWARD (T_, r0, r1, B, H, activation, xp, u, hprev, zero, hs, t)
#define P_IND_BACKWARD(T) (int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, int64_t activation, const T* u, \
                           const T* hs, const T* hprev, const T* zero, const T* dhs, T* dh, T* dxp, T* du, \
                           int64_t t)
#define A_IND_BACKWARD (T_, r0, r1, B, H, activation, u, hs, hprev, zero, dhs, dh, dxp, du, t)
RNNBENCH_CLONED(min_forward_rows, P_MIN_FORWARD, A_MIN_FORWARD)
RNNBENCH_CLONED(min_backward_rows, P_MIN_BACKWARD, A_MIN_BACKWARD)
RNNBENCH_CLONED(ind_forward_rows, P_IND_FORWARD, A_IND_FORWARD)
RNNBENCH_CLONED(ind_backward_rows, P_IND_BACKWARD, A_IND_BACKWARD)

// Returns hs (K, T, B, H) of minGRU (pre: blocks z, h) or minLSTM (pre: blocks f, i, h).
Tensor min_forward(const Tensor& pre, int64_t kind, bool reverse) {
  check_cpu(pre, "pre");
  TORCH_CHECK(kind == MINGRU || kind == MINLSTM, "rnnbench min_forward: kind 0 (minGRU) or 1 (minLSTM)");
  const int64_t K = pre.size(0), T = pre.size(1), B = pre.size(2), H = pre.size(3) / (kind == MINGRU ? 2 : 3);
  Tensor hs = at::empty({K, T, B, H}, pre.options());
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "rnnbench_min_forward", [&] {
    std::vector<scalar_t> zero(H, scalar_t(0));
    const scalar_t* p = pre.data_ptr<scalar_t>();
    scalar_t* h = hs.data_ptr<scalar_t>();
    parallel_rows(K * B, T * H, [&](int64_t r0, int64_t r1) {  // rows are independent: the whole loop per row
      for (int64_t n = 0; n < T; ++n) {
        const int64_t t = reverse ? T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
        min_forward_rows_any(T, r0, r1, B, H, kind, p, n == 0 ? nullptr : h + prev * B * H, zero.data(), h, t);
      }
    });
  });
  return hs;
}

// Returns d pre (K, T, B, G).
Tensor min_backward(const Tensor& dhs, const Tensor& pre, const Tensor& hs, int64_t kind, bool reverse) {
  check_cpu(pre, "pre");
  check_cpu(hs, "hs");
  const int64_t K = hs.size(0), T = hs.size(1), B = hs.size(2), H = hs.size(3);
  Tensor dh_c = dhs.contiguous(), dpre = at::empty_like(pre), dh = at::zeros({K, B, H}, hs.options());
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "rnnbench_min_backward", [&] {
    std::vector<scalar_t> zero(H, scalar_t(0));
    const scalar_t *p = pre.data_ptr<scalar_t>(), *h = hs.data_ptr<scalar_t>(), *dho = dh_c.data_ptr<scalar_t>();
    scalar_t *d = dh.data_ptr<scalar_t>(), *dp = dpre.data_ptr<scalar_t>();
    parallel_rows(K * B, T * H, [&](int64_t r0, int64_t r1) {
      for (int64_t n = T - 1; n >= 0; --n) {
        const int64_t t = reverse ? T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
        min_backward_rows_any(T, r0, r1, B, H, kind, p, n == 0 ? nullptr : h + prev * B * H, zero.data(), dho, d,
                              dp, t);
      }
    });
  });
  return dpre;
}

Tensor indrnn_forward(const Tensor& xp, const Tensor& u, int64_t activation, bool reverse) {
  check_cpu(xp, "xp");
  TORCH_CHECK(activation == RELU || activation == TANH, "rnnbench indrnn: relu or tanh");
  const int64_t K = xp.size(0), T = xp.size(1), B = xp.size(2), H = xp.size(3);
  Tensor hs = at::empty_like(xp), u_c = u.contiguous();
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnbench_indrnn_forward", [&] {
    std::vector<scalar_t> zero(H, scalar_t(0));
    const scalar_t *x = xp.data_ptr<scalar_t>(), *w = u_c.data_ptr<scalar_t>();
    scalar_t* h = hs.data_ptr<scalar_t>();
    parallel_rows(K * B, T * H, [&](int64_t r0, int64_t r1) {  // rows are independent: the whole loop per row
      for (int64_t n = 0; n < T; ++n) {
        const int64_t t = reverse ? T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
        ind_forward_rows_any(T, r0, r1, B, H, activation, x, w, n == 0 ? nullptr : h + prev * B * H, zero.data(), h,
                             t);
      }
    });
  });
  return hs;
}

// Returns dxp (K, T, B, H) and du (K, H).
std::vector<Tensor> indrnn_backward(const Tensor& dhs, const Tensor& hs, const Tensor& u, int64_t activation,
                                    bool reverse) {
  check_cpu(hs, "hs");
  const int64_t K = hs.size(0), T = hs.size(1), B = hs.size(2), H = hs.size(3);
  Tensor dh_c = dhs.contiguous(), u_c = u.contiguous(), dxp = at::empty_like(hs);
  Tensor dh = at::zeros({K, B, H}, hs.options());
  PerThreadSum du({K, H}, hs.options());
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "rnnbench_indrnn_backward", [&] {
    std::vector<scalar_t> zero(H, scalar_t(0));
    const scalar_t *w = u_c.data_ptr<scalar_t>(), *h = hs.data_ptr<scalar_t>(), *dho = dh_c.data_ptr<scalar_t>();
    scalar_t *d = dh.data_ptr<scalar_t>(), *dx = dxp.data_ptr<scalar_t>();
    parallel_rows(K * B, T * H, [&](int64_t r0, int64_t r1) {
      scalar_t* acc = du.own<scalar_t>();
      for (int64_t n = T - 1; n >= 0; --n) {
        const int64_t t = reverse ? T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
        ind_backward_rows_any(T, r0, r1, B, H, activation, w, h, n == 0 ? nullptr : h + prev * B * H, zero.data(),
                              dho, d, dx, acc, t);
      }
    });
  });
  return {dxp, du.total()};
}

// ---- sLSTM (xLSTM), one head --------------------------------------------------------------------------------------
// A step: pre = xp_t + R h_{t-1} (one GEMM), then per element the stabilised exponential gating of
// rnnbench.plugins.slstm. acts (K, T, B, 5H) keeps i', f', tanh(z~), sigma(o~) and d log f / d f~ for the
// backward; m (the stabiliser) is carried in a buffer and not saved: h does not depend on it (it scales c and n
// alike), so the backward treats it as a constant, which gives autograd's gradient up to rounding.
template <typename T, bool ExpForget>
RNNBENCH_INLINE void slstm_forward_row(int64_t H, const T* __restrict p, const T* __restrict c0,
                                       const T* __restrict n0, T* __restrict m, T* __restrict a, T* __restrict c,
                                       T* __restrict n, T* __restrict h) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T fr = p[H + j], ir = p[j];
    const T log_f = ExpForget ? fr : log_sigmoid_(fr);
    const T lfm = log_f + m[j];
    const T mn = lfm > ir ? lfm : ir;
    const T ip = exp_(ir - mn), fp = exp_(lfm - mn), g = tanh_(p[2 * H + j]), o = sigmoid_(p[3 * H + j]);
    const T cv = fp * c0[j] + ip * g, nv = fp * n0[j] + ip;
    c[j] = cv; n[j] = nv; h[j] = o * cv / nv; m[j] = mn;
    a[j] = ip; a[H + j] = fp; a[2 * H + j] = g; a[3 * H + j] = o;
    a[4 * H + j] = ExpForget ? T(1) : sigmoid_(-fr);
  }
}

template <typename T>
RNNBENCH_INLINE void slstm_forward_rows(int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, bool exp_forget,
                                        const T* pre, const T* cprev, const T* nprev, const T* zero, T* m, T* acts,
                                        T* cs, T* ns, T* hs, int64_t t) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t k = r / B, b = r % B, at = (k * T_ + t) * B + b, back = (k * T_ * B + b) * H;
    const T *c0 = cprev ? cprev + back : zero, *n0 = nprev ? nprev + back : zero;
    if (exp_forget)
      slstm_forward_row<T, true>(H, pre + r * 4 * H, c0, n0, m + r * H, acts + at * 5 * H, cs + at * H, ns + at * H,
                                 hs + at * H);
    else
      slstm_forward_row<T, false>(H, pre + r * 4 * H, c0, n0, m + r * H, acts + at * 5 * H, cs + at * H,
                                  ns + at * H, hs + at * H);
  }
}

template <typename T>
RNNBENCH_INLINE void slstm_backward_rows(int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, const T* dhs,
                                         const T* dz, const T* acts, const T* cs, const T* ns, const T* cprev,
                                         const T* nprev, const T* zero, T* dc, T* dn, T* dpre, int64_t t) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t k = r / B, b = r % B, at = (k * T_ + t) * B + b, back = (k * T_ * B + b) * H;
    const T* __restrict dho = dhs + at * H;
    const T* __restrict dzr = dz + r * H;
    const T* __restrict a = acts + at * 5 * H;
    const T* __restrict c = cs + at * H;
    const T* __restrict n = ns + at * H;
    const T* __restrict c0 = cprev ? cprev + back : zero;
    const T* __restrict n0 = nprev ? nprev + back : zero;
    T* __restrict dcr = dc + r * H;
    T* __restrict dnr = dn + r * H;
    T* __restrict d = dpre + at * 4 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T ip = a[j], fp = a[H + j], g = a[2 * H + j], o = a[3 * H + j], fg = a[4 * H + j];
      const T dh = dho[j] + dzr[j], inv = T(1) / n[j], cn = c[j] * inv;
      const T dct = dcr[j] + dh * o * inv, dnt = dnr[j] - dh * o * cn * inv;
      d[j] = (dct * g + dnt) * ip;
      d[H + j] = (dct * c0[j] + dnt * n0[j]) * fp * fg;
      d[2 * H + j] = dct * ip * (T(1) - g * g);
      d[3 * H + j] = dh * cn * ((T(1) - o) * o);
      dcr[j] = dct * fp; dnr[j] = dnt * fp;
    }
  }
}

#define P_SLSTM_FORWARD(T) (int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, bool exp_forget, const T* pre, \
                            const T* cprev, const T* nprev, const T* zero, T* m, T* acts, T* cs, T* ns, T* hs, \
                            int64_t t)
#define A_SLSTM_FORWARD (T_, r0, r1, B, H, exp_forget, pre, cprev, nprev, zero, m, acts, cs, ns, hs, t)
#define P_SLSTM_BACKWARD(T) (int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, const T* dhs, const T* dz, \
                             const T* acts, const T* cs, const T* ns, const T* cprev, const T* nprev, \
                             const T* zero, T* dc, T* dn, T* dpre, int64_t t)
#define A_SLSTM_BACKWARD (T_, r0, r1, B, H, dhs, dz, acts, cs, ns, cprev, nprev, zero, dc, dn, dpre, t)
RNNBENCH_CLONED(slstm_forward_rows, P_SLSTM_FORWARD, A_SLSTM_FORWARD)
RNNBENCH_CLONED(slstm_backward_rows, P_SLSTM_BACKWARD, A_SLSTM_BACKWARD)

// Returns hs, cs, ns (K, T, B, H) and acts (K, T, B, 5H).
std::vector<Tensor> slstm_forward(const Tensor& xp, const Tensor& whh, bool exp_forget, bool reverse) {
  check_cpu(xp, "xp");
  const int64_t K = xp.size(0), T = xp.size(1), B = xp.size(2), H = xp.size(3) / 4;
  auto opt = xp.options();
  Tensor hs = at::empty({K, T, B, H}, opt), cs = at::empty({K, T, B, H}, opt), ns = at::empty({K, T, B, H}, opt);
  Tensor acts = at::empty({K, T, B, 5 * H}, opt), pre = at::empty({K, B, 4 * H}, opt);
  Tensor m = at::full({K, B, H}, -std::numeric_limits<double>::infinity(), opt), h = at::zeros({K, B, H}, opt);
  Tensor whh_t = whh.transpose(1, 2).contiguous();
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnbench_slstm_forward", [&] {
    std::vector<scalar_t> zero(H, scalar_t(0));
    scalar_t *pp = pre.data_ptr<scalar_t>(), *mp = m.data_ptr<scalar_t>(), *a = acts.data_ptr<scalar_t>();
    scalar_t *c = cs.data_ptr<scalar_t>(), *np = ns.data_ptr<scalar_t>(), *hp = hs.data_ptr<scalar_t>();
    for (int64_t n = 0; n < T; ++n) {
      const int64_t t = reverse ? T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
      gemm_out(pre, xp.select(1, t), h, whh_t);
      const bool first = n == 0;
      parallel_rows(K * B, H, [&](int64_t r0, int64_t r1) {
        slstm_forward_rows_any(T, r0, r1, B, H, exp_forget, pp, first ? nullptr : c + prev * B * H,
                               first ? nullptr : np + prev * B * H, zero.data(), mp, a, c, np, hp, t);
      });
      h = hs.select(1, t);
    }
  });
  return {hs, cs, ns, acts};
}

// Returns d pre (K, T, B, 4H); the weight gradient is one GEMM the caller forms from it.
Tensor slstm_backward(const Tensor& dhs, const Tensor& cs, const Tensor& ns, const Tensor& acts, const Tensor& whh,
                      bool reverse) {
  check_cpu(acts, "acts");
  const int64_t K = cs.size(0), T = cs.size(1), B = cs.size(2), H = cs.size(3);
  auto opt = cs.options();
  Tensor dh_c = dhs.contiguous(), dpre = at::empty({K, T, B, 4 * H}, opt), dz = at::zeros({K, B, H}, opt);
  Tensor dc = at::zeros({K, B, H}, opt), dn = at::zeros({K, B, H}, opt);
  AT_DISPATCH_FLOATING_TYPES(cs.scalar_type(), "rnnbench_slstm_backward", [&] {
    std::vector<scalar_t> zero(H, scalar_t(0));
    const scalar_t *dho = dh_c.data_ptr<scalar_t>(), *a = acts.data_ptr<scalar_t>();
    const scalar_t *c = cs.data_ptr<scalar_t>(), *np = ns.data_ptr<scalar_t>();
    scalar_t *dzp = dz.data_ptr<scalar_t>(), *dcp = dc.data_ptr<scalar_t>(), *dnp = dn.data_ptr<scalar_t>();
    scalar_t* d = dpre.data_ptr<scalar_t>();
    for (int64_t n = T - 1; n >= 0; --n) {
      const int64_t t = reverse ? T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
      const bool first = n == 0;
      parallel_rows(K * B, H, [&](int64_t r0, int64_t r1) {
        slstm_backward_rows_any(T, r0, r1, B, H, dho, dzp, a, c, np, first ? nullptr : c + prev * B * H,
                                first ? nullptr : np + prev * B * H, zero.data(), dcp, dnp, d, t);
      });
      if (n > 0) gemm_out(dz, Tensor(), dpre.select(1, t), whh);
    }
  });
  return dpre;
}

// ---- LRU: a diagonal complex linear recurrence, constant in time ------------------------------------------------
// s_t = lambda s_{t-1} + b_t as real pairs; lambda (K, N) as (lr, li); b and s (K, T, B, N) each.
template <typename T>
RNNBENCH_INLINE void lru_forward_rows(int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t N, const T* lr, const T* li,
                                      const T* b_re, const T* b_im, const T* prev_re, const T* prev_im,
                                      const T* zero, T* s_re, T* s_im, int64_t t) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t k = r / B, b = r % B, at = ((k * T_ + t) * B + b) * N, back = (k * T_ * B + b) * N;
    const T *__restrict wr = lr + k * N, *__restrict wi = li + k * N;
    const T *__restrict xr = b_re + at, *__restrict xi = b_im + at;
    const T *__restrict pr = prev_re ? prev_re + back : zero, *__restrict pi = prev_im ? prev_im + back : zero;
    T *__restrict sr = s_re + at, *__restrict si = s_im + at;
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) {
      sr[j] = xr[j] + wr[j] * pr[j] - wi[j] * pi[j];
      si[j] = xi[j] + wr[j] * pi[j] + wi[j] * pr[j];
    }
  }
}

// d b_t (= d s_t, the output gradient plus the carry) and the lambda gradient, summed.
template <typename T>
RNNBENCH_INLINE void lru_backward_rows(int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t N, const T* lr, const T* li,
                                       const T* ds_re, const T* ds_im, const T* prev_re, const T* prev_im,
                                       const T* zero, T* carry_re, T* carry_im, T* db_re, T* db_im, T* dlr, T* dli,
                                       int64_t t) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t k = r / B, b = r % B, at = ((k * T_ + t) * B + b) * N, back = (k * T_ * B + b) * N;
    const T *__restrict wr = lr + k * N, *__restrict wi = li + k * N;
    const T *__restrict gr_out = ds_re + at, *__restrict gi_out = ds_im + at;
    const T *__restrict pr = prev_re ? prev_re + back : zero, *__restrict pi = prev_im ? prev_im + back : zero;
    T *__restrict cr = carry_re + r * N, *__restrict ci = carry_im + r * N;
    T *__restrict dr = db_re + at, *__restrict di = db_im + at;
    T *__restrict ar = dlr + k * N, *__restrict ai = dli + k * N;
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) {
      const T gr = gr_out[j] + cr[j], gi = gi_out[j] + ci[j];
      dr[j] = gr; di[j] = gi;
      ar[j] += gr * pr[j] + gi * pi[j];
      ai[j] += gi * pr[j] - gr * pi[j];
      cr[j] = wr[j] * gr + wi[j] * gi;
      ci[j] = wr[j] * gi - wi[j] * gr;
    }
  }
}

#define P_LRU_FORWARD(T) (int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t N, const T* lr, const T* li, const T* b_re, \
                          const T* b_im, const T* prev_re, const T* prev_im, const T* zero, T* s_re, T* s_im, \
                          int64_t t)
#define A_LRU_FORWARD (T_, r0, r1, B, N, lr, li, b_re, b_im, prev_re, prev_im, zero, s_re, s_im, t)
#define P_LRU_BACKWARD(T) (int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t N, const T* lr, const T* li, \
                           const T* ds_re, const T* ds_im, const T* prev_re, const T* prev_im, const T* zero, \
                           T* carry_re, T* carry_im, T* db_re, T* db_im, T* dlr, T* dli, int64_t t)
#define A_LRU_BACKWARD (T_, r0, r1, B, N, lr, li, ds_re, ds_im, prev_re, prev_im, zero, carry_re, carry_im, db_re, \
                        db_im, dlr, dli, t)
RNNBENCH_CLONED(lru_forward_rows, P_LRU_FORWARD, A_LRU_FORWARD)
RNNBENCH_CLONED(lru_backward_rows, P_LRU_BACKWARD, A_LRU_BACKWARD)

std::vector<Tensor> lru_forward(const Tensor& lr, const Tensor& li, const Tensor& b_re, const Tensor& b_im,
                                bool reverse) {
  check_cpu(b_re, "b_re");
  check_cpu(b_im, "b_im");
  const int64_t K = b_re.size(0), T = b_re.size(1), B = b_re.size(2), N = b_re.size(3);
  Tensor s_re = at::empty_like(b_re), s_im = at::empty_like(b_im), wr = lr.contiguous(), wi = li.contiguous();
  AT_DISPATCH_FLOATING_TYPES(b_re.scalar_type(), "rnnbench_lru_forward", [&] {
    std::vector<scalar_t> zero(N, scalar_t(0));
    const scalar_t *xr = b_re.data_ptr<scalar_t>(), *xi = b_im.data_ptr<scalar_t>();
    scalar_t *sr = s_re.data_ptr<scalar_t>(), *si = s_im.data_ptr<scalar_t>();
    parallel_rows(K * B, T * N, [&](int64_t r0, int64_t r1) {  // rows are independent: the whole loop per row
      for (int64_t n = 0; n < T; ++n) {
        const int64_t t = reverse ? T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
        const bool first = n == 0;
        lru_forward_rows_any(T, r0, r1, B, N, wr.data_ptr<scalar_t>(), wi.data_ptr<scalar_t>(), xr, xi,
                             first ? nullptr : sr + prev * B * N, first ? nullptr : si + prev * B * N, zero.data(),
                             sr, si, t);
      }
    });
  });
  return {s_re, s_im};
}

// Returns d b_re, d b_im (K, T, B, N), d lr, d li (K, N).
std::vector<Tensor> lru_backward(const Tensor& ds_re, const Tensor& ds_im, const Tensor& s_re, const Tensor& s_im,
                                 const Tensor& lr, const Tensor& li, bool reverse) {
  check_cpu(s_re, "s_re");
  const int64_t K = s_re.size(0), T = s_re.size(1), B = s_re.size(2), N = s_re.size(3);
  auto opt = s_re.options();
  Tensor gr = ds_re.contiguous(), gi = ds_im.contiguous(), wr = lr.contiguous(), wi = li.contiguous();
  Tensor db_re = at::empty_like(s_re), db_im = at::empty_like(s_im);
  Tensor carry_re = at::zeros({K, B, N}, opt), carry_im = at::zeros({K, B, N}, opt);
  PerThreadSum dlr({K, N}, opt), dli({K, N}, opt);
  AT_DISPATCH_FLOATING_TYPES(s_re.scalar_type(), "rnnbench_lru_backward", [&] {
    std::vector<scalar_t> zero(N, scalar_t(0));
    const scalar_t *sr = s_re.data_ptr<scalar_t>(), *si = s_im.data_ptr<scalar_t>();
    parallel_rows(K * B, T * N, [&](int64_t r0, int64_t r1) {
      scalar_t *dlr_own = dlr.own<scalar_t>(), *dli_own = dli.own<scalar_t>();
      for (int64_t n = T - 1; n >= 0; --n) {
        const int64_t t = reverse ? T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
        const bool first = n == 0;
        lru_backward_rows_any(T, r0, r1, B, N, wr.data_ptr<scalar_t>(), wi.data_ptr<scalar_t>(),
                              gr.data_ptr<scalar_t>(), gi.data_ptr<scalar_t>(), first ? nullptr : sr + prev * B * N,
                              first ? nullptr : si + prev * B * N, zero.data(), carry_re.data_ptr<scalar_t>(),
                              carry_im.data_ptr<scalar_t>(), db_re.data_ptr<scalar_t>(), db_im.data_ptr<scalar_t>(),
                              dlr_own, dli_own, t);
      }
    });
  });
  return {db_re, db_im, dlr.total(), dli.total()};
}

// ---- S6 (Mamba's selective SSM): s_t = exp(dt_t A) s_{t-1} + (dt_t u_t) B_t, y_t = s_t C_t -----------------------
// Per channel h a state of N; u, dt (K, T, B, H); Bm, C (K, T, B, N); A as (K, N, H); the states (K, T, B, N, H),
// saved. The element loops run over the H channels (N is small: 8 or 16), n outside.
template <typename T>
RNNBENCH_INLINE void s6_forward_rows(int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, int64_t N,
                                     const T* u, const T* dt, const T* A, const T* Bm, const T* C, const T* prev,
                                     const T* zero, T* ss, T* ys, int64_t t) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t k = r / B, b = r % B, at = (k * T_ + t) * B + b, back = (k * T_ * B + b) * N * H;
    const T *__restrict ur = u + at * H, *__restrict d = dt + at * H;
    T* __restrict y = ys + at * H;
    for (int64_t h = 0; h < H; ++h) y[h] = T(0);
    for (int64_t n = 0; n < N; ++n) {
      const T bn = Bm[at * N + n], cn = C[at * N + n];
      const T* __restrict a = A + (k * N + n) * H;
      const T* __restrict p = prev ? prev + back + n * H : zero;
      T* __restrict s = ss + (at * N + n) * H;
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) {
        const T v = exp_(d[h] * a[h]) * p[h] + d[h] * ur[h] * bn;
        s[h] = v;
        y[h] += v * cn;
      }
    }
  }
}

// du and ddt hold the sums over n (of g B and of d(dt A) A) until the row's last n, then the gradients.
template <typename T>
RNNBENCH_INLINE void s6_backward_rows(int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, int64_t N,
                                      const T* u, const T* dt, const T* A, const T* Bm, const T* C, const T* ss,
                                      const T* prev, const T* zero, const T* dys, T* dS, T* du, T* ddt, T* dB, T* dC,
                                      T* dA, int64_t t) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t k = r / B, b = r % B, at = (k * T_ + t) * B + b, back = (k * T_ * B + b) * N * H;
    const T *__restrict ur = u + at * H, *__restrict d = dt + at * H, *__restrict dy = dys + at * H;
    T *__restrict sum_gb = du + at * H, *__restrict sum_da = ddt + at * H;
    for (int64_t h = 0; h < H; ++h) { sum_gb[h] = T(0); sum_da[h] = T(0); }
    for (int64_t n = 0; n < N; ++n) {
      const T bn = Bm[at * N + n], cn = C[at * N + n];
      const T* __restrict a = A + (k * N + n) * H;
      const T* __restrict s = ss + (at * N + n) * H;
      const T* __restrict p = prev ? prev + back + n * H : zero;
      T* __restrict g_carry = dS + (r * N + n) * H;
      T* __restrict acc_a = dA + (k * N + n) * H;
      T db = T(0), dc = T(0);
#pragma omp simd reduction(+ : db, dc)
      for (int64_t h = 0; h < H; ++h) {
        const T decay = exp_(d[h] * a[h]);
        const T g = g_carry[h] + dy[h] * cn;
        dc += dy[h] * s[h];
        db += g * d[h] * ur[h];
        sum_gb[h] += g * bn;
        const T dlog = g * p[h] * decay;  // d (dt A[n, h])
        sum_da[h] += dlog * a[h];
        acc_a[h] += dlog * d[h];
        g_carry[h] = g * decay;
      }
      dB[at * N + n] = db;
      dC[at * N + n] = dc;
    }
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) {
      const T gb = sum_gb[h];
      sum_da[h] += gb * ur[h];  // ddt
      sum_gb[h] = gb * d[h];    // du
    }
  }
}

#define P_S6_FORWARD(T) (int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, int64_t N, const T* u, const T* dt, \
                         const T* A, const T* Bm, const T* C, const T* prev, const T* zero, T* ss, T* ys, int64_t t)
#define A_S6_FORWARD (T_, r0, r1, B, H, N, u, dt, A, Bm, C, prev, zero, ss, ys, t)
#define P_S6_BACKWARD(T) (int64_t T_, int64_t r0, int64_t r1, int64_t B, int64_t H, int64_t N, const T* u, const T* dt, \
                          const T* A, const T* Bm, const T* C, const T* ss, const T* prev, const T* zero, \
                          const T* dys, T* dS, T* du, T* ddt, T* dB, T* dC, T* dA, int64_t t)
#define A_S6_BACKWARD (T_, r0, r1, B, H, N, u, dt, A, Bm, C, ss, prev, zero, dys, dS, du, ddt, dB, dC, dA, t)
RNNBENCH_CLONED(s6_forward_rows, P_S6_FORWARD, A_S6_FORWARD)
RNNBENCH_CLONED(s6_backward_rows, P_S6_BACKWARD, A_S6_BACKWARD)

// Returns ys (K, T, B, H) and the states (K, T, B, N, H).
std::vector<Tensor> s6_forward(const Tensor& u, const Tensor& dt, const Tensor& A, const Tensor& Bm, const Tensor& C,
                               bool reverse) {
  for (const Tensor* x : {&u, &dt, &A, &Bm, &C}) check_cpu(*x, "s6 inputs");
  const int64_t K = u.size(0), T = u.size(1), B = u.size(2), H = u.size(3), N = A.size(2);
  Tensor ys = at::empty_like(u), ss = at::empty({K, T, B, N, H}, u.options()), a_nh = A.transpose(1, 2).contiguous();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "rnnbench_s6_forward", [&] {
    std::vector<scalar_t> zero(H, scalar_t(0));
    scalar_t *s = ss.data_ptr<scalar_t>(), *y = ys.data_ptr<scalar_t>();
    parallel_rows(K * B, T * N * H, [&](int64_t r0, int64_t r1) {  // rows are independent: the whole loop per row
      for (int64_t n = 0; n < T; ++n) {
        const int64_t t = reverse ? T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
        s6_forward_rows_any(T, r0, r1, B, H, N, u.data_ptr<scalar_t>(), dt.data_ptr<scalar_t>(),
                            a_nh.data_ptr<scalar_t>(), Bm.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(),
                            n == 0 ? nullptr : s + prev * B * H * N, zero.data(), s, y, t);
      }
    });
  });
  return {ys, ss};
}

// Returns du, ddt (K, T, B, H), dB, dC (K, T, B, N), dA (K, H, N).
std::vector<Tensor> s6_backward(const Tensor& dys, const Tensor& u, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                                const Tensor& C, const Tensor& ss, bool reverse) {
  for (const Tensor* x : {&u, &dt, &A, &Bm, &C, &ss}) check_cpu(*x, "s6 inputs");
  const int64_t K = u.size(0), T = u.size(1), B = u.size(2), H = u.size(3), N = A.size(2);
  Tensor dy = dys.contiguous(), du = at::empty_like(u), ddt = at::empty_like(u), dB = at::empty_like(Bm);
  Tensor dC = at::empty_like(C), dS = at::zeros({K, B, N, H}, u.options());
  PerThreadSum dA({K, N, H}, u.options());
  Tensor a_nh = A.transpose(1, 2).contiguous();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "rnnbench_s6_backward", [&] {
    std::vector<scalar_t> zero(H, scalar_t(0));
    const scalar_t* s = ss.data_ptr<scalar_t>();
    parallel_rows(K * B, T * N * H, [&](int64_t r0, int64_t r1) {
      scalar_t* dA_own = dA.own<scalar_t>();
      for (int64_t n = T - 1; n >= 0; --n) {
        const int64_t t = reverse ? T - 1 - n : n, prev = reverse ? t + 1 : t - 1;
        s6_backward_rows_any(T, r0, r1, B, H, N, u.data_ptr<scalar_t>(), dt.data_ptr<scalar_t>(),
                             a_nh.data_ptr<scalar_t>(), Bm.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), s,
                             n == 0 ? nullptr : s + prev * B * H * N, zero.data(), dy.data_ptr<scalar_t>(),
                             dS.data_ptr<scalar_t>(), du.data_ptr<scalar_t>(), ddt.data_ptr<scalar_t>(),
                             dB.data_ptr<scalar_t>(), dC.data_ptr<scalar_t>(), dA_own, t);
      }
    });
  });
  return {du, ddt, dB, dC, dA.total().transpose(1, 2).contiguous()};
}

}  // namespace

TORCH_LIBRARY(rnnbench, m) {
  m.def("lstm_forward(Tensor xp, Tensor wrec, Tensor? peep, int[] flags, bool reverse) -> Tensor[]", &lstm_forward);
  m.def("lstm_backward(Tensor dhs, Tensor cs, Tensor ys, Tensor acts, Tensor wrec, Tensor? peep, "
        "int[] flags, bool reverse) -> Tensor", &lstm_backward);
  m.def("gru_forward(Tensor xp, Tensor whh, Tensor bhh, bool reverse) -> Tensor[]", &gru_forward);
  m.def("gru_backward(Tensor dhs, Tensor hs, Tensor rzs, Tensor ns, Tensor ghs, Tensor whh, bool reverse) -> Tensor[]",
        &gru_backward);
  m.def("gru_cho_forward(Tensor xp, Tensor w_rz, Tensor w_n, bool reverse) -> Tensor[]", &gru_cho_forward);
  m.def("gru_cho_backward(Tensor dhs, Tensor hs, Tensor rzs, Tensor ns, Tensor w_rz, Tensor w_n, bool reverse) -> "
        "Tensor", &gru_cho_backward);
  m.def("min_forward(Tensor pre, int kind, bool reverse) -> Tensor", &min_forward);
  m.def("min_backward(Tensor dhs, Tensor pre, Tensor hs, int kind, bool reverse) -> Tensor", &min_backward);
  m.def("indrnn_forward(Tensor xp, Tensor u, int activation, bool reverse) -> Tensor", &indrnn_forward);
  m.def("indrnn_backward(Tensor dhs, Tensor hs, Tensor u, int activation, bool reverse) -> Tensor[]",
        &indrnn_backward);
  m.def("slstm_forward(Tensor xp, Tensor whh, bool exp_forget, bool reverse) -> Tensor[]", &slstm_forward);
  m.def("slstm_backward(Tensor dhs, Tensor cs, Tensor ns, Tensor acts, Tensor whh, bool reverse) -> Tensor",
        &slstm_backward);
  m.def("lru_forward(Tensor lr, Tensor li, Tensor b_re, Tensor b_im, bool reverse) -> Tensor[]", &lru_forward);
  m.def("lru_backward(Tensor ds_re, Tensor ds_im, Tensor s_re, Tensor s_im, Tensor lr, Tensor li, bool reverse) -> "
        "Tensor[]", &lru_backward);
  m.def("s6_forward(Tensor u, Tensor dt, Tensor A, Tensor Bm, Tensor C, bool reverse) -> Tensor[]", &s6_forward);
  m.def("s6_backward(Tensor dys, Tensor u, Tensor dt, Tensor A, Tensor Bm, Tensor C, Tensor ss, bool reverse) -> "
        "Tensor[]", &s6_backward);
}
