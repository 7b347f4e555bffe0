// tokensel-llamacpp: the MLP projector from the mmproj's weights (see projector.hpp).
#include "projector.hpp"

#include <cstring>
#include <memory>
#include <stdexcept>

#include <ggml-cpu.h>
#include <ggml.h>
#include <gguf.h>

namespace tsl {

mlp_projector::mlp_projector(const std::string& mmproj) {
  gguf_init_params p{false, &weights_};
  gguf_ = gguf_init_from_file(mmproj.c_str(), p);
  if (!gguf_ || !weights_) throw std::runtime_error("--mmproj " + mmproj + ": cannot read its tensors");
  w1_ = ggml_get_tensor(weights_, "mm.0.weight");
  b1_ = ggml_get_tensor(weights_, "mm.0.bias");
  w2_ = ggml_get_tensor(weights_, "mm.2.weight");
  b2_ = ggml_get_tensor(weights_, "mm.2.bias");
  if (!w1_ || !b1_ || !w2_ || !b2_ || w2_->ne[0] != w1_->ne[1]) {
    throw std::runtime_error("--mmproj " + mmproj + ": no two-layer MLP projector (mm.0.*, mm.2.*)");
  }
}

mlp_projector::~mlp_projector() {
  if (weights_) ggml_free(weights_);
  if (gguf_) gguf_free(gguf_);
}

int mlp_projector::in_features() const noexcept { return static_cast<int>(w1_->ne[0]); }
int mlp_projector::out_features() const noexcept { return static_cast<int>(w2_->ne[1]); }

std::vector<float> mlp_projector::forward(const float* x, int rows, int threads) const {
  const int din = in_features(), dout = out_features(), dmid = static_cast<int>(w1_->ne[1]);
  const std::size_t bytes = sizeof(float) * static_cast<std::size_t>(rows) * (din + 3 * dmid + 2 * dout);
  ggml_init_params ip{bytes + 16 * ggml_tensor_overhead() + ggml_graph_overhead() + (1 << 20), nullptr, false};
  std::unique_ptr<ggml_context, decltype(&ggml_free)> ctx(ggml_init(ip), ggml_free);
  if (!ctx) throw std::runtime_error("projector: cannot allocate its ggml context");
  ggml_tensor* in = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, din, rows);
  std::memcpy(in->data, x, sizeof(float) * static_cast<std::size_t>(din) * rows);
  ggml_tensor* h = ggml_gelu(ctx.get(), ggml_add(ctx.get(), ggml_mul_mat(ctx.get(), w1_, in), b1_));
  ggml_tensor* out = ggml_add(ctx.get(), ggml_mul_mat(ctx.get(), w2_, h), b2_);
  ggml_cgraph* gf = ggml_new_graph(ctx.get());
  ggml_build_forward_expand(gf, out);
  if (ggml_graph_compute_with_ctx(ctx.get(), gf, threads) != GGML_STATUS_SUCCESS) throw std::runtime_error("projector: ggml compute failed");
  const auto* o = static_cast<const float*>(out->data);
  return std::vector<float>(o, o + static_cast<std::size_t>(dout) * rows);
}

}  // namespace tsl
