// cuemu: a CUDA-on-CPU emulation layer for pcmekit's tests (header-only C++17).
//
// What it models (docs/design.md, "CUDA emulator"):
//  * a launch runs its blocks one after another; inside a block every CUDA thread is a fiber
//    (fiber.h) that runs until it reaches a barrier or returns, then the next runnable fiber runs;
//  * __syncthreads releases the block when every thread waits at the same call site; a thread
//    that returns while others wait, or threads waiting at different sites, are reported;
//  * warps are real groups of 32 lanes: every warp op (__shfl_*_sync, __syncwarp, votes) is a
//    barrier of the warp's lanes alone, so divergent warps and lanes that run ahead behave as
//    under Volta's independent thread scheduling. The mask must name the whole warp;
//  * a state where no fiber can run and no barrier can complete is reported as a deadlock;
//  * launch limits are checked as the hardware checks them, and a failed check or a kernel fault
//    becomes the error cudaGetLastError() returns, so the project's launch-check macro sees it;
//  * the order in which runnable fibers run is a seeded shuffle by default (CUEMU_SCHEDULE =
//    random | forward | reverse, CUEMU_SEED), and every __shared__ variable is a heap block of
//    its own, filled with 0xFF bytes (NaN for floats, -1 for integers) before every block, so a
//    missing barrier reads garbage rather than what another thread happened to leave, and an
//    out-of-bounds shared-memory access is a heap error under AddressSanitizer. A kernel whose
//    static shared memory exceeds 48 KB faults when it declares the variable that crosses it.
// What it cannot model: timing, memory ordering between blocks (blocks never overlap here),
// nvcc's floating-point contraction and device math library roundings.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuemu/fiber.h"

#if defined(CUEMU_ASAN)
#include <sanitizer/asan_interface.h>
#endif

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return {x, y, z}; }
};

// The runtime's error codes, with the values of the real runtime.
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;

struct CUstream_st;
struct CUevent_st;
using cudaStream_t = CUstream_st*;
using cudaEvent_t = CUevent_st*;

namespace cuemu {

constexpr int kWarpSize = 32;
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDimZ = 64;
constexpr unsigned kMaxGridDimX = 0x7fffffffu;
constexpr unsigned kMaxGridDimYZ = 65535;
constexpr std::size_t kDefaultSharedBytes = 48 * 1024;  // without the opt-in attribute
constexpr std::size_t kOptinSharedBytes = 227 * 1024;   // sm_90's largest opt-in per block

namespace detail {

// ---------------------------------------------------------------------------------------------
// Errors.

struct ErrorState {
  cudaError_t last = cudaSuccess;
  std::string detail;  // what the emulator saw, appended to cudaGetErrorString of `last`
};

inline ErrorState& errors() {
  static thread_local ErrorState state;
  return state;
}

inline cudaError_t set_error(cudaError_t err, std::string detail) {
  ErrorState& e = errors();
  e.last = err;
  e.detail = std::move(detail);
  return err;
}

inline bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

// ---------------------------------------------------------------------------------------------
// One block's run.

enum class State { Ready, AtBlockBarrier, AtWarpBarrier, Done, Faulted };

struct Site {
  const char* what = "";
  const char* file = "";
  int line = 0;
  bool operator==(const Site& o) const {
    return line == o.line && std::strcmp(file, o.file) == 0 && std::strcmp(what, o.what) == 0;
  }
  std::string str() const { return std::string(what) + " at " + file + ":" + std::to_string(line); }
};

struct Thread {
  uint3 idx{0, 0, 0};
  int linear = 0, warp = 0, lane = 0;
  State state = State::Ready;
  Site site;
  unsigned warp_seq = 0;  // warp ops this lane has entered
  Context ctx;
  Stack stack;
  void* asan_fake = nullptr;
};

struct Warp {
  int lanes = 0;
  unsigned full_mask = 0;
  std::uint64_t slot[2][kWarpSize];  // exchange buffers, alternating by warp op sequence
};

// One __shared__ variable of the running kernel: `key` identifies the declaration (one per
// template instantiation), `data` is its own heap block, kept for the blocks of one launch.
// Every __shared__ variable starts on a 128-byte boundary (what nvcc gives arrays that wmma and
// 16-byte vector accesses use; a type may ask for up to this with alignas).
constexpr std::align_val_t kSharedAlign{128};

struct SharedVar {
  const void* key;
  char* data;
  std::size_t bytes;
};

struct Block {
  dim3 block_idx, block_dim, grid_dim;
  std::vector<SharedVar> shared;
  std::size_t shared_static_bytes = 0;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  Context scheduler;
  void* scheduler_fake = nullptr;
  const void* scheduler_bottom = nullptr;
  std::size_t scheduler_size = 0;
  void (*body)(void*) = nullptr;  // runs the kernel once for the current thread
  void* closure = nullptr;
  char* dynamic_shared = nullptr;
  std::size_t dynamic_shared_bytes = 0;
  std::string fault;

