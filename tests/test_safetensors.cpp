// Tests of the .safetensors reader/writer (include/tokensel/safetensors.hpp).
#include <gtest/gtest.h>

#include <chrono>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "tokensel/io/safetensors.hpp"

using namespace tokensel;

namespace {

// Written by the reference Python package: output of tools/reference/safetensors_fixtures.py.
// 320 bytes
const std::string k_reference_image("\x08\x01\x00\x00\x00\x00\x00\x00\x7b\x22\x5f\x5f\x6d\x65\x74\x61\x64\x61\x74\x61\x5f\x5f\x22\x3a\x7b\x22\x66\x6f\x72\x6d\x61\x74\x22\x3a\x22\x6e\x70\x22\x7d\x2c\x22\x70\x6f\x73\x22\x3a\x7b\x22\x64\x74\x79\x70\x65\x22\x3a\x22\x49\x36\x34\x22\x2c\x22\x73\x68\x61\x70\x65\x22\x3a\x5b\x33\x5d\x2c\x22\x64\x61\x74\x61\x5f\x6f\x66\x66\x73\x65\x74\x73\x22\x3a\x5b\x30\x2c\x32\x34\x5d\x7d\x2c\x22\x62\x22\x3a\x7b\x22\x64\x74\x79\x70\x65\x22\x3a\x22\x46\x33\x32\x22\x2c\x22\x73\x68\x61\x70\x65\x22\x3a\x5b\x32\x5d\x2c\x22\x64\x61\x74\x61\x5f\x6f\x66\x66\x73\x65\x74\x73\x22\x3a\x5b\x32\x34\x2c\x33\x32\x5d\x7d\x2c\x22\x73\x63\x61\x6c\x61\x72\x22\x3a\x7b\x22\x64\x74\x79\x70\x65\x22\x3a\x22\x46\x33\x32\x22\x2c\x22\x73\x68\x61\x70\x65\x22\x3a\x5b\x5d\x2c\x22\x64\x61\x74\x61\x5f\x6f\x66\x66\x73\x65\x74\x73\x22\x3a\x5b\x33\x32\x2c\x33\x36\x5d\x7d\x2c\x22\x61\x74\x74\x6e\x22\x3a\x7b\x22\x64\x74\x79\x70\x65\x22\x3a\x22\x46\x31\x36\x22\x2c\x22\x73\x68\x61\x70\x65\x22\x3a\x5b\x32\x2c\x33\x5d\x2c\x22\x64\x61\x74\x61\x5f\x6f\x66\x66\x73\x65\x74\x73\x22\x3a\x5b\x33\x36\x2c\x34\x38\x5d\x7d\x7d\x20\x20\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\xc0\x3f\x00\x00\x00\xc0\x00\x00\x40\x40\x00\x00\x00\x38\x00\x3c\x00\x3e\x00\x40\x00\x41", 320);

std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

/// A hand-made image: 8-byte little-endian length, the header text, the data.
std::string st_image(const std::string& header, const std::string& data) {
  std::string s(8, '\0');
  std::uint64_t n = header.size();
  for (int k = 0; k < 8; ++k) s[static_cast<std::size_t>(k)] = static_cast<char>((n >> (8 * k)) & 0xFF);
  return s + header + data;
}

template <class F>
error thrown_by(F&& f) {
  try {
    f();
  } catch (const error& e) {
    return e;
  }
  ADD_FAILURE() << "expected tokensel::error";
  return error(errc::invalid_argument, "", "");
}

void expect_open_error(const std::string& image, errc code, const std::string& needle) {
  const error e = thrown_by([&] { safetensors::file::from_buffer(as_bytes(image)); });
  EXPECT_EQ(e.code(), code) << e.what();
  EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what() << "\nexpected: " << needle;
}

template <class T>
host_tensor random_tensor(std::vector<index_t> shape, std::mt19937& rng) {
  host_tensor t(dtype_of<T>(), std::move(shape));
  std::uniform_real_distribution<float> u(-4.f, 4.f);
  for (auto& x : t.data<T>()) x = from_float<T>(u(rng));
  return t;
}

bool same_bytes(const host_tensor& a, const host_tensor& b) {
  return a.type() == b.type() && a.shape() == b.shape() && a.nbytes() == b.nbytes() &&
         std::equal(a.bytes().begin(), a.bytes().end(), b.bytes().begin());
}

}  // namespace

