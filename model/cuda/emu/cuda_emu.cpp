// The CUDA-on-CPU fiber emulator's scheduler (model/cuda/emu/cuda_emu.h):
// blocks one after another, a block's threads as fibers on pooled stacks,
// barriers and warp intrinsics as suspension points.
//
// Context switches: on x86-64 a dozen instructions of our own (callee-saved
// registers, MXCSR and the x87 control word; no system call), ~100x faster
// than glibc's swapcontext, which saves and restores the signal mask with a
// system call on every switch; elsewhere (or with -DRT_EMU_UCONTEXT)
// makecontext/swapcontext.
#include "model/cuda/emu/cuda_emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

// AddressSanitizer needs to be told about stack switches (and reused stacks
// unpoisoned); without it, it reports the pooled stacks' old frames.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define RT_EMU_ASAN 1
#else
#define RT_EMU_ASAN 0
#endif

#if defined(__x86_64__) && !defined(RT_EMU_UCONTEXT)
#define RT_EMU_ASM_SWITCH 1
#else
#define RT_EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

namespace rt::emu::detail {
dim3 g_thread_idx, g_block_idx, g_block_dim, g_grid_dim;
}  // namespace rt::emu::detail

// The first function every fiber runs (defined below, after the scheduler).
extern "C" [[noreturn]] __attribute__((visibility("hidden"), used)) void rt_emu_fiber_main();

#if RT_EMU_ASM_SWITCH
// rt_emu_switch(save, load): pushes the callee-saved registers, MXCSR and the
// x87 control word on the current stack, stores the stack pointer in *save,
// switches to the stack `load` and pops the same from it. A new fiber's stack
// is laid out as if it had called rt_emu_switch from rt_emu_fiber_trampoline,
// which calls rt_emu_fiber_main (which never returns).
extern "C" void rt_emu_switch(void** save, void* load);
extern "C" void rt_emu_fiber_trampoline();
asm(R"(
    .text
    .globl rt_emu_switch
    .hidden rt_emu_switch
    .type rt_emu_switch, @function
    .p2align 4
rt_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size rt_emu_switch, .-rt_emu_switch

    .globl rt_emu_fiber_trampoline
    .hidden rt_emu_fiber_trampoline
    .type rt_emu_fiber_trampoline, @function
    .p2align 4
rt_emu_fiber_trampoline:
    .cfi_startproc
    .cfi_undefined rip
    call rt_emu_fiber_main@PLT
    ud2
    .cfi_endproc
    .size rt_emu_fiber_trampoline, .-rt_emu_fiber_trampoline
)");
#endif

