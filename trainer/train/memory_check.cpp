#include "trainer/train/memory_check.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "common/errors.h"
#include "common/log.h"
#include "model/llama.h"

namespace rt {

namespace {

int64_t read_int_file(const std::string& path) {
  std::ifstream f(path);
  std::string s;
  if (!(f >> s) || s == "max") return -1;
  try {
    return std::stoll(s);
  } catch (const std::exception&) {
    return -1;
  }
}

std::string gib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", double(bytes) / double(1LL << 30));
  return buf;
}

}  // namespace

int64_t model_state_bytes(const Config& cfg) {
  int64_t params = 0;
  for (const TensorSpec& s : llama_param_specs(cfg.model)) {
    int64_t numel = 1;  // (the arena fills TensorSpec::numel; the shape is what the specs hold)
    for (int64_t d : s.shape) numel *= d;
    params += numel;
  }
  const OptimizerConfig& o = cfg.train.optimizer;
  const int64_t copies = 2 + (o.type == "adamw" ? 2 : o.momentum > 0 ? 1 : 0);
  return params * copies * int64_t(sizeof(float));
}

int64_t available_memory_bytes() {
  int64_t avail = -1;
  std::ifstream f("/proc/meminfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("MemAvailable:", 0) == 0) {
      std::istringstream is(line.substr(13));
      long long kb = 0;
      if (is >> kb) avail = kb * 1024;
    }
  const int64_t limit = read_int_file("/sys/fs/cgroup/memory.max");
  if (limit > 0) {
    const int64_t used = std::max<int64_t>(0, read_int_file("/sys/fs/cgroup/memory.current"));
    const int64_t room = std::max<int64_t>(0, limit - used);
    avail = avail < 0 ? room : std::min(avail, room);
  }
  return avail;
}

void check_model_state_fits(const Config& cfg, int ranks_on_node) {
  const int64_t avail = available_memory_bytes();
  if (avail < 0) return;
  const int64_t need = model_state_bytes(cfg) * std::max(1, ranks_on_node);
  if (need <= avail) return;
  const ModelConfig& m = cfg.model;
  throw UsageError(
      "parameters + optimizer need " + gib(need) + ", " + gib(avail) + " available" +
      (ranks_on_node > 1 ? " (" + std::to_string(ranks_on_node) + " ranks on this node, each " +
                               gib(need / ranks_on_node) + ")"
                         : std::string()) +
      ": fp32 parameters, gradients and " + cfg.train.optimizer.type +
      " state of a model with hidden_size " + std::to_string(m.hidden_size) +
      ", intermediate_size " + std::to_string(m.intermediate_size) + ", num_hidden_layers " +
      std::to_string(m.num_hidden_layers) + ", vocab_size " + std::to_string(m.vocab_size) +
      ". Use a smaller model (model.*), fewer ranks per node, or a machine with more memory");
}

}  // namespace rt
