// The link of two translation units that include every public CUDA header (headers_twice_unit.cu)
// is the test: it fails to link when a header defines a non-inline function. Running checks both
// units made it into the executable.
#include <gtest/gtest.h>

int headers_unit_a();
int headers_unit_b();

TEST(CudaHeaders, TwoTranslationUnitsOfOneArchitectureLink) { EXPECT_EQ(headers_unit_a() + headers_unit_b(), 2); }