  Block() = default;
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  ~Block() {
    for (const SharedVar& v : shared) ::operator delete(v.data, kSharedAlign);
  }
};

inline Block*& current_block() {
  static thread_local Block* b = nullptr;
  return b;
}
inline Thread*& current_thread_ptr() {
  static thread_local Thread* t = nullptr;
  return t;
}

[[noreturn]] inline void outside_kernel(const char* what) {
  std::fprintf(stderr, "cuemu: %s called outside a kernel\n", what);
  std::abort();
}

inline Thread& current_thread(const char* what) {
  Thread* t = current_thread_ptr();
  if (t == nullptr) outside_kernel(what);
  return *t;
}

inline Block& block(const char* what) {
  Block* b = current_block();
  if (b == nullptr) outside_kernel(what);
  return *b;
}

// From a fiber back to the scheduler; returns when the scheduler resumes this fiber.
inline void yield(Thread& t) {
  Block& b = *current_block();
  SwitchNote::leaving(&t.asan_fake, b.scheduler_bottom, b.scheduler_size);
  switch_context(t.ctx, b.scheduler);
  SwitchNote::arrived(t.asan_fake, &b.scheduler_bottom, &b.scheduler_size);
}

// A kernel fault: the launch fails with `message`; this fiber is never resumed.
[[noreturn]] inline void fault(const std::string& message) {
  Thread& t = current_thread("a fault");
  Block& b = *current_block();
  if (b.fault.empty())
    b.fault = message + " (thread (" + std::to_string(t.idx.x) + "," + std::to_string(t.idx.y) +
              "," + std::to_string(t.idx.z) + "))";
  t.state = State::Faulted;
  yield(t);
  fatal("a faulted fiber was resumed");
}

inline void fiber_main(void* arg) {
  Thread& t = *static_cast<Thread*>(arg);
  Block& b = *current_block();
  SwitchNote::arrived(nullptr, &b.scheduler_bottom, &b.scheduler_size);
  b.body(b.closure);
  t.state = State::Done;
  SwitchNote::leaving(nullptr, b.scheduler_bottom, b.scheduler_size);
  switch_context(t.ctx, b.scheduler);
  fatal("a finished fiber was resumed");
}

inline void resume(Block& b, Thread& t) {
  current_thread_ptr() = &t;
  SwitchNote::leaving(&b.scheduler_fake, t.stack.base, t.stack.size);
  switch_context(b.scheduler, t.ctx);
  SwitchNote::arrived(b.scheduler_fake, nullptr, nullptr);
  current_thread_ptr() = nullptr;
}

// Fiber stack size: kernels keep register tiles (arrays) on it; ASan's redzones need more.
inline std::size_t stack_bytes() {
#if defined(CUEMU_ASAN)
  return std::size_t(1) << 20;
#else
  return std::size_t(256) << 10;
#endif
}

enum class Order { Random, Forward, Reverse };

inline Order schedule_order() {
  static const Order order = [] {
    if (env_is("CUEMU_SCHEDULE", "forward")) return Order::Forward;
    if (env_is("CUEMU_SCHEDULE", "reverse")) return Order::Reverse;
    return Order::Random;
  }();
  return order;
}

inline std::uint64_t schedule_seed() {
  static const std::uint64_t seed = [] {
    const char* v = std::getenv("CUEMU_SEED");
    return v != nullptr ? std::strtoull(v, nullptr, 10) : std::uint64_t(1);
  }();
  return seed;
}

struct Rng {
  std::uint64_t s;
  std::uint64_t next() {  // splitmix64
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

inline std::string describe_wait(const Block& b);

// Releases the lanes of warps whose every lane waits at the same warp op; false when none did.
inline bool release_warps(Block& b) {
  bool released = false;
  for (std::size_t w = 0; w < b.warps.size(); ++w) {
    const int first = static_cast<int>(w) * kWarpSize;
    const int lanes = b.warps[w].lanes;
    int waiting = 0, done = 0;
    const Thread* lead = nullptr;
    for (int l = 0; l < lanes; ++l) {
      const Thread& t = b.threads[first + l];
      if (t.state == State::AtWarpBarrier) {
        ++waiting;
        if (lead == nullptr) lead = &t;
      } else if (t.state == State::Done) {
        ++done;
      }
    }
    if (waiting == 0) continue;
    if (done > 0) {
      b.fault = "warp " + std::to_string(w) + ": " + std::to_string(waiting) + " lanes wait at " +
                lead->site.str() + " with the full mask, but " + std::to_string(done) +
                " lanes of the warp have exited";
      return false;
    }
    if (waiting < lanes) continue;  // others still run, or wait at __syncthreads (deadlock check)
    for (int l = 0; l < lanes; ++l) {
      const Thread& t = b.threads[first + l];
      if (!(t.site == lead->site) || t.warp_seq != lead->warp_seq) {
        b.fault = "warp " + std::to_string(w) + ": divergent warp ops: lane " +
                  std::to_string(lead->lane) + " waits at " + lead->site.str() + " (op #" +
                  std::to_string(lead->warp_seq) + "), lane " + std::to_string(t.lane) + " at " +
                  t.site.str() + " (op #" + std::to_string(t.warp_seq) + ")";
        return false;
      }
    }
    for (int l = 0; l < lanes; ++l) b.threads[first + l].state = State::Ready;
    released = true;
  }
  return released;
}

// Releases __syncthreads when every thread waits at it; false when it cannot.
inline bool release_block(Block& b) {
  int waiting = 0, done = 0;
  const Thread* lead = nullptr;
  for (const Thread& t : b.threads) {
    if (t.state == State::AtBlockBarrier) {
      ++waiting;
      if (lead == nullptr) lead = &t;
    } else if (t.state == State::Done) {
      ++done;
    }
  }
  if (waiting == 0 || waiting + done < static_cast<int>(b.threads.size())) return false;
  if (done > 0) {
    b.fault = std::to_string(waiting) + " threads wait at " + lead->site.str() + " but " +
              std::to_string(done) + " threads of the block have exited (a barrier in divergent code)";
    return false;
  }
  for (const Thread& t : b.threads)
    if (!(t.site == lead->site)) {
      b.fault = "divergent __syncthreads: thread " + std::to_string(lead->linear) + " waits at " +
                lead->site.str() + ", thread " + std::to_string(t.linear) + " at " + t.site.str();
      return false;
    }
  for (Thread& t : b.threads) t.state = State::Ready;
  return true;
}

// Runs one block to completion; false (with b.fault set) on a fault or deadlock.
inline bool run_block(Block& b, std::uint64_t linear_block) {
  const int n = static_cast<int>(b.threads.size());
  for (const SharedVar& v : b.shared) std::memset(v.data, 0xFF, v.bytes);
  if (b.dynamic_shared != nullptr) std::memset(b.dynamic_shared, 0xFF, b.dynamic_shared_bytes);
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t.state = State::Ready;
    t.warp_seq = 0;
    t.site = Site{};
    t.asan_fake = nullptr;
#if defined(CUEMU_ASAN)
    // An abandoned (faulted) fiber leaves its frames' redzones behind.
    __asan_unpoison_memory_region(t.stack.base, t.stack.size);
#endif
    t.ctx.prepare(t.stack, &fiber_main, &t);
  }
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  if (schedule_order() == Order::Reverse) std::reverse(order.begin(), order.end());
  Rng rng{schedule_seed() * 0x2545F4914F6CDD1Dull + linear_block};

  for (;;) {
    if (schedule_order() == Order::Random)
      for (int i = n - 1; i > 0; --i) std::swap(order[i], order[rng.next() % (i + 1)]);
    for (int i : order) {
      Thread& t = b.threads[i];
      if (t.state != State::Ready) continue;
      resume(b, t);
      if (!b.fault.empty()) return false;
    }
    if (release_warps(b)) continue;
    if (!b.fault.empty()) return false;
    if (release_block(b)) continue;
    if (!b.fault.empty()) return false;
    bool all_done = true;
    for (const Thread& t : b.threads) all_done = all_done && t.state == State::Done;
    if (all_done) return true;
    b.fault = "deadlock: " + describe_wait(b);
    return false;
  }
}

// "128 threads at __syncthreads at f.cu:10; 32 lanes at __shfl_xor_sync at f.cu:20; 96 done"
inline std::string describe_wait(const Block& b) {
  std::vector<std::pair<Site, int>> groups;
  int done = 0;
  for (const Thread& t : b.threads) {
    if (t.state == State::Done) {
      ++done;
      continue;
    }
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const std::pair<Site, int>& g) { return g.first == t.site; });
    if (it == groups.end())
      groups.emplace_back(t.site, 1);
    else
      ++it->second;
  }
  std::string s;
  for (const auto& g : groups)
    s += std::to_string(g.second) + " threads wait at " + g.first.str() + "; ";
  return s + std::to_string(done) + " have exited";
}

// ---------------------------------------------------------------------------------------------
// Launches.

struct LaunchSite {
  const char* file;
  int line;
};

struct Config {
  LaunchSite site;
  dim3 grid, block;
  std::size_t shared_bytes;
  cudaStream_t stream;
};

// Dynamic shared memory opt-ins (cudaFuncSetAttribute), by kernel address.
inline std::vector<std::pair<const void*, std::size_t>>& shared_optins() {
  static std::vector<std::pair<const void*, std::size_t>> v;
  return v;
}

inline std::size_t shared_limit(const void* kernel) {
  for (const auto& e : shared_optins())
    if (e.first == kernel) return e.second;
  return kDefaultSharedBytes;
}

inline bool stream_valid(cudaStream_t s);

inline std::string at(const LaunchSite& s) {
  return std::string(" (launch at ") + s.file + ":" + std::to_string(s.line) + ")";
}

// The checks the hardware makes before a launch; false with the last error set.
inline bool check_launch(const Config& c, const void* kernel) {
  const dim3 g = c.grid, bl = c.block;
  const auto dims = [](dim3 d) {
    return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
  };
  const std::uint64_t threads = std::uint64_t(bl.x) * bl.y * bl.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock || bl.x > kMaxThreadsPerBlock ||
      bl.y > kMaxThreadsPerBlock || bl.z > kMaxBlockDimZ) {
    set_error(cudaErrorInvalidConfiguration,
              "block " + dims(bl) + " has " + std::to_string(threads) +
                  " threads; the limit is 1 to 1024 threads, z <= 64" + at(c.site));
    return false;
  }
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > kMaxGridDimX || g.y > kMaxGridDimYZ ||
      g.z > kMaxGridDimYZ) {
    set_error(cudaErrorInvalidConfiguration,
              "grid " + dims(g) + " is outside x in [1, 2^31 - 1], y and z in [1, 65535]" + at(c.site));
    return false;
  }
  const std::size_t limit = shared_limit(kernel);
  if (c.shared_bytes > limit) {
    set_error(cudaErrorInvalidConfiguration,
              std::to_string(c.shared_bytes) + " bytes of dynamic shared memory, more than the " +
                  std::to_string(limit) + " allowed for this kernel" +
                  (limit == kDefaultSharedBytes
                       ? " (cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) raises it)"
                       : "") +
                  at(c.site));
    return false;
  }
  if (!stream_valid(c.stream)) {
    set_error(cudaErrorInvalidResourceHandle, "launch on a stream that does not exist" + at(c.site));
    return false;
  }
  return true;
}

