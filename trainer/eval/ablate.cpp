// `ringtrain ablate SWEEP.yaml` (SPEC §10). See ablate.h and README "Ablations".
//
// Flow: the sweep YAML is read strictly (unknown keys: file:line and a
// did-you-mean) into variants; each variant x seed becomes an instance whose
// resolved config is load_config(base, --set overrides) + validate_layout,
// i.e. exactly what `ringtrain train` will check, so every typo is exit 2
// before the first child starts. Instances then run in order as child
// processes (their own process group, output appended to INSTANCE/run.log);
// SIGINT/SIGTERM to ablate is forwarded once per signal to the running child
// (train saves and exits) and ends the sweep after it.
//
// Per instance, INSTANCE/ablate.json records the hash of the resolved config
// (and of the eval command), the status of train and eval, exit codes, wall
// times and the last lines of the log. A rerun skips complete phases whose
// hash matches, lets train resume from its own checkpoints, reruns failed
// ones, and wipes a run whose resolved config changed (said in run.log).
#include "trainer/eval/ablate.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "common/errors.h"
#include "common/strings.h"
#include "common/log.h"
#include "model/llama.h"
#include "parallel/comm.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/config/config.h"
#include "trainer/eval/evaluate.h"
#include "trainer/train/metrics.h"
#include "trainer/train/trainer.h"

extern char** environ;

namespace rt {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

volatile std::sig_atomic_t g_signal = 0;
volatile std::sig_atomic_t g_signal_count = 0;

void on_signal(int sig) {
  g_signal = sig;
  g_signal_count = g_signal_count + 1;
}

using Clock = std::chrono::steady_clock;

// ---- small helpers -------------------------------------------------------------

std::string fnv1a_hex(const std::string& s) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(fnv1a64(s)));
  return buf;
}

// A YAML node as one line of flow YAML (what `--set key=VALUE` takes).
std::string flow_yaml(const YAML::Node& n) {
  YAML::Emitter e;
  e.SetNullFormat(YAML::LowerNull);
  e.SetMapFormat(YAML::Flow);
  e.SetSeqFormat(YAML::Flow);
  e << n;
  return e.c_str();
}

std::string yaml_string(const std::string& s) {
  YAML::Emitter e;
  e << s;
  return e.c_str();
}

bool valid_name(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  }) && s[0] != '.';
}

std::string now_text() {
  std::time_t t = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", std::localtime(&t));
  return buf;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// launch/NAME next to the source tree the binary was built in (build dirs
// live in the repository root), else relative to the working directory.
std::string find_launch_file(const std::string& name) {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec)
    for (fs::path dir = exe.parent_path(); !dir.empty() && dir != dir.root_path();
         dir = dir.parent_path())
      if (fs::exists(dir / "launch" / name)) return (dir / "launch" / name).string();
  return "launch/" + name;
}

std::string self_exe() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error(kExitOther, "cannot find the ringtrain binary (/proc/self/exe): " + ec.message());
  std::string path = exe.string();
  // rebuilt while the sweep runs: the path now names the new binary
  const std::string deleted = " (deleted)";
  if (path.size() > deleted.size() && path.ends_with(deleted))
    path.resize(path.size() - deleted.size());
  return path;
}

std::vector<std::string> tail_lines(const std::string& path, size_t n) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) {
    lines.push_back(l);
    if (lines.size() > 4 * n) lines.erase(lines.begin(), lines.begin() + long(lines.size() - n));
  }
  if (lines.size() > n) lines.erase(lines.begin(), lines.begin() + long(lines.size() - n));
  return lines;
}

void append_log(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::app);
  f << text;
  if (!f) throw IoError("cannot write " + path);
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << text;
    f.close();
    if (!f) throw IoError("cannot write " + tmp + " (is the run directory writable?)");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw IoError("cannot rename " + tmp + " to " + path + ": " + ec.message());
}

// ---- the sweep file ---------------------------------------------------------------

class SweepReader {
 public:
  explicit SweepReader(std::string file) : file_(std::move(file)) {}

  std::string at(const YAML::Node& n) const {
    return n.Mark().line >= 0 ? file_ + ":" + std::to_string(n.Mark().line + 1) : file_;
  }
  std::string at_line(int line) const {
    return line > 0 ? file_ + ":" + std::to_string(line) : file_;
  }
  [[noreturn]] void fail(const YAML::Node& n, const std::string& msg) const {
    throw UsageError(at(n) + ": " + msg);
  }

  // Rejects keys outside `valid` (did-you-mean) and duplicates.
  void check_keys(const YAML::Node& map, const std::string& what,
                  const std::vector<std::string>& valid) const {
    if (!map.IsMap()) fail(map, what + " must be a mapping of " + join(valid, ", "));
    std::set<std::string> seen;
    for (auto it = map.begin(); it != map.end(); ++it) {
      const std::string key = it->first.as<std::string>();
      if (!seen.insert(key).second) fail(it->first, "duplicate key '" + key + "' in " + what);
      if (std::find(valid.begin(), valid.end(), key) == valid.end())
        fail(it->first, "unknown key '" + key + "' in " + what + "; did you mean '" +
                            closest_match(key, valid) + "'? (valid keys: " + join(valid, ", ") + ")");
    }
  }

  int64_t get_int(const YAML::Node& n, const std::string& what, int64_t lo) const {
    int64_t v = 0;
    try {
      if (!n.IsScalar()) throw YAML::BadConversion(n.Mark());
      v = n.as<int64_t>();
    } catch (const YAML::Exception&) {
      fail(n, what + " must be an integer >= " + std::to_string(lo) + ", got " + describe(n));
    }
    if (v < lo)
      fail(n, what + " must be an integer >= " + std::to_string(lo) + ", got " +
                  std::to_string(v));
    return v;
  }
  double get_double(const YAML::Node& n, const std::string& what, double lo, double hi) const {
    double v = 0;
    try {
      if (!n.IsScalar()) throw YAML::BadConversion(n.Mark());
      v = n.as<double>();
    } catch (const YAML::Exception&) {
      fail(n, what + " must be a number, got " + describe(n));
    }
    if (!(v >= lo && v <= hi))
      fail(n, what + " must be in [" + fmt("%g", lo) + ", " + fmt("%g", hi) + "], got " +
                  fmt("%g", v));
    return v;
  }
  bool get_bool(const YAML::Node& n, const std::string& what) const {
    try {
      if (n.IsScalar()) return n.as<bool>();
    } catch (const YAML::Exception&) {
    }
    fail(n, what + " must be true or false, got " + describe(n));
  }
  std::string get_string(const YAML::Node& n, const std::string& what) const {
    if (!n.IsScalar() || n.Scalar().empty())
      fail(n, what + " must be a non-empty string, got " + describe(n));
    return n.Scalar();
  }
  std::vector<int64_t> get_ints(const YAML::Node& n, const std::string& what, int64_t lo) const {
    if (!n.IsSequence() || n.size() == 0)
      fail(n, what + " must be a non-empty list of integers, e.g. [256, 512]; got " +
                  describe(n));
    std::vector<int64_t> v;
    for (const auto& x : n) v.push_back(get_int(x, what, lo));
    return v;
  }
  std::vector<double> get_doubles(const YAML::Node& n, const std::string& what, double lo,
                                  double hi) const {
    if (!n.IsSequence() || n.size() == 0)
      fail(n, what + " must be a non-empty list of numbers, e.g. [0, 0.5, 1]; got " +
                  describe(n));
    std::vector<double> v;
    for (const auto& x : n) v.push_back(get_double(x, what, lo, hi));
    return v;
  }

  static std::string describe(const YAML::Node& n) {
    if (!n.IsDefined() || n.IsNull()) return "null";
    if (n.IsScalar()) return "'" + n.Scalar() + "'";
    if (n.IsSequence()) return "a list of " + std::to_string(n.size());
    return "a mapping";
  }

  const std::string& file() const { return file_; }

 private:
  std::string file_;
};

