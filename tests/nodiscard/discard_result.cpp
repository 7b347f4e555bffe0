// Compiled by check_nodiscard.cmake: once as is (must be refused under -Werror=unused-result:
// every method's result type is [[nodiscard]]), once with -DTOKENSEL_TEST_CAST_TO_VOID (must compile).
#include <span>
#include <vector>

#include "tokensel/methods/fopru.hpp"

#if defined(TOKENSEL_TEST_CAST_TO_VOID)
#define TOKENSEL_TEST_DISCARD (void)
#else
#define TOKENSEL_TEST_DISCARD
#endif

int main() {
  std::vector<float> map(2 * 5 * 5, 0.04f);
  std::vector<tokensel::token_index> out(2);
  TOKENSEL_TEST_DISCARD tokensel::fopru::select(tokensel::seq, tokensel::head_attention_view<float>(map.data(), {2, 5, 5}),
                                                tokensel::fopru::config{.ratio = 0.5}, std::span(out));
  return 0;
}
