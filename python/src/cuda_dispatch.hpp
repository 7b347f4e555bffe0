// tokensel Python extension: CUDA tensors. With TOKENSEL_PYTHON_WITH_CUDA=ON, the methods of the
// dispatch table (common.hpp: cuda_methods) run on the CUDA backend when their inputs are CUDA
// tensors: same dtypes and shapes as on the CPU (one sample, or a [batch, ...] batch), same
// indices (the backends agree bit for bit). The call runs on PyTorch's current stream of the
// tensor's device (the default stream when torch is not importable), allocates its workspace and
// outputs with cudaMallocAsync on that stream, synchronises once (to raise any problem the kernels
// recorded, e.g. NaN, as tokensel.Error) and returns CUDA tensors (int32 indices; float32 rows for
// VisionZip, PruMerge's merge and pooling). The shared pieces are cuda_run.cuh; each
// <method>_select_cuda is a few lines of views. A ragged list's samples run one device call each
// (where: "[i]", the sample's place in the list, for the messages). FoPru, FastV, VisPruner and
// VisionZip also read a qk_source of CUDA tensors on the device. The other methods' qk_source and FitPrune's calibrator
// refuse CUDA tensors by name (common.hpp: cuda_refusal).
#pragma once

#include "common.hpp"

#include <tokensel/methods/baselines.hpp>
#include <tokensel/methods/dart.hpp>
#include <tokensel/methods/divprune.hpp>
#include <tokensel/methods/fastv.hpp>
#include <tokensel/methods/fitprune.hpp>
#include <tokensel/methods/fopru.hpp>
#include <tokensel/methods/freepruner.hpp>
#include <tokensel/methods/prumerge.hpp>
#include <tokensel/methods/visionzip.hpp>
#include <tokensel/methods/vispruner.hpp>