namespace rt::emu::detail {
namespace {

constexpr int kMaxThreads = 1024;
constexpr std::size_t kStackBytes = std::size_t(64) << 10;

// ---- execution contexts ------------------------------------------------------
struct Context {
#if RT_EMU_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc{};
#endif
};

struct FpState {
  std::uint32_t mxcsr = 0;
  std::uint16_t fpu_cw = 0;
};

FpState current_fp_state() {
  FpState s;
#if RT_EMU_ASM_SWITCH
  asm volatile("stmxcsr %0" : "=m"(s.mxcsr));
  asm volatile("fnstcw %0" : "=m"(s.fpu_cw));
#endif
  return s;
}

// Prepares `ctx` to start rt_emu_fiber_main on the stack [lo, lo + bytes).
void context_init(Context& ctx, void* lo, std::size_t bytes, const FpState& fp) {
#if RT_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(lo, bytes);  // frames of an abandoned fiber stay poisoned
#endif
#if RT_EMU_ASM_SWITCH
  auto top = (reinterpret_cast<std::uintptr_t>(lo) + bytes) & ~std::uintptr_t(15);
  // rt_emu_switch's pops, lowest address first: csr word, r15..r12, rbx, rbp,
  // return address; the trampoline then starts with a 16-byte aligned stack.
  auto* w = reinterpret_cast<std::uint64_t*>(top - 80);
  w[0] = std::uint64_t(fp.mxcsr) | (std::uint64_t(fp.fpu_cw) << 32);
  for (int i = 1; i <= 6; ++i) w[i] = 0;  // r15, r14, r13, r12, rbx, rbp (0 ends frame chains)
  w[7] = reinterpret_cast<std::uint64_t>(&rt_emu_fiber_trampoline);
  ctx.sp = w;
#else
  (void)fp;
  ctx.uc.uc_stack.ss_sp = lo;
  ctx.uc.uc_stack.ss_size = bytes;
  ctx.uc.uc_link = nullptr;
  makecontext(&ctx.uc, &rt_emu_fiber_main, 0);
#endif
}

void context_switch(Context& save, Context& load) {
#if RT_EMU_ASM_SWITCH
  rt_emu_switch(&save.sp, load.sp);
#else
  if (swapcontext(&save.uc, &load.uc) != 0) std::abort();  // only fails for bad contexts: a bug here
#endif
}

// ---- stacks: 64 KiB each, a PROT_NONE guard page below, kept for reuse -------
class StackPool {
 public:
  ~StackPool() {
    for (void* base : bases_) munmap(base, kStackBytes + page_);
  }
  // Makes at least n stacks exist; throws std::runtime_error when mmap fails.
  void reserve(int n) {
    if (page_ == 0) page_ = std::size_t(sysconf(_SC_PAGESIZE));
    while (int(bases_.size()) < n) {
      void* base = mmap(nullptr, kStackBytes + page_, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
      if (base == MAP_FAILED) {
        throw std::runtime_error("rt::emu::launch: cannot map a fiber stack of " +
                                 std::to_string(kStackBytes >> 10) + " KiB (" +
                                 std::strerror(errno) + ")");
      }
      if (mprotect(base, page_, PROT_NONE) != 0) {
        const int err = errno;
        munmap(base, kStackBytes + page_);
        throw std::runtime_error("rt::emu::launch: cannot protect a fiber stack's guard page (" +
                                 std::string(std::strerror(err)) + ")");
      }
      bases_.push_back(base);
    }
  }
  void* lo(int i) const { return static_cast<char*>(bases_[std::size_t(i)]) + page_; }

 private:
  std::size_t page_ = 0;
  std::vector<void*> bases_;
};

// ---- fibers and the scheduler ------------------------------------------------
enum class State : std::uint8_t { kRunnable, kBarrier, kWarp, kDone, kFailed };

struct Fiber {
  Context ctx;
  dim3 tid;
  int lin = 0;  // linear thread id: lane lin % 32 of warp lin / 32
  void* stack_lo = nullptr;
  State state = State::kRunnable;
  // The warp intrinsic this lane waits at, and its result.
  WarpOp op = WarpOp::kSyncWarp;
  int size = 0;
  int lane_arg = 0;
  int width = 32;
  std::uint64_t bits = 0;
  std::uint64_t result = 0;
};

// Raised inside a fiber for a misuse the emulator detects (not a kernel's own
// exception): its message is reported as it is.
struct EmuError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string str(const dim3& d) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "(%u,%u,%u)", d.x, d.y, d.z);
  return buf;
}

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kSyncWarp: return "__syncwarp";
    case WarpOp::kShflIdx: return "__shfl_sync";
    case WarpOp::kShflUp: return "__shfl_up_sync";
    case WarpOp::kShflDown: return "__shfl_down_sync";
    case WarpOp::kShflXor: return "__shfl_xor_sync";
  }
  return "?";
}

struct Emulator {
  std::unique_ptr<Fiber[]> fibers;  // kMaxThreads, never moved (ucontext_t holds pointers into itself)
  StackPool stacks;
  Context scheduler;
  Fiber* current = nullptr;  // the fiber running now; null on the scheduler
  KernelThunk thunk = nullptr;
  void* body = nullptr;
  int nthreads = 0;
  int warp_arrived[kMaxThreads / 32] = {};
  int n_barrier = 0, n_done = 0, n_released = 0;
  std::exception_ptr failure;  // the failed fiber's exception
  std::string error;           // an error the scheduler found
  FpState fp;
  std::vector<std::uint8_t> smem;  // dynamic shared memory (+256 bytes to align its base)
  std::uint8_t* smem_base = nullptr;
  std::size_t smem_bytes = 0;
  // Per-warp exchange slots of the tensor-core collectives (ldmatrix, mma).
  std::uint32_t xchg[kMaxThreads / 32][32][6] = {};
};

Emulator g_emu;
std::atomic<bool> g_busy{false};

std::string where(const Fiber& f) {
  return "block " + str(g_block_idx) + " thread " + str(f.tid);
}

Fiber& running_fiber(const char* what) {
  if (!g_emu.current) {
    throw std::runtime_error(std::string(what) +
                             " called outside a kernel launched by rt::emu::launch");
  }
  return *g_emu.current;
}

#if RT_EMU_ASAN
// The calling thread's stack, for switches back to the scheduler.
const void* g_asan_host_bottom = nullptr;
std::size_t g_asan_host_size = 0;
#endif