// One `key.path: value` of a `set:` / `eval_set:` / grid, with its sweep line.
struct Override {
  std::string key;
  std::string value;  // flow YAML
  int line = 0;
  std::string text() const { return key + "=" + value; }
};

// Settings of the `ringtrain eval` run after training (sweep `eval:`, merged
// key by key with a variant's own `eval:`).
struct EvalSettings {
  std::vector<int64_t> seq_lens;
  int64_t max_sequences = 0;  // 0 = eval's default
  int64_t bucket = 0;
  std::string data;
  std::vector<int64_t> pk_lens;
  std::vector<double> pk_depths;
  int64_t pk_trials = 0;
  std::vector<int64_t> rc_lens;
  int64_t rc_pairs = 0;
  int64_t rc_trials = 0;
  bool memory_reset = false;
  int64_t context_parallel = 1;
  int line = 0;

  static std::string csv(const std::vector<int64_t>& v) {
    std::vector<std::string> s;
    for (auto x : v) s.push_back(std::to_string(x));
    return join(s, ",");
  }
  std::vector<std::string> args() const {
    std::vector<std::string> a;
    if (!seq_lens.empty()) a.insert(a.end(), {"--seq-lens", csv(seq_lens)});
    if (max_sequences) a.insert(a.end(), {"--max-sequences", std::to_string(max_sequences)});
    if (bucket) a.insert(a.end(), {"--bucket", std::to_string(bucket)});
    if (!data.empty()) a.insert(a.end(), {"--data", data});
    if (!pk_lens.empty()) {
      a.insert(a.end(), {"--passkey-seq-lens", csv(pk_lens)});
      if (!pk_depths.empty()) {
        std::vector<std::string> d;
        for (double x : pk_depths) d.push_back(fmt("%g", x));
        a.insert(a.end(), {"--passkey-depths", join(d, ",")});
      }
      if (pk_trials) a.insert(a.end(), {"--passkey-trials", std::to_string(pk_trials)});
    }
    if (!rc_lens.empty()) {
      a.insert(a.end(), {"--recall-seq-lens", csv(rc_lens)});
      if (rc_pairs) a.insert(a.end(), {"--recall-pairs", std::to_string(rc_pairs)});
      if (rc_trials) a.insert(a.end(), {"--recall-trials", std::to_string(rc_trials)});
    }
    if (memory_reset) a.push_back("--memory-reset");
    if (context_parallel > 1)
      a.insert(a.end(), {"--context-parallel", std::to_string(context_parallel)});
    return a;
  }
};

using KeyedNodes = std::vector<std::pair<YAML::Node, YAML::Node>>;  // key node, value node

EvalSettings read_eval(const SweepReader& r, const KeyedNodes& items, int line) {
  static const std::vector<std::string> kKeys = {
      "seq_lens", "max_sequences", "bucket",       "data",
      "passkey",  "recall",        "memory_reset", "context_parallel"};
  EvalSettings e;
  e.line = line;
  for (const auto& [k, v] : items) {
    const std::string key = k.as<std::string>();
    const std::string what = "eval." + key;
    if (key == "seq_lens") {
      e.seq_lens = r.get_ints(v, what, 2);
    } else if (key == "max_sequences") {
      e.max_sequences = r.get_int(v, what, 1);
    } else if (key == "bucket") {
      e.bucket = r.get_int(v, what, 1);
    } else if (key == "data") {
      e.data = r.get_string(v, what);
    } else if (key == "passkey") {
      e.pk_lens.clear(), e.pk_depths.clear(), e.pk_trials = 0;
      if (v.IsNull()) continue;
      r.check_keys(v, "eval.passkey", {"seq_lens", "depths", "trials"});
      if (!v["seq_lens"]) r.fail(v, "eval.passkey needs seq_lens, e.g. {seq_lens: [256, 512]}");
      e.pk_lens = r.get_ints(v["seq_lens"], "eval.passkey.seq_lens", 2);
      if (v["depths"]) e.pk_depths = r.get_doubles(v["depths"], "eval.passkey.depths", 0, 1);
      if (v["trials"]) e.pk_trials = r.get_int(v["trials"], "eval.passkey.trials", 1);
    } else if (key == "recall") {
      e.rc_lens.clear(), e.rc_pairs = e.rc_trials = 0;
      if (v.IsNull()) continue;
      r.check_keys(v, "eval.recall", {"seq_lens", "pairs", "trials"});
      if (!v["seq_lens"]) r.fail(v, "eval.recall needs seq_lens, e.g. {seq_lens: [256, 512]}");
      e.rc_lens = r.get_ints(v["seq_lens"], "eval.recall.seq_lens", 2);
      if (v["pairs"]) e.rc_pairs = r.get_int(v["pairs"], "eval.recall.pairs", 1);
      if (v["trials"]) e.rc_trials = r.get_int(v["trials"], "eval.recall.trials", 1);
    } else if (key == "memory_reset") {
      e.memory_reset = r.get_bool(v, what);
    } else if (key == "context_parallel") {
      e.context_parallel = r.get_int(v, what, 1);
    } else {
      r.fail(k, "unknown key '" + key + "' in eval; did you mean '" + closest_match(key, kKeys) +
                    "'? (valid keys: " + join(kKeys, ", ") + ")");
    }
  }
  return e;
}

enum class Kind { kTrain, kFollowUp, kEvalOnly };
const char* kind_name(Kind k) {
  return k == Kind::kTrain ? "train" : k == Kind::kFollowUp ? "follow-up" : "eval-only";
}

struct Variant {
  std::string name;
  Kind kind = Kind::kTrain;
  int line = 0;
  std::vector<Override> set;       // train/follow-up: on top of the base (or the parent)
  std::vector<Override> eval_set;  // eval-only: on top of the parent's config
  std::string parent;              // from / init_from
  KeyedNodes eval_items;           // this variant's own eval: entries
  EvalSettings eval;
};

struct Sweep {
  std::string file;
  std::string name;
  std::string description;
  std::string base;  // resolved path
  std::string dir;   // runs/<name>
  std::vector<Override> set;  // for every variant
  std::vector<Override> cli_set;  // ablate --set: for every variant, after its own set:
  std::vector<Variant> variants;
  std::vector<uint64_t> seeds;  // empty: one run per variant, the base's run.seed
  int np = 1;
};

std::vector<Override> read_set(const SweepReader& r, const YAML::Node& n, const std::string& what) {
  std::vector<Override> out;
  if (n.IsNull()) return out;
  if (!n.IsMap())
    r.fail(n, what + " must be a mapping of dotted keys to values, e.g. {model.position: alibi}");
  std::set<std::string> seen;
  for (auto it = n.begin(); it != n.end(); ++it) {
    const std::string key = it->first.as<std::string>();
    if (!seen.insert(key).second) r.fail(it->first, "duplicate key '" + key + "' in " + what);
    std::stringstream ss(key);
    for (std::string part; std::getline(ss, part, '.');)
      if (part.empty() || !std::all_of(part.begin(), part.end(), [](char c) {
            return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
          }))
        r.fail(it->first, "'" + key + "' in " + what +
                              " is not a dotted config key (e.g. train.optimizer.lr)");
    if (key.back() == '.' || key.front() == '.')
      r.fail(it->first, "'" + key + "' in " + what + " is not a dotted config key");
    for (const char* owned : {"run.dir", "run.seed", "checkpoint.init_from"})
      if (key == owned)
        r.fail(it->first, std::string(owned) + " is set by ablate (run.dir = " +
                              "<sweep dir>/<variant>, run.seed from seeds:, checkpoint.init_from "
                              "from init_from:); remove it from " + what);
    out.push_back({key, flow_yaml(it->second), it->first.Mark().line + 1});
  }
  return out;
}

