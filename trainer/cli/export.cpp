// `ringtrain export CKPT.h5 --out HF_DIR`: the options; the command itself is
// trainer/hf/hf_io.cpp.
#include <memory>

#include "trainer/cli/commands.h"
#include "trainer/hf/hf_io.h"

namespace rt::cli {

Command add_export(CLI::App& app) {
  auto o = std::make_shared<ExportOptions>();
  ExportOptions& eo2 = *o;
  auto* export_cmd = app.add_subcommand(
      "export",
      "Write a ringtrain checkpoint as a Hugging Face LlamaForCausalLM directory: config.json "
      "(with the checkpoint's rope_scaling), generation_config.json, safetensors (sharded with "
      "model.safetensors.index.json past --max-shard-size) and the tokenizer files the model "
      "came with (from the checkpoint, else its checkpoint.init_from chain). Refuses position "
      "alibi/none and memory models (exit 2)");
  export_cmd->add_option("checkpoint", eo2.checkpoint, "CKPT.h5")->required();
  export_cmd->add_option("--out", eo2.out, "HF_DIR to create (new or empty)")->required();
  export_cmd->add_option("--dtype", eo2.dtype,
                         "bf16 | fp32 (default: the imported model's dtype, else bf16)");
  export_cmd->add_option("--max-shard-size", eo2.max_shard_size,
                         "largest safetensors file, e.g. 5GB (default), 500MB, 2GiB");
  export_cmd->add_option("--tokenizer-from", eo2.tokenizer_from,
                         "HF_DIR or imported CKPT.h5 whose tokenizer files to copy (default: "
                         "found from the checkpoint)");
  return {export_cmd, [o] { return run_export_command(*o); }, Ranks::kRank0};
}

}  // namespace rt::cli
