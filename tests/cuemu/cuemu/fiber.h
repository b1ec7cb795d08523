// cuemu: the stacks and context switches that let every CUDA thread of a block be a fiber.
//
// A fiber is a stack of its own (mmap'd, with a PROT_NONE guard page below it, so an overflow is a
// SIGSEGV at the guard rather than silent corruption) and a saved stack pointer. Switching saves
// the callee-saved registers on the current stack, swaps stack pointers and restores the other
// fiber's registers: on x86-64 that is a dozen instructions and no system call, which matters
// because a block of 256 threads switches tens of thousands of times per launch. Elsewhere the
// fallback is ucontext (slower: swapcontext saves the signal mask with a system call).
//
// Under AddressSanitizer every switch is announced (__sanitizer_start/finish_switch_fiber), so
// ASan knows which stack is live and checks fiber stacks like any other.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define CUEMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUEMU_ASAN 1
#endif
#endif
#if defined(CUEMU_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

namespace cuemu::detail {

[[noreturn]] inline void fatal(const char* what) {
  std::fprintf(stderr, "cuemu: fatal: %s\n", what);
  std::abort();
}

// One fiber stack. Usable bytes [base, base + size); the guard page sits just below base.
struct Stack {
  char* base = nullptr;
  std::size_t size = 0;

  static std::size_t page() { return static_cast<std::size_t>(sysconf(_SC_PAGESIZE)); }

  void allocate(std::size_t bytes) {
    const std::size_t pg = page();
    size = (bytes + pg - 1) / pg * pg;
    void* p = mmap(nullptr, size + pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) fatal("mmap of a fiber stack failed");
    if (mprotect(p, pg, PROT_NONE) != 0) fatal("mprotect of a fiber guard page failed");
    base = static_cast<char*>(p) + pg;
  }
  void release() {
    if (base != nullptr) munmap(base - page(), size + page());
    base = nullptr;
  }
  char* top() const { return base + size; }
};

#if defined(__x86_64__)

// switch_stack(save, next): pushes rbp, rbx, r12-r15, stores rsp in *save, loads next as rsp,
// pops the other fiber's registers and returns into it. MXCSR and the x87 control word are not
// saved: kernels never change them.
__attribute__((naked, noinline)) inline void switch_stack(void** /*save*/, void* /*next*/) {
  __asm__ volatile(
      "pushq %rbp\n\t"
      "pushq %rbx\n\t"
      "pushq %r12\n\t"
      "pushq %r13\n\t"
      "pushq %r14\n\t"
      "pushq %r15\n\t"
      "movq %rsp, (%rdi)\n\t"
      "movq %rsi, %rsp\n\t"
      "popq %r15\n\t"
      "popq %r14\n\t"
      "popq %r13\n\t"
      "popq %r12\n\t"
      "popq %rbx\n\t"
      "popq %rbp\n\t"
      "retq\n\t");
}

// First code a new fiber runs: calls r12(rbx), which never returns.
__attribute__((naked, noinline)) inline void fiber_trampoline() {
  __asm__ volatile(
      "movq %rbx, %rdi\n\t"
      "callq *%r12\n\t"
      "ud2\n\t");
}

struct Context {
  void* sp = nullptr;

  // Prepares `stack` so that the first switch into this context calls entry(arg) on it.
  void prepare(const Stack& stack, void (*entry)(void*), void* arg) {
    // After the six pops and the return into the trampoline, rsp must be 16-byte aligned, so
    // that entry() starts with rsp = 8 (mod 16) as the ABI requires after a call.
    auto top = reinterpret_cast<std::uintptr_t>(stack.top()) & ~std::uintptr_t(15);
    auto* frame = reinterpret_cast<void**>(top) - 7;
    frame[0] = nullptr;                                       // r15
    frame[1] = nullptr;                                       // r14
    frame[2] = nullptr;                                       // r13
    frame[3] = reinterpret_cast<void*>(entry);                // r12
    frame[4] = arg;                                           // rbx
    frame[5] = nullptr;                                       // rbp (ends backtraces)
    frame[6] = reinterpret_cast<void*>(&fiber_trampoline);    // return address
    sp = frame;
  }
};

inline void switch_context(Context& from, Context& to) { switch_stack(&from.sp, to.sp); }

#else  // ucontext fallback

struct Context {
  ucontext_t uc;
  void (*entry_)(void*) = nullptr;
  void* arg_ = nullptr;

  void prepare(const Stack& stack, void (*entry)(void*), void* arg) {
    if (getcontext(&uc) != 0) fatal("getcontext failed");
    uc.uc_stack.ss_sp = stack.base;
    uc.uc_stack.ss_size = stack.size;
    uc.uc_link = nullptr;
    entry_ = entry;
    arg_ = arg;
    // makecontext passes int arguments: `this` goes in two halves.
    const auto bits = reinterpret_cast<std::uintptr_t>(this);
    makecontext(&uc, reinterpret_cast<void (*)()>(&start), 2, static_cast<unsigned>(bits >> 32),
                static_cast<unsigned>(bits));
  }
  static void start(unsigned hi, unsigned lo) {
    auto* self = reinterpret_cast<Context*>((std::uintptr_t(hi) << 32) | lo);
    self->entry_(self->arg_);
  }
};

inline void switch_context(Context& from, Context& to) {
  if (swapcontext(&from.uc, &to.uc) != 0) fatal("swapcontext failed");
}

#endif

// ASan bookkeeping around one switch; see the header comment. `fake` is the leaving fiber's
// fake-stack slot (nullptr when the leaving fiber has finished and never resumes).
struct SwitchNote {
#if defined(CUEMU_ASAN)
  static void leaving(void** fake, const void* bottom, std::size_t size) {
    __sanitizer_start_switch_fiber(fake, bottom, size);
  }
  static void arrived(void* fake, const void** from_bottom, std::size_t* from_size) {
    __sanitizer_finish_switch_fiber(fake, from_bottom, from_size);
  }
#else
  static void leaving(void**, const void*, std::size_t) {}
  static void arrived(void*, const void**, std::size_t*) {}
#endif
};

}  // namespace cuemu::detail