// Fiber stacks, kept between launches (a launch takes the lock: one at a time per process).
inline std::vector<Stack>& stack_pool() {
  static std::vector<Stack> pool;
  return pool;
}

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

inline void run_grid(const Config& c, void (*body)(void*), void* closure) {
  std::lock_guard<std::mutex> lock(launch_mutex());
  const int n = static_cast<int>(c.block.x * c.block.y * c.block.z);
  std::vector<Stack>& pool = stack_pool();
  while (static_cast<int>(pool.size()) < n) {
    pool.emplace_back();
    pool.back().allocate(stack_bytes());
  }
  Block b;
  b.block_dim = c.block;
  b.grid_dim = c.grid;
  b.body = body;
  b.closure = closure;
  std::vector<char> dynamic(c.shared_bytes);
  b.dynamic_shared = c.shared_bytes > 0 ? dynamic.data() : nullptr;
  b.dynamic_shared_bytes = c.shared_bytes;
  b.threads.resize(n);
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t.linear = i;
    t.idx = {static_cast<unsigned>(i) % c.block.x, static_cast<unsigned>(i) / c.block.x % c.block.y,
             static_cast<unsigned>(i) / (c.block.x * c.block.y)};
    t.warp = i / kWarpSize;
    t.lane = i % kWarpSize;
    t.stack = pool[i];
  }
  b.warps.resize((n + kWarpSize - 1) / kWarpSize);
  for (std::size_t w = 0; w < b.warps.size(); ++w) {
    b.warps[w].lanes = std::min(kWarpSize, n - static_cast<int>(w) * kWarpSize);
    b.warps[w].full_mask =
        b.warps[w].lanes == kWarpSize ? 0xffffffffu : (1u << b.warps[w].lanes) - 1u;
  }

  Block* const outer = current_block();
  current_block() = &b;
  std::uint64_t linear = 0;
  for (unsigned z = 0; z < c.grid.z; ++z)
    for (unsigned y = 0; y < c.grid.y; ++y)
      for (unsigned x = 0; x < c.grid.x; ++x, ++linear) {
        b.block_idx = dim3(x, y, z);
        if (!run_block(b, linear)) {
          current_block() = outer;
          const std::string where = "block (" + std::to_string(x) + "," + std::to_string(y) + "," +
                                    std::to_string(z) + ")";
          const std::string msg = where + ": " + b.fault + at(c.site);
          if (!env_is("CUEMU_QUIET", "1")) std::fprintf(stderr, "cuemu: kernel fault: %s\n", msg.c_str());
          set_error(cudaErrorLaunchFailure, msg);
          return;
        }
      }
  current_block() = outer;
}

