// The CUDA backend's architecture tag (cuda/tokensel/cuda/core/abi.cuh): code compiled for sm_80
// and for sm_90 and linked into one program keeps two distinct copies of every launcher and
// kernel instead of one merged copy. Host-only: it needs no GPU.
#include <gtest/gtest.h>

#include <string>

#include "abi_tag_unit.hpp"

TEST(CudaAbiTag, NamesTheArchitecturesOfTheTranslationUnit) {
  EXPECT_STREQ(abi_unit_sm80().tag, "sm_800");
  EXPECT_STREQ(abi_unit_sm90().tag, "sm_900");
}

TEST(CudaAbiTag, PolicyTypeCarriesTheTagSoPublicOverloadsDiffer) {
  const std::string sm80 = abi_unit_sm80().policy_type, sm90 = abi_unit_sm90().policy_type;
  EXPECT_NE(sm80, sm90);
  EXPECT_NE(sm80.find("sm_800"), std::string::npos) << sm80;
  EXPECT_NE(sm90.find("sm_900"), std::string::npos) << sm90;
}

TEST(CudaAbiTag, InlineLauncherHelpersAreNotMergedAcrossArchitectures) {
  EXPECT_NE(abi_unit_sm80().inline_function, abi_unit_sm90().inline_function);
}
