// tokensel-llamacpp: the cb_eval capture (see capture.hpp).
#include "capture.hpp"

#include <cstdlib>
#include <cstring>

namespace tsl {

namespace {

/// "Qcur-12" -> 12 when name starts with prefix and a number follows, else -1.
int layer_of(const char* name, const char* prefix) {
  const std::size_t n = std::strlen(prefix);
  if (std::strncmp(name, prefix, n) != 0 || name[n] == '\0') return -1;
  char* end = nullptr;
  const long v = std::strtol(name + n, &end, 10);
  return *end == '\0' && v >= 0 ? static_cast<int>(v) : -1;
}

/// Element (i0, i1, i2) of an f32 tensor, through its byte strides (views included).
float at(const ggml_tensor* t, std::int64_t i0, std::int64_t i1, std::int64_t i2) {
  const char* p = static_cast<const char*>(t->data) + i0 * t->nb[0] + i1 * t->nb[1] + i2 * t->nb[2];
  float v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

bool names_class_embedding(const ggml_tensor* t) { return t != nullptr && std::strcmp(t->name, "v.class_embd") == 0; }

}  // namespace

void capture::reset() {
  cls_first.reset();
  heads = tokens = head_dim = width = 0;
  qk.clear();
  probs.clear();
  hidden.clear();
  failure.clear();
  softmax_seen_ = 0;
  pending_ = kind::none;
  pending_layer_ = -1;
}

int capture::graph_token(int c) const noexcept {
  if (cls_first.value_or(true)) return c;
  return c == 0 ? tokens - 1 : c - 1;  // shipped graph: patches 0 .. n-1, then CLS
}

bool capture::callback(ggml_tensor* t, bool ask, void* self) {
  auto& c = *static_cast<capture*>(self);
  if (ask) return c.wants(t);
  c.take(t);
  return true;
}

bool capture::wants(ggml_tensor* t) {
  pending_ = kind::none;
  if (t->op == GGML_OP_CONCAT && (names_class_embedding(t->src[0]) || names_class_embedding(t->src[1]))) {
    cls_first = names_class_embedding(t->src[0]);
    return false;
  }
  if (t->op == GGML_OP_SOFT_MAX) {
    pending_layer_ = softmax_seen_++;
    if (softmax_layers.count(pending_layer_)) pending_ = kind::softmax;
  } else if (int l = layer_of(t->name, "Qcur-"); l >= 0 && qk_layers.count(l)) {
    pending_ = kind::q, pending_layer_ = l;
  } else if (int l2 = layer_of(t->name, "Kcur-"); l2 >= 0 && qk_layers.count(l2)) {
    pending_ = kind::k, pending_layer_ = l2;
  } else if (int l3 = layer_of(t->name, "layer_out-"); l3 >= 0 && l3 == hidden_layer) {
    pending_ = kind::hidden, pending_layer_ = l3;
  }
  return pending_ != kind::none;
}

void capture::take(const ggml_tensor* t) {
  if (pending_ == kind::none) return;
  if (t->type != GGML_TYPE_F32 || t->data == nullptr) {
    failure = std::string("node ") + t->name + " is not host f32 data";
    return;
  }
  const int N = static_cast<int>(pending_ == kind::hidden ? t->ne[1] : t->ne[2]);
  if (tokens != 0 && tokens != N && pending_ != kind::softmax) failure = std::string("node ") + t->name + ": token count changed";
  if (pending_ == kind::q || pending_ == kind::k) {
    tokens = N, head_dim = static_cast<int>(t->ne[0]), heads = static_cast<int>(t->ne[1]);
    auto& out = pending_ == kind::q ? qk[pending_layer_].q : qk[pending_layer_].k;
    out.resize(static_cast<std::size_t>(heads) * N * head_dim);
    std::size_t o = 0;
    for (int h = 0; h < heads; ++h)
      for (int c = 0; c < N; ++c)
        for (int i = 0; i < head_dim; ++i) out[o++] = at(t, i, h, graph_token(c));
  } else if (pending_ == kind::softmax) {
    const int n = static_cast<int>(t->ne[0]), H = static_cast<int>(t->ne[2]);
    tokens = n, heads = H;
    auto& out = probs[pending_layer_];
    out.resize(static_cast<std::size_t>(H) * n * n);
    std::size_t o = 0;
    for (int h = 0; h < H; ++h)
      for (int qc = 0; qc < n; ++qc)
        for (int kc = 0; kc < n; ++kc) out[o++] = at(t, graph_token(kc), graph_token(qc), h);
  } else {
    tokens = N, width = static_cast<int>(t->ne[0]);
    hidden.resize(static_cast<std::size_t>(N) * width);
    std::size_t o = 0;
    for (int c = 0; c < N; ++c)
      for (int i = 0; i < width; ++i) hidden[o++] = at(t, i, graph_token(c), 0);
  }
  pending_ = kind::none;
}

}  // namespace tsl
