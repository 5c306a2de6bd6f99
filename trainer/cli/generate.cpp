// `ringtrain generate CKPT --prompt TEXT`: the options; the command itself is
// trainer/eval/generate.cpp.
#include <memory>

#include "trainer/cli/commands.h"
#include "trainer/eval/generate.h"

namespace rt::cli {

Command add_generate(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  GenerateOptions& go = *o;
  auto* generate = app.add_subcommand(
      "generate",
      "Sample text from a checkpoint (through its tokenizer: bytes or the SentencePiece model "
      "stored in it; KV cache, or segment by segment through the memory of a model.memory "
      "checkpoint); prints the prompt and its continuation");
  generate->add_option("checkpoint", go.checkpoint, "CKPT.h5 or a Hugging Face model directory")
      ->required();
  generate->add_option("--prompt", go.prompt, "text to continue")->required();
  generate->add_option("--max-new", go.max_new, "tokens to generate (default 64)");
  generate->add_option("--temperature", go.temperature, "0 = greedy (default), else sampling");
  generate->add_option("--top-k", go.top_k, "sample among the k most likely tokens (0 = all)");
  generate->add_option("--seed", go.seed, "sampling seed (default: the run's seed)");
  generate->add_flag("--bos", go.bos, "prepend the tokenizer's BOS token to the prompt");
  generate->add_flag("--stop-at-eos", go.stop_at_eos,
                     "stop when the model emits the tokenizer's EOS token");
  return {generate, [o] { return run_generate_command(*o); }, Ranks::kRank0};
}

}  // namespace rt::cli