template <typename Tuple, typename Kernel>
struct Invocation {
  Kernel kernel;
  Tuple* args;
  static void call(void* self) {
    auto* inv = static_cast<Invocation*>(self);
    std::apply(inv->kernel, *inv->args);  // each thread gets its own copy of every argument
  }
};

}  // namespace detail

// `kernel<<<grid, block, shared, stream>>>(args...)` is rewritten (rewrite_launches.py) to
// `kernel | ::cuemu::launch(site, grid, block, shared, stream)(args...)`.
template <typename... A>
struct PendingLaunch {
  detail::Config config;
  std::tuple<A...> args;
};

struct LaunchBuilder {
  detail::Config config;
  template <typename... A>
  PendingLaunch<std::decay_t<A>...> operator()(A&&... args) const {
    return {config, std::tuple<std::decay_t<A>...>(std::forward<A>(args)...)};
  }
};

inline LaunchBuilder launch(detail::LaunchSite site, dim3 grid, dim3 block, std::size_t shared_bytes = 0,
                            cudaStream_t stream = nullptr) {
  return {detail::Config{site, grid, block, shared_bytes, stream}};
}

template <typename... P, typename... A>
void operator|(void (*kernel)(P...), PendingLaunch<A...>&& pending) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  if (!detail::check_launch(pending.config, reinterpret_cast<const void*>(kernel))) return;
  using Args = std::tuple<std::decay_t<P>...>;
  Args args(pending.args);
  detail::Invocation<Args, void (*)(P...)> inv{kernel, &args};
  detail::run_grid(pending.config, &decltype(inv)::call, &inv);
}

