// tokensel-llamacpp: the methods llama.cpp's public multimodal API can serve, and why the others
// cannot. Each served method is configured exactly as examples/llava configures it (its config
// through with_budget(--keep), requirements(config, shape)), so both runtimes select the same
// tokens from the same statistics.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <tokensel/core/budget.hpp>

#include "capture.hpp"

namespace tsl {

enum class method { none, fopru, freepruner, visionzip, random, uniform, divprune, vispruner, pool };

struct selection_options {
  method name = method::none;
  std::optional<tokensel::budget> keep;  ///< --keep; empty: the method's default
  std::uint64_t seed = 0;                ///< random
  bool from_qk = false;                  ///< statistics from Q/K (flash attention on)
};

/// Parses --method: a served method, or an error naming why a known method cannot be served
/// (tokensel::error-free: throws std::runtime_error with the one-line reason).
method parse_method(std::string_view name);
const char* to_string(method m) noexcept;
/// --keep: "0.5" (a fraction) or "144" (a count), as examples/llava.
tokensel::budget parse_keep(std::string_view text);

/// The CLIP geometry the selection needs (from the mmproj and the captured graph).
struct vision_shape {
  int patches = 0;        ///< n (tokens handed to the projector)
  int grid = 0;           ///< sqrt(n)
  int feature_layer = 0;  ///< the attention layer that produces the features (examples/llava's shape)
  int layers = 0;         ///< CLIP layers in the mmproj
};

/// What the encode must hand over for the method (sets the capture's layer sets).
void plan_capture(const selection_options& s, const vision_shape& v, capture& c);

/// What a method hands on: kept patch indices (0 .. n-1, in the order examples/llava reports
/// them) and, when the method outputs rows of its own (VisionZip: CLS, the dominant patches, the
/// merged contextual tokens; pool: the averaged windows), those CLIP feature rows [rows, D] in the order the LLM reads them;
/// otherwise the LLM reads mtmd's rows of the kept patches in kept order.
struct selection {
  std::vector<std::int32_t> kept;
  std::vector<float> features;
  int feature_rows = 0;
};

/// projected: mtmd's output rows [n, Dt] (DivPrune reads them).
selection select_tokens(const selection_options& s, const vision_shape& v, const capture& c, const float* projected,
                        int projected_width);

}  // namespace tsl
