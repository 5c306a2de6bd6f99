// `ringtrain import HF_DIR --out CKPT.h5`: the options; the command itself is
// trainer/hf/hf_io.cpp.
#include <memory>

#include "trainer/cli/commands.h"
#include "trainer/hf/hf_io.h"

namespace rt::cli {

Command add_import(CLI::App& app) {
  auto o = std::make_shared<ImportOptions>();
  ImportOptions& io = *o;
  auto* import_cmd = app.add_subcommand(
      "import",
      "Convert a Hugging Face Llama directory (config.json + model.safetensors or shards listed "
      "in model.safetensors.index.json; BF16/F16/F32) into a ringtrain checkpoint with float32 "
      "weights. Keeps config.json, generation_config.json and the tokenizer files inside it "
      "(/files) for export. Refuses (exit 2, naming the key) what ringtrain cannot compute: "
      "biases, sliding window, MoE, other architectures");
  import_cmd->add_option("dir", io.dir, "HF_DIR: a directory with config.json")->required();
  import_cmd->add_option("--out", io.out, "CKPT.h5 to write")->required();
  return {import_cmd, [o] { return run_import_command(*o); }, Ranks::kRank0};
}

}  // namespace rt::cli
