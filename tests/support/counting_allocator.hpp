// Test support: a counting replacement of the global operator new / delete, and Eigen's
// runtime no-malloc hook counted instead of asserted. Include it FIRST, in exactly one translation
// unit of a test executable (it defines the global allocation functions), before any Eigen header.
//
// While `counting` is on, every operator new adds its size to total_bytes and updates largest;
// Eigen's own heap use (its GEMM packing buffers come from malloc, not operator new) shows up in
// eigen_heap_checks while Eigen::internal::set_is_malloc_allowed(false) is in force.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <thread>

namespace tokensel_test_alloc {
std::atomic<bool> counting{false};
std::atomic<std::size_t> total_bytes{0}, largest{0}, allocations{0};
std::atomic<std::size_t> eigen_heap_checks{0};

void note(std::size_t n) noexcept {
  if (!counting.load(std::memory_order_relaxed)) return;
  total_bytes += n;
  ++allocations;
  std::size_t prev = largest.load();
  while (n > prev && !largest.compare_exchange_weak(prev, n)) {
  }
}

void* allocate(std::size_t n, std::size_t align) {
  note(n);
  void* p = nullptr;
  if (align <= alignof(std::max_align_t)) {
    p = std::malloc(n == 0 ? 1 : n);
  } else {
    p = std::aligned_alloc(align, (n + align - 1) / align * align);
  }
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
}  // namespace tokensel_test_alloc

using tokensel_test_alloc::allocate;
void* operator new(std::size_t n) { return allocate(n, 0); }
void* operator new[](std::size_t n) { return allocate(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return allocate(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return allocate(n, static_cast<std::size_t>(a)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try { return allocate(n, 0); } catch (...) { return nullptr; }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try { return allocate(n, 0); } catch (...) { return nullptr; }
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try { return allocate(n, static_cast<std::size_t>(a)); } catch (...) { return nullptr; }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try { return allocate(n, static_cast<std::size_t>(a)); } catch (...) { return nullptr; }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

// Eigen: runtime no-malloc checks, counted instead of asserted (must precede every Eigen include).
#define EIGEN_RUNTIME_NO_MALLOC
#define eigen_assert(x) ((x) ? (void)0 : (void)++tokensel_test_alloc::eigen_heap_checks)

namespace tokensel_test_alloc {
struct counts {
  std::size_t bytes = 0, largest = 0, allocations = 0, eigen = 0;
};

/// Runs f with counting on; what it allocated.
template <class F>
counts measure(F&& f) {
  total_bytes = 0;
  largest = 0;
  allocations = 0;
  eigen_heap_checks = 0;
  counting = true;
  f();
  counting = false;
  return {total_bytes.load(), largest.load(), allocations.load(), eigen_heap_checks.load()};
}
}  // namespace tokensel_test_alloc
