// CPU-only consumer of the Conan package: one FoPru selection with a known answer.
#include <tokensel/methods/fopru.hpp>

#include <cstdio>
#include <vector>

int main() {
  using namespace tokensel;
  // 1 head, CLS + 4 patches; patch column means 0.3, 0.1, 0.4, 0.2 -> keep patches 0 and 2.
  std::vector<float> a(25, 0.0f);
  for (int c = 0; c < 5; ++c) a[c] = 0.2f;
  for (int r = 1; r < 5; ++r) {
    a[r * 5 + 1] = 0.3f; a[r * 5 + 2] = 0.1f; a[r * 5 + 3] = 0.4f; a[r * 5 + 4] = 0.2f;
  }
  std::vector<token_index> kept(2);
  const auto res = fopru::select(seq, head_attention_view<float>(a.data(), {1, 5, 5}), fopru::config{.ratio = 0.5}, kept);
  std::printf("tokensel test_package: kept %ld tokens: %d %d\n", static_cast<long>(res.count), kept[0], kept[1]);
  return (res.count == 2 && kept[0] == 0 && kept[1] == 2) ? 0 : 1;
}