// `__shared__ T name;` is rewritten (rewrite_launches.py) to
// `auto& name = ::cuemu::shared_var<T>(key);`, key unique to the declaration.
template <typename T>
T& shared_var(const void* key) {
  detail::Block& b = detail::block("__shared__");
  for (const detail::SharedVar& v : b.shared)
    if (v.key == key) return *reinterpret_cast<T*>(v.data);
  static_assert(alignof(T) <= static_cast<std::size_t>(detail::kSharedAlign),
                "__shared__ variable aligned beyond 128 bytes");
  auto* data = static_cast<char*>(::operator new(sizeof(T), detail::kSharedAlign));
  std::memset(data, 0xFF, sizeof(T));
  b.shared.push_back({key, data, sizeof(T)});
  b.shared_static_bytes += sizeof(T);
  if (b.shared_static_bytes > kDefaultSharedBytes)
    detail::fault("static shared memory of " + std::to_string(b.shared_static_bytes) +
                  " bytes, over the 48 KB (49152 bytes) a block may declare statically");
  return *reinterpret_cast<T*>(data);
}

// `extern __shared__ T name[];` is rewritten to `T* name = ::cuemu::dynamic_shared<T>();`.
template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(detail::block("dynamic shared memory").dynamic_shared);
}

// ---------------------------------------------------------------------------------------------
// Barriers and warp ops, called through the macros and functions of cuda_runtime.h.

