// tokensel-llamacpp: LLaVA's MLP projector (mm.0 -> GELU -> mm.2) applied outside mtmd, from the
// mmproj's own weights and with ggml's own CPU ops (the ops mtmd's llava graph uses: mul_mat with
// the stored f16 weights, add, ggml_gelu), so a patch row projected here is the row mtmd outputs.
// Needed for the rows mtmd cannot produce: VisionZip's CLS row and its merged contextual tokens.
#pragma once

#include <string>
#include <vector>

struct ggml_context;
struct ggml_tensor;
struct gguf_context;

namespace tsl {

class mlp_projector {
 public:
  explicit mlp_projector(const std::string& mmproj);
  ~mlp_projector();
  mlp_projector(const mlp_projector&) = delete;
  mlp_projector& operator=(const mlp_projector&) = delete;

  int in_features() const noexcept;
  int out_features() const noexcept;
  /// rows x in_features (row-major) -> rows x out_features.
  std::vector<float> forward(const float* x, int rows, int threads) const;

 private:
  gguf_context* gguf_ = nullptr;
  ggml_context* weights_ = nullptr;
  ggml_tensor *w1_ = nullptr, *b1_ = nullptr, *w2_ = nullptr, *b2_ = nullptr;
};

}  // namespace tsl
