// The threads behind parallel_for (cpu/parallel.h).
//
// Two executors:
//
//  * The OpenMP runtime already loaded in the process, when there is one: torch's (libgomp in
//    its Linux wheels; Intel's and LLVM's runtimes export the same GOMP entry points). Its
//    threads spin for milliseconds after each of torch's parallel regions, so a pool of our own
//    would fight them for the cores on every kernel that follows a torch op (measured: a csd
//    backward right after torch's BCE ran 19.7 ms alone and 29 ms in a training step). On the
//    same threads, ours simply take the next region. Found once, at the first parallel loop, by
//    looking through the loaded libraries; never loaded by us.
//  * Otherwise (no OpenMP in the process, a forked child, where GNU OpenMP's threads are gone,
//    or PCMEKIT_THREADS=pool) a small pool of persistent threads:
//    each worker owns a slot; the caller writes the body and the part into it and bumps the
//    slot's ticket; the worker runs exactly that part once per ticket. A worker that has seen
//    no new ticket for kSpin sleeps on a condition variable; the caller always passes through
//    the mutex after bumping tickets, so a worker either sees its ticket before it sleeps or is
//    asleep by the time of the notify. The caller waits for the parts the same way. The pool
//    lives for the whole process (never destroyed, so exit never waits on its threads); a forked
//    child gets a fresh, empty one.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#include <pthread.h>
#include <unistd.h>
#endif
#if defined(__linux__)
#include <link.h>
#endif
#include <cstdlib>
#include <cstring>
#include <string>

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

// ---------------------------------------------------------------------------------------------
// The process's OpenMP runtime.

struct OpenMp {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
  int (*thread_num)() = nullptr;                                            // omp_get_thread_num
  int (*num_threads)() = nullptr;                                           // omp_get_num_threads
  std::string library;
};

#if defined(__unix__) || defined(__APPLE__)
// The process this library was loaded into. GNU OpenMP's threads do not survive fork, and a
// parallel region in the child waits for them forever (torch's own ops hang there too, which is
// why DataLoader workers run on one thread): a forked child uses the pool instead.
const pid_t g_loaded_in = getpid();
#endif

#if defined(__unix__) || defined(__APPLE__)
bool bind_openmp(void* handle, OpenMp& omp) {
  omp.parallel = reinterpret_cast<decltype(omp.parallel)>(dlsym(handle, "GOMP_parallel"));
  omp.thread_num = reinterpret_cast<decltype(omp.thread_num)>(dlsym(handle, "omp_get_thread_num"));
  omp.num_threads =
      reinterpret_cast<decltype(omp.num_threads)>(dlsym(handle, "omp_get_num_threads"));
  return omp.parallel && omp.thread_num && omp.num_threads;
}
#endif

#if defined(__linux__)
int find_loaded_openmp(struct dl_phdr_info* info, size_t, void* data) {
  const char* path = info->dlpi_name;
  if (path == nullptr || path[0] == '\0') return 0;
  const char* base = std::strrchr(path, '/');
  base = base ? base + 1 : path;
  // libgomp.so.1, libgomp-<hash>.so.1 (auditwheel), libiomp5.so, libomp.so
  if (std::strncmp(base, "libgomp", 7) != 0 && std::strncmp(base, "libiomp", 7) != 0 &&
      std::strncmp(base, "libomp", 6) != 0)
    return 0;
  void* handle = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return 0;
  OpenMp& omp = *static_cast<OpenMp*>(data);
  if (!bind_openmp(handle, omp)) return 0;
  omp.library = base;
  return 1;
}
#endif

const OpenMp* find_openmp() {
  const char* choice = std::getenv("PCMEKIT_THREADS");
  if (choice != nullptr && std::strcmp(choice, "pool") == 0) return nullptr;
  OpenMp omp;
#if defined(__linux__)
  if (dl_iterate_phdr(find_loaded_openmp, &omp) == 0) return nullptr;
#elif defined(__unix__) || defined(__APPLE__)
  if (!bind_openmp(RTLD_DEFAULT, omp)) return nullptr;
  omp.library = "OpenMP";
#else
  return nullptr;
#endif
  return new OpenMp(omp);  // lives as long as the process
}

const OpenMp* openmp() {
#if defined(__unix__) || defined(__APPLE__)
  if (getpid() != g_loaded_in) return nullptr;
#endif
  static const OpenMp* found = find_openmp();
  return found;
}

struct OpenMpTask {
  const OpenMp* omp;
  const std::function<void(int)>* body;
  int parts;
};

// Every thread of the team takes parts tid, tid + team, ...: the team may be smaller than asked
// (a nested region, OMP_THREAD_LIMIT), never larger.
void openmp_region(void* data) {
  const OpenMpTask& task = *static_cast<const OpenMpTask*>(data);
  const int team = std::max(1, task.omp->num_threads());
  for (int part = task.omp->thread_num(); part < task.parts; part += team) (*task.body)(part);
}

}  // namespace

bool pool_run(int parts, const std::function<void(int)>& body) {
  if (parts <= 1) {
    if (parts == 1) body(0);
    return true;
  }
  if (const OpenMp* omp = openmp()) {
    OpenMpTask task{omp, &body, parts};
    omp->parallel(openmp_region, &task, static_cast<unsigned>(parts), 0);
    return true;
  }
  return pool().run(parts, body);
}

std::string threading_backend() {
  const OpenMp* omp = openmp();
  return omp != nullptr ? "openmp (" + omp->library + ")" : "pcmekit pool";
}

}  // namespace pcmekit::cpu::detail