Sweep read_sweep(const std::string& path, const std::vector<std::string>& cli_sets) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw UsageError("cannot read sweep file '" + path + "'");
  } catch (const YAML::ParserException& e) {
    throw UsageError(path + ":" + std::to_string(e.mark.line + 1) + ":" +
                     std::to_string(e.mark.column + 1) + ": invalid YAML: " + e.msg);
  }
  SweepReader r(path);
  if (!root.IsMap())
    throw UsageError(path + ": a sweep is a mapping with base:, grid: and/or variants: (see "
                            "README, Ablations); got " + SweepReader::describe(root));
  r.check_keys(root, "the sweep",
               {"name", "description", "base", "dir", "set", "grid", "variants", "seeds", "eval",
                "launch"});
  Sweep s;
  s.file = path;
  s.name = root["name"] ? r.get_string(root["name"], "name") : fs::path(path).stem().string();
  if (!valid_name(s.name))
    throw UsageError(path + ": sweep name '" + s.name +
                     "' may hold only letters, digits, '-', '_' and '.'");
  if (root["description"]) s.description = r.get_string(root["description"], "description");
  if (!root["base"])
    throw UsageError(path + ": missing 'base:' (the config every variant starts from, a path "
                            "relative to the sweep file)");
  const std::string base = r.get_string(root["base"], "base");
  s.base = fs::path(base).is_absolute()
               ? base
               : (fs::path(path).parent_path() / base).lexically_normal().string();
  if (s.base.empty()) s.base = base;
  if (!fs::exists(s.base)) r.fail(root["base"], "base config '" + s.base + "' does not exist");
  s.dir = root["dir"] ? r.get_string(root["dir"], "dir") : "runs/" + s.name;
  if (root["set"]) s.set = read_set(r, root["set"], "set");
  for (const std::string& spec : cli_sets) {  // after each variant's own set:
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0)
      throw UsageError("--set " + spec + ": expected --set key.path=value, e.g. --set "
                       "data.train=input.txt");
    s.cli_set.push_back({spec.substr(0, eq), spec.substr(eq + 1), 0});
  }
  if (root["seeds"]) {
    for (int64_t v : r.get_ints(root["seeds"], "seeds", 0)) {
      if (std::find(s.seeds.begin(), s.seeds.end(), uint64_t(v)) != s.seeds.end())
        r.fail(root["seeds"], "seed " + std::to_string(v) + " is listed twice");
      s.seeds.push_back(uint64_t(v));
    }
  }
  if (const YAML::Node l = root["launch"]) {
    r.check_keys(l, "launch", {"np"});
    if (l["np"]) s.np = int(r.get_int(l["np"], "launch.np", 1));
  }
  KeyedNodes sweep_eval;
  int eval_line = 0;
  if (const YAML::Node e = root["eval"]) {
    if (!e.IsNull()) {
      if (!e.IsMap()) r.fail(e, "eval must be a mapping (seq_lens, passkey, recall, ...)");
      for (auto it = e.begin(); it != e.end(); ++it) sweep_eval.push_back({it->first, it->second});
      eval_line = e.Mark().line + 1;
    }
  }

  std::set<std::string> names;
  auto add = [&](Variant v, const YAML::Node& at) {
    if (!valid_name(v.name))
      r.fail(at, "variant name '" + v.name +
                     "' may hold only letters, digits, '-', '_' and '.' (it names a directory)");
    if (!names.insert(v.name).second) r.fail(at, "two variants are named '" + v.name + "'");
    s.variants.push_back(std::move(v));
  };

  if (const YAML::Node g = root["grid"]) {
    if (!g.IsMap() || g.size() == 0)
      r.fail(g, "grid must be a mapping of dotted keys to lists of values, e.g. "
                "{model.position: [rope, alibi, none]}");
    std::vector<Override> keys = read_set(r, g, "grid");
    std::vector<std::vector<YAML::Node>> values;
    for (auto it = g.begin(); it != g.end(); ++it) {
      if (!it->second.IsSequence() || it->second.size() == 0)
        r.fail(it->second, "grid key '" + it->first.as<std::string>() +
                               "' needs a non-empty list of values, e.g. [rope, alibi]");
      values.emplace_back(it->second.begin(), it->second.end());
      for (const auto& v : it->second)
        if (!v.IsScalar())
          r.fail(v, "grid values name the variants, so they must be scalars; give a mapping "
                    "value as a named variant instead: variants: [{name: ..., set: {...}}]");
    }
    std::vector<size_t> idx(keys.size(), 0);
    while (true) {
      Variant v;
      std::vector<std::string> parts;
      for (size_t k = 0; k < keys.size(); ++k) {
        const YAML::Node& val = values[k][idx[k]];
        const std::string last = keys[k].key.substr(keys[k].key.find_last_of('.') + 1);
        parts.push_back(last + "-" + val.Scalar());
        v.set.push_back({keys[k].key, flow_yaml(val), val.Mark().line + 1});
      }
      v.name = join(parts, "_");
      v.line = g.Mark().line + 1;
      add(std::move(v), g);
      size_t k = keys.size();
      while (k > 0) {
        --k;
        if (++idx[k] < values[k].size()) break;
        idx[k] = 0;
        if (k == 0) goto grid_done;
      }
    }
  grid_done:;
  }

  if (const YAML::Node vs = root["variants"]) {
    if (!vs.IsSequence())
      r.fail(vs, "variants must be a list, e.g. [{name: yarn-x4, set: {...}}]");
    for (const YAML::Node& vn : vs) {
      r.check_keys(vn, "a variant", {"name", "set", "from", "eval_set", "init_from", "eval"});
      if (!vn["name"]) r.fail(vn, "a variant needs a name: {name: NAME, ...}");
      Variant v;
      v.name = r.get_string(vn["name"], "name");
      v.line = vn.Mark().line + 1;
      const std::string what = "variant '" + v.name + "'";
      if (vn["from"] && vn["init_from"])
        r.fail(vn, what + " has both from: (evaluate another variant's checkpoint) and "
                          "init_from: (fine-tune from it); choose one");
      if (vn["from"]) {
        v.kind = Kind::kEvalOnly;
        v.parent = r.get_string(vn["from"], "from");
        if (vn["set"])
          r.fail(vn["set"], what + " is eval-only (from:): it does not train, so it takes "
                                   "eval_set: (settings for evaluation), not set:; to train from "
                                   "that checkpoint use init_from:");
        if (vn["eval_set"]) v.eval_set = read_set(r, vn["eval_set"], what + " eval_set");
      } else {
        if (vn["eval_set"])
          r.fail(vn["eval_set"], what + ": eval_set: belongs to eval-only variants (with "
                                        "from: VARIANT); a training variant takes set:");
        if (vn["init_from"]) {
          v.kind = Kind::kFollowUp;
          v.parent = r.get_string(vn["init_from"], "init_from");
        }
        if (vn["set"]) v.set = read_set(r, vn["set"], what + " set");
      }
      if (!v.parent.empty()) {
        if (!names.count(v.parent)) {
          std::vector<std::string> known(names.begin(), names.end());
          r.fail(vn[v.kind == Kind::kEvalOnly ? "from" : "init_from"],
                 what + ": '" + v.parent + "' is not a variant defined before this one" +
                     (known.empty() ? std::string()
                                    : "; did you mean '" + closest_match(v.parent, known) +
                                          "'? (grid variants come first; defined: " +
                                          join(known, ", ") + ")"));
        }
        for (const auto& p : s.variants)
          if (p.name == v.parent && p.kind == Kind::kEvalOnly)
            r.fail(vn, what + ": '" + v.parent + "' is eval-only and has no checkpoint of its "
                              "own; point at the variant that trained it");
      }
      if (const YAML::Node e = vn["eval"]; e && !e.IsNull()) {
        if (!e.IsMap()) r.fail(e, what + ": eval must be a mapping (seq_lens, passkey, ...)");
        for (auto it = e.begin(); it != e.end(); ++it) v.eval_items.push_back({it->first, it->second});
      }
      add(std::move(v), vn);
    }
  }
  if (s.variants.empty())
    throw UsageError(path + ": the sweep has no variants: add grid: or variants:");
  // Eval settings: the sweep's, then those of the variant's ancestors (from: /
  // init_from:, root first), then its own, key by key.
  std::map<std::string, KeyedNodes> merged_of;
  std::map<std::string, int> line_of;
  for (Variant& v : s.variants) {
    const KeyedNodes& under = v.parent.empty() ? sweep_eval : merged_of.at(v.parent);
    KeyedNodes merged;
    for (const auto& item : under) {
      const std::string k = item.first.as<std::string>();
      if (std::none_of(v.eval_items.begin(), v.eval_items.end(),
                       [&](const std::pair<YAML::Node, YAML::Node>& o) {
                         return o.first.as<std::string>() == k;
                       }))
        merged.push_back(item);
    }
    merged.insert(merged.end(), v.eval_items.begin(), v.eval_items.end());
    const int line = !v.eval_items.empty() ? v.line
                     : v.parent.empty()    ? eval_line
                                           : line_of.at(v.parent);
    v.eval = read_eval(r, merged, line);
    merged_of[v.name] = std::move(merged);
    line_of[v.name] = line;
  }
  return s;
}

