// Test support: the committed tiny LLaVA checkpoints (tests/data/llava-tiny-<variant>, made by
// tools/llava/make_tiny_llava.py) with their transformers goldens, loaded once per variant.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <tokensel/io/safetensors.hpp>

#include "llava/pipeline.hpp"

namespace llava_test {

inline const std::filesystem::path data_dir = LLAVA_TEST_DATA;

/// golden.json (meta) and every tensor of golden.safetensors as fp32, with its shape.
struct golden {
  nlohmann::json meta;
  std::map<std::string, std::vector<float>> t;
  std::map<std::string, std::vector<tokensel::index_t>> shape;
  const std::vector<float>& operator[](const std::string& k) const { return t.at(k); }
};

/// <stem>.json and every tensor of <stem>.safetensors in a variant directory (stem "golden": the
/// unpruned transformers goldens; "pruned": tools/llava/make_pruned_goldens.py's per-method goldens).
inline golden read_golden(const std::filesystem::path& dir, const std::string& stem) {
  golden g;
  std::ifstream in(dir / (stem + ".json"));
  g.meta = nlohmann::json::parse(in);
  const auto f = tokensel::safetensors::file::open(dir / (stem + ".safetensors"));
  for (const auto& info : f.tensors()) {
    const auto h = f.load(info.name).converted(tokensel::dtype::f32);
    const auto d = h.data<float>();
    g.t[info.name].assign(d.begin(), d.end());
    g.shape[info.name] = info.shape;
  }
  return g;
}

struct variant {
  std::unique_ptr<llava::llava_model> model;
  golden g;
  std::vector<std::int32_t> ids, ids_expanded;  ///< prompt ids (one <image> id / expanded slots)
  const float* pixels = nullptr;                ///< the golden pixel_values of the prompt's image
};

/// The variant "fp32" or "bf16", loaded on first use.
inline variant& load(const std::string& name) {
  static std::map<std::string, std::unique_ptr<variant>> cache;
  auto& slot = cache[name];
  if (!slot) {
    slot = std::make_unique<variant>();
    const std::filesystem::path dir = data_dir / ("llava-tiny-" + name);
    slot->model = std::make_unique<llava::llava_model>(dir);
    slot->g = read_golden(dir, "golden");
    slot->ids = slot->g.meta["input_ids"].get<std::vector<std::int32_t>>();
    slot->ids_expanded = slot->g.meta["input_ids_expanded"].get<std::vector<std::int32_t>>();
    slot->pixels = slot->g[slot->g.meta["pixel_values_key"].get<std::string>()].data();
  }
  return *slot;
}

/// The pruned goldens (pruned.json / pruned.safetensors) of variant "fp32" or "bf16", loaded once.
inline const golden& pruned(const std::string& name) {
  static std::map<std::string, golden> cache;
  auto it = cache.find(name);
  if (it == cache.end()) it = cache.emplace(name, read_golden(data_dir / ("llava-tiny-" + name), "pruned")).first;
  return it->second;
}

/// Overwrites element `index` of the F32 tensor `tensor` in a safetensors file with `value`, in
/// place (hostile-weight tests on a scratch copy of a tiny checkpoint). Throws std::runtime_error
/// when the tensor is absent, not F32 or shorter than index + 1.
inline void overwrite_f32(const std::filesystem::path& file, const std::string& tensor, std::int64_t index, float value) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  unsigned char len[8] = {};
  f.read(reinterpret_cast<char*>(len), 8);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | len[i];  // little-endian header length
  std::string header(static_cast<std::size_t>(n), '\0');
  f.read(header.data(), static_cast<std::streamsize>(n));
  if (!f) throw std::runtime_error("overwrite_f32: cannot read the header of " + file.string());
  const auto h = nlohmann::json::parse(header);
  if (!h.contains(tensor) || h[tensor].at("dtype") != "F32") throw std::runtime_error("overwrite_f32: no F32 tensor " + tensor);
  const auto begin = h[tensor].at("data_offsets")[0].get<std::uint64_t>();
  const auto end = h[tensor].at("data_offsets")[1].get<std::uint64_t>();
  const auto at = begin + 4 * static_cast<std::uint64_t>(index);
  if (index < 0 || at + 4 > end) throw std::runtime_error("overwrite_f32: index outside " + tensor);
  unsigned char bytes[4];
  std::memcpy(bytes, &value, 4);  // the host is little-endian, as the runtime assumes
  f.seekp(static_cast<std::streamoff>(8 + n + at));
  f.write(reinterpret_cast<const char*>(bytes), 4);
  if (!f.flush()) throw std::runtime_error("overwrite_f32: cannot write " + file.string());
}

}  // namespace llava_test
