#include "trainer/eval/eval_command.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include "common/errors.h"
#include "common/strings.h"
#include "common/log.h"
#include "data/dataset.h"
#include "parallel/comm.h"
#include "parallel/parallel_dims.h"
#include "parallel/process_groups.h"
#include "parallel/ring_attention.h"
#include "trainer/checkpoint/checkpoint.h"
#include "common/command_name.h"
#include "trainer/config/config.h"
#include "trainer/eval/evaluate.h"
#include "trainer/hf/hf_io.h"
#include "trainer/train/trainer.h"

namespace rt {

namespace fs = std::filesystem;

namespace {

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

std::vector<int64_t> parse_lengths(const std::string& s, const std::string& opt) {
  std::vector<int64_t> out;
  for (const std::string& item : split_commas(s)) {
    try {
      size_t used = 0;
      const long long v = std::stoll(item, &used);
      if (used != item.size() || v < 2) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      throw UsageError(opt + ": '" + item +
                       "' is not a sequence length (integers >= 2, comma-separated, e.g. "
                       "256,512,1024)");
    }
  }
  if (out.empty()) throw UsageError(opt + " needs at least one length, e.g. 256,512");
  return out;
}

std::vector<double> parse_depths(const std::string& s) {
  std::vector<double> out;
  for (const std::string& item : split_commas(s)) {
    try {
      size_t used = 0;
      const double v = std::stod(item, &used);
      if (used != item.size() || !(v >= 0.0 && v <= 1.0)) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      throw UsageError("--passkey-depths: '" + item +
                       "' is not a depth (numbers in [0, 1], comma-separated, e.g. 0,0.5,1)");
    }
  }
  if (out.empty()) throw UsageError("--passkey-depths needs at least one depth, e.g. 0,0.5,1");
  return out;
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// launch/plot_eval.py: RINGTRAIN_PLOT_SCRIPT, else next to the source tree
// the binary was built in (build dirs live in the repository root).
std::string find_plot_script() {
  if (const char* env = std::getenv("RINGTRAIN_PLOT_SCRIPT")) return env;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec)
    for (fs::path dir = exe.parent_path(); !dir.empty() && dir != dir.root_path();
         dir = dir.parent_path())
      if (fs::exists(dir / "launch" / "plot_eval.py"))
        return (dir / "launch" / "plot_eval.py").string();
  return "launch/plot_eval.py";
}

}  // namespace

std::string checkpoint_run_dir(const std::string& ckpt_path) {
  const fs::path dir = fs::path(ckpt_path).parent_path();
  if (dir.filename() == "checkpoints") {
    const fs::path run = dir.parent_path();
    return run.empty() ? "." : run.string();
  }
  return dir.empty() ? "." : dir.string();
}

std::string eval_json_path(const std::string& run_dir, int64_t step, const EvalOptions& o) {
  std::string key;
  if (!o.data.empty()) {
    std::error_code ec;
    const fs::path abs = fs::weakly_canonical(fs::absolute(o.data), ec);
    key += "data=" + (ec ? o.data : abs.string()) + "\n";
  }
  for (const std::string& s : o.overrides) key += "set=" + s + "\n";
  if (o.memory_reset) key += "memory_reset\n";
  char name[64];
  if (key.empty())
    std::snprintf(name, sizeof name, "step_%lld.json", (long long)step);
  else
    std::snprintf(name, sizeof name, "step_%lld_%08llx.json", (long long)step,
                  (unsigned long long)(fnv1a64(key) >> 32));
  return run_dir + "/eval/" + name;
}

bool write_eval_plots(const std::string& json_path) {
  const std::string script = find_plot_script();
  const std::string python = "/usr/bin/python3";
  const std::string command = python + " " + shell_quote(script) + " " + shell_quote(json_path);
  auto explain = [&](const std::string& why) {
    std::cout.flush();
    std::cerr << "plots not written: " << why
              << ". The JSON is complete; to get the plots, install matplotlib "
                 "(apt-get install python3-matplotlib) and run:\n  "
              << command << "\n";
    return false;
  };
  if (access(python.c_str(), X_OK) != 0) return explain(python + " not found");
  if (!fs::exists(script)) return explain(script + " not found");
  if (std::system((python + " -c 'import matplotlib' >/dev/null 2>&1").c_str()) != 0)
    return explain("matplotlib is not installed for " + python);
  std::cout.flush();
  if (std::system(command.c_str()) != 0) return explain("the plot script failed");
  return true;
}

namespace {

// What one `ringtrain eval` measures, and where: the model's config and
// checkpoint, the evaluation layout and process groups, the tokenizer, and
// the lengths of each task, every option checked (plan_eval).
struct EvalPlan {
  Config cfg;
  std::string ckpt;     // empty: no checkpoint (a config target with --allow-random-init)
  std::string run_dir;  // where the default JSON goes
  int64_t max_sequences = 0;
  ParallelDims dims;
  RingLayout layout = RingLayout::kZigzag;
  ProcessGroups groups;
  std::shared_ptr<const Tokenizer> tok;
  std::vector<int64_t> lens;  // perplexity lengths
  int64_t longest = 0;
  std::vector<int64_t> pk_lens;  // the passkey grid (empty: none)
  std::vector<double> pk_depths;
  int pk_trials = 0;
  std::vector<int64_t> rc_lens;  // associative recall (empty: none)
  int rc_pairs = 0;
  int rc_trials = 0;
};

// The model and the data an evaluation runs on (setup_eval). Members are
// destroyed in reverse order: the data, the ring, then the model before the
// backend it allocated through.
struct EvalSession {
  std::unique_ptr<Backend> be;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<RingAttention> ring;
  std::unique_ptr<SequenceSource> data;
  int64_t step = 0;  // of the checkpoint; 0 for the initial model
};

struct EvalResults {
  std::vector<PerplexityResult> perplexity;
  LossByPosition by_position;
  PasskeyResult passkey;
  RecallResult recall;
};

// Reads the target's config and checks every option and length against it
// and the world, before any model is built: a bad option is reported first.
EvalPlan plan_eval(const EvalOptions& o) {
  Comm& world = *parallel_runtime().world;
  EvalPlan p;
  Config& cfg = p.cfg;
  // The model: a checkpoint file, or a config whose run dir may hold checkpoints.
  if (ends_with(o.target, ".h5") || is_hf_dir(o.target)) {  // a checkpoint or an HF directory
    if (is_hf_dir(o.target) && o.data.empty())
      throw UsageError("eval " + o.target + ": a Hugging Face directory has no data of its own; "
                       "pass --data FILE (tokens from the model's tokenizer)");
    p.ckpt = o.target;
    CheckpointMeta meta = read_checkpoint_meta(p.ckpt);
    cfg = parse_config(meta.config_yaml, p.ckpt + ":config", o.overrides, ConfigUse::kNoTraining);
    p.run_dir = checkpoint_run_dir(p.ckpt);
  } else {
    cfg = load_config(o.target, o.overrides, ConfigUse::kNoTraining);
    auto found = list_checkpoints(cfg.run.dir);
    if (!found.empty()) p.ckpt = found.back().second;
    p.run_dir = cfg.run.dir;
  }
  if (!o.data.empty() || !has_data(cfg.data.val ? *cfg.data.val : cfg.data.train)) {
    if (o.data.empty())
      throw UsageError("eval: " + o.target + " names no evaluation data (its config has neither "
                       "data.val nor data.train): give one with --data FILE (.h5 | .bin | .txt)");
  }
  // The training layout does not matter here; the evaluation one is
  // --context-parallel (ring size) x the rest of the world (data parallel).
  cfg.parallel.data_parallel = 0;
  cfg.parallel.context_parallel = 1;
  validate_layout(cfg, 1);
  // Options left unset are -1; an explicit value must be valid (0 never means "default").
  if (o.max_sequences != -1 && o.max_sequences < 1)
    throw UsageError("--max-sequences must be >= 1, got " + std::to_string(o.max_sequences));
  p.max_sequences = o.max_sequences != -1 ? o.max_sequences : cfg.eval.max_sequences;
  if (o.bucket != -1 && o.bucket < 1)
    throw UsageError("--bucket must be >= 1 (tokens per loss-by-position bucket; leave it out for "
                     "seq_len/16, at most 512), got " + std::to_string(o.bucket));
  if (o.passkey_trials != -1 && o.passkey_trials < 1)
    throw UsageError("--passkey-trials must be >= 1 (leave it out for eval.passkey.trials, else "
                     "10), got " + std::to_string(o.passkey_trials));
  if (o.recall_trials != -1 && o.recall_trials < 1)
    throw UsageError("--recall-trials must be >= 1 (leave it out for 20), got " +
                     std::to_string(o.recall_trials));
  if (o.recall_pairs != -1 && o.recall_pairs < 1)
    throw UsageError("--recall-pairs must be in [1, 26], got " + std::to_string(o.recall_pairs));
  if (o.context_parallel < 1)
    throw UsageError("--context-parallel must be >= 1, got " +
                     std::to_string(o.context_parallel));
  if (world.size() % o.context_parallel != 0)
    throw UsageError("eval --context-parallel " + std::to_string(o.context_parallel) +
                     " does not divide the world size " + std::to_string(world.size()) +
                     ": launch a multiple of " + std::to_string(o.context_parallel) +
                     " ranks, e.g. launch/local.sh -np " + std::to_string(o.context_parallel) +
                     " " + ringtrain_command() + " eval ... --context-parallel " +
                     std::to_string(o.context_parallel));
  p.dims = ParallelDims::build(world.size(), 0, o.context_parallel);
  p.layout = parse_ring_layout(cfg.parallel.ring_layout);
  if (o.memory_reset && !cfg.model.memory)
    throw UsageError("--memory-reset applies to memory models (model.memory); this checkpoint "
                     "has none");
  p.groups = make_process_groups(world, p.dims, p.layout);
  // The model's tokenizer: the checkpoint's, else the config's.
  p.tok = p.ckpt.empty() ? config_tokenizer(cfg)
                         : std::shared_ptr<const Tokenizer>(read_checkpoint_tokenizer(p.ckpt));

  std::vector<int64_t>& lens = p.lens;
  if (!o.seq_lens.empty()) lens = parse_lengths(o.seq_lens, "--seq-lens");
  if (o.seq_len > 0) lens.push_back(o.seq_len);
  if (lens.empty()) lens = cfg.eval.seq_lens.empty() ? std::vector<int64_t>{cfg.train.seq_len}
                                                     : cfg.eval.seq_lens;
  p.longest = *std::max_element(lens.begin(), lens.end());
  if (o.bucket != -1 && o.bucket > p.longest)
    throw UsageError("--bucket " + std::to_string(o.bucket) + " is longer than the longest "
                     "evaluation length " + std::to_string(p.longest) +
                     ": choose a bucket <= " + std::to_string(p.longest));

  // The passkey grid: the options, else the config's eval.passkey.
  p.pk_depths = PasskeyEvalConfig{}.depths;
  p.pk_trials = PasskeyEvalConfig{}.trials;
  if (cfg.eval.passkey) {
    p.pk_lens = cfg.eval.passkey->seq_lens;
    p.pk_depths = cfg.eval.passkey->depths;
    p.pk_trials = cfg.eval.passkey->trials;
  }
  if (!o.passkey_seq_lens.empty())
    p.pk_lens = parse_lengths(o.passkey_seq_lens, "--passkey-seq-lens");
  if (!o.passkey_depths.empty()) p.pk_depths = parse_depths(o.passkey_depths);
  if (o.passkey_trials != -1) p.pk_trials = o.passkey_trials;
  if (p.pk_lens.empty() && (!o.passkey_depths.empty() || o.passkey_trials != -1))
    throw UsageError("--passkey-depths and --passkey-trials need --passkey-seq-lens (the "
                     "lengths of the passkey grid), e.g. --passkey-seq-lens 256,512");
  if (!p.pk_lens.empty())
    check_passkey_grid(p.pk_lens, p.pk_depths, p.pk_trials, cfg.model.vocab_size, &p.groups,
                       p.tok.get());

  // Associative recall: pairs default to the recall task the model trained on.
  if (!o.recall_seq_lens.empty())
    p.rc_lens = parse_lengths(o.recall_seq_lens, "--recall-seq-lens");
  const DataSourceConfig& trained_on = cfg.data.train;
  p.rc_pairs =
      o.recall_pairs != -1 ? o.recall_pairs
                          : int(trained_on.synthetic == "recall" ? trained_on.pairs
                                                                 : DataSourceConfig{}.pairs);
  p.rc_trials = o.recall_trials != -1 ? o.recall_trials : 20;
  if (p.rc_lens.empty() && (o.recall_pairs != -1 || o.recall_trials != -1))
    throw UsageError("--recall-pairs and --recall-trials need --recall-seq-lens (the lengths "
                     "to test recall at), e.g. --recall-seq-lens 256,512");
  if (!p.rc_lens.empty())
    check_recall_grid(p.rc_lens, p.rc_pairs, p.rc_trials, cfg.model.vocab_size, &p.groups,
                      p.tok.get());
  const int64_t ring_multiple = p.dims.seq_len_divisor(p.layout);
  // Name the option the user gave (the lengths may also come from the config).
  const std::string lens_from = !o.seq_lens.empty() ? "--seq-lens"
                                : o.seq_len > 0      ? "--seq-len"
                                : cfg.eval.seq_lens.empty() ? "train.seq_len"
                                                            : "eval.seq_lens";
  for (int64_t T : lens)
    if (T % ring_multiple != 0)
      throw UsageError(lens_from + ": length " + std::to_string(T) + " is not a multiple of " +
                       std::to_string(ring_multiple) +
                       " (--context-parallel " + std::to_string(p.dims.cp) + ", ring layout " +
                       cfg.parallel.ring_layout + "): choose lengths divisible by it");
  return p;
}

// Builds the model (with a ring over the cp group when cp > 1), opens the
// data, checks every length against it, and loads the checkpoint's weights
// (or initialises them with --allow-random-init).
EvalSession setup_eval(const EvalOptions& o, EvalPlan& p) {
  const Config& cfg = p.cfg;
  EvalSession s;
  const DeviceChoice dev = resolve_inference_device(cfg, parallel_runtime().local_rank);
  s.be = make_device_backend(dev);
  setup_device_groups(p.groups, *s.be);  // the ring's transport (MPI, NCCL or staged)
  s.model = std::make_unique<LlamaModel>(cfg.model, *s.be, dev.precision);
  if (p.dims.cp > 1) {
    s.ring = std::make_unique<RingAttention>(p.groups.device_cp(), p.layout);
    s.model->set_sequence_attention(s.ring.get());
  }
  if (!o.data.empty())
    s.data = make_token_source(o.data, p.tok);
  else
    s.data = make_source(cfg.data.val ? *cfg.data.val : cfg.data.train, cfg.run.seed, p.tok);
  if (s.data->vocab_size() > cfg.model.vocab_size)
    throw UsageError("evaluation data " + s.data->describe() + " has vocab_size " +
                     std::to_string(s.data->vocab_size()) + " > model.vocab_size " +
                     std::to_string(cfg.model.vocab_size));
  // Every length is checked before any is evaluated, so that a bad last one
  // does not cost the results of the others.
  for (int64_t T : p.lens) {
    if (s.data->num_sequences(T) < 1)
      throw UsageError("evaluation data " + s.data->describe() + " holds no sequence of length " +
                       std::to_string(T) + ": use shorter --seq-lens or more data");
    if (cfg.model.memory && T % cfg.model.memory->segment_length != 0)
      throw UsageError("evaluation length " + std::to_string(T) +
                       " is not a multiple of model.memory.segment_length (" +
                       std::to_string(cfg.model.memory->segment_length) +
                       "): choose lengths made of whole segments");
  }

  // (after every usage check: a bad option is reported first)
  if (p.ckpt.empty() && !o.allow_random_init)
    throw IoError("no checkpoint in " + cfg.run.dir + "/checkpoints to evaluate: train first "
                  "(" + ringtrain_command() + " train " + o.target + "), pass a checkpoint .h5, or add "
                  "--allow-random-init to score the randomly initialised model");
  if (!p.ckpt.empty()) {
    load_model_weights(p.ckpt, *s.model);
    s.step = read_checkpoint_meta(p.ckpt).step;
    log_info("eval: checkpoint %s (step %lld), %s", p.ckpt.c_str(), (long long)s.step,
             p.dims.describe().c_str());
  } else {
    s.model->init_weights(cfg.run.seed);
    log_warn("no checkpoint in %s/checkpoints: evaluating the randomly initialised model "
             "(--allow-random-init)",
             cfg.run.dir.c_str());
  }
  return s;
}

// Every rank: perplexity at each length (loss by position at the longest),
// then the passkey grid and associative recall if asked for.
EvalResults run_eval(const EvalOptions& o, EvalPlan& p, EvalSession& s) {
  EvalResults r;
  r.by_position.bucket = std::max<int64_t>(o.bucket, 0);
  for (int64_t T : p.lens)
    r.perplexity.push_back(evaluate_perplexity(*s.model, *s.data, T, p.max_sequences, &p.groups,
                                               T == p.longest && r.by_position.seq_len == 0
                                                   ? &r.by_position
                                                   : nullptr,
                                               o.memory_reset));
  if (!p.pk_lens.empty())
    r.passkey = evaluate_passkey(*s.model, p.pk_lens, p.pk_depths, p.pk_trials,
                                 passkey_eval_seed(p.cfg.run.seed), &p.groups, o.memory_reset,
                                 p.tok.get());
  if (!p.rc_lens.empty())
    r.recall = evaluate_recall(*s.model, p.rc_lens, p.rc_pairs, p.rc_trials,
                               recall_eval_seed(p.cfg.run.seed), &p.groups, o.memory_reset,
                               p.tok.get());
  return r;
}

// Rank 0: prints the tables, writes the JSON (and the plots beside it).
void report_eval(const EvalOptions& o, const EvalPlan& p, const EvalSession& s,
                 const EvalResults& r) {
  const Config& cfg = p.cfg;
  std::cout << "perplexity on " << s.data->describe() << ":\n" << perplexity_table(r.perplexity);
  std::cout << "\nloss by position (seq_len " << r.by_position.seq_len << ", the same sequences, "
            << "buckets of " << r.by_position.bucket << " positions):\n"
            << loss_by_position_table(r.by_position);
  if (o.memory_reset)
    std::cout << "\n(memory reset: nothing crossed a segment boundary: "
              << (cfg.model.memory->type == "rmt"
                      ? "every segment started from the learned initial memory"
                      : "the " + cfg.model.memory->type + " store stayed empty")
              << ")\n";
  if (!p.pk_lens.empty())
    std::cout << "\npasskey accuracy (" << p.pk_trials << " trials per cell, greedy digits):\n"
              << passkey_table(r.passkey);
  if (!p.rc_lens.empty())
    std::cout << "\nassociative recall accuracy (" << p.rc_trials << " trials per length, "
              << p.rc_pairs << " pairs, greedy 3 digits; then by the asked pair, first to last):\n"
              << recall_table(r.recall);

  nlohmann::json j = {{"checkpoint", p.ckpt.empty() ? nlohmann::json(nullptr)
                                                    : nlohmann::json(p.ckpt)},
                      {"step", s.step},
                      {"perplexity", perplexity_to_json(r.perplexity)},
                      {"loss_by_position", loss_by_position_to_json(r.by_position)},
                      {"passkey", p.pk_lens.empty() ? nlohmann::json(nullptr)
                                                    : passkey_to_json(r.passkey)}};
  if (!p.rc_lens.empty()) j["recall"] = recall_to_json(r.recall);
  if (o.memory_reset) j["memory_reset"] = true;
  // What was measured: the data and the --set overrides (zero-shot comparisons).
  j["data"] = s.data->describe();
  j["data_file"] = o.data.empty() ? nlohmann::json(nullptr) : nlohmann::json(o.data);
  j["overrides"] = o.overrides;
  j["max_sequences"] = p.max_sequences;
  std::string out = o.json;
  if (out.empty()) out = eval_json_path(p.run_dir, s.step, o);
  {
    auto parent = fs::path(out).parent_path();
    if (!parent.empty()) make_dirs(parent.string());
  }
  std::ofstream f(out);
  f << j.dump(2) << "\n";
  f.close();
  if (!f) throw IoError("cannot write " + out + " (choose a writable --json path)");
  std::cout << "wrote " << out << "\n";
  if (o.plots) write_eval_plots(out);
}

}  // namespace

int run_eval_command(const EvalOptions& o) {
  EvalPlan plan = plan_eval(o);
  EvalSession session = setup_eval(o, plan);
  const EvalResults results = run_eval(o, plan, session);
  if (parallel_runtime().world->rank() == 0)  // rank 0 prints and writes
    report_eval(o, plan, session, results);
  return kExitOk;
}

}  // namespace rt
