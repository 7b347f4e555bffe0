// tokensel: one budget vocabulary and one requirements query for every method.
//
// A budget says how many of the n visual tokens to keep: a fraction of n or a count. Each method
// turns it into its own config with `method::with_budget(budget, n, base)`, keeping the method's
// own rounding (FoPru floors n r, FastV rounds half to even, ...) and refusing a count the method
// cannot keep exactly. `method::requirements(config, shape)` then tells an engine, before the
// encoder runs, what the method reads (which layers, full maps or one query row, keys, hidden
// states) and how many rows it hands on, so an engine drives every method through the same few
// lines: with_budget -> requirements -> compute what is required -> select.
#pragma once

#include <sstream>
#include <string>
#include <string_view>

#include "tokensel/core/config.hpp"
#include "tokensel/core/error.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// How many visual tokens to keep: a fraction of n in (0, 1] or a count >= 1.
class budget {
 public:
  /// Keep a fraction of the visual tokens (each method applies its own rounding).
  static budget fraction(double keep) {
    if (!(keep > 0.0 && keep <= 1.0)) detail::fail(errc::invalid_argument, "budget.fraction", keep, "must be in (0, 1]");
    budget b;
    b.fraction_ = keep;
    return b;
  }
  /// Keep exactly `keep` visual tokens.
  static budget count(index_t keep) {
    if (keep < 1) detail::fail(errc::invalid_argument, "budget.count", keep, "must be >= 1");
    budget b;
    b.count_ = keep;
    return b;
  }

  [[nodiscard]] bool is_fraction() const noexcept { return count_ == 0; }
  [[nodiscard]] double fraction_value() const noexcept { return fraction_; }
  [[nodiscard]] index_t count_value() const noexcept { return count_; }

  /// Tokens kept of n for methods whose config is a token count (freePruner's fixed budget,
  /// VisionZip, FitPrune's synthetic recipes): the count (at most n), or max(1, floor(n f)).
  [[nodiscard]] index_t tokens(index_t n, const char* method) const {
    if (n < 0) detail::fail(errc::invalid_argument, std::string(method) + ".n", n, "must be >= 0");
    if (!is_fraction()) {
      if (count_ > n) {
        detail::fail(errc::invalid_argument, "budget.count", count_,
                     "exceeds the " + std::to_string(n) + " visual tokens of " + method);
      }
      return count_;
    }
    if (n == 0) return 0;
    const double f = static_cast<double>(n) * fraction_;
    if (f >= static_cast<double>(n)) return n;
    const auto k = static_cast<index_t>(f);  // floor: f >= 0
    return k < 1 ? 1 : k;
  }

  /// "0.25" or "144 tokens", for messages.
  [[nodiscard]] std::string describe() const {
    if (!is_fraction()) return std::to_string(count_) + " tokens";
    std::ostringstream os;
    os.precision(9);
    os << fraction_;
    return os.str();
  }

 private:
  budget() = default;
  double fraction_ = 1.0;
  index_t count_ = 0;  ///< 0: a fraction
};

/// What an engine knows about the model before the encoder runs.
struct model_shape {
  index_t visual_tokens = 0;   ///< n: patch tokens handed to the projector (CLS excluded)
  bool cls = true;             ///< the encoder puts a CLS token before the patches (CLIP; not SigLIP)
  index_t feature_layer = -1;  ///< encoder layer whose output feeds the projector (LLaVA: the penultimate)
  index_t encoder_layers = 0;  ///< for checking layer indices; 0: unknown
};

/// Where a method selects.
enum class stage {
  encoder,  ///< between the vision encoder and the projector (fewer image rows enter the LLM)
  llm,      ///< inside the LLM prefill (tokens dropped after a layer)
};

/// Inclusive range of layer indices; empty when last < first.
struct layer_span {
  index_t first = 0;
  index_t last = -1;
  [[nodiscard]] bool empty() const noexcept { return last < first; }
  [[nodiscard]] bool contains(index_t layer) const noexcept { return layer >= first && layer <= last; }
};

/// What a method reads and what it produces, known before anything runs
/// (`method::requirements(config, shape)`).
struct method_requirements {
  tokensel::stage stage = tokensel::stage::encoder;
  layer_span layers{};          ///< encoder layers (stage encoder) or LLM layers (stage llm) whose attention it reads
  layer_span extra_layer{};     ///< a further single layer read outside `layers` (freePruner's complementary layer)
  bool full_maps = false;       ///< every query row of those layers (a map, or Q/K of every row)
  bool cls_row = false;         ///< only the CLS query row (one row of attention under FlashAttention)
  bool last_query_row = false;  ///< only the last query row of the layer (FastV)
  bool keys = false;            ///< the layer's keys (key similarities)
  bool hidden_states = false;   ///< the features that would enter the projector (merged or pooled rows)
  bool adaptive = false;        ///< the kept count depends on the data; `keep` is then its maximum
  index_t keep = 0;             ///< visual tokens kept (exact), or at most, when adaptive
  index_t output_rows = 0;      ///< rows handed on: keep, plus merged rows where the method adds them
};

namespace detail {
/// with_budget of the methods configured by `std::optional` ratio or count (random, uniform,
/// DivPrune, DART, VisPruner): a fraction is the ratio, a count the count (at most n).
template <class Config>
Config ratio_or_count(const budget& b, index_t n, Config base, const char* method) {
  base.ratio.reset();
  base.count.reset();
  if (b.is_fraction()) {
    base.ratio = b.fraction_value();
  } else {
    base.count = b.tokens(n, method);
  }
  return base;
}

inline void check_model_shape(const model_shape& shape, const char* method) {
  if (shape.visual_tokens < 0) fail(errc::invalid_argument, std::string(method) + ".shape.visual_tokens", shape.visual_tokens, "must be >= 0");
  if (shape.encoder_layers < 0) fail(errc::invalid_argument, std::string(method) + ".shape.encoder_layers", shape.encoder_layers, "must be >= 0 (0: unknown)");
}
/// For the methods that read the feature layer: it must be given, and exist when the depth is known.
inline void check_feature_layer(const model_shape& shape, const char* method) {
  check_model_shape(shape, method);
  if (shape.feature_layer < 0) {
    fail(errc::invalid_argument, std::string(method) + ".shape.feature_layer", shape.feature_layer,
         "must be >= 0 (the encoder layer whose output feeds the projector)");
  }
  if (shape.encoder_layers != 0 && shape.feature_layer >= shape.encoder_layers) {
    fail(errc::invalid_argument, std::string(method) + ".shape.feature_layer", shape.feature_layer,
         "must be below the " + std::to_string(shape.encoder_layers) + " encoder layers");
  }
}
/// A configured encoder layer must exist when the model's depth is known.
inline void check_model_layer(const model_shape& shape, index_t layer, std::string_view name) {
  if (shape.encoder_layers != 0 && (layer < 0 || layer >= shape.encoder_layers)) {
    fail(errc::invalid_argument, name, layer, "must be a layer of the model's " + std::to_string(shape.encoder_layers));
  }
}
}  // namespace detail

TOKENSEL_END_NAMESPACE
