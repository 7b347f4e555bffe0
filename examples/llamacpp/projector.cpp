// tokensel-llamacpp: the MLP projector from the mmproj's weights (see projector.hpp).
#include "projector.hpp"

#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>

#include <ggml-cpu.h>
#include <ggml.h>
#include <gguf.h>

namespace tsl {

namespace {

/// A copy of the GGUF tensor `name` (type, shape, bytes) in ctx, read from the file; nullptr when absent.
ggml_tensor* load_tensor(gguf_context* g, ggml_context* meta, ggml_context* ctx, std::FILE* f, const char* name) {
  const ggml_tensor* m = ggml_get_tensor(meta, name);
  const auto id = gguf_find_tensor(g, name);
  if (!m || id < 0) return nullptr;
  ggml_tensor* t = ggml_new_tensor(ctx, m->type, ggml_n_dims(m), m->ne);
  const auto offset = static_cast<long>(gguf_get_data_offset(g) + gguf_get_tensor_offset(g, id));
  if (std::fseek(f, offset, SEEK_SET) != 0 || std::fread(t->data, 1, ggml_nbytes(t), f) != ggml_nbytes(t)) return nullptr;
  return t;
}

}  // namespace

// Only the four projector tensors are read (the rest of the mmproj, the CLIP tower, is not).
mlp_projector::mlp_projector(const std::string& mmproj) {
  ggml_context* meta = nullptr;
  gguf_init_params p{true, &meta};
  gguf_ = gguf_init_from_file(mmproj.c_str(), p);
  std::unique_ptr<ggml_context, decltype(&ggml_free)> meta_guard(meta, ggml_free);
  std::unique_ptr<std::FILE, decltype(&std::fclose)> f(std::fopen(mmproj.c_str(), "rb"), std::fclose);
  if (!gguf_ || !meta || !f) throw std::runtime_error("--mmproj " + mmproj + ": cannot read its tensors");
  std::size_t bytes = 0;
  for (const char* n : {"mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias"})
    if (const ggml_tensor* t = ggml_get_tensor(meta, n)) bytes += ggml_nbytes(t) + ggml_tensor_overhead() + 64;
  ggml_init_params ip{bytes + ggml_tensor_overhead(), nullptr, false};
  weights_ = ggml_init(ip);
  if (!weights_) throw std::runtime_error("projector: cannot allocate its weights");
  w1_ = load_tensor(gguf_, meta, weights_, f.get(), "mm.0.weight");
  b1_ = load_tensor(gguf_, meta, weights_, f.get(), "mm.0.bias");
  w2_ = load_tensor(gguf_, meta, weights_, f.get(), "mm.2.weight");
  b2_ = load_tensor(gguf_, meta, weights_, f.get(), "mm.2.bias");
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
