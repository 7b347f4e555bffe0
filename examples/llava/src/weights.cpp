// llava: mmap'ed safetensors weights and the fp32 linear layer (see weights.hpp).
#include "llava/weights.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

#include <Eigen/Core>
#include <nlohmann/json.hpp>
#include <tokensel/io/safetensors.hpp>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace llava {

const char* to_string(storage s) noexcept {
  return s == storage::f32 ? "F32" : s == storage::f16 ? "F16" : "BF16";
}

// ---- conversion --------------------------------------------------------------------------------

namespace {

void widen_f16(const std::uint16_t* src, std::int64_t n, float* out) {
  std::int64_t j = 0;
#if defined(__F16C__) && defined(__AVX__)
  for (; j + 8 <= n; j += 8) {
    _mm256_storeu_ps(out + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
  }
#endif
  for (; j < n; ++j) out[j] = static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(src[j]));
}

void widen_bf16(const std::uint16_t* src, std::int64_t n, float* out) {
  // bf16 is the upper half of an fp32.
  for (std::int64_t j = 0; j < n; ++j) {
    const std::uint32_t w = static_cast<std::uint32_t>(src[j]) << 16;
    std::memcpy(out + j, &w, sizeof w);
  }
}

}  // namespace

std::int64_t tensor::numel() const noexcept {
  std::int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

void tensor::to_float(std::int64_t row0, std::int64_t count, float* out) const {
  const std::int64_t c = cols();
  const std::int64_t begin = row0 * c, n = count * c;
  switch (type) {
    case storage::f32: std::memcpy(out, static_cast<const float*>(data) + begin, static_cast<std::size_t>(n) * 4); break;
    case storage::f16: widen_f16(static_cast<const std::uint16_t*>(data) + begin, n, out); break;
    case storage::bf16: widen_bf16(static_cast<const std::uint16_t*>(data) + begin, n, out); break;
  }
}

std::vector<float> tensor::to_float() const {
  std::vector<float> v(static_cast<std::size_t>(numel()));
  if (!v.empty()) to_float(0, rows(), v.data());
  return v;
}

// ---- store -------------------------------------------------------------------------------------

struct weight_store::mapping {
  std::string path;
  void* base = MAP_FAILED;
  std::size_t size = 0;
  ~mapping() {
    if (base != MAP_FAILED && size > 0) munmap(base, size);
  }
};

std::string weight_store::canonical_name(std::string_view s, bool* legacy) {
  auto starts = [&](std::string_view p) { return s.substr(0, p.size()) == p; };
  auto swap = [&](std::string_view from, std::string_view to) {
    if (legacy) *legacy = true;
    return std::string(to) + std::string(s.substr(from.size()));
  };
  if (starts("language_model.model.")) return swap("language_model.model.", "model.language_model.");
  if (starts("language_model.lm_head.")) return swap("language_model.lm_head.", "lm_head.");
  if (starts("vision_tower.")) return swap("vision_tower.", "model.vision_tower.");
  if (starts("multi_modal_projector.")) return swap("multi_modal_projector.", "model.multi_modal_projector.");
  if (s == "image_newline") return swap("image_newline", "model.image_newline");  // LLaVA-NeXT
  return std::string(s);
}

namespace {

namespace fs = std::filesystem;

// symlink_status: a dangling link or a link loop exists (and is then refused by the file rule).
bool present(const fs::path& p) {
  std::error_code e;
  return fs::exists(fs::symlink_status(p, e));
}

/// The shards of model.safetensors.index.json, in first-use order; index gets stored name -> file.
std::vector<fs::path> read_shard_index(const fs::path& dir, const fs::path& index_path,
                                       std::map<std::string, std::string>& index) {
  std::vector<fs::path> files;
  const std::string text = read_input_file(index_path, max_json_file_bytes, "a JSON file");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw error("llava: " + index_path.string() + ": invalid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
    throw error("llava: " + index_path.string() + ": weight_map: missing or not an object");
  }
  std::set<std::string> seen;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it->is_string()) throw error("llava: " + index_path.string() + ": weight_map['" + it.key() + "']: must be a file name");
    const auto f = it->get<std::string>();
    if (f.find('/') != std::string::npos || f.find("..") != std::string::npos) {
      throw error("llava: " + index_path.string() + ": weight_map['" + it.key() + "'] = '" + f + "': not a plain file name");
    }
    index[it.key()] = f;
    if (seen.insert(f).second) files.push_back(dir / f);
  }
  if (files.empty()) throw error("llava: " + index_path.string() + ": weight_map is empty");
  return files;
}