// ---- instances: variant x seed, resolved -------------------------------------------

struct State {
  std::string train_hash, eval_hash;
  std::string train_status, eval_status;  // "", running, complete, failed, interrupted
  int train_exit = 0, eval_exit = 0;
  double train_wall_s = 0, eval_wall_s = 0;
  int64_t params = 0;
  std::string failed_phase;
  std::vector<std::string> log_tail;

  json to_json() const {
    return {{"train_hash", train_hash},     {"eval_hash", eval_hash},
            {"train_status", train_status}, {"eval_status", eval_status},
            {"train_exit", train_exit},     {"eval_exit", eval_exit},
            {"train_wall_s", train_wall_s}, {"eval_wall_s", eval_wall_s},
            {"params", params},             {"failed_phase", failed_phase},
            {"log_tail", log_tail}};
  }
  static State from_json(const json& j) {
    State s;
    s.train_hash = j.value("train_hash", "");
    s.eval_hash = j.value("eval_hash", "");
    s.train_status = j.value("train_status", "");
    s.eval_status = j.value("eval_status", "");
    s.train_exit = j.value("train_exit", 0);
    s.eval_exit = j.value("eval_exit", 0);
    s.train_wall_s = j.value("train_wall_s", 0.0);
    s.eval_wall_s = j.value("eval_wall_s", 0.0);
    s.params = j.value("params", int64_t(0));
    s.failed_phase = j.value("failed_phase", "");
    s.log_tail = j.value("log_tail", std::vector<std::string>{});
    return s;
  }
};

struct Instance {
  const Variant* v = nullptr;
  std::string name;
  std::optional<uint64_t> seed;
  int parent = -1;
  std::vector<Override> lineage;   // train kinds: every override from the base on
  std::vector<std::string> sets;   // --set list given to train (or, eval-only, to eval)
  Config cfg;
  std::string dir, config_yaml, train_hash, eval_hash, ckpt;
  std::vector<std::string> eval_args;  // after the checkpoint
  std::string changed;                 // the overridden keys, for the report
  State state;
  std::string outcome;  // this invocation: complete / failed / interrupted / blocked / skipped
  bool selected = true;

  bool trains() const { return v->kind != Kind::kEvalOnly; }
  std::string log() const { return dir + "/run.log"; }
  std::string state_path() const { return dir + "/ablate.json"; }
  std::string eval_json() const { return dir + "/eval.json"; }
};

State read_state(const std::string& path) {
  std::ifstream in(path);
  if (!in) return {};
  json j = json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return {};
  return State::from_json(j);
}

void write_state(const Instance& in) {
  write_file_atomic(in.state_path(), in.state.to_json().dump(2) + "\n");
}

// Wraps a config error with the sweep line of the override it names, else
// the variant's line.
[[noreturn]] void rethrow_variant_error(const SweepReader& r, const Instance& in,
                                        const std::vector<Override>& overrides,
                                        const std::string& msg) {
  int line = in.v->line;
  for (const auto& o : overrides)
    if (o.line > 0 && msg.rfind("--set " + o.text() + ":", 0) == 0) line = o.line;
  throw UsageError(r.at_line(line) + ": variant '" + in.name + "': " + msg);
}

void check_eval_settings(const SweepReader& r, const Instance& in, int np) {
  const EvalSettings& e = in.v->eval;
  const Config& c = in.cfg;
  auto fail = [&](const std::string& msg) {
    throw UsageError(r.at_line(e.line) + ": variant '" + in.name + "': eval: " + msg);
  };
  try {
    if (!e.data.empty() && !fs::exists(e.data))
      fail("data file '" + e.data + "' does not exist (paths are relative to the working "
           "directory)");
    if (np % e.context_parallel != 0)
      fail("context_parallel " + std::to_string(e.context_parallel) +
           " does not divide launch.np " + std::to_string(np));
    if (!e.pk_lens.empty())
      check_passkey_grid(e.pk_lens, e.pk_depths.empty() ? PasskeyEvalConfig{}.depths : e.pk_depths,
                         int(e.pk_trials ? e.pk_trials : 10), c.model.vocab_size, nullptr);
    if (!e.rc_lens.empty()) {
      const int pairs = int(e.rc_pairs ? e.rc_pairs
                                       : (c.data.train.synthetic == "recall"
                                              ? c.data.train.pairs
                                              : DataSourceConfig{}.pairs));
      check_recall_grid(e.rc_lens, pairs, int(e.rc_trials ? e.rc_trials : 20), c.model.vocab_size,
                        nullptr);
    }
    if (e.memory_reset && !c.model.memory)
      fail("memory_reset applies to memory models (model.memory); this one has none");
    if (c.model.memory) {
      if (e.context_parallel > 1)
        fail("memory models are evaluated on one ring rank: remove context_parallel");
      const int64_t S = c.model.memory->segment_length;
      std::vector<int64_t> all = e.seq_lens;
      all.insert(all.end(), e.pk_lens.begin(), e.pk_lens.end());
      all.insert(all.end(), e.rc_lens.begin(), e.rc_lens.end());
      if (e.seq_lens.empty()) all.push_back(c.train.seq_len);
      for (int64_t T : all)
        if (T % S != 0)
          fail("length " + std::to_string(T) + " is not a multiple of model.memory."
               "segment_length (" + std::to_string(S) + "): use whole segments");
    }
    const int64_t mult = e.context_parallel > 1 ? 2 * e.context_parallel : 1;
    for (int64_t T : e.seq_lens)
      if (T % mult != 0)
        fail("seq_lens: " + std::to_string(T) + " is not a multiple of " +
             std::to_string(mult) + " (context_parallel " + std::to_string(e.context_parallel) +
             ", zigzag)");
  } catch (const UsageError& ex) {
    const std::string msg = ex.what();
    if (msg.rfind(r.file(), 0) == 0) throw;
    fail(msg);
  }
}

