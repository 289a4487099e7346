// C++ test of the pytl ops through the dispatcher, as a C++ user of libpytl_ops.so would call them:
// values against a naive float64 computation written here, autograd from C++ against central finite
// differences, the backward op against autograd, and argument errors raised as c10::ValueError (wrong
// shape, value or device) or c10::TypeError (wrong dtype), which Python sees as ValueError / TypeError.
// Also the CUDA kernels' bandwidth constants (common/bandwidth_constants.h, which the GPU runs) computed
// here on the CPU, against compute_order and the host code they replaced.
// Built by CMake as pytl_cpp_test (ctest). Prints "N passed, M failed" and exits non-zero on failure.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/bandwidth_constants.h"
#include "common/bandwidths.h"

namespace {

int g_passed = 0;
int g_failed = 0;

void report(bool ok, const std::string& name, const std::string& detail = "") {
  if (ok) {
    ++g_passed;
    std::printf("PASS %s\n", name.c_str());
  } else {
    ++g_failed;
    std::printf("FAIL %s%s%s\n", name.c_str(), detail.empty() ? "" : ": ", detail.c_str());
  }
  std::fflush(stdout);
}

// Runs one test body; an exception counts as a failure of that test, not a crash of the program.
void run(const std::string& name, const std::function<void()>& body) {
  try {
    body();
  } catch (const std::exception& e) {
    report(false, name, std::string("unexpected exception: ") + e.what());
  }
}

using TermsFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);
using BackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                   const at::Tensor&, const at::Tensor&, bool);

c10::TypedOperatorHandle<TermsFn> terms_op() {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("pytl::mmd2_terms", "").typed<TermsFn>();
  return op;
}

c10::TypedOperatorHandle<BackwardFn> backward_op() {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("pytl::mmd2_terms_backward", "").typed<BackwardFn>();
  return op;
}

at::Tensor mmd2_terms(const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas, bool unbiased) {
  return terms_op().call(x, y, sigmas, unbiased);
}

// Naive reference, all in double: T_k for the biased (V) or unbiased (U) statistic.
std::vector<double> reference_terms(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& s_in,
                                    bool unbiased) {
  const auto x = x_in.detach().to(at::kCPU, at::kDouble).contiguous();
  const auto y = y_in.detach().to(at::kCPU, at::kDouble).contiguous();
  const auto s = s_in.detach().to(at::kCPU, at::kDouble).contiguous();
  const auto xa = x.accessor<double, 2>();
  const auto ya = y.accessor<double, 2>();
  const auto sa = s.accessor<double, 1>();
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1), K = s.size(0);
  auto sqdist = [d](const at::TensorAccessor<double, 1>& a, const at::TensorAccessor<double, 1>& b) {
    double acc = 0.0;
    for (int64_t c = 0; c < d; ++c) {
      const double diff = a[c] - b[c];
      acc += diff * diff;
    }
    return acc;
  };
  std::vector<double> out(K, 0.0);
  for (int64_t k = 0; k < K; ++k) {
    const double gamma = 1.0 / (2.0 * sa[k] * sa[k]);
    double sxx = 0.0, syy = 0.0, sxy = 0.0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j)
        if (!(unbiased && i == j)) sxx += std::exp(-gamma * sqdist(xa[i], xa[j]));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < m; ++j)
        if (!(unbiased && i == j)) syy += std::exp(-gamma * sqdist(ya[i], ya[j]));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) sxy += std::exp(-gamma * sqdist(xa[i], ya[j]));
    const double nx = unbiased ? double(n) * double(n - 1) : double(n) * double(n);
    const double ny = unbiased ? double(m) * double(m - 1) : double(m) * double(m);
    out[k] = sxx / nx + syy / ny - 2.0 * sxy / (double(n) * double(m));
  }
  return out;
}

