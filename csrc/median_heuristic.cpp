// The median heuristic's bandwidth: sigma_0 = sqrt(median / 2), the median (torch's lower median) over
// the off-diagonal squared distances of a fixed, well-spread subsample of `points` pooled rows, taken
// from x and y in proportion. How many points is pytl.bandwidths.median_points' choice (the policy,
// documented there); this op computes, on any device:
//   rows      i * (P mod n) mod n for i < count, P = 2^31 - 1 prime: distinct, deterministic, computed
//             where the data lives (no random generator, no host round trip);
//   distances centred on the subsample's nanmean (|a|^2 + |b|^2 - 2 a.b stays accurate far from 0), in
//             float64 for float64 inputs and wherever the Gram is small (<= 2^20 multiply-adds, e.g. the
//             trainer's 128 x 64 batches); above that, float32 inputs get a float32 Gram, twice as fast
//             and accurate to ~1e-7 relative after centring, far below what a bandwidth needs;
//   medians   NaN pairs ignored; the lower median of all pairs, and of the positive ones for when the
//             first is 0 (mostly duplicated points); 2.0 (sigma_0 = 1) when neither exists.
// Selection: on the CPU, nth_element on the host (O(pairs)); elsewhere one device sort read with
// index_select, so that a GPU never waits (CUDA graphs). Both pick the same element, so the same value.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "common/host_values.h"