/// Maps the whole of path read-only into base and size (base stays MAP_FAILED for an empty file).
void map_read_only(const fs::path& path, void*& base, std::size_t& size) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw error("llava: " + path.string() + ": cannot open for reading");
  struct stat st{};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    throw error("llava: " + path.string() + ": cannot stat");
  }
  size = static_cast<std::size_t>(st.st_size);
  base = size > 0 ? mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
  ::close(fd);
  if (size > 0 && base == MAP_FAILED) throw error("llava: " + path.string() + ": mmap failed");
}

/// The store's entry of one stored tensor of the shard at path, mapped at bytes; legacy is set
/// when its name is of the pre-4.52 layout.
tensor entry_of(const tokensel::safetensors::tensor_info& info, const fs::path& path, const std::byte* bytes,
                std::uint64_t data_offset, bool& legacy) {
  tensor t;
  t.stored_name = info.name;
  t.name = weight_store::canonical_name(info.name, &legacy);
  t.file = path.string();
  if (!info.loadable()) {
    // Indexed (so the error can name it) but without data: get() rejects it.
    t.data = nullptr;
  } else {
    t.type = info.dtype == "F32" ? storage::f32 : info.dtype == "F16" ? storage::f16 : storage::bf16;
    t.data = bytes + data_offset + info.begin;
  }
  t.shape.assign(info.shape.begin(), info.shape.end());
  if (!info.loadable()) t.shape.insert(t.shape.begin(), -1);  // marks unsupported (dtype kept in stored_name note)
  if (!info.loadable()) t.stored_name += " (dtype " + info.dtype + ")";
  return t;
}

}  // namespace

weight_store::weight_store(const std::filesystem::path& dir, progress_fn progress) : dir_(dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw error("llava: model directory '" + dir.string() + "' does not exist");
  // Files to open: the index's shards (in first-use order) or the single file.
  std::vector<fs::path> files;
  std::map<std::string, std::string> index;  // stored name -> file, when sharded
  const fs::path index_path = dir / "model.safetensors.index.json";
  if (present(index_path)) {
    files = read_shard_index(dir, index_path, index);
  } else if (present(dir / "model.safetensors")) {
    files.push_back(dir / "model.safetensors");
  } else {
    throw error("llava: " + dir.string() + ": no model.safetensors or model.safetensors.index.json");
  }

  std::size_t done = 0;
  for (const auto& path : files) {
    if (progress) progress(done, files.size(), path.string());
    if (!present(path)) throw error("llava: " + path.string() + ": shard listed in the index is missing");
    // The one file rule before the header is parsed or the file mapped: a regular file (a FIFO
    // would block the open, a device would map garbage); its content bounds every size in it.
    check_input_file(path, ~std::uint64_t{0}, "a weights file");
    std::vector<tokensel::safetensors::tensor_info> infos;
    std::uint64_t data_offset = 0;
    try {
      auto f = tokensel::safetensors::file::open(path);
      infos = f.tensors();
      data_offset = f.data_offset();
    } catch (const std::exception& e) {
      throw error("llava: " + path.string() + ": malformed safetensors file: " + e.what());
    }
    auto m = std::make_unique<mapping>();
    m->path = path.string();
    map_read_only(path, m->base, m->size);
    const auto* bytes = static_cast<const std::byte*>(m->base);
    for (const auto& info : infos) {
      if (info.name.size() >= 13 && info.name.ends_with("position_ids")) continue;  // buffer, not a weight
      if (!index.empty()) {
        auto it = index.find(info.name);
        if (it != index.end() && dir / it->second != path) continue;  // the index assigns it elsewhere
      }
      bool legacy = false;
      tensor t = entry_of(info, path, bytes, data_offset, legacy);
      legacy_ = legacy_ || legacy;
      auto [pos, fresh] = tensors_.emplace(t.name, std::move(t));
      if (!fresh) {
        throw error("llava: " + path.string() + ": tensor '" + info.name + "' appears twice (also in " + pos->second.file +
                    "; both layouts mixed?)");
      }
    }
    maps_.push_back(std::move(m));
    ++done;
  }
  for (const auto& [name, file] : index) {
    if (!contains(canonical_name(name)) && !name.ends_with("position_ids")) {
      throw error("llava: " + index_path.string() + ": tensor '" + name + "' is listed for " + file + " but that file lacks it");
    }
  }
  if (progress) progress(done, files.size(), "");
}

