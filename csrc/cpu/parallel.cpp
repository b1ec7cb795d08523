// The thread pool behind parallel_for (cpu/parallel.h).
//
// Each worker owns a slot: the caller writes the body and the part into it and bumps the slot's
// ticket; the worker runs exactly that part once per ticket. A worker that has seen no new ticket
// for kSpin sleeps on a condition variable; the caller always passes through the mutex after
// bumping tickets, so a worker either sees its ticket before it sleeps or is asleep by the time
// of the notify. The caller waits for the parts the same way: spin, then sleep.
//
// The pool lives for the whole process (it is never destroyed, so exit never waits on its
// threads). A forked child gets a fresh, empty pool: the parent's threads do not exist there.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

#include "cpu/parallel.h"

namespace pcmekit::cpu::detail {
namespace {

// How long a thread spins for the next piece of work before it sleeps: long enough to carry the
// workers across the gaps between one kernel's parallel loops (microseconds), short enough not
// to take a core from whatever runs after the kernel (torch's own threads).
constexpr auto kSpin = std::chrono::microseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins until done() or kSpin has passed; returns done().
template <typename Done>
bool spin_until(const Done& done) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 1;; ++i) {
    if (done()) return true;
    cpu_relax();
    if (i % 128 == 0 && std::chrono::steady_clock::now() - start > kSpin) return done();
  }
}

class ThreadPool {
 public:
  bool run(int parts, const std::function<void(int)>& body) {
    if (busy_.exchange(true, std::memory_order_acquire)) return false;
    try {
      grow(parts - 1);
    } catch (...) {  // could not start a thread: let the caller use its own
      busy_.store(false, std::memory_order_release);
      return false;
    }
    remaining_.store(parts - 1, std::memory_order_relaxed);
    for (int w = 0; w < parts - 1; ++w) {
      Slot& slot = *slots_[static_cast<size_t>(w)];
      slot.body = &body;
      slot.part = w + 1;
      slot.ticket.fetch_add(1, std::memory_order_release);
    }
    { std::lock_guard<std::mutex> pass(mutex_); }
    wake_.notify_all();
    body(0);
    auto finished = [&] { return remaining_.load(std::memory_order_acquire) == 0; };
    if (!spin_until(finished)) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, finished);
    }
    busy_.store(false, std::memory_order_release);
    return true;
  }

 private:
  struct Slot {
    std::atomic<uint64_t> ticket{0};
    const std::function<void(int)>* body = nullptr;
    int part = 0;
  };

  // Starts threads until there are `count` (only while busy_ is held: no concurrent growth).
  void grow(int count) {
    slots_.reserve(static_cast<size_t>(count));
    while (static_cast<int>(slots_.size()) < count) {
      slots_.push_back(std::make_unique<Slot>());
      Slot* slot = slots_.back().get();
      try {
        std::thread([this, slot] { work(*slot); }).detach();
      } catch (...) {
        slots_.pop_back();
        throw;
      }
    }
  }

  [[noreturn]] void work(Slot& slot) {
    uint64_t seen = 0;
    for (;;) {
      auto ready = [&] { return slot.ticket.load(std::memory_order_acquire) != seen; };
      if (!spin_until(ready)) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, ready);
      }
      seen = slot.ticket.load(std::memory_order_acquire);
      (*slot.body)(slot.part);
      if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        { std::lock_guard<std::mutex> pass(mutex_); }
        done_.notify_all();
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::atomic<bool> busy_{false};
  std::atomic<int> remaining_{0};
  std::vector<std::unique_ptr<Slot>> slots_;
};

std::atomic<ThreadPool*> g_pool{nullptr};

#if defined(__unix__) || defined(__APPLE__)
// In a forked child the parent's pool threads are gone: start over with an empty pool (the old
// one is leaked, as its mutex may have been held by a thread that no longer exists).
void reset_pool_in_child() { g_pool.store(nullptr, std::memory_order_relaxed); }
#endif

ThreadPool& pool() {
  ThreadPool* p = g_pool.load(std::memory_order_acquire);
  if (p != nullptr) return *p;
  static std::mutex create;
  std::lock_guard<std::mutex> lock(create);
  p = g_pool.load(std::memory_order_acquire);
  if (p == nullptr) {
#if defined(__unix__) || defined(__APPLE__)
    static const bool registered = pthread_atfork(nullptr, nullptr, reset_pool_in_child) == 0;
    (void)registered;
#endif
    p = new ThreadPool();  // never deleted: see the top of this file
    g_pool.store(p, std::memory_order_release);
  }
  return *p;
}

}  // namespace

bool pool_run(int parts, const std::function<void(int)>& body) {
  if (parts <= 1) {
    if (parts == 1) body(0);
    return true;
  }
  return pool().run(parts, body);
}

}  // namespace pcmekit::cpu::detail