// Scheduler -> fiber f; returns when f yields.
void resume_fiber(Fiber& f) {
#if RT_EMU_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, f.stack_lo, kStackBytes);
#endif
  context_switch(g_emu.scheduler, f.ctx);
#if RT_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

// Fiber f -> scheduler; returns when the scheduler resumes f (never when
// f has finished).
void yield_to_scheduler(Fiber& f, bool finished = false) {
#if RT_EMU_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(finished ? nullptr : &fake_stack, g_asan_host_bottom,
                                 g_asan_host_size);
#else
  (void)finished;
#endif
  context_switch(f.ctx, g_emu.scheduler);
#if RT_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, &g_asan_host_bottom, &g_asan_host_size);
#endif
}

// All 32 lanes of warp w are at a warp intrinsic: checks that it is the same
// one and computes each lane's result as PTX shfl.sync does (c operand as
// CUDA's headers build it: segment mask (32 - width) << 8, clamp 31, or 0 for
// up). Returns false (and sets g_emu.error) on a mismatch.
bool complete_warp(int w) {
  Fiber* lanes = &g_emu.fibers[std::size_t(w) * 32];
  for (int l = 1; l < 32; ++l) {
    if (lanes[l].op != lanes[0].op || lanes[l].size != lanes[0].size) {
      g_emu.error = "rt::emu::launch: the lanes of warp " + std::to_string(w) + " of block " +
                    str(g_block_idx) + " are at different warp intrinsics: lane 0 at " +
                    op_name(lanes[0].op) + " (" + std::to_string(lanes[0].size) +
                    "-byte value), lane " + std::to_string(l) + " at " + op_name(lanes[l].op) +
                    " (" + std::to_string(lanes[l].size) +
                    "-byte value); every lane must execute the same intrinsic";
      return false;
    }
  }
  if (lanes[0].op != WarpOp::kSyncWarp) {
    for (int l = 0; l < 32; ++l) {
      const Fiber& f = lanes[l];
      const int b = f.lane_arg & 31;
      const int segmask = (32 - f.width) & 31;
      const int clamp = f.op == WarpOp::kShflUp ? 0 : 31;
      const int max_lane = (l & segmask) | (clamp & ~segmask);
      const int min_lane = l & segmask;
      int j = l;
      bool valid = true;
      switch (f.op) {
        case WarpOp::kShflUp: j = l - b; valid = j >= max_lane; break;
        case WarpOp::kShflDown: j = l + b; valid = j <= max_lane; break;
        case WarpOp::kShflXor: j = l ^ b; valid = j <= max_lane; break;
        case WarpOp::kShflIdx: j = min_lane | (b & ~segmask); valid = j <= max_lane; break;
        case WarpOp::kSyncWarp: break;
      }
      lanes[l].result = lanes[valid ? j : l].bits;
    }
  }
  for (int l = 0; l < 32; ++l) lanes[l].state = State::kRunnable;
  g_emu.warp_arrived[w] = 0;
  g_emu.n_released += 32;
  return true;
}

// No thread can run and the block has not finished: describes why.
std::string describe_deadlock() {
  const int n = g_emu.nthreads;
  for (int w = 0; w < n / 32; ++w) {
    if (g_emu.warp_arrived[w] == 0) continue;
    const Fiber* lanes = &g_emu.fibers[std::size_t(w) * 32];
    int waiting = 0;
    while (lanes[waiting].state != State::kWarp) ++waiting;
    for (int l = 0; l < 32; ++l) {
      if (lanes[l].state == State::kWarp) continue;
      return "rt::emu::launch: " + std::string(op_name(lanes[waiting].op)) + " in warp " +
             std::to_string(w) + " of block " + str(g_block_idx) + " is not reached by all 32 lanes: " +
             std::to_string(g_emu.warp_arrived[w]) + " wait there (thread " +
             str(lanes[waiting].tid) + ") while thread " + str(lanes[l].tid) +
             (lanes[l].state == State::kDone ? " has returned"
                                             : " waits at __syncthreads") +
             "; every lane of the warp must call it (divergent warp intrinsic)";
    }
  }
  int done = 0;
  while (g_emu.fibers[std::size_t(done)].state != State::kDone) ++done;
  int waiting = 0;
  while (g_emu.fibers[std::size_t(waiting)].state != State::kBarrier) ++waiting;
  return "rt::emu::launch: divergent __syncthreads in block " + str(g_block_idx) + ": " +
         std::to_string(g_emu.n_barrier) + " of " + std::to_string(n) +
         " threads wait at __syncthreads (e.g. thread " + str(g_emu.fibers[std::size_t(waiting)].tid) +
         ") while " + std::to_string(g_emu.n_done) + " have returned (e.g. thread " +
         str(g_emu.fibers[std::size_t(done)].tid) +
         "); every thread of a block must reach each __syncthreads (undefined on a GPU)";
}