TEST(SafetensorsRead, ReferenceWriterImage) {
  const auto f = safetensors::file::from_buffer(as_bytes(k_reference_image));
  ASSERT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.tensors()[0].name, "attn");  // sorted by name
  EXPECT_EQ(f.metadata().at("format"), "np");
  const host_tensor attn = f.load("attn");
  ASSERT_EQ(attn.type(), dtype::f16);
  ASSERT_EQ(attn.shape(), (std::vector<index_t>{2, 3}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(static_cast<float>(attn.data<Eigen::half>()[static_cast<std::size_t>(i)]), i / 2.0f);
  const host_tensor b = f.load("b");
  EXPECT_EQ(b.data<float>()[0], 1.5f);
  EXPECT_EQ(b.data<float>()[1], -2.0f);
  const host_tensor s = f.load("scalar");
  EXPECT_EQ(s.rank(), 0u);
  EXPECT_EQ(s.data<float>()[0], 3.0f);
  // I64 is indexed (so the file opens) but not loadable.
  const auto* pos = f.find("pos");
  ASSERT_NE(pos, nullptr);
  EXPECT_EQ(pos->dtype, "I64");
  EXPECT_FALSE(pos->loadable());
  const error e = thrown_by([&] { f.load("pos"); });
  EXPECT_EQ(e.code(), errc::unsupported);
  EXPECT_NE(std::string(e.what()).find("safetensors.dtype = I64"), std::string::npos) << e.what();
}

TEST(SafetensorsRead, UnknownNameListsTheTensors) {
  const auto f = safetensors::file::from_buffer(as_bytes(k_reference_image));
  const error e = thrown_by([&] { f.load("attention"); });
  EXPECT_EQ(e.code(), errc::invalid_argument);
  EXPECT_NE(std::string(e.what()).find("'attention': no such tensor in buffer (it has: attn, b, pos, scalar)"),
            std::string::npos) << e.what();
  EXPECT_EQ(f.find("attention"), nullptr);
}

TEST(SafetensorsRead, UnknownDtypeOpensButDoesNotLoad) {
  const auto img = st_image(R"({"q":{"dtype":"Q4_K","shape":[3],"data_offsets":[0,5]}})", "12345");
  const auto f = safetensors::file::from_buffer(as_bytes(img));
  EXPECT_EQ(thrown_by([&] { f.load("q"); }).code(), errc::unsupported);
}

TEST(SafetensorsRoundTrip, EveryDtypeAndRank) {
  std::mt19937 rng(5);
  std::map<std::string, host_tensor> in;
  const std::vector<std::vector<index_t>> shapes = {{}, {0}, {7}, {3, 5}, {2, 0, 4}, {2, 3, 4}, {2, 2, 3, 5}, {1, 2, 1, 2, 3}};
  for (std::size_t k = 0; k < shapes.size(); ++k) {
    in.emplace("f32." + std::to_string(k), random_tensor<float>(shapes[k], rng));
    in.emplace("f16." + std::to_string(k), random_tensor<Eigen::half>(shapes[k], rng));
    in.emplace("bf16." + std::to_string(k), random_tensor<Eigen::bfloat16>(shapes[k], rng));
  }
  const std::vector<std::byte> image = safetensors::write_buffer(in, {{"producer", "test"}});
  const std::uint64_t header_len = tokensel::detail::load_le<std::uint64_t>(image.data());
  EXPECT_EQ(header_len % 8, 0u);
  const auto f = safetensors::file::from_buffer(image);
  EXPECT_EQ(f.metadata().at("producer"), "test");
  ASSERT_EQ(f.tensors().size(), in.size());
  for (const auto& [name, t] : in) {
    EXPECT_TRUE(same_bytes(f.load(name), t)) << name;
    EXPECT_EQ(f.find(name)->dtype, t.type() == dtype::f32 ? "F32" : t.type() == dtype::f16 ? "F16" : "BF16");
  }
}

TEST(SafetensorsRoundTrip, Files) {
  std::mt19937 rng(9);
  const auto path = std::filesystem::temp_directory_path() /
                    ("tokensel_test_st_" + std::to_string(std::random_device{}()) + ".safetensors");
  std::map<std::string, host_tensor> in;
  in.emplace("layers", random_tensor<Eigen::bfloat16>({2, 3, 9, 9}, rng));
  in.emplace("x", random_tensor<float>({4}, rng));
  safetensors::write(path, in);
  EXPECT_TRUE(same_bytes(safetensors::read_tensor(path, "layers"), in.at("layers")));
  EXPECT_TRUE(same_bytes(safetensors::file::open(path).load("x"), in.at("x")));
  std::filesystem::remove(path);
  EXPECT_EQ(thrown_by([&] { safetensors::file::open(path); }).code(), errc::io_error);
  EXPECT_EQ(thrown_by([&] { safetensors::write("/nonexistent/dir/x.safetensors", in); }).code(), errc::io_error);
}

TEST(SafetensorsRoundTrip, ReservedName) {
  std::map<std::string, host_tensor> in;
  in.emplace("__metadata__", host_tensor(dtype::f32, {1}));
  EXPECT_EQ(thrown_by([&] { safetensors::write_buffer(in); }).code(), errc::invalid_argument);
}

// ---- hostile input -----------------------------------------------------------------------

TEST(SafetensorsHostile, HeaderLength) {
  expect_open_error("", errc::parse_error, "file too short");
  expect_open_error(std::string("\x02\0\0\0", 4), errc::parse_error, "file too short");
  expect_open_error(st_image("{}", "").substr(0, 9), errc::parse_error,
                    "header length 2 runs beyond the end of the file (9 bytes)");
  // Length 0 (a fuzz finding: the empty header reached memchr with a null pointer).
  expect_open_error(std::string(8, '\0') + "abcd", errc::parse_error, "header length 0: the JSON header is empty");
  std::string huge = st_image("{}", "");
  huge[7] = '\x7f';
  expect_open_error(huge, errc::parse_error, "safetensors.header_len");
  // Within the file but above the 100 MB limit.
  std::string big(8 + 100'000'008, ' ');
  std::uint64_t n = 100'000'008;
  for (int k = 0; k < 8; ++k) big[static_cast<std::size_t>(k)] = static_cast<char>((n >> (8 * k)) & 0xFF);
  expect_open_error(big, errc::parse_error, "exceeds the 100 MB limit");
}

TEST(SafetensorsHostile, BadJson) {
  expect_open_error(st_image("{\"a\": ", ""), errc::parse_error, "invalid JSON header");
  expect_open_error(st_image("[1, 2]", ""), errc::parse_error, "must be an object");
  expect_open_error(st_image("\xff\xfe", ""), errc::parse_error, "invalid JSON header");
  expect_open_error(st_image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                                 "a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, '\0')),
                    errc::parse_error, "duplicate tensor name 'a'");
  // A repeated key inside an entry is not a duplicate tensor.
  EXPECT_NO_THROW(safetensors::file::from_buffer(as_bytes(
      st_image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}, "__metadata__": {"a": "x", "n": 3}})",
               std::string(4, '\0')))));
}

