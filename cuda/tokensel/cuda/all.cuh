// tokensel CUDA backend: every public header (primitives, methods, baselines). Including the
// headers you use instead keeps compile times down.
#pragma once

#include "tokensel/cuda/baselines.cuh"
#include "tokensel/cuda/element.cuh"
#include "tokensel/cuda/error.cuh"
#include "tokensel/cuda/fastv.cuh"
#include "tokensel/cuda/fitprune.cuh"
#include "tokensel/cuda/fopru.cuh"
#include "tokensel/cuda/freepruner.cuh"
#include "tokensel/cuda/gather.cuh"
#include "tokensel/cuda/iqr_outliers.cuh"
#include "tokensel/cuda/map_sums.cuh"
#include "tokensel/cuda/policy.cuh"
#include "tokensel/cuda/prumerge.cuh"
#include "tokensel/cuda/region_mass.cuh"
#include "tokensel/cuda/top_k.cuh"
#include "tokensel/cuda/visionzip.cuh"
#include "tokensel/cuda/workspace.cuh"
