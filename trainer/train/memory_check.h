// Whether a model's parameters, gradients and optimizer state fit in this
// node's memory, checked before anything is allocated, so that a model too
// large for the machine gets "parameters + optimizer need X GiB, Y available"
// rather than an allocation failure (which blames activations).
#pragma once

#include <cstdint>
#include <string>

#include "trainer/config/config.h"

namespace rt {

// Bytes one rank holds for the model: fp32 parameters and gradients, plus
// the optimizer state (AdamW: two moments; SGD: a momentum buffer when
// momentum > 0).
int64_t model_state_bytes(const Config& cfg);

// Memory this process may still use: MemAvailable of /proc/meminfo, lowered
// by a cgroup limit (memory.max - memory.current) when there is one; -1 when
// unknown.
int64_t available_memory_bytes();

// Throws UsageError (exit 2) when ranks_on_node copies of the model state do
// not fit in the available memory, naming both numbers and the keys that set
// the size. Does nothing when the available memory is unknown.
void check_model_state_fits(const Config& cfg, int ranks_on_node);

}  // namespace rt
