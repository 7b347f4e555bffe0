// One of two translation units (compiled twice for the same architecture, see CMakeLists.txt) that
// include every public CUDA header and are linked into test_cuda_headers_twice: a function defined
// in a header without `inline` (or a template) is then defined twice and the link fails. The
// per-header check above compiles each header alone and links nothing, so it cannot see this
// (vispruner.cuh's one_round and dart.cuh's take_for_pivot were such functions).
#include "tokensel/cuda/all.cuh"

int TOKENSEL_HEADERS_UNIT_NAME() { return 1; }