// Runs the current block (g_block_idx) to its end; false when it failed
// (g_emu.failure or g_emu.error set).
bool run_block(bool forward) {
  Emulator& e = g_emu;
  const int n = e.nthreads;
  const unsigned bx = g_block_dim.x, by = g_block_dim.y;
  for (int i = 0; i < n; ++i) {
    Fiber& f = e.fibers[std::size_t(i)];
    f.tid = dim3(unsigned(i) % bx, (unsigned(i) / bx) % by, unsigned(i) / (bx * by));
    f.lin = i;
    f.state = State::kRunnable;
    f.stack_lo = e.stacks.lo(i);
    context_init(f.ctx, f.stack_lo, kStackBytes, e.fp);
  }
  for (int w = 0; w < (n + 31) / 32; ++w) e.warp_arrived[w] = 0;
  e.n_barrier = e.n_done = 0;

  // A phase runs the warps one after another, each as far as it gets (to the
  // next __syncthreads or its end, through its warp intrinsics), so that a warp
  // that reads what another warp writes without a barrier between them reads
  // it too early (warps in forward order) or too late (reverse order).
  const int nw = (n + 31) / 32;
  for (;;) {
    e.n_released = 0;
    for (int wi = 0; wi < nw; ++wi) {
      const int lo = (forward ? wi : nw - 1 - wi) * 32, hi = std::min(n, lo + 32);
      for (bool ran = true; ran;) {
        ran = false;
        for (int k = 0; k < hi - lo; ++k) {
          Fiber& f = e.fibers[std::size_t(forward ? lo + k : hi - 1 - k)];
          if (f.state != State::kRunnable) continue;
          ran = true;
          g_thread_idx = f.tid;
          e.current = &f;
          resume_fiber(f);
          e.current = nullptr;
          switch (f.state) {
            case State::kDone: ++e.n_done; break;
            case State::kBarrier: ++e.n_barrier; break;
            case State::kWarp:
              if (++e.warp_arrived[f.lin / 32] == 32 && !complete_warp(f.lin / 32)) return false;
              break;
            case State::kFailed: return false;
            case State::kRunnable: std::abort();  // a fiber never yields runnable
          }
        }
      }
    }
    if (e.n_done == n) return true;
    if (e.n_released > 0) continue;  // lanes released by a completed warp intrinsic
    if (e.n_barrier > 0 && e.n_barrier + e.n_done == n && e.n_done == 0) {
      for (int i = 0; i < n; ++i) e.fibers[std::size_t(i)].state = State::kRunnable;
      e.n_barrier = 0;
      forward = !forward;
      continue;
    }
    e.error = describe_deadlock();
    return false;
  }
}

std::string check_config(dim3 grid, dim3 block) {
  const auto threads = std::uint64_t(block.x) * block.y * block.z;
  const std::string cfg = " (grid " + str(grid) + ", block " + str(block) + ")";
  if (threads == 0 || threads > std::uint64_t(kMaxThreads)) {
    return "rt::emu::launch: a block of " + std::to_string(threads) +
           " threads: blocks need 1 to 1024 threads" + cfg;
  }
  if (block.z > 64) return "rt::emu::launch: block.z = " + std::to_string(block.z) + " exceeds 64" + cfg;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return "rt::emu::launch: an empty grid" + cfg;
  if (grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    return "rt::emu::launch: grid exceeds CUDA's limits (x < 2^31, y and z <= 65535)" + cfg;
  }
  return {};
}

}  // namespace

void sync_threads() {
  Fiber& f = running_fiber("__syncthreads");
  f.state = State::kBarrier;
  yield_to_scheduler(f);
}