weight_store::~weight_store() = default;

bool weight_store::contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }

const tensor& weight_store::get(std::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    throw error("llava: " + dir_.string() + ": missing tensor '" + std::string(name) + "'" +
                (legacy_ ? " (pre-4.52 layout)" : ""));
  }
  if (it->second.data == nullptr && it->second.numel() != 0) {
    throw error("llava: " + it->second.file + ": tensor '" + it->second.stored_name +
                "' has an unsupported dtype (F32, F16 and BF16 are)");
  }
  return it->second;
}

const tensor& weight_store::get(std::string_view name, std::initializer_list<std::int64_t> shape) const {
  const tensor& t = get(name);
  if (!std::equal(t.shape.begin(), t.shape.end(), shape.begin(), shape.end())) {
    auto fmt = [](auto b, auto e) {
      std::string s = "[";
      for (auto it = b; it != e; ++it) s += (it == b ? "" : ", ") + std::to_string(*it);
      return s + "]";
    };
    throw error("llava: " + t.file + ": tensor '" + t.stored_name + "' has shape " + fmt(t.shape.begin(), t.shape.end()) +
                ", the config needs " + fmt(shape.begin(), shape.end()));
  }
  return t;
}

std::uint64_t weight_store::mapped_bytes() const noexcept {
  std::uint64_t s = 0;
  for (const auto& m : maps_) s += m->size;
  return s;
}

storage weight_store::dominant_type() const {
  auto it = tensors_.find("model.language_model.embed_tokens.weight");
  return it != tensors_.end() ? it->second.type : storage::f32;
}

// ---- linear ------------------------------------------------------------------------------------

void set_threads(int t) {
#ifdef _OPENMP
  if (t > 0) omp_set_num_threads(t);
#else
  (void)t;
#endif
}

int threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void linear(const tensor& w, const tensor* bias, const float* x, std::int64_t n, float* y) {
  using mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const std::int64_t out = w.rows(), in = w.cols();
  if (n <= 0 || out <= 0) return;
  // Output rows per block: enough work per block for Eigen (>= 16 rows), about 4 blocks per
  // thread for balance, and a converted block of at most ~1 MiB that stays in cache.
  const std::int64_t nt = threads();
  std::int64_t block = std::min<std::int64_t>(256, std::max<std::int64_t>(16, (1 << 18) / std::max<std::int64_t>(in, 1)));
  block = std::min(block, std::max<std::int64_t>(16, (out + 4 * nt - 1) / (4 * nt)));  // >= 4 blocks per thread
  block = std::min(block, out);
  const std::int64_t blocks = (out + block - 1) / block;
  Eigen::Map<const mat> X(x, n, in);
  std::vector<float> b;
  if (bias != nullptr) b = bias->to_float();
#pragma omp parallel
  {
    std::vector<float> buffer;
#pragma omp for schedule(static)
    for (std::int64_t blk = 0; blk < blocks; ++blk) {
      const std::int64_t r0 = blk * block, rows = std::min(block, out - r0);
      const float* wp;
      if (w.type == storage::f32) {
        wp = static_cast<const float*>(w.data) + r0 * in;
      } else {
        buffer.resize(static_cast<std::size_t>(rows * in));
        w.to_float(r0, rows, buffer.data());
        wp = buffer.data();
      }
      Eigen::Map<const mat> W(wp, rows, in);
      Eigen::Map<mat, 0, Eigen::OuterStride<>> Y(y + r0, n, rows, Eigen::OuterStride<>(out));
      if (n == 1) {
        Y.row(0).noalias() = (W * X.row(0).transpose()).transpose();
      } else {
        Y.noalias() = X * W.transpose();
      }
      if (!b.empty()) {
        for (std::int64_t i = 0; i < n; ++i) {
          float* yr = y + i * out + r0;
          for (std::int64_t r = 0; r < rows; ++r) yr[r] += b[static_cast<std::size_t>(r0 + r)];
        }
      }
    }
  }
}

}  // namespace llava
