// llava: safetensors weight store (mmap, read-only) and the fp32 linear layer over it.
//
// A model directory holds `model.safetensors`, or shards listed in `model.safetensors.index.json`
// ({"weight_map": {name: file}}). Each file is validated by tokensel's safetensors parser (header
// only) and mapped read-only; tensors stay in their storage dtype (F32, F16 or BF16), so a 7B fp16
// model needs ~14 GiB of page cache, never a fp32 copy. Compute is fp32: linear() converts blocks
// of weight rows on the fly into a per-thread buffer and multiplies them with Eigen.
//
// Names are normalised to the transformers >= 4.52 layout:
//   model.vision_tower.vision_model.*, model.multi_modal_projector.*, model.language_model.*
//   (no inner ".model"), lm_head.*
// The older layout (vision_tower.*, multi_modal_projector.*, language_model.model.*,
// language_model.lm_head.*) is mapped onto it. `*.position_ids` buffers are ignored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "llava/config.hpp"

namespace llava {

enum class storage { f32, f16, bf16 };
const char* to_string(storage s) noexcept;

/// One mapped tensor (row-major, contiguous, little-endian).
struct tensor {
  std::string name;            ///< canonical (>= 4.52) name
  std::string stored_name;     ///< name in the file
  std::string file;            ///< path of the file that holds it
  storage type = storage::f32;
  std::vector<std::int64_t> shape;
  const void* data = nullptr;

  std::int64_t numel() const noexcept;
  std::int64_t rows() const noexcept { return shape.empty() ? 1 : shape[0]; }
  std::int64_t cols() const noexcept { return rows() == 0 ? 0 : numel() / rows(); }
  /// Converts rows [row0, row0 + count) (of the 2-D view [rows, cols]) to fp32 into out.
  void to_float(std::int64_t row0, std::int64_t count, float* out) const;
  /// The whole tensor as fp32 (for small tensors: norms, biases, embeddings rows on demand).
  std::vector<float> to_float() const;
};

class weight_store {
 public:
  /// Progress of the load: files opened so far, total files, current file.
  using progress_fn = std::function<void(std::size_t done, std::size_t total, const std::string& file)>;

  /// Opens `dir` (single file or sharded). Throws llava::error naming the file for a missing
  /// directory / file, a malformed or truncated safetensors file, an index naming a missing
  /// shard, a tensor with an unsupported dtype that the model needs, duplicate names.
  explicit weight_store(const std::filesystem::path& dir, progress_fn progress = {});
  ~weight_store();
  weight_store(const weight_store&) = delete;
  weight_store& operator=(const weight_store&) = delete;

  bool contains(std::string_view name) const;
  /// Tensor by canonical name; throws llava::error naming it and the directory when absent.
  const tensor& get(std::string_view name) const;
  /// The same with a shape check (error names tensor, file, expected and actual shape).
  const tensor& get(std::string_view name, std::initializer_list<std::int64_t> shape) const;

  /// true when the files used the pre-4.52 names.
  bool legacy_layout() const noexcept { return legacy_; }
  const std::filesystem::path& directory() const noexcept { return dir_; }
  std::size_t size() const noexcept { return tensors_.size(); }
  std::uint64_t mapped_bytes() const noexcept;
  /// Storage dtype of most parameters (the LM's embedding table).
  storage dominant_type() const;

  /// Canonical (>= 4.52) name of a stored name; unchanged when it matches neither layout.
  static std::string canonical_name(std::string_view stored, bool* legacy = nullptr);

 private:
  struct mapping;
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<mapping>> maps_;
  std::map<std::string, tensor, std::less<>> tensors_;
  bool legacy_ = false;
};

/// y[n, out] = x[n, in] * W^T (+ bias), W = [out, in] in any storage dtype, fp32 accumulate.
/// Threaded over blocks of output rows (OpenMP); n = 1 is a GEMV. x and y must not overlap.
void linear(const tensor& w, const tensor* bias, const float* x, std::int64_t n, float* y);

/// Threads used by the runtime (OpenMP); <= 0 keeps the OpenMP default.
void set_threads(int threads);
int threads();

}  // namespace llava