std::vector<Instance> expand(const Sweep& s, const SweepReader& r) {
  std::vector<Instance> out;
  std::vector<std::optional<uint64_t>> seeds;
  if (s.seeds.empty())
    seeds.push_back(std::nullopt);
  else
    for (auto x : s.seeds) seeds.push_back(x);
  std::map<std::string, int> index;
  for (const Variant& v : s.variants) {
    for (const auto& seed : seeds) {
      Instance in;
      in.v = &v;
      in.seed = seed;
      in.name = v.name + (seed ? "-s" + std::to_string(*seed) : "");
      in.dir = s.dir + "/" + in.name;
      if (!v.parent.empty()) {
        const std::string pname = v.parent + (seed ? "-s" + std::to_string(*seed) : "");
        in.parent = index.at(pname);
      }
      const Instance* p = in.parent >= 0 ? &out[size_t(in.parent)] : nullptr;
      std::vector<std::string> changed;
      if (in.trains()) {
        in.lineage = p ? p->lineage : s.set;
        in.lineage.insert(in.lineage.end(), v.set.begin(), v.set.end());
        for (const auto& o : in.lineage) in.sets.push_back(o.text());
        for (const auto& o : s.cli_set) in.sets.push_back(o.text());
        in.sets.push_back("run.name=" + yaml_string(s.name + "-" + in.name));
        in.sets.push_back("run.dir=" + yaml_string(in.dir));
        if (seed) in.sets.push_back("run.seed=" + std::to_string(*seed));
        if (p) in.sets.push_back("checkpoint.init_from=" + yaml_string(p->ckpt));
        try {
          in.cfg = load_config(s.base, in.sets);
          validate_layout(in.cfg, s.np);
        } catch (const UsageError& e) {
          rethrow_variant_error(r, in, in.lineage, e.what());
        }
        for (const DataSourceConfig* d :
             {&in.cfg.data.train, in.cfg.data.val ? &*in.cfg.data.val : nullptr})
          if (d && !d->is_synthetic() && !fs::exists(d->path))
            throw UsageError(r.at_line(in.v->line) + ": variant '" + in.name + "': data file '" +
                             d->path + "' does not exist (paths are relative to the working "
                             "directory; give yours with ringtrain ablate " + r.file() +
                             " --set data.train=PATH)");
        in.config_yaml = config_to_yaml(in.cfg);
        in.train_hash = fnv1a_hex(in.config_yaml + "\nnp=" + std::to_string(s.np) +
                                  (p ? "\nparent=" + p->train_hash : ""));
        in.ckpt = checkpoint_path(in.dir, in.cfg.train.max_steps);
        if (p) changed.push_back("init_from=" + v.parent);
        for (const auto& o : v.set) changed.push_back(o.text());
      } else {
        for (const auto& o : v.eval_set) in.sets.push_back(o.text());
        try {
          in.cfg = parse_config(p->config_yaml, p->dir + "/config.yaml", in.sets);
        } catch (const UsageError& e) {
          rethrow_variant_error(r, in, v.eval_set, e.what());
        }
        in.config_yaml = config_to_yaml(in.cfg);
        in.train_hash = p->train_hash;
        in.ckpt = p->ckpt;
        changed.push_back("from=" + v.parent);
        for (const auto& o : v.eval_set) changed.push_back(o.text());
      }
      if (v.eval.memory_reset) changed.push_back("eval: memory_reset");
      in.changed = join(changed, "; ");
      check_eval_settings(r, in, s.np);
      in.eval_args = {in.ckpt, "--json", in.eval_json(), "--no-plots"};
      for (const auto& a : v.eval.args()) in.eval_args.push_back(a);
      if (!in.trains())
        for (const auto& x : in.sets) in.eval_args.insert(in.eval_args.end(), {"--set", x});
      in.eval_hash = fnv1a_hex(in.train_hash + "\n" + join(in.eval_args, "\n") + "\n" +
                               in.config_yaml);
      index[in.name] = int(out.size());
      out.push_back(std::move(in));
    }
  }
  return out;
}

// ---- children -------------------------------------------------------------------------

struct ChildResult {
  int exit_code = 0;     // exit status, or 128 + signal
  bool interrupted = false;  // we forwarded a signal while it ran
};

ChildResult run_child(const std::vector<std::string>& argv, const std::string& log_path) {
  const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0) throw IoError("cannot open " + log_path + " for writing");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, fd, 1);
  posix_spawn_file_actions_adddup2(&fa, fd, 2);
  posix_spawn_file_actions_addclose(&fa, fd);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Its own process group: a terminal's Ctrl-C reaches ablate only, which
  // forwards it once (train's second SIGINT would kill without saving).
  sigset_t def;
  sigemptyset(&def);
  sigaddset(&def, SIGINT);
  sigaddset(&def, SIGTERM);
  posix_spawnattr_setsigdefault(&attr, &def);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, args[0], &fa, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(fd);
  if (rc != 0) throw Error(kExitOther, "cannot start " + argv[0] + ": " + std::strerror(rc));
  ChildResult res;
  int forwarded = 0;
  while (true) {
    if (g_signal_count > forwarded) {
      forwarded = g_signal_count;
      ::kill(pid, g_signal);
      res.interrupted = true;
    }
    int status = 0;
    const pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) {
      res.exit_code = WIFEXITED(status) ? WEXITSTATUS(status)
                                        : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
      return res;
    }
    if (w < 0 && errno != EINTR) throw Error(kExitOther, std::string("waitpid: ") + std::strerror(errno));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

std::vector<std::string> launch_prefix(int np) {
  if (np <= 1) return {self_exe()};
  return {"bash", find_launch_file("local.sh"), "-np", std::to_string(np), self_exe()};
}

std::string command_text(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) {
    const bool plain = std::all_of(a.begin(), a.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("-_./=,:", c);
    });
    s += (s.empty() ? "" : " ") + (plain && !a.empty() ? a : "'" + a + "'");
  }
  return s;
}

// ---- the report ----------------------------------------------------------------------

struct Measured {
  std::map<std::string, double> m;  // column -> value
  json loss_curve = json::array();
  json passkey;  // eval JSON's passkey section
  double flops = 0;
};

Measured measure(const Instance& in) {
  Measured r;
  // What a run with another resolved config left behind is not this variant's.
  if (in.trains() && !in.state.train_hash.empty() && in.state.train_hash != in.train_hash)
    return r;
  if (in.trains()) {
    std::ifstream f(in.dir + "/metrics.jsonl");
    double peak = 0, fpt = 0, loss = NAN, tokens = 0;
    std::vector<double> tps, ms;  // per logged window
    double first_t = 0, first_ms = 0;
    for (std::string line; std::getline(f, line);) {
      json j = json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.contains("loss") || !j.contains("step")) continue;
      r.loss_curve.push_back({j["step"], j["loss"]});
      loss = j["loss"].get<double>();
      tokens = j.value("tokens_seen", 0.0);
      peak = std::max(peak, j.value("peak_mem_bytes", 0.0));
      const double t = j.value("tokens_per_s", 0.0);
      if (t > 0) fpt = j.value("flops_per_s", 0.0) / t;
      // A logged step 1 is the warm-up: left out when there are other windows.
      if (j["step"].get<int64_t>() == 1) {
        first_t = t, first_ms = j.value("step_ms", 0.0);
        continue;
      }
      tps.push_back(t);
      ms.push_back(j.value("step_ms", 0.0));
    }
    // Medians over the logged windows: robust to other processes on a shared machine.
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      const size_t n = v.size();
      return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    };
    if (tps.empty() && first_t > 0) tps.push_back(first_t), ms.push_back(first_ms);
    if (!tps.empty()) {
      r.m["tokens_per_s"] = median(tps);
      r.m["step_ms"] = median(ms);
      r.m["peak_mem_mb"] = peak / 1048576.0;
      r.m["flops"] = r.flops = tokens * fpt;
      r.m["final_loss"] = loss;
    }
    if (in.state.train_wall_s > 0) r.m["train_wall_s"] = in.state.train_wall_s;
  }
  if (in.state.params > 0) r.m["params"] = double(in.state.params);
  if (in.state.eval_wall_s > 0) r.m["eval_wall_s"] = in.state.eval_wall_s;
  std::ifstream ef(in.eval_json());
  if (!ef || in.state.eval_status != "complete" || in.state.eval_hash != in.eval_hash) return r;
  json e = json::parse(ef, nullptr, false);
  if (e.is_discarded()) return r;
  for (const auto& p : e.value("perplexity", json::array()))
    if (p.contains("ppl") && p["ppl"].is_number())
      r.m["ppl@" + std::to_string(p["seq_len"].get<int64_t>())] = p["ppl"].get<double>();
  if (e.contains("passkey") && e["passkey"].is_object()) {
    r.passkey = e["passkey"];
    const auto lens = r.passkey["seq_lens"].get<std::vector<int64_t>>();
    const auto depths = r.passkey["depths"].get<std::vector<double>>();
    const auto acc = r.passkey["accuracy"].get<std::vector<std::vector<double>>>();
    double all = 0;
    for (size_t d = 0; d < depths.size(); ++d) {
      double sum = 0;
      for (size_t i = 0; i < lens.size(); ++i) sum += acc[i][d];
      r.m["passkey_d" + fmt("%g", depths[d])] = sum / double(lens.size());
      all += sum;
    }
    for (size_t i = 0; i < lens.size(); ++i) {
      double sum = 0;
      for (double a : acc[i]) sum += a;
      r.m["passkey@" + std::to_string(lens[i])] = sum / double(depths.size());
    }
    r.m["passkey"] = all / double(lens.size() * depths.size());
  }
  if (e.contains("recall") && e["recall"].is_object()) {
    const auto lens = e["recall"]["seq_lens"].get<std::vector<int64_t>>();
    const auto acc = e["recall"]["accuracy"].get<std::vector<double>>();
    double all = 0;
    for (size_t i = 0; i < lens.size(); ++i) {
      r.m["recall@" + std::to_string(lens[i])] = acc[i];
      all += acc[i];
    }
    r.m["recall"] = all / double(lens.size());
  }
  return r;
}

