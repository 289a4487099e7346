// Autocast kernels: under torch.autocast the ops run in float32, like torch's own losses and reductions.
// A training step under autocast hands the ops bfloat16 / float16 embeddings; the statistic is a
// difference of means of exponentials (MMD^2 is often 1e-3 of its terms), which half precision cannot
// hold. So floating inputs below float32 are cast up (float64 stays float64), autocast is switched off
// for the call, and the result is float32; the cast is differentiable, so gradients reach the half
// inputs in their own dtype.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace pytl {
namespace {

template <c10::DeviceType device>
at::Tensor up(const at::Tensor& t) {
  return at::autocast::cached_cast(at::kFloat, t, device);
}

template <c10::DeviceType device>
at::Tensor mmd2_terms_autocast(const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas, bool unbiased) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pytl::mmd2_terms", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(up<device>(x), up<device>(y), up<device>(sigmas), unbiased);
}

template <c10::DeviceType device>
at::Tensor mmd2_autocast(const at::Tensor& x, const at::Tensor& y, const at::Tensor& sigmas,
                         const at::Tensor& weights, bool unbiased) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pytl::mmd2", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(up<device>(x), up<device>(y), up<device>(sigmas), up<device>(weights), unbiased);
}

template <c10::DeviceType device>
at::Tensor rbf_kernel_matmul_autocast(const at::Tensor& z, const at::Tensor& s, const at::Tensor& sigmas,
                                      const at::Tensor& weights) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pytl::rbf_kernel_matmul", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(up<device>(z), up<device>(s), up<device>(sigmas), up<device>(weights));
}

}  // namespace
}  // namespace pytl

TORCH_LIBRARY_IMPL(pytl, AutocastCPU, m) {
  m.impl("mmd2_terms", &pytl::mmd2_terms_autocast<c10::DeviceType::CPU>);
  m.impl("mmd2", &pytl::mmd2_autocast<c10::DeviceType::CPU>);
  m.impl("rbf_kernel_matmul", &pytl::rbf_kernel_matmul_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(pytl, AutocastCUDA, m) {
  m.impl("mmd2_terms", &pytl::mmd2_terms_autocast<c10::DeviceType::CUDA>);
  m.impl("mmd2", &pytl::mmd2_autocast<c10::DeviceType::CUDA>);
  m.impl("rbf_kernel_matmul", &pytl::rbf_kernel_matmul_autocast<c10::DeviceType::CUDA>);
}
