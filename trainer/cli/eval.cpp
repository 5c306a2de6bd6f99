// `ringtrain eval TARGET [options]`: the options; the command itself is
// trainer/eval/eval_command.cpp.
#include <memory>

#include "trainer/cli/commands.h"
#include "trainer/eval/eval_command.h"

namespace rt::cli {

Command add_eval(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  EvalOptions& eo = *o;
  auto* eval = app.add_subcommand(
      "eval",
      "Perplexity by length, loss by position, the passkey grid and associative recall of a "
      "checkpoint; prints the tables (stdout) and writes JSON and PNG plots into the "
      "checkpoint's run dir (RUN_DIR/eval/step_N.json, RUN_DIR = the folder holding its "
      "checkpoints/ folder; with --data, --set or --memory-reset the name gets a hash of them: "
      "step_N_HASH.json). Shard long sequences over a ring with mpirun -np N ... "
      "--context-parallel N");
  eval->add_option("target", eo.target,
                   "CKPT.h5, a Hugging Face model directory, or CONFIG.yaml (uses the newest checkpoint in "
                   "its run dir)")
      ->required();
  eval->add_option("--set", eo.overrides, "override a config key")->take_all();
  eval->add_option("--data", eo.data,
                   "token file (.h5/.bin, or .txt encoded with the model's tokenizer); default: "
                   "val, else train data");
  eval->add_option("--seq-len", eo.seq_len, "one evaluation length");
  eval->add_option("--seq-lens", eo.seq_lens, "several lengths, e.g. 256,512,1024");
  eval->add_option("--max-sequences", eo.max_sequences,
                   "sequences per length, from the start of the data (default: the config's "
                   "eval.max_sequences, 16 unless set)");
  eval->add_option("--bucket", eo.bucket,
                   "loss-by-position bucket in tokens, at the longest length (default "
                   "seq_len/16, at most 512)");
  eval->add_option("--passkey-seq-lens", eo.passkey_seq_lens,
                   "passkey grid lengths, e.g. 256,512,1024 (default: eval.passkey of the config)");
  eval->add_option("--passkey-depths", eo.passkey_depths,
                   "needle depths in [0,1], e.g. 0,0.5,1 (default: eval.passkey of the config, "
                   "else 0,0.25,0.5,0.75,1)");
  eval->add_option("--passkey-trials", eo.passkey_trials,
                   "samples per grid cell (default: eval.passkey of the config, else 10)");
  eval->add_option("--recall-seq-lens", eo.recall_seq_lens,
                   "associative-recall accuracy at these lengths, e.g. 256,512 (overall and by "
                   "the asked pair)");
  eval->add_option("--recall-pairs", eo.recall_pairs,
                   "key-value pairs per recall sample, 1-26 (default: the config's recall data, "
                   "else 4)");
  eval->add_option("--recall-trials", eo.recall_trials, "recall samples per length (default 20)");
  eval->add_option("--context-parallel", eo.context_parallel,
                   "ring size: ranks sharing one sequence (world / it = data parallel)");
  eval->add_option("--json", eo.json,
                   "output JSON (default RUN_DIR/eval/step_N.json, or step_N_HASH.json with "
                   "--data/--set/--memory-reset); the plots go beside it");
  eval->add_flag("--allow-random-init", eo.allow_random_init,
                 "CONFIG.yaml whose run has no checkpoint yet: evaluate the randomly initialised "
                 "model (without this flag that is exit 3)");
  eval->add_flag("!--no-plots", eo.plots, "skip the PNG plots (launch/plot_eval.py)");
  eval->add_flag("--memory-reset", eo.memory_reset,
                 "memory models: nothing crosses a segment boundary (rmt: every segment "
                 "starts from the learned initial memory; knn, compressive: the store stays "
                 "empty): the same model without memory");
  return {eval, [o] { return run_eval_command(*o); }};
}

}  // namespace rt::cli
