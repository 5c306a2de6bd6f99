// `ringtrain eval` (SPEC §1, §9): perplexity by length, loss by position, the
// passkey grid and associative-recall accuracy of a checkpoint (or a config's newest one), on one rank or
// sharded over `mpirun -np N ... --context-parallel C` (dp = N / C rings of C
// ranks). Rank 0 prints the tables, writes the JSON and runs
// launch/plot_eval.py to draw the PNGs beside it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rt {

struct EvalOptions {
  std::string target;  // CKPT.h5 or CONFIG.yaml
  std::vector<std::string> overrides;
  std::string data;    // token file; default: the config's val, else train data
  int64_t seq_len = 0;
  std::string seq_lens;         // "256,512"
  int64_t max_sequences = -1;   // -1 = the config's eval.max_sequences
  int64_t bucket = -1;          // loss-by-position bucket; -1 = seq_len/16, at most 512
  std::string passkey_seq_lens;  // "256,512"; default: eval.passkey of the config
  std::string passkey_depths;    // "0,0.5,1"
  int passkey_trials = -1;       // -1 = eval.passkey.trials, else 10
  std::string recall_seq_lens;   // "256,512": associative-recall accuracy at these lengths
  int recall_pairs = -1;         // -1 = the config's recall data's pairs, else 4
  int recall_trials = -1;        // -1 = 20
  int context_parallel = 1;
  std::string json;  // default: eval_json_path()
  bool allow_random_init = false;  // a config whose run has no checkpoint: score the initial model
  bool plots = true;
  bool memory_reset = false;  // memory models: ablation, every segment from the initial memory
};

int run_eval_command(const EvalOptions& o);

// The default eval JSON: RUN_DIR/eval/step_N.json, where RUN_DIR is the run
// dir of the checkpoint (the parent of its checkpoints/ folder, else its own
// folder) or, for a config target, the config's run.dir. When --data,
// --set overrides or --memory-reset change what is measured, the name gets
// the first 8 hex digits of a hash of them (step_N_1a2b3c4d.json), so that
// evaluations of one step with different data or settings do not overwrite
// each other.
std::string eval_json_path(const std::string& run_dir, int64_t step, const EvalOptions& o);

// The run dir a checkpoint file belongs to (see eval_json_path).
std::string checkpoint_run_dir(const std::string& ckpt_path);

// Runs launch/plot_eval.py on an eval JSON with /usr/bin/python3. Returns
// false (after printing how to get the plots) when python3 or matplotlib is
// missing or the script fails; the JSON stands on its own.
bool write_eval_plots(const std::string& json_path);

}  // namespace rt