namespace pytl {
namespace {

constexpr const char* kMedianOp = "pytl.median_heuristic: ";

void check_median_inputs(const at::Tensor& x, const at::Tensor& y, int64_t points) {
  check_sample_pair(x, y, kMedianOp);
  TORCH_CHECK_VALUE(points >= 2, kMedianOp, "points must be at least 2, got ", points);
}

// count well-spread rows of s (all of them when count >= n).
at::Tensor spread_rows(const at::Tensor& s, int64_t count) {
  const int64_t n = s.size(0);
  if (count >= n) return s;
  constexpr int64_t kPrime = 2147483647;  // 2^31 - 1, larger than any realistic row count
  const at::Tensor idx = at::arange(count, s.options().dtype(at::kLong)).mul_(kPrime % n).remainder_(n);
  return s.index_select(0, idx);
}

constexpr int64_t kFloat64GramMax = int64_t{1} << 20;  // multiply-adds

// The pooled subsample in the Gram's dtype, contiguous and its own (to be centred in place): all of (x, y),
// or x's and y's shares of `points`.
at::Tensor median_sample(const at::Tensor& x, const at::Tensor& y, int64_t points) {
  const int64_t n = x.size(0), m = y.size(0);
  at::Tensor z;
  if (points >= n + m) {
    z = at::cat({x, y});
  } else {  // each side in proportion (Python's round: half to even), at least one row of each
    const double share = static_cast<double>(points) * static_cast<double>(n) / static_cast<double>(n + m);
    const int64_t px = std::min({n, std::max<int64_t>(1, static_cast<int64_t>(std::nearbyint(share))), points - 1});
    z = at::cat({spread_rows(x, px), spread_rows(y, points - px)});
  }
  const int64_t p = z.size(0), d = z.size(1);
  const bool small = p * p * d <= kFloat64GramMax;
  return z.to(x.scalar_type() == at::kDouble || small ? at::kDouble : at::kFloat).contiguous();
}

// z minus its nanmean over the rows, in place, on the host: one pass where at::nanmean and the
// subtraction take eight ops (half the heuristic's time on small wide batches). The same sums, row after
// row in a column, as the device path's at::nanmean (the tests compare the two bit for bit).
template <typename T>
void centre_on_host(at::Tensor& z) {
  const int64_t p = z.size(0), d = z.size(1);
  T* a = z.data_ptr<T>();
  std::vector<T> sum(d, T(0));
  std::vector<int64_t> count(d, 0);
  for (int64_t i = 0; i < p; ++i)
    for (int64_t j = 0; j < d; ++j)
      if (!std::isnan(a[i * d + j])) sum[j] += a[i * d + j], ++count[j];
  for (int64_t j = 0; j < d; ++j) sum[j] /= static_cast<T>(count[j]);  // no value: 0 / 0 = NaN, as nanmean
  for (int64_t i = 0; i < p; ++i)
    for (int64_t j = 0; j < d; ++j) a[i * d + j] -= sum[j];
}

// sigma_0 from the lower median (or the lower median of the positive distances when it is 0).
double sigma_from_medians(double med_all, double med_pos) {
  const double med = med_all > 0 ? med_all : med_pos;  // NaN > 0 is false
  return std::sqrt((std::isfinite(med) && med > 0 ? med : 2.0) / 2.0);
}

// The Gram z z^T, through the same torch op on both selection paths (so both see the same distances). On the
// CPU it runs on one thread: its budget (median_points) keeps it under 2^22 multiply-adds, a millisecond,
// and the BLAS splits even a 128 x 64 Gram over every thread: beside busy processes its wait for the second
// thread took 16 ms instead of 0.05 (benchmarks/busy_machine.py). at::set_num_threads is the one handle
// torch gives on the BLAS's threads; it is restored right after.
at::Tensor gram(const at::Tensor& z) {
  const int threads = at::get_num_threads();
  const bool one_thread = z.is_cpu() && threads > 1;
  if (!one_thread) return at::mm(z, z.t());
  at::set_num_threads(1);
  at::Tensor g;
  try {
    g = at::mm(z, z.t());
  } catch (...) {
    at::set_num_threads(threads);
    throw;
  }
  at::set_num_threads(threads);
  return g;
}

// CPU: the upper triangle's pairs (NaN left out) gathered on the host, two nth_element selections.
double sigma_on_host(const at::Tensor& z) {
  const int64_t p = z.size(0);
  // the same torch ops as the device path for |z|^2 and the Gram, so that both see the same distances
  const at::Tensor sq_t = (z * z).sum(1).to(at::kDouble).contiguous();
  const at::Tensor zz = gram(z).to(at::kDouble).contiguous();
  const double* g = zz.data_ptr<double>();
  const double* sq = sq_t.data_ptr<double>();
  std::vector<double> pairs;
  pairs.reserve(p * (p - 1) / 2);
  for (int64_t i = 0; i < p; ++i)
    for (int64_t j = i + 1; j < p; ++j) {
      const double d2 = std::max((sq[i] + sq[j]) - 2.0 * g[i * p + j], 0.0);  // NaN stays NaN
      if (!std::isnan(d2)) pairs.push_back(d2);
    }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (pairs.empty()) return sigma_from_medians(nan, nan);
  auto lower_median = [](std::vector<double>::iterator first, std::vector<double>::iterator last) {
    const auto mid = first + (last - first - 1) / 2;
    std::nth_element(first, mid, last);
    return *mid;
  };
  const double med_all = lower_median(pairs.begin(), pairs.end());
  if (med_all > 0) return sigma_from_medians(med_all, nan);
  const auto positive = std::partition(pairs.begin(), pairs.end(), [](double v) { return !(v > 0); });
  return sigma_from_medians(med_all, positive == pairs.end() ? nan : lower_median(positive, pairs.end()));
}

// Any device: one sort, both medians read with index_select (no value leaves the device).
at::Tensor sigma_on_device(const at::Tensor& z) {
  const int64_t p = z.size(0);
  const at::Tensor sq = (z * z).sum(1).to(at::kDouble);
  const at::Tensor d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * gram(z).to(at::kDouble)).clamp_min(0.0);
  const at::Tensor iu = at::triu_indices(p, p, 1, z.options().dtype(at::kLong));
  const at::Tensor pairs = d2.flatten().index_select(0, iu[0] * p + iu[1]);
  const at::Tensor ordered = std::get<0>(pairs.sort());  // NaN sort last
  const at::Tensor valid = at::logical_not(at::isnan(pairs)).sum();
  const at::Tensor zeros = (pairs <= 0).sum();
  const at::Tensor padded = at::cat({ordered, at::full({1}, std::numeric_limits<double>::quiet_NaN(), d2.options())});
  const at::Tensor none = at::full_like(valid, pairs.numel());  // index of the NaN pad: "no such value"
  const at::Tensor all_idx = at::where(valid > 0, at::floor_divide(valid - 1, 2), none);
  const at::Tensor pos_idx = at::where(valid > zeros, zeros + at::floor_divide(valid - zeros - 1, 2), none);
  const at::Tensor picked = padded.index_select(0, at::stack({all_idx, pos_idx}));
  const at::Tensor med_all = picked[0], med_pos = picked[1];
  at::Tensor med = at::where(med_all > 0, med_all, med_pos);
  med = at::where(at::logical_and(at::isfinite(med), med > 0), med, at::full_like(med, 2.0));
  return at::sqrt(med / 2.0);
}

at::Tensor median_heuristic_op(const at::Tensor& x, const at::Tensor& y, int64_t points) {
  check_median_inputs(x, y, points);
  const auto out_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;  // half -> float32
  at::Tensor z = median_sample(x.detach(), y.detach(), points);
  // PYTL_MEDIAN_SELECTION=sort runs the device path on the CPU too (tests compare the two)
  const char* forced = std::getenv("PYTL_MEDIAN_SELECTION");
  const bool sort_anyway = forced != nullptr && std::strcmp(forced, "sort") == 0;
  if (z.is_cpu() && has_readable_data(z) && !sort_anyway) {
    if (z.scalar_type() == at::kDouble)
      centre_on_host<double>(z);
    else
      centre_on_host<float>(z);
    return at::scalar_tensor(sigma_on_host(z), x.options().dtype(out_dtype));
  }
  z = z - at::nanmean(z, {0}, /*keepdim=*/true);
  return sigma_on_device(z).to(out_dtype);
}

}  // namespace
}  // namespace pytl

TORCH_LIBRARY_IMPL(pytl, CompositeExplicitAutograd, m) { m.impl("median_heuristic", &pytl::median_heuristic_op); }