// max |a - b| / (atol + rtol |b|) <= 1
bool close(const at::Tensor& got_in, const std::vector<double>& want, double rtol, double atol, std::string* why) {
  const auto got = got_in.detach().to(at::kCPU, at::kDouble).contiguous();
  if (got.dim() != 1 || got.size(0) != static_cast<int64_t>(want.size())) {
    *why = "shape " + c10::str(got.sizes()) + ", want (" + std::to_string(want.size()) + ",)";
    return false;
  }
  const double* g = got.data_ptr<double>();
  for (size_t k = 0; k < want.size(); ++k) {
    if (!(std::abs(g[k] - want[k]) <= atol + rtol * std::abs(want[k]))) {
      *why = c10::str("T[", k, "] = ", g[k], ", reference ", want[k]);
      return false;
    }
  }
  return true;
}

bool close_tensors(const at::Tensor& got, const at::Tensor& want, double rtol, double atol, std::string* why) {
  if (!got.defined()) {
    *why = "gradient is undefined";
    return false;
  }
  if (got.sizes() != want.sizes()) {
    *why = c10::str("shape ", got.sizes(), " vs ", want.sizes());
    return false;
  }
  const auto g = got.detach().to(at::kCPU, at::kDouble);
  const auto w = want.detach().to(at::kCPU, at::kDouble);
  if (!at::allclose(g, w, rtol, atol)) {
    *why = c10::str("max |diff| = ", (g - w).abs().max().item<double>(), "\ngot:\n", g, "\nwant:\n", w);
    return false;
  }
  return true;
}

// Central finite differences of L = sum_k w_k T_k with respect to every element of `which` (float64).
at::Tensor finite_difference(const at::Tensor& x, const at::Tensor& y, const at::Tensor& s, const at::Tensor& w,
                             bool unbiased, int which) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> args = {x.detach().clone(), y.detach().clone(), s.detach().clone()};
  at::Tensor target = args[which];
  at::Tensor grad = at::zeros_like(target);
  auto flat = target.view({-1});
  auto gflat = grad.view({-1});
  const double h = 1e-6;
  for (int64_t e = 0; e < flat.numel(); ++e) {
    const double orig = flat[e].item<double>();
    flat[e].fill_(orig + h);
    const double up = (mmd2_terms(args[0], args[1], args[2], unbiased) * w).sum().item<double>();
    flat[e].fill_(orig - h);
    const double down = (mmd2_terms(args[0], args[1], args[2], unbiased) * w).sum().item<double>();
    flat[e].fill_(orig);
    gflat[e].fill_((up - down) / (2.0 * h));
  }
  return grad;
}

