// One translation unit of the architecture-tag test, compiled twice (sm_80 and sm_90 objects, see
// CMakeLists.txt): each reports the tag it was compiled under, the mangled type of cuda_policy and
// the address of an inline helper every launcher uses. Without the tag the linker merges the two
// copies of such inline functions (one address: measured by defining TOKENSEL_CUDA_ARCH_TAG to the
// same name in both objects, which makes every test here fail); with it they stay apart. (Kernel
// host stubs themselves have internal linkage under nvcc's whole-program mode; the launchers that
// call them do not.)
#include <typeinfo>

#include "abi_tag_unit.hpp"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/detail/launch.cuh"

#define TOKENSEL_TEST_STR_(x) #x
#define TOKENSEL_TEST_STR(x) TOKENSEL_TEST_STR_(x)

abi_unit_report TOKENSEL_ABI_UNIT_NAME() {
  using namespace tokensel;
  return {TOKENSEL_TEST_STR(TOKENSEL_CUDA_ARCH_TAG), typeid(cuda_policy).name(),
          reinterpret_cast<const void*>(&cuda_detail::to_int)};
}