// Column order: cost, then quality; lengths ascending.
int column_rank(const std::string& c, int64_t* sub) {
  static const std::vector<std::string> fixed = {"params",     "tokens_per_s", "step_ms",
                                                 "peak_mem_mb", "flops",       "train_wall_s",
                                                 "eval_wall_s", "final_loss"};
  *sub = 0;
  for (size_t i = 0; i < fixed.size(); ++i)
    if (c == fixed[i]) return int(i);
  auto num = [&](size_t from) { return int64_t(std::atof(c.c_str() + from) * 1000); };
  if (c.rfind("ppl@", 0) == 0) return *sub = num(4), 100;
  if (c == "passkey") return 200;
  if (c.rfind("passkey_d", 0) == 0) return *sub = num(9), 201;
  if (c.rfind("passkey@", 0) == 0) return *sub = num(8), 202;
  if (c == "recall") return 300;
  if (c.rfind("recall@", 0) == 0) return *sub = num(7), 301;
  return 400;
}

const char* column_title(const std::string& c) {
  static const std::map<std::string, const char*> titles = {
      {"params", "params"},          {"tokens_per_s", "tok/s"},
      {"step_ms", "step ms"},        {"peak_mem_mb", "peak MiB"},
      {"flops", "FLOPs"},            {"train_wall_s", "train s"},
      {"eval_wall_s", "eval s"},     {"final_loss", "final loss"}};
  auto it = titles.find(c);
  return it == titles.end() ? nullptr : it->second;
}

std::string format_value(const std::string& col, double v) {
  if (col == "params") return fmt("%.0f", v);
  if (col == "flops") return fmt("%.3g", v);
  if (col == "tokens_per_s") return fmt("%.0f", v);
  if (col == "train_wall_s" || col == "eval_wall_s" || col == "peak_mem_mb" || col == "step_ms")
    return fmt("%.1f", v);
  if (col.rfind("passkey", 0) == 0 || col.rfind("recall", 0) == 0) return fmt("%.2f", v);
  return fmt("%.4g", v);
}

struct Stat {
  double mean = NAN, std = NAN;
  int n = 0;
};

Stat stat_of(const std::vector<double>& v) {
  Stat s;
  s.n = int(v.size());
  if (v.empty()) return s;
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / double(v.size());
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(ss / double(v.size() - 1));  // sample standard deviation
  }
  return s;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string instance_status(const Instance& in) {
  if (!in.outcome.empty() && in.outcome != "skipped") return in.outcome;
  const State& s = in.state;
  if (s.train_status == "failed" || s.eval_status == "failed") return "failed";
  if (s.train_status == "interrupted" || s.eval_status == "interrupted") return "interrupted";
  if (in.trains() && (s.train_status != "complete" || s.train_hash != in.train_hash))
    return "pending";
  if (s.eval_status != "complete" || s.eval_hash != in.eval_hash) return "pending";
  return "complete";
}

bool plots_available(std::string* why) {
  if (access("/usr/bin/python3", X_OK) != 0) return *why = "/usr/bin/python3 not found", false;
  if (std::system("/usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1") != 0)
    return *why = "matplotlib is not installed for /usr/bin/python3 (apt-get install "
                  "python3-matplotlib)",
           false;
  return true;
}

