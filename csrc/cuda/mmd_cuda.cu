// Host code of the CUDA MMD ops (pytl.mmd2_terms, pytl.mmd2_terms_and_grad, pytl.mmd2_terms_backward):
// argument checks, the centred samples, the bandwidth constants, the launch plans of the kernels in
// mmd_kernels.cuh, and the deterministic second pass over their per-CTA partial sums.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>

#include "../common/checks.h"
#include "mmd_kernels.cuh"
#include "tiles.cuh"

namespace pytl {
namespace {

// Forward: at most this many CTAs; each CTA takes a contiguous run of tiles (shares its A tile, L2 friendly).
constexpr int64_t kForwardMaxCtas = 4096;
// Gradient sweep: split the column tiles so that about this many CTAs run, within a workspace budget.
constexpr int64_t kSweepTargetCtas = 1024;
constexpr int64_t kSweepMaxSplits = 16;
constexpr int64_t kSweepWorkspaceBytes = int64_t{256} << 20;

at::ScalarType acc_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Both samples centred on x's mean, in the accumulation type, with their squared row norms.
struct Centred {
  at::Tensor x, y, nx, ny;
};

at::Tensor row_sq_norms(const at::Tensor& z) {
  at::Tensor out = at::empty({z.size(0)}, z.options());
  if (z.size(0) == 0) return out;
  const int threads = 256;
  const auto blocks = static_cast<unsigned>(ceil_div(z.size(0), threads));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "pytl_row_sq_norms", [&] {
    row_sq_norms_kernel<scalar_t><<<blocks, threads, 0, stream>>>(z.data_ptr<scalar_t>(), z.size(0), z.size(1),
                                                                  out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

Centred centre(const at::Tensor& x, const at::Tensor& y, at::ScalarType acc) {
  const at::Tensor center = x.to(at::kDouble).mean(0, /*keepdim=*/true).to(acc);
  Centred c;
  c.x = (x.to(acc) - center).contiguous();
  c.y = (y.to(acc) - center).contiguous();
  c.nx = row_sq_norms(c.x);
  c.ny = row_sq_norms(c.y);
  return c;
}

// The bandwidths in compute order (ascending gamma), as the kernels take them. Built on the device from
// the sigmas tensor: reading the values to the host would make every call wait for the GPU.
struct DeviceBandwidths {
  at::Tensor neg_gamma_log2e;  // (K,) acc dtype, compute order
  at::Tensor order;            // (K,) int64: compute position q -> the caller's index
  at::Tensor inverse;          // (K,) int64: the caller's index -> compute position
  at::Tensor ladder;           // (1,) int32: 1 for a ratio-2 ladder (one exp per pair, then squarings)
};

// Also checks the values: a bad sigma stops the launch with a device-side assertion (see checks.h).
DeviceBandwidths device_bandwidths(const at::Tensor& sigmas, at::ScalarType acc) {
  const int64_t K = sigmas.size(0);
  const at::Tensor s = sigmas.detach().to(at::kDouble).contiguous();
  DeviceBandwidths bw;
  bw.neg_gamma_log2e = at::empty({K}, s.options().dtype(acc));
  bw.order = at::empty({K}, s.options().dtype(at::kLong));
  bw.inverse = at::empty({K}, s.options().dtype(at::kLong));
  bw.ladder = at::empty({1}, s.options().dtype(at::kInt));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "pytl_bandwidth_constants", [&] {
    bandwidth_constants_kernel<scalar_t><<<1, 1, 0, stream>>>(
        s.data_ptr<double>(), static_cast<int>(K), bw.neg_gamma_log2e.data_ptr<scalar_t>(),
        bw.order.data_ptr<int64_t>(), bw.inverse.data_ptr<int64_t>(), bw.ladder.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return bw;
}

// T_k from the block sums (the self sums over ordered pairs i != j).
at::Tensor terms_from_sums(const at::Tensor& Sxx, const at::Tensor& Syy, const at::Tensor& Sxy, int64_t n, int64_t m,
                           bool unbiased) {
  const double nd = static_cast<double>(n), md = static_cast<double>(m);
  if (unbiased) return Sxx / (nd * (nd - 1)) + Syy / (md * (md - 1)) - Sxy * (2.0 / (nd * md));
  return (Sxx + nd) / (nd * nd) + (Syy + md) / (md * md) - Sxy * (2.0 / (nd * md));  // diagonals: exactly n, m
}

at::Tensor mmd2_terms_cuda(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& sigmas,
                           bool unbiased) {
  check_mmd_inputs(x_in, y_in, sigmas, unbiased);
  c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t n = x_in.size(0), m = y_in.size(0), d = x_in.size(1), K = sigmas.size(0);
  const at::ScalarType acc = acc_dtype(x_in);
  const Centred c = centre(x_in, y_in, acc);
  const DeviceBandwidths bw = device_bandwidths(sigmas, acc);

  ForwardPlan plan;
  const int64_t Tx = ceil_div(n, kTile), Ty = ceil_div(m, kTile);
  plan.tiles[0] = Tx * (Tx + 1) / 2;
  plan.tiles[1] = Ty * (Ty + 1) / 2;
  plan.tiles[2] = Tx * Ty;
  plan.tiles_per_cta = ceil_div(plan.tiles[0] + plan.tiles[1] + plan.tiles[2], kForwardMaxCtas);
  plan.cta_start[0] = 0;
  for (int s = 0; s < 3; ++s) plan.cta_start[s + 1] = plan.cta_start[s] + ceil_div(plan.tiles[s], plan.tiles_per_cta);
  const int64_t grid = plan.cta_start[3];

  at::Tensor partials = at::empty({grid, K}, x_in.options().dtype(at::kDouble));  // every row is written
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "pytl_mmd2_terms_cuda", [&] {
    mmd_forward_kernel<scalar_t><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
        c.x.data_ptr<scalar_t>(), c.y.data_ptr<scalar_t>(), c.nx.data_ptr<scalar_t>(), c.ny.data_ptr<scalar_t>(), n,
        m, d, bw.neg_gamma_log2e.data_ptr<scalar_t>(), static_cast<int>(K), bw.ladder.data_ptr<int>(), plan,
        partials.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  // fixed-shape sums over the per-CTA partials: deterministic
  const at::Tensor Sxx = partials.narrow(0, plan.cta_start[0], plan.cta_start[1] - plan.cta_start[0]).sum(0);
  const at::Tensor Syy = partials.narrow(0, plan.cta_start[1], plan.cta_start[2] - plan.cta_start[1]).sum(0);
  const at::Tensor Sxy = partials.narrow(0, plan.cta_start[2], plan.cta_start[3] - plan.cta_start[2]).sum(0);
  return terms_from_sums(Sxx, Syy, Sxy, n, m, unbiased).index_select(0, bw.inverse).to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mmd2_terms_and_grad_cuda(const at::Tensor& grad_terms,
                                                                                    const at::Tensor& x_in,
                                                                                    const at::Tensor& y_in,
                                                                                    const at::Tensor& sigmas,
                                                                                    bool unbiased) {
  check_mmd_backward_inputs(grad_terms, x_in, y_in, sigmas, unbiased);
  c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t n = x_in.size(0), m = y_in.size(0), d = x_in.size(1), K = sigmas.size(0);
  const at::ScalarType acc = acc_dtype(x_in);
  const size_t acc_bytes = acc == at::kDouble ? sizeof(double) : sizeof(float);
  const Centred c = centre(x_in, y_in, acc);
  const DeviceBandwidths bw = device_bandwidths(sigmas, acc);

  // per-bandwidth constants in compute order
  const at::Tensor sig_c = sigmas.detach().to(at::kDouble).index_select(0, bw.order);
  const at::Tensor g_c = grad_terms.detach().to(at::kDouble).index_select(0, bw.order);
  const at::Tensor cg = (g_c * sig_c.pow(-2) * -0.5).to(acc).contiguous();  // g_k * (-gamma_k)

  const double nd = static_cast<double>(n), md = static_cast<double>(m);
  const double a = unbiased ? 1.0 / (nd * (nd - 1)) : 1.0 / (nd * nd);
  const double b = unbiased ? 1.0 / (md * (md - 1)) : 1.0 / (md * md);
  const double cxy = -2.0 / (nd * md);

  // Column splits: enough CTAs to fill the GPU on small inputs, within a workspace budget.
  const int64_t Tx = ceil_div(n, kTile), Ty = ceil_div(m, kTile);
  const int64_t row_tiles = Tx + Ty;  // also the number of column tiles each row tile walks
  int64_t splits = std::min<int64_t>({ceil_div(kSweepTargetCtas, row_tiles), kSweepMaxSplits, row_tiles});
  const int64_t slice_bytes = std::max<int64_t>((n + m) * d * static_cast<int64_t>(acc_bytes), 1);
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, kSweepWorkspaceBytes / slice_bytes));

  at::Tensor gx_ws = at::empty({splits, n, d}, x_in.options().dtype(acc));  // every in-range element is written
  at::Tensor gy_ws = at::empty({splits, m, d}, x_in.options().dtype(acc));
  const auto part_opts = x_in.options().dtype(at::kDouble);
  at::Tensor e_part = at::zeros({row_tiles, splits, 2, K}, part_opts);  // some slots stay 0
  at::Tensor d_part = at::zeros({row_tiles, splits, 2, K}, part_opts);

  // tiles and weights (43 KB in float, 86 KB in double) + the per-thread sums (12 or 16 bytes per thread and k)
  const size_t smem = (2 * kChunkElems + kTile * kLd + kTile * kLdT) * acc_bytes +
                      static_cast<size_t>(K) * kThreads * (sizeof(double) + acc_bytes);
  int smem_optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, x_in.get_device()));
  TORCH_CHECK(smem + 4096 <= static_cast<size_t>(smem_optin), "pytl.mmd2_terms_and_grad: the ", acc,
              " CUDA kernel needs ", smem + 4096, " bytes of shared memory per block, this GPU offers ", smem_optin,
              " (use float32, or compute on the CPU)");
  const int64_t grid = row_tiles * splits;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "pytl_mmd2_terms_and_grad_cuda", [&] {
    auto kernel = mmd_sweep_kernel<scalar_t>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kernel<<<static_cast<unsigned>(grid), kThreads, smem, stream>>>(
        c.x.data_ptr<scalar_t>(), c.y.data_ptr<scalar_t>(), c.nx.data_ptr<scalar_t>(), c.ny.data_ptr<scalar_t>(), n,
        m, d, bw.neg_gamma_log2e.data_ptr<scalar_t>(), cg.data_ptr<scalar_t>(), static_cast<int>(K),
        bw.ladder.data_ptr<int>(), static_cast<scalar_t>(4.0 * a), static_cast<scalar_t>(4.0 * b),
        static_cast<scalar_t>(2.0 * cxy), splits,
        gx_ws.data_ptr<scalar_t>(), gy_ws.data_ptr<scalar_t>(), e_part.data_ptr<double>(), d_part.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  // fixed-shape sums: deterministic
  const at::Tensor gx = (splits == 1 ? gx_ws.select(0, 0) : gx_ws.sum(0)).to(x_in.scalar_type());
  const at::Tensor gy = (splits == 1 ? gy_ws.select(0, 0) : gy_ws.sum(0)).to(y_in.scalar_type());
  auto block = [](const at::Tensor& part, int64_t first, int64_t count, int64_t slot) {
    return part.narrow(0, first, count).select(2, slot).sum(at::IntArrayRef{0, 1});
  };
  const at::Tensor terms =
      terms_from_sums(block(e_part, 0, Tx, 0), block(e_part, Tx, Ty, 0), block(e_part, 0, Tx, 1), n, m, unbiased);
  const at::Tensor dS = block(d_part, 0, Tx, 0) * a + block(d_part, Tx, Ty, 0) * b + block(d_part, 0, Tx, 1) * cxy;
  const at::Tensor gsig = g_c * sig_c.pow(-3) * dS;  // dT_k/dsigma_k = sigma_k^-3 * sum of e_k D over the blocks
  return {terms.index_select(0, bw.inverse).to(x_in.scalar_type()), gx, gy,
          gsig.index_select(0, bw.inverse).to(sigmas.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd2_terms_backward_cuda(const at::Tensor& grad_terms,
                                                                         const at::Tensor& x, const at::Tensor& y,
                                                                         const at::Tensor& sigmas, bool unbiased) {
  auto r = mmd2_terms_and_grad_cuda(grad_terms, x, y, sigmas, unbiased);
  return {std::get<1>(r), std::get<2>(r), std::get<3>(r)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pytl, CUDA, m) {
  m.impl("mmd2_terms", &mmd2_terms_cuda);
  m.impl("mmd2_terms_and_grad", &mmd2_terms_and_grad_cuda);
  m.impl("mmd2_terms_backward", &mmd2_terms_backward_cuda);
}

}  // namespace pytl
