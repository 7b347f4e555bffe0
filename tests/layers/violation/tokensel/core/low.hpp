// Fixture for the layer check's own test: a core header that includes a method header.
#pragma once
#include "tokensel/methods/high.hpp"