void write_report(const Sweep& s, const std::vector<Instance>& all, bool plots) {
  // rows: one per variant, over its seeds
  std::vector<std::map<std::string, std::vector<double>>> values(s.variants.size());
  std::vector<std::vector<const Instance*>> members(s.variants.size());
  std::vector<Measured> measured;
  measured.reserve(all.size());
  std::set<std::string> cols;
  std::map<const Instance*, double> cumulative_flops;
  for (const Instance& in : all) {
    const size_t vi = size_t(in.v - s.variants.data());
    members[vi].push_back(&in);
    measured.push_back(measure(in));
    const Measured& m = measured.back();
    double cum = m.flops;
    if (in.parent >= 0) cum += cumulative_flops[&all[size_t(in.parent)]];
    cumulative_flops[&in] = cum;
    for (const auto& [k, v] : m.m) {
      values[vi][k].push_back(v);
      cols.insert(k);
    }
  }
  std::vector<std::string> columns(cols.begin(), cols.end());
  std::sort(columns.begin(), columns.end(), [](const std::string& a, const std::string& b) {
    int64_t sa, sb;
    const int ra = column_rank(a, &sa), rb = column_rank(b, &sb);
    return ra != rb ? ra < rb : sa != sb ? sa < sb : a < b;
  });
  const bool multi = s.seeds.size() > 1;

  std::ostringstream csv, md;
  csv << "variant,kind,status,seeds,overrides";
  for (const auto& c : columns) csv << "," << c << (multi ? "," + c + "_std" : "");
  csv << "\n";
  md << "# Ablation " << s.name << "\n\n";
  if (!s.description.empty()) md << s.description << "\n\n";
  md << "Sweep `" << s.file << "`, base `" << s.base << "`"
     << (s.np > 1 ? ", " + std::to_string(s.np) + " processes per run" : "")
     << (multi ? "; mean ± sample std over seeds" : "") << ". Written " << now_text()
     << " by `ringtrain ablate`.\n\n";
  md << "| variant | kind | status | overrides |";
  for (const auto& c : columns) md << " " << (column_title(c) ? column_title(c) : c.c_str()) << " |";
  md << "\n|---|---|---|---|";
  for (size_t i = 0; i < columns.size(); ++i) md << "---|";
  md << "\n";

  json jvariants = json::array();
  std::string failures;
  for (size_t vi = 0; vi < s.variants.size(); ++vi) {
    const Variant& v = s.variants[vi];
    std::string status = "complete";
    int done = 0;
    for (const Instance* in : members[vi]) {
      const std::string st = instance_status(*in);
      if (st == "complete") {
        ++done;
      } else if (status == "complete" || st == "failed" || st == "blocked") {
        if (!(status == "failed" && st != "failed")) status = st;
      }
      if (st == "failed") {
        failures += "- `" + in->name + "`: " + in->state.failed_phase + " exited with code " +
                    std::to_string(in->state.failed_phase == "eval" ? in->state.eval_exit
                                                                     : in->state.train_exit) +
                    " (log `" + in->log() + "`); its last lines:\n\n```\n" +
                    join(in->state.log_tail, "\n") + "\n```\n";
      } else if (st == "blocked") {
        failures += "- `" + in->name + "`: not run, because `" +
                    all[size_t(in->parent)].name + "` did not complete\n";
      }
    }
    const std::string seeds =
        s.seeds.empty() ? "" : std::to_string(done) + "/" + std::to_string(members[vi].size());
    const std::string changed = members[vi].front()->changed;
    csv << csv_field(v.name) << "," << kind_name(v.kind) << "," << status << "," << seeds << ","
        << csv_field(changed);
    md << "| " << v.name << " | " << kind_name(v.kind) << " | " << status
       << (s.seeds.empty() ? "" : " " + seeds) << " | " << changed << " |";
    json jm = json::object();
    for (const auto& c : columns) {
      Stat st = stat_of(values[vi].count(c) ? values[vi][c] : std::vector<double>{});
      std::string mean = st.n ? format_value(c, st.mean) : "";
      std::string sd = st.n > 1 ? format_value(c, st.std) : "";
      csv << "," << mean << (multi ? "," + sd : "");
      md << " " << mean << (sd.empty() ? "" : " ± " + sd) << " |";
      if (st.n)
        jm[c] = {{"mean", st.mean}, {"std", st.n > 1 ? json(st.std) : json(nullptr)}, {"n", st.n}};
    }
    csv << "\n";
    md << "\n";
    // mean passkey grid over seeds, instance curves
    json jinst = json::array();
    json grid;
    int grids = 0;
    for (const Instance* in : members[vi]) {
      const Measured& m = measured[size_t(in - all.data())];
      jinst.push_back({{"name", in->name},
                       {"seed", in->seed ? json(*in->seed) : json(nullptr)},
                       {"status", instance_status(*in)},
                       {"loss_curve", m.loss_curve},
                       {"cumulative_flops", cumulative_flops[in]}});
      if (m.passkey.is_object()) {
        if (grids == 0) {
          grid = m.passkey;
        } else if (grid["seq_lens"] == m.passkey["seq_lens"] &&
                   grid["depths"] == m.passkey["depths"]) {
          for (size_t i = 0; i < grid["accuracy"].size(); ++i)
            for (size_t j = 0; j < grid["accuracy"][i].size(); ++j)
              grid["accuracy"][i][j] =
                  grid["accuracy"][i][j].get<double>() + m.passkey["accuracy"][i][j].get<double>();
        }
        ++grids;
      }
    }
    if (grids > 1)
      for (auto& row : grid["accuracy"])
        for (auto& a : row) a = a.get<double>() / grids;
    jvariants.push_back({{"name", v.name},
                         {"kind", kind_name(v.kind)},
                         {"parent", v.parent},
                         {"status", status},
                         {"overrides", changed},
                         {"metrics", jm},
                         {"passkey", grids ? grid : json(nullptr)},
                         {"instances", jinst}});
  }
  md << "\nColumns: tok/s and step ms are the medians over training's logged windows (the "
        "first logged step, with the warm-up, left out); peak MiB is the largest resident set of the training process; FLOPs are "
        "the model FLOPs spent in training (6N + attention, per token, times tokens seen; a "
        "follow-up counts its own fine-tune only); train s / eval s are wall times; "
        "ppl@T is the perplexity at evaluation length T; passkey is the mean accuracy over the "
        "grid, passkey_dD at needle depth D over lengths, passkey@T at length T over depths; "
        "recall likewise.\n";
  if (!failures.empty()) md << "\n## Failed or not run\n\n" << failures;
  if (plots) {
    md << "\n![perplexity vs length](ppl_vs_length.png)\n![passkey](passkey.png)\n"
          "![loss curves](loss_curves.png)\n![cost vs quality](cost_vs_quality.png)\n";
  }
  make_dirs(s.dir);
  write_file_atomic(s.dir + "/summary.csv", csv.str());
  write_file_atomic(s.dir + "/summary.md", md.str());
  json j = {{"sweep", s.name},
            {"file", s.file},
            {"columns", columns},
            {"seeds", s.seeds},
            {"variants", jvariants}};
  write_file_atomic(s.dir + "/summary.json", j.dump(1) + "\n");
  if (plots) {
    const std::string script = find_launch_file("plot_ablation.py");
    const std::string cmd = "/usr/bin/python3 '" + script + "' '" + s.dir + "/summary.json'";
    if (std::system((cmd + " >/dev/null").c_str()) != 0)
      std::cerr << "ablate: the plots were not written (" << cmd << " failed); the CSV and "
                << "markdown are complete\n";
  }
}

// ---- the sweep ------------------------------------------------------------------------

void select_only(std::vector<Instance>& all, const std::vector<std::string>& only,
                 const Sweep& s) {
  if (only.empty()) return;
  std::vector<std::string> known;
  for (const auto& v : s.variants) known.push_back(v.name);
  for (const auto& in : all)
    if (in.name != in.v->name) known.push_back(in.name);
  for (auto& in : all) in.selected = false;
  for (const auto& want : only) {
    bool hit = false;
    for (auto& in : all)
      if (in.name == want || in.v->name == want) in.selected = hit = true;
    if (!hit)
      throw UsageError("--only " + want + ": no such variant in " + s.file + "; did you mean '" +
                       closest_match(want, known) + "'? (variants: " + join(known, ", ") + ")");
  }
  // what the selected ones need
  for (size_t i = all.size(); i-- > 0;)
    if (all[i].selected && all[i].parent >= 0) all[size_t(all[i].parent)].selected = true;
}

bool train_complete(const Instance& in) {
  return in.state.train_status == "complete" && in.state.train_hash == in.train_hash &&
         fs::exists(in.ckpt);
}
bool eval_complete(const Instance& in) {
  return in.state.eval_status == "complete" && in.state.eval_hash == in.eval_hash &&
         fs::exists(in.eval_json());
}

std::string planned_action(const Instance& in) {
  if (in.trains()) {
    if (!in.state.train_hash.empty() && in.state.train_hash != in.train_hash)
      return "start over (resolved config changed)";
    if (!train_complete(in)) {
      if (in.state.train_status == "failed") return "rerun (failed before)";
      if (!list_checkpoints(in.dir).empty()) return "resume training";
      return "train + eval";
    }
  }
  if (!eval_complete(in)) return in.trains() ? "eval (training complete)" : "eval";
  return "skip (complete)";
}

int64_t checkpoint_params(const std::string& ckpt) {
  try {
    int64_t n = 0;
    for (const auto& t : inspect_checkpoint(ckpt).model) n += t.numel;
    return n;
  } catch (const Error&) {
    return 0;
  }
}

}  // namespace

