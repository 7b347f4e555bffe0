// FitPrune recipe JSON: any text either parses into a recipe that validates and round-trips, or
// ends in tokensel::error.
#include <tokensel/io/fitprune_json.hpp>

#include "common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  tokensel::fitprune::recipe r;
  try {
    r = tokensel::fitprune::recipe_from_json(text);
  } catch (const tokensel::error&) {
    return 0;
  }
  tokensel::fitprune::validate(r);  // a parsed recipe is a valid one (throws otherwise: a finding)
  const auto again = tokensel::fitprune::recipe_from_json(tokensel::fitprune::recipe_to_json(r));
  fuzz::require(again.drops == r.drops && again.geometry.layers == r.geometry.layers, "recipe: round trip differs");
  (void)tokensel::fitprune::keep_count(r.geometry.visual_tokens, r);
  return 0;
}
