// What each architecture's translation unit of the ABI-tag test reports (abi_tag_unit.cu).
#pragma once

struct abi_unit_report {
  const char* tag;              // TOKENSEL_CUDA_ARCH_TAG as a string
  const char* policy_type;      // typeid(tokensel::cuda_policy).name()
  const void* inline_function;  // &cuda_detail::to_int
};
abi_unit_report abi_unit_sm80();
abi_unit_report abi_unit_sm90();
