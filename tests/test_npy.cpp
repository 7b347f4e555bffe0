// Tests of the .npy reader/writer (include/tokensel/npy.hpp) and of host_tensor.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "tokensel/io/host_tensor.hpp"
#include "tokensel/io/npy.hpp"

using namespace tokensel;

namespace {

// Images written by numpy 2.x itself: output of tools/reference/npy_fixtures.py, pasted.
// 152 bytes
const std::string k_numpy_f4_2x3("\x93\x4e\x55\x4d\x50\x59\x01\x00\x76\x00\x7b\x27\x64\x65\x73\x63\x72\x27\x3a\x20\x27\x3c\x66\x34\x27\x2c\x20\x27\x66\x6f\x72\x74\x72\x61\x6e\x5f\x6f\x72\x64\x65\x72\x27\x3a\x20\x46\x61\x6c\x73\x65\x2c\x20\x27\x73\x68\x61\x70\x65\x27\x3a\x20\x28\x32\x2c\x20\x33\x29\x2c\x20\x7d\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x0a\x00\x00\x00\x00\x00\x00\x80\x3e\x00\x00\x00\x3f\x00\x00\x40\x3f\x00\x00\x80\x3f\x00\x00\xa0\x3f", 152);
// 134 bytes
const std::string k_numpy_f2_3("\x93\x4e\x55\x4d\x50\x59\x01\x00\x76\x00\x7b\x27\x64\x65\x73\x63\x72\x27\x3a\x20\x27\x3c\x66\x32\x27\x2c\x20\x27\x66\x6f\x72\x74\x72\x61\x6e\x5f\x6f\x72\x64\x65\x72\x27\x3a\x20\x46\x61\x6c\x73\x65\x2c\x20\x27\x73\x68\x61\x70\x65\x27\x3a\x20\x28\x33\x2c\x29\x2c\x20\x7d\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x0a\x00\x3e\x00\xc0\xff\x7b", 134);
// 160 bytes
const std::string k_numpy_f8_2x2("\x93\x4e\x55\x4d\x50\x59\x01\x00\x76\x00\x7b\x27\x64\x65\x73\x63\x72\x27\x3a\x20\x27\x3c\x66\x38\x27\x2c\x20\x27\x66\x6f\x72\x74\x72\x61\x6e\x5f\x6f\x72\x64\x65\x72\x27\x3a\x20\x46\x61\x6c\x73\x65\x2c\x20\x27\x73\x68\x61\x70\x65\x27\x3a\x20\x28\x32\x2c\x20\x32\x29\x2c\x20\x7d\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x0a\x9a\x99\x99\x99\x99\x99\xb9\x3f\xfc\xa9\xf1\xd2\x4d\x62\x50\xbf\x00\x00\x00\x00\x00\x00\x08\x40\xea\x8c\xa0\x39\x59\x3e\x29\x46", 160);
// 136 bytes
const std::string k_numpy_be_f4_2("\x93\x4e\x55\x4d\x50\x59\x01\x00\x76\x00\x7b\x27\x64\x65\x73\x63\x72\x27\x3a\x20\x27\x3e\x66\x34\x27\x2c\x20\x27\x66\x6f\x72\x74\x72\x61\x6e\x5f\x6f\x72\x64\x65\x72\x27\x3a\x20\x46\x61\x6c\x73\x65\x2c\x20\x27\x73\x68\x61\x70\x65\x27\x3a\x20\x28\x32\x2c\x29\x2c\x20\x7d\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x0a\x3f\x80\x00\x00\xbf\x00\x00\x00", 136);
// 132 bytes
const std::string k_numpy_scalar_f4("\x93\x4e\x55\x4d\x50\x59\x01\x00\x76\x00\x7b\x27\x64\x65\x73\x63\x72\x27\x3a\x20\x27\x3c\x66\x34\x27\x2c\x20\x27\x66\x6f\x72\x74\x72\x61\x6e\x5f\x6f\x72\x64\x65\x72\x27\x3a\x20\x46\x61\x6c\x73\x65\x2c\x20\x27\x73\x68\x61\x70\x65\x27\x3a\x20\x28\x29\x2c\x20\x7d\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x0a\x00\x00\xe8\x40", 132);
// 136 bytes
const std::string k_numpy_v2_f4_1x2("\x93\x4e\x55\x4d\x50\x59\x02\x00\x74\x00\x00\x00\x7b\x27\x64\x65\x73\x63\x72\x27\x3a\x20\x27\x3c\x66\x34\x27\x2c\x20\x27\x66\x6f\x72\x74\x72\x61\x6e\x5f\x6f\x72\x64\x65\x72\x27\x3a\x20\x46\x61\x6c\x73\x65\x2c\x20\x27\x73\x68\x61\x70\x65\x27\x3a\x20\x28\x31\x2c\x20\x32\x29\x2c\x20\x7d\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x0a\x00\x00\x80\x3f\x00\x00\x00\x40", 136);
// 132 bytes
const std::string k_numpy_v3_f2_2("\x93\x4e\x55\x4d\x50\x59\x03\x00\x74\x00\x00\x00\x7b\x27\x64\x65\x73\x63\x72\x27\x3a\x20\x27\x3c\x66\x32\x27\x2c\x20\x27\x66\x6f\x72\x74\x72\x61\x6e\x5f\x6f\x72\x64\x65\x72\x27\x3a\x20\x46\x61\x6c\x73\x65\x2c\x20\x27\x73\x68\x61\x70\x65\x27\x3a\x20\x28\x32\x2c\x29\x2c\x20\x7d\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x0a\x00\x34\x00\x44", 132);
// 144 bytes
const std::string k_numpy_fortran_2x2("\x93\x4e\x55\x4d\x50\x59\x01\x00\x76\x00\x7b\x27\x64\x65\x73\x63\x72\x27\x3a\x20\x27\x3c\x66\x34\x27\x2c\x20\x27\x66\x6f\x72\x74\x72\x61\x6e\x5f\x6f\x72\x64\x65\x72\x27\x3a\x20\x54\x72\x75\x65\x2c\x20\x27\x73\x68\x61\x70\x65\x27\x3a\x20\x28\x32\x2c\x20\x32\x29\x2c\x20\x7d\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x0a\x00\x00\x00\x00\x00\x00\x00\x40\x00\x00\x80\x3f\x00\x00\x40\x40", 144);
// 144 bytes
const std::string k_numpy_i8_2("\x93\x4e\x55\x4d\x50\x59\x01\x00\x76\x00\x7b\x27\x64\x65\x73\x63\x72\x27\x3a\x20\x27\x3c\x69\x38\x27\x2c\x20\x27\x66\x6f\x72\x74\x72\x61\x6e\x5f\x6f\x72\x64\x65\x72\x27\x3a\x20\x46\x61\x6c\x73\x65\x2c\x20\x27\x73\x68\x61\x70\x65\x27\x3a\x20\x28\x32\x2c\x29\x2c\x20\x7d\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x0a\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00", 144);

std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::string as_string(const std::vector<std::byte>& v) {
  return {reinterpret_cast<const char*>(v.data()), v.size()};
}

/// A hand-made .npy image: version 1.0 preamble, the given header text (not padded) and data.
std::string npy_image(const std::string& header, const std::string& data, int major = 1) {
  std::string s("\x93NUMPY", 6);
  s.push_back(static_cast<char>(major));
  s.push_back('\0');
  const std::size_t n = header.size();
  s.push_back(static_cast<char>(n & 0xFF));
  s.push_back(static_cast<char>((n >> 8) & 0xFF));
  if (major >= 2) {
    s.push_back(static_cast<char>((n >> 16) & 0xFF));
    s.push_back(static_cast<char>((n >> 24) & 0xFF));
  }
  return s + header + data;
}

std::string f4_header(const std::string& shape) {
  return "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }\n";
}

/// Runs f and returns the tokensel::error it throws (fails the test when it does not throw).
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

void expect_error(const std::string& image, errc code, const std::string& needle) {
  const error e = thrown_by([&] { npy::read_buffer(as_bytes(image)); });
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

std::filesystem::path temp_path(const std::string& name) {
  static const unsigned salt = std::random_device{}();
  return std::filesystem::temp_directory_path() / ("tokensel_test_npy_" + std::to_string(salt) + "_" + name);
}

}  // namespace

// ---- host_tensor -------------------------------------------------------------------------

TEST(HostTensor, ShapeViewsAndTypeChecks) {
  host_tensor t(dtype::f16, {2, 3, 4});
  EXPECT_EQ(t.size(), 24);
  EXPECT_EQ(t.nbytes(), 48u);
  EXPECT_EQ(t.shape_string(), "[2, 3, 4]");
  auto v = t.view<Eigen::half, 3>();
  v(1, 2, 3) = Eigen::half(5.0f);
  EXPECT_EQ(static_cast<float>(t.data<Eigen::half>()[23]), 5.0f);
  EXPECT_EQ(thrown_by([&] { (void)t.data<float>(); }).code(), errc::invalid_argument);
  EXPECT_EQ(thrown_by([&] { (void)t.view<Eigen::half, 2>(); }).code(), errc::shape_mismatch);
  EXPECT_EQ(thrown_by([] { host_tensor bad(dtype::f32, {2, -1}); }).code(), errc::invalid_argument);
  EXPECT_EQ(thrown_by([] { host_tensor bad(dtype::f32, {index_t{1} << 40, index_t{1} << 40}); }).code(),
            errc::invalid_argument);
  EXPECT_EQ(thrown_by([] { host_tensor::from(std::vector<float>(5), {2, 3}); }).code(), errc::shape_mismatch);
}

TEST(HostTensor, RankZeroHasOneElement) {
  host_tensor t(dtype::f32, {});
  EXPECT_EQ(t.size(), 1);
  EXPECT_EQ(t.rank(), 0u);
}

TEST(HostTensor, ConvertAndReshape) {
  auto t = host_tensor::from(std::vector<float>{1.0f, 0.5f, -3.0f, 1.0f / 3.0f}, {2, 2});
  auto h = t.converted(dtype::bf16);
  EXPECT_EQ(h.type(), dtype::bf16);
  EXPECT_EQ(static_cast<float>(h.data<Eigen::bfloat16>()[2]), -3.0f);
  EXPECT_EQ(static_cast<float>(h.data<Eigen::bfloat16>()[3]), static_cast<float>(Eigen::bfloat16(1.0f / 3.0f)));
  h.reshape({4});
  EXPECT_EQ(h.rank(), 1u);
  EXPECT_EQ(thrown_by([&] { h.reshape({3}); }).code(), errc::shape_mismatch);
}

// ---- reading numpy's own files -----------------------------------------------------------

TEST(NpyRead, Float32Matrix) {
  const host_tensor t = npy::read_buffer(as_bytes(k_numpy_f4_2x3));
  ASSERT_EQ(t.type(), dtype::f32);
  ASSERT_EQ(t.shape(), (std::vector<index_t>{2, 3}));
  auto d = t.data<float>();
  for (int i = 0; i < 6; ++i) EXPECT_EQ(d[static_cast<std::size_t>(i)], static_cast<float>(i) / 4.0f);
}

TEST(NpyRead, Float16Vector) {
  const host_tensor t = npy::read_buffer(as_bytes(k_numpy_f2_3));
  ASSERT_EQ(t.type(), dtype::f16);
  ASSERT_EQ(t.shape(), (std::vector<index_t>{3}));
  auto d = t.data<Eigen::half>();
  EXPECT_EQ(static_cast<float>(d[0]), 1.5f);
  EXPECT_EQ(static_cast<float>(d[1]), -2.0f);
  EXPECT_EQ(static_cast<float>(d[2]), 65504.0f);
}

TEST(NpyRead, Float64IsConvertedToFloat32) {
  const host_tensor t = npy::read_buffer(as_bytes(k_numpy_f8_2x2));
  ASSERT_EQ(t.type(), dtype::f32);
  auto d = t.data<float>();
  EXPECT_EQ(d[0], 0.1f);
  EXPECT_EQ(d[1], -1e-3f);
  EXPECT_EQ(d[2], 3.0f);
  EXPECT_EQ(d[3], 1e30f);
}

TEST(NpyRead, BigEndianScalarAndVersions) {
  const host_tensor be = npy::read_buffer(as_bytes(k_numpy_be_f4_2));
  EXPECT_EQ(be.data<float>()[0], 1.0f);
  EXPECT_EQ(be.data<float>()[1], -0.5f);
  const host_tensor s = npy::read_buffer(as_bytes(k_numpy_scalar_f4));
  EXPECT_EQ(s.rank(), 0u);
  EXPECT_EQ(s.data<float>()[0], 7.25f);
  const host_tensor v2 = npy::read_buffer(as_bytes(k_numpy_v2_f4_1x2));
  EXPECT_EQ(v2.shape(), (std::vector<index_t>{1, 2}));
  EXPECT_EQ(v2.data<float>()[1], 2.0f);
  const host_tensor v3 = npy::read_buffer(as_bytes(k_numpy_v3_f2_2));
  EXPECT_EQ(static_cast<float>(v3.data<Eigen::half>()[1]), 4.0f);
}

TEST(NpyRead, UnsupportedButWellFormed) {
  expect_error(k_numpy_fortran_2x2, errc::unsupported, "npy.fortran_order = True");
  expect_error(k_numpy_i8_2, errc::unsupported, "npy.descr = '<i8'");
  expect_error(npy_image("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", std::string(4, '\0')),
               errc::unsupported, "structured dtype");
  std::string v4 = k_numpy_f4_2x3;
  v4[6] = 4;
  expect_error(v4, errc::unsupported, "npy.version = 4.0");
}

TEST(NpyRead, HeaderSyntaxVariants) {
  // Key order, double quotes, Python 2 'L' suffixes, no trailing comma, extra spaces.
  const std::string data(2 * 3 * 4, '\0');
  const host_tensor t = npy::read_buffer(as_bytes(npy_image(
      "{ \"shape\" : (2L,3L) , 'fortran_order':False,'descr':'<f4' }   \n", data)));
  EXPECT_EQ(t.shape(), (std::vector<index_t>{2, 3}));
  EXPECT_EQ(npy::read_buffer(as_bytes(npy_image(f4_header("(0, 5)"), ""))).size(), 0);
  EXPECT_EQ(npy::read_buffer(as_bytes(npy_image(f4_header("()"), std::string(4, '\0')))).rank(), 0u);
  EXPECT_EQ(npy::read_buffer(as_bytes(npy_image(f4_header("(1, 1, 1, 1, 1, 2)"), std::string(8, '\0')))).rank(), 6u);
}

// ---- round trips -------------------------------------------------------------------------

template <class T>
void round_trip_all_ranks() {
  std::mt19937 rng(7);
  const std::vector<std::vector<index_t>> shapes = {{}, {0}, {5}, {3, 4}, {2, 0, 3}, {2, 3, 5}, {2, 1, 3, 4}, {1, 2, 1, 2, 3}};
  for (const auto& shape : shapes) {
    const host_tensor t = random_tensor<T>(shape, rng);
    const std::vector<std::byte> image = npy::write_buffer(t);
    EXPECT_EQ((image.size() - t.nbytes()) % 64, 0u) << "data must start 64-byte aligned";
    const host_tensor r = npy::read_buffer(image);
    EXPECT_EQ(r.type(), t.type());
    EXPECT_EQ(r.shape(), t.shape());
    ASSERT_EQ(r.nbytes(), t.nbytes());
    EXPECT_TRUE(std::equal(r.bytes().begin(), r.bytes().end(), t.bytes().begin())) << t.shape_string();
  }
}

TEST(NpyRoundTrip, Float32AllRanks) { round_trip_all_ranks<float>(); }
TEST(NpyRoundTrip, Float16AllRanks) { round_trip_all_ranks<Eigen::half>(); }

TEST(NpyRoundTrip, WriterMatchesNumpyByteForByte) {
  // numpy.save of the same array gives exactly k_numpy_f4_2x3.
  std::vector<float> v{0, 0.25f, 0.5f, 0.75f, 1.0f, 1.25f};
  EXPECT_EQ(as_string(npy::write_buffer(host_tensor::from(v, {2, 3}))), k_numpy_f4_2x3);
  EXPECT_EQ(as_string(npy::write_buffer(host_tensor::from(std::vector<float>{7.25f}, {}))), k_numpy_scalar_f4);
}

TEST(NpyRoundTrip, LongHeaderUsesVersion2) {
  std::vector<index_t> shape(30000, 1);  // "1, " x 30000: a header longer than 65535 characters
  const host_tensor t(dtype::f32, shape);
  const auto image = npy::write_buffer(t);
  EXPECT_EQ(std::to_integer<int>(image[6]), 2);
  EXPECT_EQ(npy::read_buffer(image).rank(), 30000u);
}

TEST(NpyRoundTrip, Bfloat16HasNoNumpyDtype) {
  EXPECT_EQ(thrown_by([] { npy::write_buffer(host_tensor(dtype::bf16, {2})); }).code(), errc::unsupported);
}

TEST(NpyRoundTrip, Files) {
  std::mt19937 rng(3);
  const auto path = temp_path("rt.npy");
  const host_tensor t = random_tensor<float>({3, 7, 7}, rng);
  npy::write(path, t);
  const host_tensor r = npy::read(path);
  EXPECT_TRUE(std::equal(r.bytes().begin(), r.bytes().end(), t.bytes().begin()));
  const npy::header h = npy::read_header(path);
  EXPECT_EQ(h.descr, "<f4");
  EXPECT_EQ(h.shape, (std::vector<index_t>{3, 7, 7}));
  EXPECT_EQ(h.data_offset, 128u);
  std::filesystem::remove(path);
}

TEST(NpyFiles, MissingFileAndDirectoryAreIoErrors) {
  const error e = thrown_by([] { npy::read("/nonexistent/dir/x.npy"); });
  EXPECT_EQ(e.code(), errc::io_error);
  EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/x.npy"), std::string::npos);
  EXPECT_EQ(thrown_by([] { npy::read(std::filesystem::temp_directory_path()); }).code(), errc::io_error);
  EXPECT_EQ(thrown_by([] { npy::write("/nonexistent/dir/x.npy", host_tensor(dtype::f32, {1})); }).code(), errc::io_error);
}

// ---- hostile input -----------------------------------------------------------------------

TEST(NpyHostile, PreambleAndMagic) {
  expect_error("", errc::parse_error, "file too short");
  expect_error(std::string("\x93NUMP", 5), errc::parse_error, "file too short");
  expect_error(std::string("\x93NUMPZ\x01\x00\x00\x00", 10), errc::parse_error, "bad magic");
  expect_error(std::string("PK\x03\x04 not npy at all", 20), errc::parse_error, "npy.magic");
  expect_error(std::string("\x93NUMPY\x02\x00\x00\x00", 10), errc::parse_error, "version 2/3 preamble");
}

TEST(NpyHostile, HeaderLengthBeyondFile) {
  std::string img = k_numpy_f4_2x3.substr(0, 40);
  expect_error(img, errc::parse_error, "header length 118 runs beyond the end of the file (40 bytes)");
  std::string v2 = npy_image(f4_header("(1,)"), std::string(4, '\0'), 2);
  v2[11] = '\x7f';  // header length ~2 GiB
  expect_error(v2, errc::parse_error, "npy.header_len");
}

TEST(NpyHostile, MalformedHeaderDict) {
  const std::string d4(4, '\0');
  expect_error(npy_image("", d4), errc::parse_error, "starting with '{'");
  expect_error(npy_image("['descr']", d4), errc::parse_error, "starting with '{'");
  expect_error(npy_image("{'descr': '<f4, 'fortran_order': False}", d4), errc::parse_error, "npy.");
  expect_error(npy_image("{'descr': '<f4", d4), errc::parse_error, "unterminated string");
  expect_error(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (1,) }x", d4), errc::parse_error,
               "after the header dict");
  expect_error(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", d4),
               errc::parse_error, "unexpected key 'x'");
  expect_error(npy_image("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", d4),
               errc::parse_error, "duplicate key 'descr'");
  expect_error(npy_image("{'descr': '<f4', 'fortran_order': False}", d4), errc::parse_error, "missing key 'shape'");
  expect_error(npy_image("{'descr': '<f4', 'shape': (1,)}", d4), errc::parse_error, "missing key 'fortran_order'");
  expect_error(npy_image("{'fortran_order': False, 'shape': (1,)}", d4), errc::parse_error, "missing key 'descr'");
  expect_error(npy_image("{'descr': '<f4', 'fortran_order': maybe, 'shape': (1,)}", d4), errc::parse_error,
               "True or False");
  expect_error(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': [1]}", d4), errc::parse_error,
               "shape must be a tuple");
  expect_error(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (1)}", d4), errc::parse_error,
               "trailing comma");
  expect_error(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (1 2)}", d4), errc::parse_error,
               "expected ',' or ')'");
  expect_error(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (1,", d4), errc::parse_error, "npy.shape");
  expect_error(npy_image(f4_header("(-1,)"), d4), errc::parse_error, "negative extent");
  expect_error(npy_image(f4_header("(2.5,)"), d4), errc::parse_error, "expected ',' or ')'");
  expect_error(npy_image(f4_header("(a,)"), d4), errc::parse_error, "non-negative integer");
}

TEST(NpyHostile, ShapeOverflow) {
  expect_error(npy_image(f4_header("(99999999999999999999999,)"), ""), errc::parse_error, "extent too large");
  expect_error(npy_image(f4_header("(4611686018427387904, 4)"), ""), errc::parse_error, "overflows");
  expect_error(npy_image(f4_header("(3037000500, 3037000500)"), ""), errc::parse_error, "overflows");
  // Fits in index_t as elements but not as bytes.
  expect_error(npy_image(f4_header("(2305843009213693952,)"), ""), errc::parse_error, "overflows");
  // Huge but representable: rejected by the size check, before any allocation.
  expect_error(npy_image(f4_header("(1000000000, 1000000)"), "abcd"), errc::parse_error,
               "needs 4000000000000000 bytes of <f4, the file has 4");
}

TEST(NpyHostile, DataShorterOrLongerThanTheShape) {
  expect_error(npy_image(f4_header("(2, 3)"), std::string(23, '\0')), errc::parse_error,
               "data too short: the shape needs 24 bytes of <f4, the file has 23");
  expect_error(npy_image(f4_header("(2, 3)"), std::string(25, '\0')), errc::parse_error, "unexpected trailing bytes");
}

TEST(NpyHostile, Float64OverflowingFloat32) {
  std::string data(8, '\0');
  const double big = 1e300;
  std::memcpy(data.data(), &big, 8);
  expect_error(npy_image("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", data), errc::non_finite,
               "npy.data[0]");
}

TEST(NpyHostile, EveryTruncationIsAParseError) {
  for (const std::string* img : {&k_numpy_f4_2x3, &k_numpy_v3_f2_2, &k_numpy_f8_2x2}) {
    for (std::size_t len = 0; len < img->size(); ++len) {
      const std::string cut = img->substr(0, len);
      const error e = thrown_by([&] { npy::read_buffer(as_bytes(cut)); });
      EXPECT_EQ(e.code(), errc::parse_error) << "length " << len << ": " << e.what();
    }
  }
}

TEST(NpyHostile, RandomMutationsNeverEscapeTheErrorType) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> byte(0, 255);
  int parsed = 0, rejected = 0;
  for (int trial = 0; trial < 4000; ++trial) {
    std::string img = trial % 2 ? k_numpy_f4_2x3 : k_numpy_v2_f4_1x2;
    const int flips = 1 + trial % 4;
    for (int f = 0; f < flips; ++f) {
      const std::size_t pos = std::uniform_int_distribution<std::size_t>(0, 80)(rng);
      img[pos] = static_cast<char>(byte(rng));
    }
    try {
      npy::read_buffer(as_bytes(img));
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

// ---- the one file rule and the checked write (issue 18) -----------------------------------

#include <sys/stat.h>

TEST(NpyHostile, SpecialFilesAreRefusedNotOpened) {
  const auto fifo = temp_path("fifo.npy");
  std::filesystem::remove(fifo);
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  // A FIFO would block the open forever; it is refused from its type.
  const error e = thrown_by([&] { npy::read(fifo); });
  EXPECT_EQ(e.code(), errc::io_error);
  EXPECT_NE(std::string(e.what()).find("is a FIFO (named pipe), not a regular file"), std::string::npos) << e.what();
  std::filesystem::remove(fifo);
  const error z = thrown_by([&] { npy::read("/dev/zero"); });
  EXPECT_NE(std::string(z.what()).find("is a character device, not a regular file"), std::string::npos) << z.what();
  // A loop of symbolic links says so (not "no such file", not a filesystem_error).
  const auto a = temp_path("loop_a"), b = temp_path("loop_b");
  std::filesystem::remove(a);
  std::filesystem::remove(b);
  std::filesystem::create_symlink(b, a);
  std::filesystem::create_symlink(a, b);
  const error l = thrown_by([&] { npy::read_header(a); });
  EXPECT_EQ(l.code(), errc::io_error);
  EXPECT_NE(std::string(l.what()).find("a loop of symbolic links"), std::string::npos) << l.what();
  std::filesystem::remove(a);
  std::filesystem::remove(b);
}

TEST(NpyHostile, FailedWriteLeavesNothingBehind) {
  host_tensor t(dtype::f32, {2, 3});
  // A full device: the write fails and says so.
  const error full = thrown_by([&] { npy::write("/dev/full", t); });
  EXPECT_EQ(full.code(), errc::io_error);
  EXPECT_NE(std::string(full.what()).find("write failed"), std::string::npos) << full.what();
  // A missing folder: an error, and no file (not even a temporary) appears.
  const auto dir = temp_path("no_such_dir");
  std::filesystem::remove_all(dir);
  const error missing = thrown_by([&] { npy::write(dir / "x.npy", t); });
  EXPECT_EQ(missing.code(), errc::io_error);
  EXPECT_FALSE(std::filesystem::exists(dir));
  // A good write replaces the target atomically and leaves no temporary next to it.
  const auto out_dir = temp_path("out_dir");
  std::filesystem::remove_all(out_dir);
  std::filesystem::create_directory(out_dir);
  npy::write(out_dir / "x.npy", t);
  npy::write(out_dir / "x.npy", t);
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(out_dir)) ++files;
  EXPECT_EQ(files, 1u);
  EXPECT_EQ(npy::read(out_dir / "x.npy").shape(), t.shape());
  std::filesystem::remove_all(out_dir);
}
