// A downstream program: runs FoPru on a hand-made attention map and checks the exact selection,
// then checks that bad input surfaces as tokensel::error. Exit code 0 on success.
#include <tokensel/methods/fopru.hpp>
#include <tokensel/select/gather.hpp>
#ifdef CONSUMER_HAS_JSON
#include <tokensel/io/fitprune_json.hpp>
#endif

#include <cstdio>
#include <vector>

int main() {
  using namespace tokensel;
  // 1 head, CLS + 4 patches. Column means of the patch submatrix: patch 2 > patch 0 > 3 > 1;
  // row means are all equal, so the column axis wins.
  const std::vector<float> a = {
      // CLS row, then 4 patch rows (columns: CLS, p0, p1, p2, p3)
      0.2f, 0.2f, 0.2f, 0.2f, 0.2f,  //
      0.0f, 0.3f, 0.1f, 0.4f, 0.2f,  //
      0.0f, 0.3f, 0.1f, 0.4f, 0.2f,  //
      0.0f, 0.3f, 0.1f, 0.4f, 0.2f,  //
      0.0f, 0.3f, 0.1f, 0.4f, 0.2f,  //
  };
  const head_attention_view<float> attn(a.data(), {1, 5, 5});
  const fopru::config cfg{.ratio = 0.5};
  std::vector<token_index> kept(static_cast<std::size_t>(fopru::keep_count(4, cfg)));
  for (const auto* name : {"seq", "par"}) {
    const auto r = name[0] == 's' ? fopru::select(seq, attn, cfg, kept) : fopru::select(par, attn, cfg, kept);
    if (r.count != 2 || kept[0] != 0 || kept[1] != 2) {
      std::fprintf(stderr, "%s: unexpected selection %ld: %d %d\n", name, static_cast<long>(r.count), kept[0], kept[1]);
      return 1;
    }
  }
  try {
    (void)fopru::keep_count(4, fopru::config{.ratio = 1.5});
    std::fprintf(stderr, "ratio 1.5 accepted\n");
    return 1;
  } catch (const error& e) {
    if (e.code() != errc::invalid_argument) return 1;
    std::printf("bad ratio -> %s\n", e.what());
  }
#ifdef CONSUMER_HAS_JSON
  const fitprune::recipe r{.drops = std::vector<index_t>(32, 0), .geometry = {}, .reduction = 0.0};
  if (fitprune::recipe_to_json(r).find("tokensel.fitprune.recipe") == std::string::npos) return 1;
  std::printf("json headers usable\n");
#endif
  std::printf("consumer ok: kept %d %d\n", kept[0], kept[1]);
  return 0;
}
