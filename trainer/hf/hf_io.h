// Hugging Face Llama directories (SPEC §13): `ringtrain import`, `ringtrain
// export`, and an HF directory wherever a checkpoint is accepted
// (checkpoint.init_from, eval, generate, inspect, extend).
//
// An HF directory is one holding config.json, with the weights in
// model.safetensors or in the shards model.safetensors.index.json names.
// Parameter names are already HF's (SPEC §3) and RoPE is HF's rotate_half
// (§4.1), so tensors map by name with no permutation. Every shard is
// memory-mapped once and each tensor read once, in file order.
//
// An imported checkpoint keeps the files the model came with (config.json,
// generation_config.json and the tokenizer files) in /files (checkpoint.h);
// export writes them back. A run started from it (checkpoint.init_from)
// writes checkpoints without /files: export follows checkpoint.init_from
// back to the imported checkpoint or HF directory to find them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/llama.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/hf/hf_config.h"

namespace rt {

// A directory with a config.json.
bool is_hf_dir(const std::string& path);

// The files besides the weights that import keeps and export writes.
const std::vector<std::string>& hf_side_files();
// Those of hf_side_files() that belong to the tokenizer (all but config.json
// and generation_config.json): a checkpoint keeps them in /tokenizer, the
// others in /files.
bool is_tokenizer_file(const std::string& name);
// The tokenizer files of an HF directory, (name, bytes), when it has a
// tokenizer.model that ringtrain can load; else none (text is read as bytes).
std::vector<std::pair<std::string, std::string>> hf_tokenizer_files(const std::string& dir);

// The ringtrain view of an HF directory: a full config (model from
// config.json; train defaults for a fine-tune: seq_len = the model's
// max_position_embeddings, an lr estimated from its width), step 0. Reads
// config.json only.
CheckpointMeta hf_dir_checkpoint_meta(const std::string& dir);

// Loads the directory's weights into model (shapes checked first, see
// load_model_weights). `optional` as there.
void load_hf_weights(const std::string& dir, LlamaModel& model,
                     const std::vector<std::string>& optional = {});

// What `ringtrain inspect DIR` shows; reads every tensor.
CheckpointContents inspect_hf_dir(const std::string& dir);

struct ImportOptions {
  std::string dir;
  std::string out;
};
int run_import_command(const ImportOptions& o);

struct ExportOptions {
  std::string checkpoint;
  std::string out;
  std::string dtype;                   // bf16 | fp32; "" = the imported model's, else bf16
  std::string max_shard_size = "5GB";  // HF's units: KB/MB/GB = 1e3.., KiB/MiB/GiB = 2^10..
  std::string tokenizer_from;          // HF dir or checkpoint whose files to copy
};
int run_export_command(const ExportOptions& o);

// "5GB" -> 5e9, "500MiB" -> 500 * 2^20, "1000" -> 1000. UsageError otherwise.
uint64_t parse_byte_size(const std::string& s, const std::string& option);

}  // namespace rt