int run_ablate_command(const AblateOptions& o) {
  if (parallel_runtime().world->size() > 1)
    throw UsageError("run ablate as one process (not under mpirun): launch: {np: N} in the "
                     "sweep runs each variant under mpirun with N ranks");
  Sweep s = read_sweep(o.sweep, o.sets);
  SweepReader reader(o.sweep);
  std::vector<Instance> all = expand(s, reader);
  select_only(all, o.only, s);
  for (auto& in : all) in.state = read_state(in.state_path());

  const size_t n_sel = size_t(std::count_if(all.begin(), all.end(),
                                            [](const Instance& i) { return i.selected; }));
  if (o.dry_run) {
    std::cout << "sweep " << s.name << " (" << o.sweep << "): " << all.size() << " runs"
              << (n_sel != all.size() ? ", " + std::to_string(n_sel) + " selected" : "")
              << ", every resolved config valid; directory " << s.dir << "\n";
    size_t i = 0;
    for (const auto& in : all) {
      if (!in.selected) continue;
      std::cout << "  [" << ++i << "/" << n_sel << "] " << in.name << " (" << kind_name(in.v->kind)
                << ", config " << in.train_hash.substr(0, 8) << "): " << planned_action(in)
                << "\n      " << (in.changed.empty() ? "(the base config)" : in.changed) << "\n";
    }
    return kExitOk;
  }

  struct sigaction sa = {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int = {}, old_term = {};
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);

  std::string why = "--no-plots";
  const bool plots = o.plots && plots_available(&why);
  if (!plots && o.plots)
    std::cerr << "ablate: plots will not be drawn: " << why
              << "; summary.md and summary.csv are written\n";
  make_dirs(s.dir);
  // One ablate per sweep directory: a second would restart the first's runs.
  const std::string lock_path = s.dir + "/.ablate.lock";
  const int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd < 0) throw IoError("cannot create " + lock_path + " (is " + s.dir + " writable?)");
  if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0)
    throw Error(kExitOther, "another `ringtrain ablate` is running the sweep in " + s.dir +
                                " (it holds " + lock_path + "); wait for it or stop it first");
  std::cerr << "ablate: sweep " << s.name << ", " << n_sel << " runs in " << s.dir
            << " (every resolved config validated)\n";

  // Children share the machine with each other's runs and whatever else runs
  // there: OpenMP threads sleep at barriers rather than spin (as launch/local.sh).
  setenv("OMP_WAIT_POLICY", "passive", 0);
  const std::vector<std::string> prefix = launch_prefix(s.np);
  std::vector<std::pair<Kind, double>> durations;  // of runs that ran in this invocation
  size_t pos = 0, failed = 0;
  bool interrupted = false;
  for (Instance& in : all) {
    if (!in.selected) continue;
    if (g_signal_count > 0) {  // arrived between children (while writing the report)
      interrupted = true;
      break;
    }
    ++pos;
    const std::string tag = "[ablate " + std::to_string(pos) + "/" + std::to_string(n_sel) +
                            "] " + in.name;
    // ETA: the mean duration of the runs of each kind finished in this
    // invocation (train / follow-up / eval-only), else of all, times what is left.
    auto eta = [&]() {
      std::map<Kind, std::pair<double, int>> by_kind;
      double sum = 0;
      for (const auto& [k, d] : durations) by_kind[k].first += d, by_kind[k].second++, sum += d;
      if (durations.empty()) return std::string();
      double left = 0;
      for (const Instance& x : all)
        if (x.selected && x.outcome.empty() && &x != &in &&
            !((!x.trains() || train_complete(x)) && eval_complete(x))) {
          auto it = by_kind.find(x.v->kind);
          left += it != by_kind.end() ? it->second.first / it->second.second
                                      : sum / double(durations.size());
        }
      if (left == 0) return std::string();
      return " | ETA " + format_duration(left);
    };
    if (in.parent >= 0 && all[size_t(in.parent)].outcome != "complete") {
      in.outcome = "blocked";
      ++failed;
      std::cerr << tag << ": not run: " << all[size_t(in.parent)].name << " did not complete\n";
      continue;
    }
    if ((!in.trains() || train_complete(in)) && eval_complete(in)) {
      in.outcome = "complete";
      std::cerr << tag << ": complete, skipped\n";
      continue;
    }
    make_dirs(in.dir);
    const auto t0 = Clock::now();
    auto fail = [&](const char* phase, int code) {
      in.state.failed_phase = phase;
      in.state.log_tail = tail_lines(in.log(), 15);
      in.outcome = "failed";
      ++failed;
      std::cerr << tag << ": FAILED: " << phase << " exited with code " << code << "; last lines of "
                << in.log() << ":\n";
      for (const auto& l : in.state.log_tail) std::cerr << "    " << l << "\n";
    };
    bool ok = true;
    if (in.trains() && !train_complete(in)) {
      std::string note;
      if (!in.state.train_hash.empty() && in.state.train_hash != in.train_hash) {
        note = "resolved config changed (hash " + in.state.train_hash + " -> " + in.train_hash +
               "): removed the old checkpoints, metrics and evaluation; starting over";
        std::error_code ec;
        for (const char* p : {"checkpoints", "metrics.jsonl", "config.yaml", "eval.json"})
          fs::remove_all(fs::path(in.dir) / p, ec);
        in.state = State{};
      } else if (!list_checkpoints(in.dir).empty()) {
        note = "resuming from " + list_checkpoints(in.dir).back().second;
      } else if (in.state.train_status == "failed") {
        note = "rerunning (failed before with exit code " + std::to_string(in.state.train_exit) +
               ")";
      }
      const std::string cfg_path = in.dir + "/variant.yaml";
      write_file_atomic(cfg_path, "# written by ringtrain ablate " + o.sweep + ": variant " +
                                      in.name + " (config hash " + in.train_hash + ")\n" +
                                      in.config_yaml);
      in.state.train_hash = in.train_hash;
      in.state.train_status = "running";
      in.state.eval_status = "";
      write_state(in);
      std::vector<std::string> argv = prefix;
      argv.insert(argv.end(), {"train", cfg_path});
      append_log(in.log(), "=== ablate " + now_text() + ": train" +
                               (note.empty() ? "" : " (" + note + ")") + "\n$ " +
                               command_text(argv) + "\n");
      std::cerr << tag << ": training" << (note.empty() ? "" : " (" + note + ")") << ", log "
                << in.log() << eta() << "\n";
      const auto tt = Clock::now();
      ChildResult r = run_child(argv, in.log());
      in.state.train_wall_s += std::chrono::duration<double>(Clock::now() - tt).count();
      in.state.train_exit = r.exit_code;
      if (r.exit_code == 0 && fs::exists(in.ckpt)) {
        in.state.train_status = "complete";
        in.state.params = checkpoint_params(in.ckpt);
      } else if (r.interrupted) {
        in.state.train_status = "interrupted";
        in.outcome = "interrupted";
        interrupted = true;
      } else {
        in.state.train_status = "failed";
        if (r.exit_code == 0) {
          append_log(in.log(), "ablate: train exited 0 but wrote no final checkpoint " + in.ckpt +
                                   "\n");
          in.state.train_exit = r.exit_code = 1;
        }
        fail("train", r.exit_code);
      }
      write_state(in);
      ok = in.state.train_status == "complete";
    }
    if (!in.trains() && in.state.params == 0) in.state.params = all[size_t(in.parent)].state.params;
    if (ok && !interrupted && g_signal_count > 0) interrupted = true;
    if (ok && !interrupted && !eval_complete(in)) {
      in.state.eval_hash = in.eval_hash;
      in.state.eval_status = "running";
      write_state(in);
      std::vector<std::string> argv = prefix;
      argv.push_back("eval");
      argv.insert(argv.end(), in.eval_args.begin(), in.eval_args.end());
      append_log(in.log(), "=== ablate " + now_text() + ": eval\n$ " + command_text(argv) + "\n");
      std::cerr << tag << ": evaluating, log " << in.log() << eta() << "\n";
      const auto te = Clock::now();
      ChildResult r = run_child(argv, in.log());
      in.state.eval_wall_s += std::chrono::duration<double>(Clock::now() - te).count();
      in.state.eval_exit = r.exit_code;
      if (r.exit_code == 0 && fs::exists(in.eval_json())) {
        in.state.eval_status = "complete";
      } else if (r.interrupted) {
        in.state.eval_status = "interrupted";
        in.outcome = "interrupted";
        interrupted = true;
      } else {
        in.state.eval_status = "failed";
        fail("eval", r.exit_code);
      }
      write_state(in);
    }
    if (ok && in.outcome.empty() && !interrupted) {
      in.outcome = "complete";
      in.state.failed_phase.clear();
      in.state.log_tail.clear();
      write_state(in);
      const double d = std::chrono::duration<double>(Clock::now() - t0).count();
      durations.push_back({in.v->kind, d});
      std::cerr << tag << ": complete in " << format_duration(d) << eta() << "\n";
    }
    write_report(s, all, plots);
    if (interrupted) break;
  }
  if (!interrupted) write_report(s, all, plots);
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (interrupted) {
    std::cerr << "ablate: stopped by " << (g_signal == SIGINT ? "SIGINT" : "SIGTERM")
              << "; the running variant saved its state. Run the same command again to "
                 "continue; report so far: "
              << s.dir << "/summary.md\n";
    return kExitOther;
  }
  std::cerr << "ablate: " << (n_sel - failed) << " of " << n_sel << " runs complete"
            << (failed ? ", " + std::to_string(failed) + " failed or not run" : "")
            << "; report: " << s.dir << "/summary.md, summary.csv\n";
  return failed ? kExitOther : kExitOk;
}

}  // namespace rt