TEST(SafetensorsHostile, BadEntries) {
  const std::string d8(8, '\0');
  expect_open_error(st_image(R"({"a": 3})", d8), errc::parse_error, "entry must be an object");
  expect_open_error(st_image(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", d8), errc::parse_error, "\"dtype\"");
  expect_open_error(st_image(R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", d8), errc::parse_error, "\"dtype\"");
  expect_open_error(st_image(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", d8), errc::parse_error, "\"shape\"");
  expect_open_error(st_image(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", d8), errc::parse_error, "\"shape\"");
  for (const char* shape : {"[2.5]", "[-2]", "[\"2\"]", "[2.0]", "[null]", "[1e3]", "[99999999999999999999]"}) {
    expect_open_error(st_image(std::string(R"({"a":{"dtype":"F32","shape":)") + shape + R"(,"data_offsets":[0,8]}})", d8),
                      errc::parse_error, "safetensors.shape");
  }
  expect_open_error(st_image(R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", d8),
                    errc::parse_error, "extent too large");
  expect_open_error(st_image(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", d8),
                    errc::parse_error, "overflows");
  expect_open_error(st_image(R"({"a":{"dtype":"F32","shape":[2]}})", d8), errc::parse_error, "[begin, end]");
  expect_open_error(st_image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", d8), errc::parse_error, "[begin, end]");
  expect_open_error(st_image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", d8), errc::parse_error, "[begin, end]");
  expect_open_error(st_image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-1,7]}})", d8), errc::parse_error, "non-negative integers");
  expect_open_error(st_image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0.0,8]}})", d8), errc::parse_error, "non-negative integers");
}

TEST(SafetensorsHostile, OffsetsOutOfRangeMismatchedOrOverlapping) {
  const std::string d8(8, '\0');
  expect_open_error(st_image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", d8), errc::parse_error,
                    "[4, 12) lies outside the data area of 8 bytes");
  expect_open_error(st_image(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", d8), errc::parse_error,
                    "lies outside");
  expect_open_error(st_image(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", d8), errc::parse_error,
                    "tensor 'a': 8 bytes, but shape x F32 needs 12");
  expect_open_error(st_image(R"({"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,4]}})", d8), errc::parse_error,
                    "needs 8");
  expect_open_error(st_image(R"({"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},
                                 "b":{"dtype":"F16","shape":[2],"data_offsets":[2,6]}})", d8),
                    errc::parse_error, "tensors 'a' and 'b' overlap");
  // Unknown dtypes are range-checked and overlap-checked too.
  expect_open_error(st_image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                                 "z":{"dtype":"Q4","shape":[9],"data_offsets":[7,8]}})", d8),
                    errc::parse_error, "overlap");
  // Empty tensors and adjacent tensors do not overlap.
  EXPECT_NO_THROW(safetensors::file::from_buffer(as_bytes(st_image(
      R"({"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"e":{"dtype":"F32","shape":[0,3],"data_offsets":[2,2]},
          "b":{"dtype":"F16","shape":[2],"data_offsets":[4,8]}})", d8))));
}

TEST(SafetensorsHostile, EveryTruncationIsAParseError) {
  for (std::size_t len = 0; len < k_reference_image.size(); ++len) {
    const std::string cut = k_reference_image.substr(0, len);
    const error e = thrown_by([&] { safetensors::file::from_buffer(as_bytes(cut)); });
    EXPECT_EQ(e.code(), errc::parse_error) << "length " << len << ": " << e.what();
  }
}

TEST(SafetensorsHostile, RandomMutationsNeverEscapeTheErrorType) {
  std::mt19937 rng(13);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<std::size_t> where(0, k_reference_image.size() - 1);
  int parsed = 0, rejected = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string img = k_reference_image;
    for (int f = 0; f <= trial % 3; ++f) img[trial % 5 == 0 ? where(rng) % 8 : where(rng)] = static_cast<char>(byte(rng));
    try {
      const auto f = safetensors::file::from_buffer(as_bytes(img));
      for (const auto& t : f.tensors()) {
        if (t.loadable()) (void)f.load(t.name);
      }
      ++parsed;
    } catch (const error&) {
      ++rejected;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "escaped: " << e.what();
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(parsed, 0);
}

// ---- issue 18: duplicate keys at any depth, NUL padding, linear parsing ----------------------

TEST(SafetensorsHostile, DuplicateKeyInsideAnEntry) {
  expect_open_error(st_image(R"({"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}})", "abcd"),
                    errc::parse_error, "duplicate key 'dtype' inside the entry of 'a'");
  expect_open_error(st_image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"shape":[1]}})", "abcd"),
                    errc::parse_error, "duplicate key 'shape' inside the entry of 'a'");
  expect_open_error(st_image(R"({"__metadata__":{"k":"1","k":"2"}})", ""), errc::parse_error,
                    "duplicate key 'k' inside the entry of '__metadata__'");
  expect_open_error(st_image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "abcd"),
                    errc::parse_error, "duplicate tensor name 'a'");
}

