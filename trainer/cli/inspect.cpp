// `ringtrain inspect CKPT`: what a checkpoint holds.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "common/errors.h"
#include "common/log.h"
#include "common/strings.h"
#include "data/tokenizer.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/cli/commands.h"
#include "trainer/hf/hf_io.h"

namespace rt::cli {
namespace {

// Prints what a checkpoint holds; reading it verifies every checksum.
int cmd_inspect(const std::string& path) {
  CheckpointContents c = inspect_checkpoint(path);
  std::printf("checkpoint: %s\n", path.c_str());
  std::printf("file size: %lld bytes (%s)\n", (long long)c.file_bytes,
              format_bytes(double(c.file_bytes)).c_str());
  std::printf("format_version: %d\n", c.meta.format_version);
  std::printf("step: %lld\n", (long long)c.meta.step);
  std::printf("tokens seen: %lld\n", (long long)c.meta.tokens_seen);
  if (c.optimizer_type.empty())
    std::printf("optimizer state: none (weights only: usable for eval, generate, extend and "
                "init_from, not for resuming)\n");
  else
    std::printf("optimizer state: %s, step %lld, %lld moment tensors\n",
                c.optimizer_type.c_str(), (long long)c.optimizer_step,
                (long long)c.optimizer_tensors);
  size_t width = 4;
  for (const auto& t : c.model) width = std::max(width, t.name.size());
  std::printf("\nparameters:\n%-*s  %-16s  %12s\n", int(width), "name", "shape", "numel");
  int64_t total = 0;
  for (const auto& t : c.model) {
    std::printf("%-*s  %-16s  %12lld\n", int(width), t.name.c_str(), shape_str(t.shape).c_str(),
                (long long)t.numel);
    total += t.numel;
  }
  std::printf("total parameters: %lld (%lld tensors, %s as float32)\n", (long long)total,
              (long long)c.model.size(), format_bytes(double(total) * 4).c_str());
  std::printf(is_hf_dir(path) ? "data: every tensor read (safetensors has no checksums)\n"
                              : "checksums: ok\n");
  std::string tokenizer;
  try {
    tokenizer = read_checkpoint_tokenizer(path)->describe();
  } catch (const UsageError& e) {  // e.g. only a tokenizer.json: shown, not fatal here
    tokenizer = std::string("not supported: ") + e.what();
  }
  std::printf("tokenizer: %s\n", tokenizer.c_str());
  std::printf("integrity: %s\n", c.integrity.c_str());
  std::printf("\nconfig:\n%s", c.meta.config_yaml.c_str());
  if (!c.meta.config_yaml.empty() && c.meta.config_yaml.back() != '\n') std::printf("\n");
  if (!c.meta.trainer_state_json.empty())
    std::printf("\ntrainer state: %s\n", c.meta.trainer_state_json.c_str());
  return kExitOk;
}

}  // namespace

Command add_inspect(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  auto* inspect = app.add_subcommand(
      "inspect",
      "Print a checkpoint's step, tokens seen, parameter table, optimizer state, file size and "
      "config; verifies every checksum (exit 3 naming the dataset if one fails)");
  inspect->add_option("checkpoint", *path, "CKPT.h5 or a Hugging Face model directory")
      ->required();
  return {inspect, [path] { return cmd_inspect(*path); }, Ranks::kRank0};
}

}  // namespace rt::cli
