// Minimal fork-join parallelism for the CPU kernels.
//
// pcmekit does not link an OpenMP runtime of its own: torch ships one, and two runtimes in one
// process oversubscribe the cores. The chunks run on the OpenMP runtime already in the process
// (torch's) when there is one, else on a small pool of persistent threads (cpu/parallel.cpp
// explains both). Starting threads per loop instead cost ~50 us per loop, which dominated
// kernels under a millisecond. Small problems run on the calling thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace pcmekit::cpu {

inline int resolve_threads(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

namespace detail {

// Runs body(part) for part in [0, parts): part 0 on the calling thread, the others on the
// process's OpenMP threads or the pool's (started on first use, one per part beyond the first).
// Returns false, having run nothing, when the pool is already serving another call: a parallel
// loop nested in a chunk, or a second application thread. body must not throw.
bool pool_run(int parts, const std::function<void(int)>& body);

// "openmp (<library>)" or "pcmekit pool": what runs the parallel loops in this process.
std::string threading_backend();

}  // namespace detail

// Splits [begin, end) into at most `num_threads` contiguous chunks of at least `grain` items and
// calls body(chunk_begin, chunk_end, worker_index) for each, the first on the calling thread.
// An exception thrown by any chunk is rethrown here after all chunks finish.
template <typename Body>
void parallel_for(int64_t begin, int64_t end, int64_t grain, int num_threads, const Body& body) {
  const int64_t total = end - begin;
  if (total <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_chunks = (total + grain - 1) / grain;
  const int64_t chunks = std::min<int64_t>(resolve_threads(num_threads), max_chunks);
  if (chunks <= 1) {
    body(begin, end, 0);
    return;
  }
  const int64_t step = (total + chunks - 1) / chunks;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(chunks));
  const std::function<void(int)> run = [&](int c) {
    const int64_t lo = begin + c * step;
    const int64_t hi = std::min(end, lo + step);
    try {
      if (lo < hi) body(lo, hi, c);
    } catch (...) {
      errors[static_cast<size_t>(c)] = std::current_exception();
    }
  };
  if (!detail::pool_run(static_cast<int>(chunks), run)) {
    // The pool is busy (nested or concurrent use): threads of our own for this loop.
    std::vector<std::thread> workers;
    workers.reserve(static_cast<size_t>(chunks - 1));
    for (int c = 1; c < chunks; ++c) workers.emplace_back(run, c);
    run(0);
    for (auto& w : workers) w.join();
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace pcmekit::cpu