TEST(SafetensorsHostile, NulPaddingIsNotJson) {
  expect_open_error(st_image(std::string(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})") + std::string(6, '\0'), "abcd"),
                    errc::parse_error, "NUL byte at header offset");
  // Spaces are the format's padding.
  const std::string padded = std::string(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})") + "      ";
  const std::string image = st_image(padded, "abcd");
  EXPECT_NO_THROW(safetensors::file::from_buffer(as_bytes(image)));
}

TEST(SafetensorsHostile, ManyEntriesParseInLinearTime) {
  // 100,000 zero-size entries: nlohmann's callback parser rescanned the parent object at the end
  // of every entry (quadratic: minutes); the two-pass parse takes well under a second.
  std::string header = "{";
  for (int i = 0; i < 100000; ++i) {
    header += (i ? ",\"t" : "\"t") + std::to_string(i) + R"(":{"dtype":"F32","shape":[0],"data_offsets":[0,0]})";
  }
  header += "}";
  const auto image = st_image(header, "");
  const auto t0 = std::chrono::steady_clock::now();
  const auto f = safetensors::file::from_buffer(as_bytes(image));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(f.tensors().size(), 100000u);
  EXPECT_LT(seconds, 10.0);  // generous for sanitizer builds; about 0.3 s in Release
}
