// `ringtrain extend CKPT --to LEN --method M`: the options; the command itself
// is trainer/config/extend.cpp.
#include <memory>

#include "trainer/cli/commands.h"
#include "trainer/config/extend.h"

namespace rt::cli {

Command add_extend(CLI::App& app) {
  auto o = std::make_shared<ExtendOptions>();
  ExtendOptions& xo = *o;
  auto* extend = app.add_subcommand(
      "extend", "Write a fine-tune config that extends a checkpoint's context (RoPE scaling)");
  extend->add_option("checkpoint", xo.checkpoint,
                     "CKPT.h5 trained with position: rope, or a Hugging Face Llama directory")
      ->required();
  extend->add_option("--to", xo.to, "new context length (tokens)")->required();
  extend->add_option("--method", xo.method, "linear | ntk | dynamic | yarn | llama3")
      ->required();
  extend->add_option("--out", xo.out, "config to write (default: <run>-<method>-<to>.yaml)");
  return {extend, [o] { return run_extend_command(*o); }, Ranks::kRank0};
}

}  // namespace rt::cli