// call() must throw an Expected (c10::ValueError or c10::TypeError) whose message mentions must_mention.
template <typename Expected, typename F>
void expect_error(const std::string& name, F&& call, const std::string& must_mention) {
  try {
    call();
    report(false, name, "no exception was thrown");
  } catch (const Expected& e) {
    const std::string msg = e.what_without_backtrace();
    const bool ok = msg.find(must_mention) != std::string::npos;
    report(ok, name, ok ? "" : "message does not mention '" + must_mention + "': " + msg);
  } catch (const c10::Error& e) {
    report(false, name, std::string("threw a c10::Error of the wrong kind: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    report(false, name, std::string("threw a non-c10::Error: ") + e.what());
  }
}

void test_values(const at::Device& device) {
  struct Case {
    int64_t n, m, d;
    at::ScalarType dtype;
  };
  const std::vector<Case> cases = {
      {7, 5, 3, at::kDouble},    {1, 1, 2, at::kDouble},     {2, 3, 1, at::kDouble},   {33, 65, 17, at::kDouble},
      {70, 90, 130, at::kDouble}, {40, 31, 8, at::kFloat},    {129, 64, 33, at::kFloat},
  };
  const std::string dev = device.str();
  for (const auto& c : cases) {
    for (bool unbiased : {false, true}) {
      if (unbiased && (c.n < 2 || c.m < 2)) continue;
      const std::string name = c10::str("values[", dev, ", ", c.dtype, ", n=", c.n, " m=", c.m, " d=", c.d,
                                        unbiased ? ", unbiased]" : ", biased]");
      run(name, [&] {
        auto opts = at::TensorOptions().dtype(c.dtype).device(device);
        auto x = at::randn({c.n, c.d}, opts);
        auto y = at::randn({c.m, c.d}, opts) * 1.3 + 0.4;
        auto sigmas = at::tensor({0.5, 1.0, 2.0, 4.0}, opts).mul(std::sqrt(double(c.d)));
        auto T = mmd2_terms(x, y, sigmas, unbiased);
        const bool dbl = c.dtype == at::kDouble;
        std::string why;
        bool ok = T.scalar_type() == c.dtype && T.device() == device;
        if (!ok) why = c10::str("result is ", T.scalar_type(), " on ", T.device());
        ok = ok && close(T, reference_terms(x, y, sigmas, unbiased), dbl ? 1e-9 : 1e-4, dbl ? 1e-11 : 2e-6, &why);
        report(ok, name, why);
      });
    }
  }
  // Identical samples: the biased statistic of x against itself is exactly 0 in exact arithmetic.
  run("values[" + dev + ", x against itself is 0]", [&] {
    auto x = at::randn({20, 4}, at::TensorOptions().dtype(at::kDouble).device(device));
    auto T = mmd2_terms(x, x, at::tensor({1.0, 3.0}, x.options()), false);
    std::string why;
    report(close(T, {0.0, 0.0}, 0.0, 1e-12, &why), "values[" + dev + ", x against itself is 0]", why);
  });
}

void test_autograd(const at::Device& device) {
  for (bool unbiased : {false, true}) {
    const std::string tag = c10::str("[", device.str(), unbiased ? ", unbiased]" : ", biased]");
    run("autograd" + tag, [&] {
      auto opts = at::TensorOptions().dtype(at::kDouble).device(device);
      auto x = at::randn({6, 3}, opts).requires_grad_(true);
      auto y = (at::randn({5, 3}, opts) + 0.5).requires_grad_(true);
      auto sigmas = at::tensor({0.7, 1.5, 3.0}, opts).requires_grad_(true);

      // T.sum().backward(): x.grad against central differences.
      auto T = mmd2_terms(x, y, sigmas, unbiased);
      report(T.requires_grad(), "autograd" + tag + " output requires grad");
      T.sum().backward();
      auto ones = at::ones({3}, opts);
      std::string why;
      report(close_tensors(x.grad(), finite_difference(x, y, sigmas, ones, unbiased, 0), 1e-5, 1e-7, &why),
             "autograd" + tag + " T.sum().backward(): x.grad vs finite differences", why);

      // Non-uniform upstream weights, all three inputs.
      x.mutable_grad().reset();
      y.mutable_grad().reset();
      sigmas.mutable_grad().reset();
      auto w = at::tensor({0.2, -1.0, 0.7}, opts);
      (mmd2_terms(x, y, sigmas, unbiased) * w).sum().backward();
      const char* names[3] = {"x", "y", "sigmas"};
      const at::Tensor grads[3] = {x.grad(), y.grad(), sigmas.grad()};
      for (int which = 0; which < 3; ++which) {
        std::string why2;
        report(close_tensors(grads[which], finite_difference(x, y, sigmas, w, unbiased, which), 1e-5, 1e-7, &why2),
               c10::str("autograd", tag, " weighted: ", names[which], ".grad vs finite differences"), why2);
      }

      // The backward op called directly agrees with what autograd produced.
      auto [gx, gy, gs] = backward_op().call(w, x.detach(), y.detach(), sigmas.detach(), unbiased);
      std::string why3;
      bool ok = close_tensors(gx, x.grad(), 1e-10, 1e-12, &why3) && close_tensors(gy, y.grad(), 1e-10, 1e-12, &why3) &&
                close_tensors(gs, sigmas.grad(), 1e-10, 1e-12, &why3);
      report(ok, "autograd" + tag + " mmd2_terms_backward op matches autograd", why3);
    });
  }
}

void test_errors() {
  auto x = at::randn({4, 3}, at::kDouble);
  auto y = at::randn({5, 3}, at::kDouble);
  auto s = at::tensor({1.0, 2.0}, at::kDouble);
  using c10::TypeError;
  using c10::ValueError;
  expect_error<ValueError>("error: 3-D x", [&] { mmd2_terms(at::randn({2, 4, 3}, at::kDouble), y, s, false); },
                           "x must be a 2-D");
  expect_error<ValueError>("error: feature dimensions differ",
                           [&] { mmd2_terms(x, at::randn({5, 2}, at::kDouble), s, false); }, "number of features");
  expect_error<ValueError>("error: unbiased with one row", [&] { mmd2_terms(x.slice(0, 0, 1), y, s, true); },
                           "unbiased");
  expect_error<TypeError>("error: integer x", [&] { mmd2_terms(x.to(at::kInt), y.to(at::kInt), s, false); },
                          "x must be a floating-point");
  expect_error<TypeError>("error: dtypes differ", [&] { mmd2_terms(x, y.to(at::kFloat), s, false); }, "same dtype");
  expect_error<ValueError>("error: sigmas 2-D", [&] { mmd2_terms(x, y, s.view({1, 2}), false); }, "sigmas");
  expect_error<ValueError>("error: negative bandwidth",
                           [&] { mmd2_terms(x, y, at::tensor({1.0, -2.0}, at::kDouble), false); }, "sigmas");
  expect_error<ValueError>("error: backward grad_terms shape",
                           [&] { backward_op().call(at::ones({3}, at::kDouble), x, y, s, false); }, "grad_terms");

  // the sample-weighted ops: bad weights get the same errors as from Python
  using WeightedFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, const at::Tensor&, bool);
  static auto weighted = c10::Dispatcher::singleton().findSchemaOrThrow("pytl::weighted_mmd2", "").typed<WeightedFn>();
  const auto w = at::full({2}, 0.5, at::kDouble);
  const auto xw = at::ones({4}, at::kDouble), yw = at::ones({5}, at::kDouble);
  expect_error<ValueError>("error: negative sample weight",
                           [&] { weighted.call(x, y, s, w, at::tensor({1.0, -1.0, 1.0, 1.0}, at::kDouble), yw, false); },
                           "x_weights must be non-negative and finite");
  expect_error<ValueError>("error: NaN sample weight",
                           [&] { weighted.call(x, y, s, w, xw, yw * std::nan(""), false); }, "y_weights must be non-negative");
  expect_error<ValueError>("error: sample weights of the wrong length",
                           [&] { weighted.call(x, y, s, w, at::ones({3}, at::kDouble), yw, false); },
                           "x_weights must be a 1-D tensor with one weight per row of x (4)");
  expect_error<ValueError>("error: all-zero sample weights",
                           [&] { weighted.call(x, y, s, w, xw, at::zeros({5}, at::kDouble), false); },
                           "y_weights must not be all zero");
  expect_error<TypeError>("error: integer sample weights",
                          [&] { weighted.call(x, y, s, w, xw.to(at::kInt), yw, false); },
                          "x_weights must be a floating-point tensor");
  {
    auto xw0 = at::zeros({4}, at::kDouble);
    xw0.index_put_({1}, 1.0);
    expect_error<ValueError>("error: unbiased with one weighted sample", [&] { weighted.call(x, y, s, w, xw0, yw, true); },
                             "at least 2 samples with positive weight in x_weights");
  }
}


// bandwidth_constants<T> (run on the GPU by the CUDA ops) against compute_order<T> (order, ladder flag) and
// the host code it replaced (the constants, bitwise), for random, ladder and tied bandwidths.
template <typename T>
void check_bandwidth_constants(const std::string& name, const std::vector<double>& s) {
  const int K = static_cast<int>(s.size());
  T ng[pytl::kMaxBandwidths];
  int64_t order[pytl::kMaxBandwidths], inverse[pytl::kMaxBandwidths];
  int ladder = -1;
  const bool valid = pytl::bandwidth_constants<T>(s.data(), K, ng, order, inverse, &ladder);
  std::vector<int> want_order;
  const pytl::Bandwidths<T> want = pytl::compute_order<T>(s, want_order);
  const double lowest = -static_cast<double>(std::numeric_limits<T>::max());
  std::string why;
  if (!valid) why = "reported invalid";
  if (ladder != (want.ladder ? 1 : 0)) why = c10::str("ladder ", ladder, ", compute_order ", want.ladder);
  for (int q = 0; q < K && why.empty(); ++q) {
    const double sq = s[want_order[q]];
    const T want_ng = static_cast<T>(std::max(-0.5 / (sq * sq) * pytl::kLog2e, lowest));  // the old host code
    if (order[q] != want_order[q]) why = c10::str("order[", q, "] = ", order[q], ", compute_order ", want_order[q]);
    else if (inverse[order[q]] != q) why = c10::str("inverse[", order[q], "] = ", inverse[order[q]], ", want ", q);
    else if (std::memcmp(&ng[q], &want_ng, sizeof(T)) != 0)
      why = c10::str("neg_gamma_log2e[", q, "] = ", ng[q], ", host code ", want_ng);
  }
  report(why.empty(), name, why);
}

void test_bandwidth_constants() {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> log_sigma(-6.0, 6.0);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<double> s(1 + trial % pytl::kMaxBandwidths);
    for (double& v : s) v = std::exp(log_sigma(rng));
    if (trial % 3 == 0) s[trial % s.size()] = s[0];  // a tie
    check_bandwidth_constants<float>("bandwidth constants: random float, trial " + std::to_string(trial), s);
    check_bandwidth_constants<double>("bandwidth constants: random double, trial " + std::to_string(trial), s);
  }
  // the default ladder sigma_0 * 2^(j/2), j = -2..2, built in float (as pytl.bandwidth_ladder does for float
  // inputs) and in double, in the default order, reversed and shuffled
  for (const double sigma0 : {1.0, 0.37, 123.4, 3e-4}) {
    for (const bool in_float : {true, false}) {
      std::vector<double> s;
      for (int j = -2; j <= 2; ++j) {
        const double factor = std::pow(2.0, j / 2.0);
        const float f = static_cast<float>(sigma0) * static_cast<float>(factor);  // a float product, rounded
        s.push_back(in_float ? static_cast<double>(f) : sigma0 * factor);
      }
      for (int variant = 0; variant < 3; ++variant) {
        if (variant == 1) std::reverse(s.begin(), s.end());
        if (variant == 2) std::shuffle(s.begin(), s.end(), rng);
        const std::string name =
            c10::str("bandwidth constants: ladder sigma0=", sigma0, in_float ? " (float)" : " (double)", " v", variant);
        check_bandwidth_constants<float>(name + " as float", s);
        check_bandwidth_constants<double>(name + " as double", s);
      }
    }
  }
  // ties only, and a single bandwidth
  check_bandwidth_constants<float>("bandwidth constants: all tied", std::vector<double>(7, 2.5));
  check_bandwidth_constants<double>("bandwidth constants: one bandwidth", {0.5});
  // clamp: a tiny sigma makes gamma overflow float (and double)
  check_bandwidth_constants<float>("bandwidth constants: tiny sigma (float clamp)", {1e-30, 1.0});
  check_bandwidth_constants<double>("bandwidth constants: tiny sigma (double clamp)", {1e-200, 1.0});
  // bad values are reported (the CUDA kernel then stops with a device-side assertion)
  for (const double bad : {0.0, -1.0, std::numeric_limits<double>::infinity(), std::nan("")}) {
    std::vector<double> s = {1.0, bad, 2.0};
    float ng[3];
    int64_t order[3], inverse[3];
    int ladder = 0;
    report(!pytl::bandwidth_constants<float>(s.data(), 3, ng, order, inverse, &ladder),
           c10::str("bandwidth constants: sigma ", bad, " is reported invalid"));
  }
}
}  // namespace

int main() {
  at::manual_seed(0);
  std::printf("pytl C++ op test (libpytl_ops via c10::Dispatcher)\n");
  run("schema pytl::mmd2_terms is registered", [] {
    terms_op();
    report(true, "schema pytl::mmd2_terms is registered");
  });
  if (g_failed) {
    std::printf("0 passed, %d failed\n", g_failed);
    return 1;
  }
  test_values(at::Device(at::kCPU));
  test_autograd(at::Device(at::kCPU));
  test_errors();
  test_bandwidth_constants();
  if (at::hasCUDA()) {
    test_values(at::Device(at::kCUDA, 0));
    test_autograd(at::Device(at::kCUDA, 0));
  } else {
    std::printf("(no CUDA device visible: CPU only)\n");
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