inline void syncthreads(const char* file, int line) {
  detail::Thread& t = detail::current_thread("__syncthreads");
  t.site = {"__syncthreads", file, line};
  t.state = detail::State::AtBlockBarrier;
  detail::yield(t);
}

namespace detail {

inline Warp& warp_of(const Thread& t) { return current_block()->warps[t.warp]; }

inline void check_mask(const Thread& t, unsigned mask, const char* what) {
  const Warp& w = warp_of(t);
  if (mask != w.full_mask) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "0x%08x", mask);
    char full[64];
    std::snprintf(full, sizeof full, "0x%08x", w.full_mask);
    fault(std::string(what) + " with mask " + buf + ": cuemu supports only the full warp (" +
          full + ")" + (w.lanes < kWarpSize ? " of this partial warp" : ""));
  }
}

// Deposits this lane's 8 bytes, waits for the whole warp, and returns the exchange buffer.
inline const std::uint64_t* warp_exchange(Thread& t, std::uint64_t mine, const Site& site) {
  Warp& w = warp_of(t);
  std::uint64_t* buf = w.slot[t.warp_seq & 1u];
  buf[t.lane] = mine;
  t.site = site;
  t.state = State::AtWarpBarrier;
  yield(t);
  ++t.warp_seq;
  return buf;
}

template <typename T>
std::uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp ops take <= 8-byte values");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(std::uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

enum class Shfl { Idx, Up, Down, Xor };

template <typename T>
T shuffle(Shfl kind, unsigned mask, T value, int arg, int width, const Site& site) {
  Thread& t = current_thread(site.what);
  check_mask(t, mask, site.what);
  if (width < 1 || width > kWarpSize || (width & (width - 1)) != 0)
    fault(std::string(site.what) + ": width " + std::to_string(width) + " is not a power of two in [1, 32]");
  const std::uint64_t* buf = warp_exchange(t, to_bits(value), site);
  const int lanes = warp_of(t).lanes;
  const int segment = t.lane & ~(width - 1);
  int src = t.lane;
  switch (kind) {
    case Shfl::Idx: src = segment + (arg & (width - 1)); break;
    case Shfl::Up: src = t.lane - arg >= segment ? t.lane - arg : t.lane; break;
    case Shfl::Down: src = t.lane + arg < segment + width ? t.lane + arg : t.lane; break;
    case Shfl::Xor: src = t.lane ^ arg; if (src >= segment + width || src < segment) src = t.lane; break;
  }
  if (src >= lanes) src = t.lane;
  return from_bits<T>(buf[src]);
}

inline unsigned vote(unsigned mask, bool pred, const Site& site) {
  Thread& t = current_thread(site.what);
  check_mask(t, mask, site.what);
  const std::uint64_t* buf = warp_exchange(t, pred ? 1u : 0u, site);
  unsigned ballot = 0;
  for (int l = 0; l < warp_of(t).lanes; ++l)
    if (buf[l] != 0) ballot |= 1u << l;
  return ballot;
}

}  // namespace detail

inline void syncwarp(unsigned mask, const char* file, int line) {
  detail::Thread& t = detail::current_thread("__syncwarp");
  detail::check_mask(t, mask, "__syncwarp");
  detail::warp_exchange(t, 0, {"__syncwarp", file, line});
}

// ---------------------------------------------------------------------------------------------
// Streams and events: work runs when it is launched, so they only check that the handles used
// exist and that an event is recorded before it is waited on or timed.

namespace detail {

struct Handles {
  std::vector<const void*> streams, events;
  std::vector<const void*> recorded;  // events recorded at least once
};

inline Handles& handles() {
  static Handles h;
  return h;
}

template <typename T>
bool contains(const std::vector<const void*>& v, T* p) {
  return std::find(v.begin(), v.end(), static_cast<const void*>(p)) != v.end();
}

// 0 (legacy default), 1 (cudaStreamLegacy) and 2 (cudaStreamPerThread) always exist.
inline bool stream_valid(cudaStream_t s) {
  return reinterpret_cast<std::uintptr_t>(s) <= 2 || contains(handles().streams, s);
}

}  // namespace detail
}  // namespace cuemu