std::uint64_t warp_exchange(WarpOp op, unsigned mask, std::uint64_t bits, int size, int lane_arg,
                            int width) {
  Fiber& f = running_fiber(op_name(op));
  if (mask != 0xffffffffu) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%08x", mask);
    throw EmuError("rt::emu::launch: " + std::string(op_name(op)) + " with mask " + hex + " in " +
                   where(f) + ": the emulator supports only the full mask 0xffffffff");
  }
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    throw EmuError("rt::emu::launch: " + std::string(op_name(op)) + " with width " +
                   std::to_string(width) + " in " + where(f) +
                   ": width must be a power of two from 1 to 32");
  }
  const int warp = f.lin / 32;
  if ((warp + 1) * 32 > g_emu.nthreads) {
    throw EmuError("rt::emu::launch: " + std::string(op_name(op)) + " in " + where(f) + ": warp " +
                   std::to_string(warp) + " of a block of " + std::to_string(g_emu.nthreads) +
                   " threads has only " + std::to_string(g_emu.nthreads - warp * 32) +
                   " lanes; warp intrinsics need blocks of whole warps (a multiple of 32 threads)");
  }
  f.op = op;
  f.size = size;
  f.lane_arg = lane_arg;
  f.width = width;
  f.bits = bits;
  f.state = State::kWarp;
  yield_to_scheduler(f);
  return f.result;
}

void run_grid(dim3 grid, dim3 block, KernelThunk thunk, void* body, std::size_t dynamic_smem) {
  if (g_busy.exchange(true)) {
    throw std::runtime_error(
        "rt::emu::launch: a launch is already running (a kernel launched a kernel, or two host "
        "threads launch at once); the emulator runs one launch at a time");
  }
  struct Release {
    ~Release() { g_busy.store(false); }
  } release;
  if (std::string bad = check_config(grid, block); !bad.empty()) throw std::runtime_error(bad);

  Emulator& e = g_emu;
  if (!e.fibers) e.fibers = std::make_unique<Fiber[]>(kMaxThreads);
  e.nthreads = int(block.x * block.y * block.z);
  e.stacks.reserve(e.nthreads);
#if !RT_EMU_ASM_SWITCH
  static int contexts_made = 0;  // getcontext once per fiber slot (makecontext needs it)
  for (; contexts_made < e.nthreads; ++contexts_made) {
    if (getcontext(&e.fibers[std::size_t(contexts_made)].ctx.uc) != 0) std::abort();
  }
#endif
  e.thunk = thunk;
  e.body = body;
  e.failure = nullptr;
  e.error.clear();
  e.fp = current_fp_state();
  g_block_dim = block;
  g_grid_dim = grid;
  if (e.smem.size() < dynamic_smem + 256) e.smem.resize(dynamic_smem + 256);
  e.smem_base = e.smem.data() + (256 - reinterpret_cast<std::uintptr_t>(e.smem.data()) % 256) % 256;
  e.smem_bytes = dynamic_smem;

  bool ok = true;
  std::uint64_t block_number = 0;
  for (unsigned z = 0; z < grid.z && ok; ++z) {
    for (unsigned y = 0; y < grid.y && ok; ++y) {
      for (unsigned x = 0; x < grid.x && ok; ++x, ++block_number) {
        g_block_idx = dim3(x, y, z);
        std::memset(e.smem_base, 0xFF, e.smem_bytes);
        ok = run_block(block_number % 2 == 0);
      }
    }
  }
  g_thread_idx = dim3(0, 0, 0);
  e.current = nullptr;
  if (ok) return;
  if (!e.error.empty()) throw std::runtime_error(e.error);
  // A fiber failed: find it (the grid stopped at its block).
  const Fiber* failed = &e.fibers[0];
  for (int i = 0; i < e.nthreads; ++i) {
    if (e.fibers[std::size_t(i)].state == State::kFailed) failed = &e.fibers[std::size_t(i)];
  }
  std::exception_ptr ex = e.failure;
  e.failure = nullptr;
  try {
    std::rethrow_exception(ex);
  } catch (const EmuError& err) {
    throw std::runtime_error(err.what());
  } catch (const std::exception& err) {
    std::throw_with_nested(std::runtime_error("rt::emu::launch: the kernel threw in " +
                                              where(*failed) + ": " + err.what()));
  } catch (...) {
    std::throw_with_nested(std::runtime_error("rt::emu::launch: the kernel threw in " +
                                              where(*failed) + " (not a std::exception)"));
  }
}

}  // namespace rt::emu::detail

// Every fiber starts here: runs the kernel body for its thread, records how it
// ended, and hands control back to the scheduler for good. No exception leaves
// a fiber.
extern "C" void rt_emu_fiber_main() {
  using namespace rt::emu::detail;
#if RT_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_asan_host_bottom, &g_asan_host_size);
#endif
  Fiber* f = g_emu.current;
  try {
    g_emu.thunk(g_emu.body);
    f->state = State::kDone;
  } catch (...) {
    f->state = State::kFailed;
    g_emu.failure = std::current_exception();
  }
  yield_to_scheduler(*f, /*finished=*/true);
  std::abort();  // a finished fiber is never resumed
}

