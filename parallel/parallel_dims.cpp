#include "parallel/parallel_dims.h"

#include <string>

#include "common/errors.h"

namespace rt {

RingLayout parse_ring_layout(const std::string& s) {
  if (s == "zigzag") return RingLayout::kZigzag;
  if (s == "contiguous") return RingLayout::kContiguous;
  throw UsageError("parallel.ring_layout: must be zigzag or contiguous, got '" + s + "'");
}

const char* ring_layout_name(RingLayout layout) {
  return layout == RingLayout::kZigzag ? "zigzag" : "contiguous";
}

ParallelDims ParallelDims::build(int world, int data_parallel, int context_parallel) {
  if (world < 1) throw UsageError("world size must be >= 1, got " + std::to_string(world));
  if (context_parallel < 1)
    throw UsageError("parallel.context_parallel must be >= 1, got " +
                     std::to_string(context_parallel));
  ParallelDims d;
  d.world = world;
  d.cp = context_parallel;
  if (data_parallel <= 0) {  // auto
    if (world % context_parallel != 0)
      throw UsageError("context_parallel(" + std::to_string(context_parallel) +
                       ") does not divide world size(" + std::to_string(world) +
                       "): launch with a multiple of " + std::to_string(context_parallel) +
                       " ranks or change parallel.context_parallel");
    d.dp = world / context_parallel;
  } else {
    d.dp = data_parallel;
    if (d.dp * d.cp != world)
      throw UsageError("data_parallel(" + std::to_string(d.dp) + ") * context_parallel(" +
                       std::to_string(d.cp) + ") != world size(" + std::to_string(world) +
                       "): launch with mpirun -np " + std::to_string(d.dp * d.cp) +
                       " or set parallel.data_parallel: auto");
  }
  return d;
}

std::string ParallelDims::describe() const {
  return "world " + std::to_string(world) + " = data_parallel " + std::to_string(dp) +
         " x context_parallel " + std::to_string(cp);
}

}  // namespace rt
