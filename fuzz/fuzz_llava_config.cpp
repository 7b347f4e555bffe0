// LLaVA runtime config.json parser: any byte string either parses into a config whose sizes are
// consistent (positive extents, heads dividing the hidden size, a feature layer inside the tower)
// or ends in llava::error. Any other exception escapes and libFuzzer reports it.
#include <llava/config.hpp>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // load_config reads a file: one scratch file per process.
  static const std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("tokensel-fuzz-config-" + std::to_string(::getpid()) + ".json");
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    const llava::llava_config c = llava::load_config(path);
    const auto& v = c.vision;
    const auto& t = c.text;
    fuzz::require(v.hidden > 0 && v.layers > 0 && v.heads > 0 && v.patch > 0 && v.image_size >= v.patch,
                  "llava_config: vision sizes not validated");
    fuzz::require(v.hidden % v.heads == 0, "llava_config: vision heads do not divide hidden");
    fuzz::require(t.hidden > 0 && t.layers > 0 && t.heads > 0 && t.kv_heads > 0 && t.vocab > 0 && t.head_dim > 0,
                  "llava_config: text sizes not validated");
    fuzz::require(t.heads % t.kv_heads == 0, "llava_config: kv heads do not divide heads");
    const int feature = c.feature_hidden_index();
    fuzz::require(feature >= 1 && feature <= v.layers, "llava_config: feature layer outside the tower");
    fuzz::require(c.image_tokens() > 0, "llava_config: no image tokens");
  } catch (const llava::error&) {
  }
  return 0;
}
