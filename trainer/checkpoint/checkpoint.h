// HDF5 checkpoints (SPEC §8): one file per checkpoint, written atomically
// (temporary name, flush, fsync, rename, fsync of the directory), in a layout
// that h5py reads and writes:
//
//   /                 attrs format="ringtrain", format_version=1 (int),
//                           step, tokens_seen (int64), config (string, YAML)
//   /model/<name>     float32, full shape, chunked + Fletcher32
//   /optimizer        attrs step (int64), type ("adamw" | "sgd")
//     exp_avg/<name>, exp_avg_sq/<name>   (AdamW only)
//   /trainer          attr state (string, JSON from the trainer)
//   /tokenizer/<file> uint8, the bytes of the model's tokenizer files (e.g.
//                     tokenizer.model); root attr tokenizer = its id
//                     ("bytes" or "sentencepiece:sha256=<hex>", data/tokenizer.h)
//   /                 attrs integrity, integrity_digest: the integrity record
//                           (trainer/checkpoint/integrity.h), fixed-length strings
//
// Written in the HDF5 1.10 format (checksummed metadata). Every load
// (read_checkpoint_meta, load_model_weights, load_optimizer_state,
// inspect_checkpoint) checks: the integrity record when there is one
// (attributes, dataset names, shapes and digests of the decoded contents);
// always that every dataset's storage is allocated, the HDF5 checksums, and
// that the step in the file name (step_N.h5), the root step, the optimizer's
// step (<= root step) and the /trainer state's step agree. A failure is an
// IoError "integrity check failed: ...". String attributes of files without a
// record (h5py, older ringtrain) are read in a child process, so that a
// corrupt variable-length string cannot crash or hang the caller.
//
// Parameter names are SPEC §3's. Files are world-size independent: every
// tensor is stored whole. Errors: a missing, truncated or corrupt file, or a
// failed write, is an IoError (exit 3) naming the file and dataset; a file
// that does not fit the model's config is a UsageError (exit 2) naming both
// shapes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/tokenizer.h"
#include "model/llama.h"
#include "trainer/train/optimizer.h"

