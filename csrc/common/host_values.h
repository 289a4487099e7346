// Reading a small tensor's values on the host: the bandwidths and weights (to check them and to set up
// the kernels) and the upstream gradient of the K statistics.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <vector>

namespace pytl {

// A small tensor's values on the host, in double. Dispatched below any Python mode, so that a
// TorchDispatchMode (opcheck's schema check, say) sees the op itself, not this helper's copies.
inline std::vector<double> host_doubles(const at::Tensor& t) {
  c10::impl::ExcludeDispatchKeyGuard no_python(
      c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot}));
  const at::Tensor c = t.detach().to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// False for tensors without readable values: meta tensors and the fake/functional tensors that
// torch.compile traces with (they carry the Python or Functionalize dispatch key).
inline bool has_readable_data(const at::Tensor& t) {
  const auto traced = c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::Functionalize});
  return !t.is_meta() && !t.key_set().has_any(traced);
}

}  // namespace pytl
