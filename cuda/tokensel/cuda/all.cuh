// tokensel CUDA backend: every public header, layer by layer (core, stats, select, methods).
// Including the headers you use instead keeps compile times down.
#pragma once

#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/core/workspace.cuh"

#include "tokensel/cuda/stats/iqr_outliers.cuh"
#include "tokensel/cuda/stats/map_sums.cuh"
#include "tokensel/cuda/stats/qk_statistics.cuh"
#include "tokensel/cuda/stats/region_mass.cuh"

#include "tokensel/cuda/select/gather.cuh"
#include "tokensel/cuda/select/top_k.cuh"

#include "tokensel/cuda/methods/baselines.cuh"
#include "tokensel/cuda/methods/dart.cuh"
#include "tokensel/cuda/methods/divprune.cuh"
#include "tokensel/cuda/methods/fastv.cuh"
#include "tokensel/cuda/methods/fitprune.cuh"
#include "tokensel/cuda/methods/fopru.cuh"
#include "tokensel/cuda/methods/freepruner.cuh"
#include "tokensel/cuda/methods/prumerge.cuh"
#include "tokensel/cuda/methods/visionzip.cuh"
#include "tokensel/cuda/methods/vispruner.cuh"