// ---- dynamic shared memory and tensor-core PTX ----------------------------------

namespace rt::emu {
using detail::g_emu;

std::uint8_t* dynamic_shared() {
  detail::running_fiber("rt::emu::dynamic_shared");
  return g_emu.smem_base;
}

std::uint32_t shared_offset(const void* p) {
  const auto* b = static_cast<const std::uint8_t*>(p);
  if (!g_emu.smem_base || b < g_emu.smem_base || b > g_emu.smem_base + g_emu.smem_bytes) {
    throw std::runtime_error(
        "__cvta_generic_to_shared: the pointer is not in the launch's dynamic shared memory "
        "(the emulator maps only launch_dynamic's bytes to shared addresses)");
  }
  return std::uint32_t(b - g_emu.smem_base);
}

namespace {
// The shared bytes [addr, addr + n), checked.
std::uint8_t* shared_at(std::uint32_t addr, std::size_t n, const char* what) {
  if (std::size_t(addr) + n > g_emu.smem_bytes) {
    throw std::runtime_error(std::string(what) + ": shared address " + std::to_string(addr) +
                             " + " + std::to_string(n) + " bytes is past the block's " +
                             std::to_string(g_emu.smem_bytes) + " bytes of dynamic shared memory");
  }
  return g_emu.smem_base + addr;
}

float bf16_lo(std::uint32_t u) { return std::bit_cast<float>(u << 16); }
float bf16_hi(std::uint32_t u) { return std::bit_cast<float>(u & 0xffff0000u); }

// The calling lane and its warp's exchange slots: a lane writes its words to
// its own slot, __syncwarp, reads the others', __syncwarp again.
struct Lane {
  int lane;
  std::uint32_t (*warp)[6];
};
Lane this_lane(const char* what) {
  const detail::Fiber& f = detail::running_fiber(what);
  return {f.lin % 32, g_emu.xchg[f.lin / 32]};
}
}  // namespace

void ldmatrix_x4(std::uint32_t addr, bool trans, std::uint32_t (&r)[4]) {
  const Lane me = this_lane("ldmatrix");
  me.warp[me.lane][0] = addr;
  __syncwarp();
  const int l = me.lane;
  for (int j = 0; j < 4; ++j) {
    if (!trans) {
      const std::uint8_t* row = shared_at(me.warp[8 * j + l / 4][0], 16, "ldmatrix");
      std::memcpy(&r[j], row + 4 * (l % 4), 4);
    } else {
      std::uint16_t lo = 0, hi = 0;
      std::memcpy(&lo, shared_at(me.warp[8 * j + 2 * (l % 4)][0], 16, "ldmatrix") + 2 * (l / 4),
                  2);
      std::memcpy(&hi,
                  shared_at(me.warp[8 * j + 2 * (l % 4) + 1][0], 16, "ldmatrix") + 2 * (l / 4), 2);
      r[j] = std::uint32_t(lo) | (std::uint32_t(hi) << 16);
    }
  }
  __syncwarp();
}

void mma_m16n8k16_bf16(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                       std::uint32_t b1) {
  const Lane me = this_lane("mma");
  std::uint32_t* mine = me.warp[me.lane];
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  mine[4] = b0;
  mine[5] = b1;
  __syncwarp();
  // A(row, k) and B(k, n) from the lanes that hold them.
  auto A = [&](int row, int k) {
    const std::uint32_t u = me.warp[(row % 8) * 4 + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)];
    return k % 2 ? bf16_hi(u) : bf16_lo(u);
  };
  auto B = [&](int k, int n) {
    const std::uint32_t u = me.warp[n * 4 + (k % 8) / 2][4 + (k >= 8)];
    return k % 2 ? bf16_hi(u) : bf16_lo(u);
  };
  const int g = me.lane / 4, t = me.lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
    float acc = c[e];
    for (int k = 0; k < 16; ++k) acc = std::fma(A(row, k), B(k, col), acc);
    c[e] = acc;
  }
  __syncwarp();
}

void cp_async16(std::uint32_t dst, const void* src, bool valid) {
  std::uint8_t* d = shared_at(dst, 16, "cp.async");
  if (valid) {
    std::memcpy(d, src, 16);
  } else {
    std::memset(d, 0, 16);
  }
}
}  // namespace rt::emu