namespace tsp {

/// True for an ndarray in CUDA (or managed) memory.
inline bool on_cuda(nb::handle h) {
  array a;
  if (!nb::try_cast(h, a)) return false;
  return is_cuda_device(a.device_type());
}

using opt_budget = std::optional<tokensel::budget>;

/// The (indices, result) pair of a <method>_select_cuda call made with return_result (a ragged
/// list's sample).
inline std::pair<nb::object, nb::object> index_and_result(const nb::object& t) {
  const nb::tuple pair = nb::borrow<nb::tuple>(t);
  return {pair[0], pair[1]};
}

/// h when it is a qk_source whose queries are a CUDA tensor (FoPru, FastV, VisPruner and VisionZip
/// read it on the device), else null.
inline const py_qk* cuda_qk(nb::handle h) {
  if (!nb::isinstance<py_qk>(h)) return nullptr;
  const py_qk* q = nb::inst_ptr<py_qk>(h);
  return is_cuda_device(q->queries.device_type()) ? q : nullptr;
}

#if defined(TOKENSEL_PYTHON_CUDA)
/// FoPru of a CUDA [heads, N, N] sample (1-D indices) or [batch, heads, N, N] batch ([batch, k]).
nb::object fopru_select_cuda(const array& attention, const tokensel::fopru::config& cfg, bool return_result, const std::string& where = "");
/// FastV of a CUDA [heads, L, L] sample or [batch, heads, L, L] batch.
nb::object fastv_select_cuda(const array& attention, const tokensel::token_range& visual, const tokensel::fastv::config& cfg,
                             bool return_result, const std::string& where = "");
/// DivPrune of CUDA features [n, D] or [batch, n, D].
nb::object divprune_select_cuda(const array& features, const tokensel::divprune::config& base, const opt_budget& keep, bool return_result,
                                const std::string& where = "");
/// VisPruner of CUDA attention [heads, N | 1, N] and features [N - 1, D] (or their [batch, ...] forms).
nb::object vispruner_select_cuda(const array& attention, const array& features, const tokensel::vispruner::config& base,
                                 const opt_budget& keep, bool return_result, const std::string& where = "");
/// DART of CUDA keys [kv_heads, L, d_head] and hidden [L, D] (or [batch, ...]); norm_weight None
/// or a float32 CUDA tensor [D].
nb::object dart_select_cuda(const array& keys, const array& hidden, nb::handle norm_weight, const tokensel::token_range& visual,
                            const tokensel::dart::config& base, const opt_budget& keep, bool return_result, const std::string& where = "");
/// VisionZip of CUDA attention [heads, N | 1, N], keys [heads, N, d_head] (None: contextual = 0)
/// and hidden [N, D] (or [batch, ...]): (indices, float32 rows[, result]).
nb::object visionzip_select_cuda(const array& attention, nb::handle keys, const array& hidden, const tokensel::visionzip::config& base,
                                 const opt_budget& keep, bool return_result, const std::string& where = "");
/// freePruner of a CUDA layer stack: [L, heads, N, N] or [L, batch, heads, N, N], or a list of
/// [heads, N, N] / [batch, heads, N, N] layers (a batch returns a list: counts are adaptive).
nb::object freepruner_select_cuda(nb::handle layers, const tokensel::freepruner::config& base, const opt_budget& keep, index_t offset,
                                  bool return_result);
/// FitPrune's prune_layer of a CUDA [heads, L, L] sample or [batch, heads, L, L] batch.
nb::object fitprune_prune_layer_cuda(const array& attention, const tokensel::token_range& visual, index_t drop,
                                     const tokensel::fitprune::config& cfg, bool return_result);
/// Pooling of CUDA features [n, d] or [batch, n, d]: float32 rows on the device.
nb::object pool_apply_cuda(const array& features, const std::optional<tokensel::token_grid>& grid, const tokensel::baselines::pool::config& base,
                           const opt_budget& keep);
/// PruMerge(+) of CUDA queries [n+1 or 1, D] and keys [n+1, D] (or [batch, ...]); features
/// [n, d] (None: selection only) also give the float32 merged rows. where: the sample's place in
/// a ragged list ("[i]"), for the messages.
nb::object prumerge_select_cuda(const array& queries, const array& keys, nb::handle features, const tokensel::prumerge::config& cfg,
                                bool return_result, const std::string& where);
/// FoPru / FastV of one qk_source of CUDA queries and keys [and lse] (cuda_qk.cu): 1-D indices.
nb::object fopru_select_cuda_qk(const py_qk& q, const tokensel::fopru::config& cfg, bool return_result);
nb::object fastv_select_cuda_qk(const py_qk& q, const tokensel::token_range& visual, const tokensel::fastv::config& cfg, bool return_result);
/// VisPruner of one qk_source of CUDA tensors (the feature layer's) and CUDA features [N - 1, D].
nb::object vispruner_select_cuda_qk(const py_qk& q, const array& features, const tokensel::vispruner::config& base, const opt_budget& keep,
                                    bool return_result, const std::string& where);
/// VisionZip of one qk_source of CUDA tensors with CUDA keys [heads, N, head_dim] (None: contextual
/// = 0) and hidden [N, D]: (indices, float32 rows[, result]).
nb::object visionzip_select_cuda_qk(const py_qk& q, nb::handle keys, const array& hidden, const tokensel::visionzip::config& base,
                                    const opt_budget& keep, bool return_result, const std::string& where);
/// gather of CUDA rows src [n, d] (or [batch, n, d]) named by CUDA int32 indices [k] (or [batch, k]):
/// float32 rows [k, d] on the device, or written into out (a CUDA f32/f16/bf16 tensor), returned.
nb::object gather_cuda(const array& src, nb::handle indices, nb::handle out);
/// PruMerge(+) selection from CUDA CLS attention rows [n] or [batch, n] (no merge).
nb::object prumerge_from_attention_cuda(const array& attention, const tokensel::prumerge::config& cfg, bool return_result);
#endif

}  // namespace tsp
