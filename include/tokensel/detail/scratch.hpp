// tokensel internals: per-thread scratch memory. The arena grows to the largest request it has
// seen and is then reused, so a repeated call of the same shape allocates nothing (the hot path
// of an engine). Scopes nest: a scope gives back everything taken inside it.
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "tokensel/core/config.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace detail {

class scratch_arena {
 public:
  static constexpr std::size_t alignment = 64;

  /// Returns uninitialised storage for n objects of trivially copyable T, valid until the
  /// enclosing scratch_scope ends.
  template <class T>
  std::span<T> take(std::size_t n) {
    static_assert(std::is_trivially_copyable_v<T>);
    const std::size_t bytes = (n * sizeof(T) + alignment - 1) / alignment * alignment;
    // Find a block with room: blocks are never moved, so earlier spans stay valid.
    while (block_ < blocks_.size() && blocks_[block_].size - offset_ < bytes) {
      ++block_;
      offset_ = 0;
    }
    if (block_ == blocks_.size()) {
      std::size_t size = blocks_.empty() ? std::size_t{1} << 16 : blocks_.back().size * 2;
      while (size < bytes) size *= 2;
      blocks_.push_back(block{std::unique_ptr<std::byte[], aligned_delete>(
                                  static_cast<std::byte*>(::operator new[](size, std::align_val_t{alignment}))),
                              size});
      offset_ = 0;
    }
    std::byte* p = blocks_[block_].data.get() + offset_;
    offset_ += bytes;
    return {reinterpret_cast<T*>(p), n};
  }

  template <class T>
  std::span<T> take_zeroed(std::size_t n) {
    auto s = take<T>(n);
    if (n != 0) std::memset(static_cast<void*>(s.data()), 0, n * sizeof(T));
    return s;
  }

  struct mark {
    std::size_t block;
    std::size_t offset;
  };
  mark position() const noexcept { return {block_, offset_}; }
  void rewind(mark m) noexcept {
    block_ = m.block;
    offset_ = m.offset;
  }

 private:
  struct aligned_delete {
    void operator()(std::byte* p) const noexcept { ::operator delete[](p, std::align_val_t{alignment}); }
  };
  struct block {
    std::unique_ptr<std::byte[], aligned_delete> data;
    std::size_t size;
  };
  std::vector<block> blocks_;
  std::size_t block_ = 0;
  std::size_t offset_ = 0;
};

/// The calling thread's arena.
inline scratch_arena& thread_scratch() {
  thread_local scratch_arena arena;
  return arena;
}

/// RAII: storage taken from the thread's arena during the scope is released at its end.
class scratch_scope {
 public:
  scratch_scope() : arena_(thread_scratch()), mark_(arena_.position()) {}
  ~scratch_scope() { arena_.rewind(mark_); }
  scratch_scope(const scratch_scope&) = delete;
  scratch_scope& operator=(const scratch_scope&) = delete;

  template <class T>
  std::span<T> take(std::size_t n) { return arena_.take<T>(n); }
  template <class T>
  std::span<T> take_zeroed(std::size_t n) { return arena_.take_zeroed<T>(n); }

 private:
  scratch_arena& arena_;
  scratch_arena::mark mark_;
};

}  // namespace detail
TOKENSEL_END_NAMESPACE