namespace rt {

constexpr int kCheckpointFormatVersion = 1;

struct CheckpointMeta {
  int64_t step = 0;
  int64_t tokens_seen = 0;
  std::string config_yaml;          // root attribute `config`
  int format_version = kCheckpointFormatVersion;  // as read; writing always uses 1
  bool has_optimizer = false;       // as read: the file has /optimizer
  std::string optimizer_type;       // as read: /optimizer attribute `type` ("" when absent)
  std::string trainer_state_json;   // /trainer attribute `state` ("" when absent)
  std::string tokenizer;            // root attribute `tokenizer` ("" when absent: bytes)
  // Written as /tokenizer/<name> (uint8) when non-empty; not filled by
  // read_checkpoint_meta (see read_checkpoint_tokenizer_files).
  std::vector<std::pair<std::string, std::string>> tokenizer_files;
};

// Writes `path` atomically via `path + ".tmp"`; creates the parent directory
// if needed. Test hook: with RINGTRAIN_TEST_DIE_BEFORE_RENAME=N in the
// environment, the N-th save of the process calls _exit(137) after the
// temporary file is written and fsynced, before the rename (a kill -9 at the
// worst moment). opt may be null (weights-only file). meta.format_version and
// meta.has_optimizer are ignored. On failure the temporary file is removed,
// an existing file at `path` is untouched, and IoError names the path and the
// reason (e.g. "No space left on device").
void save_checkpoint(const std::string& path, LlamaModel& model, Optimizer* opt,
                     const CheckpointMeta& meta);

// Root attributes and trainer state. Integer attributes of any width and
// variable- or fixed-length strings are accepted (h5py writes either).
// `step` and `tokens_seen` default to 0 when absent (hand-made weights-only
// files); `format`, `format_version` and `config` are required.
CheckpointMeta read_checkpoint_meta(const std::string& path);

// /tokenizer/<name> -> bytes, sorted by name; empty when there is no /tokenizer.
std::vector<std::pair<std::string, std::string>> read_checkpoint_tokenizer_files(
    const std::string& path);
// The model's tokenizer (tokenizer_from_files of the above and the recorded
// id): bytes for checkpoints that record none.
std::unique_ptr<Tokenizer> read_checkpoint_tokenizer(const std::string& path);

// /model/<name> -> model.params() for every parameter spec. Every shape is
// checked before any data is read: a missing dataset, another shape or an
// extra dataset is a UsageError listing all of them. float32 and float64
// datasets load (converted to float). A checksum or read failure is an
// IoError naming the dataset. Parameters named in `optional` may be absent
// from the file (they keep their current values) or present in the file
// without the model having them (ignored): init_from into a model that adds
// or drops memory embeddings.
void load_model_weights(const std::string& path, LlamaModel& model,
                        const std::vector<std::string>& optional = {});

// AdamW moments (when opt has them) and the step count from /optimizer.
// model is the one opt updates (its backend owns the moment buffers).
// IoError when the file has no optimizer state (or no moments for AdamW);
// UsageError when a moment's shape does not match.
void load_optimizer_state(const std::string& path, LlamaModel& model, Optimizer& opt);

// What `ringtrain inspect` shows. Reading it verifies every dataset's
// checksum, so a corrupt file is an IoError naming the dataset.
struct CheckpointTensorInfo {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel = 0;
};
struct CheckpointContents {
  CheckpointMeta meta;
  std::vector<CheckpointTensorInfo> model;  // /model, sorted by name
  std::string optimizer_type;               // "" when there is no /optimizer
  int64_t optimizer_step = 0;
  int64_t optimizer_tensors = 0;            // datasets under /optimizer
  int64_t file_bytes = 0;
  std::string integrity;  // "ok (...)" or "no integrity record (...)"
};
CheckpointContents inspect_checkpoint(const std::string& path);

// ---- streaming access (ringtrain import / export, trainer/hf/) --------------
// Besides /model, a checkpoint may carry files the model came with:
//   /files/<name>   uint8, the file's bytes (import keeps the Hugging Face
//                   config.json, generation_config.json and tokenizer files)

// A weights-only checkpoint written one tensor at a time, so that peak memory
// is one tensor, not the model: the layout and atomic write of save_checkpoint.
class WeightsCheckpointWriter {
 public:
  WeightsCheckpointWriter(const std::string& path, const CheckpointMeta& meta);
  ~WeightsCheckpointWriter();  // without finish(): the temporary file is removed
  void add_tensor(const std::string& name, const std::vector<int64_t>& shape, const float* data);
  void add_file(const std::string& name, const std::string& bytes);
  void finish();  // flush, fsync, rename (IoError on failure)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Reads a checkpoint's /model tensors one at a time (checksums verified) and
// its /files and /tokenizer (tokenizer files). IoError for a missing, corrupt or non-ringtrain file.
class CheckpointTensorReader {
 public:
  explicit CheckpointTensorReader(const std::string& path);
  ~CheckpointTensorReader();
  std::vector<CheckpointTensorInfo> model_tensors() const;  // sorted by name
  void read(const std::string& name, std::vector<float>& out) const;  // resized to numel
  std::vector<std::pair<std::string, std::string>> files() const;    // (name, bytes); may be empty

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- run-dir helpers -------------------------------------------------------
// RUN_DIR/checkpoints/step_00001000.h5
std::string checkpoint_path(const std::string& run_dir, int64_t step);
// Complete checkpoints (step_<digits>.h5; *.tmp ignored), oldest first.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& run_dir);
// Deletes all but the keep_last newest checkpoints (keep_last <= 0 keeps all)
// and stale *.h5.tmp files. Call only after a successful save; never deletes
// the newest. Failures to delete are warnings.
void prune_checkpoints(const std::string& run_dir, int keep_last);

}  // namespace rt
