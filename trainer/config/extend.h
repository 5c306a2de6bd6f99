// `ringtrain extend CKPT --to LEN --method ...` (SPEC §1, §4.4): writes a
// ready, commented fine-tune config that extends a checkpoint's context with
// a RoPE scaling method, and says how to run it.
#pragma once

#include <cstdint>
#include <string>

namespace rt {

struct ExtendOptions {
  std::string checkpoint;
  int64_t to = 0;
  std::string method;
  std::string out;  // default: <run.name>-<method>-<to>.yaml in the current directory
};

// The YAML text (comments included) of the fine-tune config. Throws
// UsageError (exit 2) for a checkpoint without RoPE, a length not beyond the
// original, an unknown method; IoError (exit 3) for an unreadable checkpoint.
std::string extend_config_yaml(const ExtendOptions& o);

// Writes the config (o.out or a default name) and prints how to run it.
int run_extend_command(const ExtendOptions& o);

}  // namespace rt
