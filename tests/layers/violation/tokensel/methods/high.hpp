// Fixture for the layer check's own test (see core/low.hpp).
#pragma once
