// Strict YAML config parser (SPEC §2).
//
// Flow: YAML text -> YAML tree -> `--set` overrides applied onto the tree ->
// one pass of section readers (types, ranges, unknown keys) -> resolved
// defaults -> cross-field checks. Overrides go through exactly the same readers
// as the file, so their validation is identical; only the location in
// messages differs ("config.yaml:12" vs "--set a.b=c").
//
// The schema is one table per section (a Section of Fields: key, member, kind
// and range, in order), declared once: it gives the section's valid keys, reads
// it and writes it (config_to_yaml), and through the writer it is what
// tests/trainer/config/test_config_docs.cpp checks docs/config.md against. Rules across
// fields are explicit code after a table's pass. Every section is read by a
// MapReader over one YAML mapping: it is given the mapping's valid keys up
// front, rejects unknown and duplicate keys with a did-you-mean, and converts
// each value with a typed getter that range-checks it.
//
// Decisions:
//  - `null` is accepted only where the struct has optional/auto semantics
//    (run.dir, model.num_key_value_heads, model.head_dim, model.rope_scaling,
//    model.memory, model.memory.layers (null or [] = the default layer),
//    data.val, data.tokenizer, parallel.data_parallel, checkpoint.init_from,
//    eval.passkey and the optional rope_scaling/data-source fields); anywhere
//    else null is a type error.
//  - schedule.warmup_steps > train.max_steps only warns (short test runs keep
//    the default warmup); min_lr > lr is an error.
//  - data.val's seed_offset defaults to 1 (train's to 0), so synthetic
//    validation data is a different stream from training data.
//  - model.memory: the type decides the valid keys; a key of another type is
//    an error naming its type (not a did-you-mean). knn and compressive with
//    parallel.context_parallel > 1 are refused here; rmt over a ring is refused
//    by the trainer.
//  - rope_scaling.original_max_position_embeddings is resolved to
//    model.max_position_embeddings when absent, so the written config pins it.
#include "trainer/config/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <sstream>
#include <utility>

#include "common/errors.h"
#include "common/strings.h"
#include "common/log.h"
#include "data/synthetic.h"
#include "parallel/parallel_dims.h"

namespace rt {
namespace {

// ---- allowed values: each list lives here and only here --------------------
const std::vector<std::string> kPositions = {"rope", "alibi", "none"};
const std::vector<std::string> kRopeTypes = {"linear", "ntk",    "dynamic",
                                             "yarn",   "llama3", "longrope"};
const std::vector<std::string> kMemoryTypes = {"rmt", "knn", "compressive"};
const std::vector<std::string> kKnnIndexes = {"exact", "flat", "ivf", "hnsw"};
const std::vector<std::string> kCompressions = {"mean", "conv"};
const std::vector<std::string> kSyntheticGenerators = {"passkey", "recall"};
const std::vector<std::string> kSyntheticLoss = {"answer", "all"};
const std::vector<std::string> kTokenFileExtensions = {".h5", ".bin", ".txt"};
const std::vector<std::string> kOptimizers = {"adamw", "sgd"};
const std::vector<std::string> kSchedules = {"constant", "linear", "cosine"};
const std::vector<std::string> kNoDecayGroups = {"norms", "embeddings"};
const std::vector<std::string> kPrecisions = {"auto", "fp32", "bf16"};
const std::vector<std::string> kRingLayouts = {"zigzag", "contiguous"};
const std::vector<std::string> kDevices = {"auto", "cpu", "cuda"};
const std::vector<std::string> kShardOptimizer = {"auto", "true", "false"};

constexpr int64_t kIntMax = INT_MAX;
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kInt64Min = std::numeric_limits<int64_t>::min();

// ---- small string helpers ---------------------------------------------------
bool contains(const std::vector<std::string>& items, const std::string& s) {
  return std::find(items.begin(), items.end(), s) != items.end();
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string closest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (const auto& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  return best;
}

std::string dotted(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

// Shortest text that reads back as the same double ("0.0003", "1e-05").
std::string shortest_double(double v) {
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, res.ptr);
}

// Shortest text that reads back as the same double, with a '.' so that
// PyYAML (YAML 1.1) also reads it as a float: 1e-05 -> 1.0e-05, 10000 -> 10000.0.
std::string format_double(double v) {
  std::string s = shortest_double(v);
  if (s.find_first_of(".ni") == std::string::npos) {
    const size_t e = s.find('e');
    if (e == std::string::npos)
      s += ".0";
    else
      s.insert(e, ".0");
  }
  return s;
}

// ---- scalar parsing (strict: the whole text must be the number) -------------
template <class T>
bool parse_number(std::string s, T& out) {
  if (!s.empty() && s[0] == '+') s.erase(0, 1);
  if (s.empty()) return false;
  const auto res = std::from_chars(s.data(), s.data() + s.size(), out);
  return res.ec == std::errc() && res.ptr == s.data() + s.size();
}

bool parse_bool(const std::string& s, bool& out) {
  static const std::vector<std::string> kTrue = {"true", "True", "TRUE", "yes", "on"};
  static const std::vector<std::string> kFalse = {"false", "False", "FALSE", "no", "off"};
  if (contains(kTrue, s)) return out = true, true;
  if (contains(kFalse, s)) return out = false, true;
  return false;
}

// What a node is, for "got ..." in messages.
std::string describe(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return "null";
  if (n.IsScalar()) return "'" + n.Scalar() + "'";
  if (n.IsSequence()) return "a list of " + std::to_string(n.size());
  return "a mapping";
}

// ---- where a key came from --------------------------------------------------
// Maps dotted key paths to "config.yaml:12" or to the `--set` that wrote them.
// A path without its own entry reports its nearest recorded parent.
class Origins {
 public:
  explicit Origins(std::string file, ConfigUse use = ConfigUse::kTrain)
      : file_(std::move(file)), use_(use) {}

  // What the config is read for (data.train is optional for kNoTraining).
  ConfigUse use() const { return use_; }

  void set_line(const std::string& path, const YAML::Mark& mark) {
    if (mark.line >= 0) lines_[path] = mark.line + 1;
  }
  void set_override(const std::string& path, const std::string& label) {
    overrides_[path] = label;
  }

  std::string where(const std::string& path) const {
    // Anything at or under an overridden path came from that override.
    for (std::string p = path; !p.empty(); p = parent(p))
      if (auto it = overrides_.find(p); it != overrides_.end()) return it->second;
    for (std::string p = path; !p.empty(); p = parent(p))
      if (auto it = lines_.find(p); it != lines_.end())
        return file_ + ":" + std::to_string(it->second);
    return file_;
  }

  // Throws "<where>: <msg>".
  [[noreturn]] void fail(const std::string& path, const std::string& msg) const {
    throw UsageError(where(path) + ": " + msg);
  }

 private:
  static std::string parent(const std::string& p) {
    const size_t cut = p.find_last_of(".[");
    return cut == std::string::npos ? "" : p.substr(0, cut);
  }

  std::string file_;
  ConfigUse use_;
  std::map<std::string, int> lines_;
  std::map<std::string, std::string> overrides_;
};

// ---- typed value conversion (one helper per field type) ----------------------
// Each takes the value node and its dotted path, and throws a UsageError that
// names the location, the key, the value and what is valid.

// Inclusive/exclusive bounds of a double field, with their wording.
struct Bounds {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false;
  bool hi_open = false;

  bool ok(double v) const {
    return (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
  }
  std::string text() const {
    if (std::isinf(hi)) return std::string(lo_open ? "> " : ">= ") + shortest_double(lo);
    return "in " + std::string(lo_open ? "(" : "[") + shortest_double(lo) + ", " +
           shortest_double(hi) + (hi_open ? ")" : "]");
  }
};
Bounds at_least(double lo) { return {lo, std::numeric_limits<double>::infinity(), false, false}; }
Bounds above(double lo) { return {lo, std::numeric_limits<double>::infinity(), true, false}; }
Bounds closed(double lo, double hi) { return {lo, hi, false, false}; }
Bounds half_open(double lo, double hi) { return {lo, hi, false, true}; }

// Below the minimum: ">= lo" (the type's own maximum is no news); above the
// maximum: the whole range, so that the upper bound is named.
std::string int_range_text(int64_t lo, int64_t hi, bool above_max = false) {
  if (!above_max && (hi == kInt64Max || hi == kIntMax)) return ">= " + std::to_string(lo);
  return "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
}

// An integer too large for int64 ("99999999999999999999"): all digits.
bool is_integer_text(std::string s) {
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) s.erase(0, 1);
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
}

int64_t to_int(const Origins& o, const YAML::Node& n, const std::string& path, int64_t lo,
               int64_t hi) {
  int64_t v = 0;
  if (n.IsScalar() && !parse_number(n.Scalar(), v) && is_integer_text(n.Scalar()))
    o.fail(path, path + ": must be " + int_range_text(lo, hi, n.Scalar()[0] != '-') + ", got " +
                     n.Scalar());
  if (!n.IsScalar() || !parse_number(n.Scalar(), v))
    o.fail(path, path + ": expected an integer, got " + describe(n));
  if (v < lo || v > hi)
    o.fail(path, path + ": must be " + int_range_text(lo, hi, v > hi) + ", got " + n.Scalar());
  return v;
}

uint64_t to_uint64(const Origins& o, const YAML::Node& n, const std::string& path) {
  uint64_t v = 0;
  if (!n.IsScalar() || !parse_number(n.Scalar(), v))
    o.fail(path, path + ": expected an integer in [0, " +
                     std::to_string(std::numeric_limits<uint64_t>::max()) + "], got " +
                     describe(n));
  return v;
}

double to_double(const Origins& o, const YAML::Node& n, const std::string& path,
                 const Bounds& bounds) {
  double v = 0;
  if (!n.IsScalar() || !parse_number(n.Scalar(), v))
    o.fail(path, path + ": expected a number, got " + describe(n));
  if (!std::isfinite(v)) o.fail(path, path + ": must be a finite number, got " + n.Scalar());
  if (!bounds.ok(v))
    o.fail(path, path + ": must be " + bounds.text() + ", got " + n.Scalar());
  return v;
}

bool to_bool(const Origins& o, const YAML::Node& n, const std::string& path) {
  bool v = false;
  if (!n.IsScalar() || !parse_bool(n.Scalar(), v))
    o.fail(path, path + ": expected true or false, got " + describe(n));
  return v;
}

std::string to_string(const Origins& o, const YAML::Node& n, const std::string& path) {
  if (!n.IsScalar()) o.fail(path, path + ": expected a string, got " + describe(n));
  if (n.Scalar().empty()) o.fail(path, path + ": must not be empty");
  return n.Scalar();
}

std::string to_enum(const Origins& o, const YAML::Node& n, const std::string& path,
                    const std::vector<std::string>& allowed) {
  if (!n.IsScalar() || !contains(allowed, n.Scalar()))
    o.fail(path, path + ": must be one of " + join(allowed, " | ") + ", got " + describe(n));
  return n.Scalar();
}

// ---- one YAML mapping, read strictly ------------------------------------------
class MapReader {
 public:
  // `node` must be a mapping; absent or null means "all defaults". Unknown and
  // duplicate keys are rejected here, before any value is looked at, so a typo
  // is reported as a typo rather than as a missing value.
  // `foreign`: keys valid in this mapping only under another setting (a key
  // of another memory type), each with its message; they are reported with
  // it instead of as a typo.
  MapReader(Origins& o, const YAML::Node& node, std::string path,
            std::vector<std::string> keys,
            const std::map<std::string, std::string>& foreign = {})
      : o_(o), path_(std::move(path)), keys_(std::move(keys)) {
    if (!node.IsDefined() || node.IsNull()) return;
    if (!node.IsMap())
      o_.fail(path_, (path_.empty() ? "the config" : path_) + ": expected a mapping of " +
                         join(keys_, ", ") + "; got " + describe(node));
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string key = it->first.IsScalar() ? it->first.Scalar() : describe(it->first);
      const std::string full = dotted(path_, key);
      if (values_.count(key)) {
        o_.set_line(full + "#dup", it->first.Mark());
        o_.fail(full + "#dup", "duplicate key '" + full + "' (first at " + o_.where(full) + ")");
      }
      o_.set_line(full, it->first.Mark());
      if (!contains(keys_, key)) {
        if (auto f = foreign.find(key); f != foreign.end()) o_.fail(full, f->second);
        const std::string near = closest(key, keys_);
        o_.fail(full, "unknown key '" + full + "'; did you mean '" + dotted(path_, near) +
                          "'? (valid keys" + (path_.empty() ? "" : " in " + path_) + ": " +
                          join(keys_, ", ") + ")");
      }
      values_[key] = it->second;
    }
  }

  const std::string& path() const { return path_; }
  std::string path_of(const std::string& key) const { return dotted(path_, key); }
  bool present(const std::string& key) const { return values_.count(key) != 0; }
  // Present with a non-null value.
  bool has(const std::string& key) const { return present(key) && !values_.at(key).IsNull(); }
  YAML::Node at(const std::string& key) const {
    auto it = values_.find(key);
    return it == values_.end() ? YAML::Node() : it->second;
  }
  Origins& origins() const { return o_; }
  [[noreturn]] void fail(const std::string& key, const std::string& msg) const {
    o_.fail(path_of(key), msg);
  }

  int64_t get_int(const std::string& key, int64_t def, int64_t lo, int64_t hi = kInt64Max) const {
    return present(key) ? to_int(o_, at(key), path_of(key), lo, hi) : def;
  }
  int get_int32(const std::string& key, int def, int lo, int hi = INT_MAX) const {
    return static_cast<int>(get_int(key, def, lo, hi));
  }
  std::optional<int64_t> get_optional_int(const std::string& key, int64_t lo,
                                          int64_t hi = kInt64Max) const {
    if (!has(key)) return std::nullopt;
    return to_int(o_, at(key), path_of(key), lo, hi);
  }
  uint64_t get_uint64(const std::string& key, uint64_t def) const {
    return present(key) ? to_uint64(o_, at(key), path_of(key)) : def;
  }
  double get_double(const std::string& key, double def, const Bounds& b) const {
    return present(key) ? to_double(o_, at(key), path_of(key), b) : def;
  }
  std::optional<double> get_optional_double(const std::string& key, const Bounds& b) const {
    if (!has(key)) return std::nullopt;
    return to_double(o_, at(key), path_of(key), b);
  }
  bool get_bool(const std::string& key, bool def) const {
    return present(key) ? to_bool(o_, at(key), path_of(key)) : def;
  }
  std::string get_string(const std::string& key, const std::string& def) const {
    return present(key) ? to_string(o_, at(key), path_of(key)) : def;
  }
  std::string get_enum(const std::string& key, const std::string& def,
                       const std::vector<std::string>& allowed) const {
    return present(key) ? to_enum(o_, at(key), path_of(key), allowed) : def;
  }

  // Lists: `convert(element_node, element_path)` reads one element.
  template <class T, class Convert>
  std::vector<T> get_list(const std::string& key, const std::vector<T>& def,
                          Convert convert) const {
    if (!present(key)) return def;
    const YAML::Node n = at(key);
    if (!n.IsSequence())
      fail(key, path_of(key) + ": expected a list, got " + describe(n));
    std::vector<T> out;
    for (size_t i = 0; i < n.size(); ++i)
      out.push_back(convert(n[i], path_of(key) + "[" + std::to_string(i) + "]"));
    return out;
  }
  std::vector<int64_t> get_int_list(const std::string& key, const std::vector<int64_t>& def,
                                    int64_t lo) const {
    return get_list<int64_t>(key, def, [&](const YAML::Node& n, const std::string& p) {
      return to_int(o_, n, p, lo, kInt64Max);
    });
  }
  std::vector<double> get_double_list(const std::string& key, const std::vector<double>& def,
                                      const Bounds& b) const {
    return get_list<double>(key, def, [&](const YAML::Node& n, const std::string& p) {
      return to_double(o_, n, p, b);
    });
  }

 private:
  Origins& o_;
  std::string path_;
  std::vector<std::string> keys_;
  std::map<std::string, YAML::Node> values_;
};

// ---- writing ---------------------------------------------------------------------

// Thin layer over YAML::Emitter: one call per key.
class YamlWriter {
 public:
  YamlWriter() { out_.SetNullFormat(YAML::LowerNull); }

  void begin_map() { out_ << YAML::BeginMap; }
  void begin_map(const char* key) { out_ << YAML::Key << key << YAML::Value << YAML::BeginMap; }
  void end_map() { out_ << YAML::EndMap; }

  void put(const char* key, bool v) { out_ << YAML::Key << key << YAML::Value << v; }
  void put(const char* key, int v) { out_ << YAML::Key << key << YAML::Value << v; }
  void put(const char* key, int64_t v) { out_ << YAML::Key << key << YAML::Value << v; }
  void put(const char* key, uint64_t v) { out_ << YAML::Key << key << YAML::Value << v; }
  void put(const char* key, double v) {
    out_ << YAML::Key << key << YAML::Value << format_double(v);
  }
  void put(const char* key, const std::string& v) {
    out_ << YAML::Key << key << YAML::Value << v;  // the emitter quotes "null", "a: b", ...
  }
  void put(const char* key, const char* v) { put(key, std::string(v)); }
  void put_null(const char* key) { out_ << YAML::Key << key << YAML::Value << YAML::Null; }
  template <class T>
  void put(const char* key, const std::optional<T>& v) {
    if (v)
      put(key, *v);
    else
      put_null(key);
  }
  void put(const char* key, const std::vector<double>& v) {
    std::vector<std::string> text;
    for (double d : v) text.push_back(format_double(d));
    put(key, text);
  }
  void put(const char* key, const std::vector<int>& v) {
    out_ << YAML::Key << key << YAML::Value << YAML::Flow << v;
  }
  void put(const char* key, const std::vector<int64_t>& v) {
    out_ << YAML::Key << key << YAML::Value << YAML::Flow << v;
  }
  void put(const char* key, const std::vector<std::string>& v) {
    out_ << YAML::Key << key << YAML::Value << YAML::Flow << v;
  }

  std::string str() const { return std::string(out_.c_str()) + "\n"; }

 private:
  YAML::Emitter out_;
};

// ---- the schema: each key declared once, in a table per section ------------------
// A section's table lists its fields in order: the order of the valid keys
// (in messages), of reading (so, of which error comes first) and of the
// written config. The table drives the MapReader's key list, the reading and
// the writing; a struct's defaults are its member initialisers (a field is read
// into a default-constructed struct, so an absent key keeps the default).
// Rules across fields stay explicit code after the table's pass.
template <class S>
struct Field {
  const char* key;
  std::function<void(const MapReader&, S&)> read;    // empty: read by explicit code
  std::function<void(YamlWriter&, const S&)> write;  // empty: not written
  // Empty: always. Otherwise the values of the section's discriminator (an
  // optimizer's or a memory's type) that the key belongs to: it is written
  // only for those, and read only for those unless given (Section::read).
  std::vector<std::string> only = {};
  // A mapping-valued key: the keys inside it (for config_keys()).
  std::function<std::vector<std::string>()> inner = {};
  // A section that is always there (a heading in the docs, not a key).
  bool heading = false;
};

template <class S>
class Section;

// `f` holds the mapping `sec` (its keys are listed under f's).
template <class S, class T>
Field<S> holding(const Section<T>& sec, Field<S> f) {
  const Section<T>* t = &sec;
  f.inner = [t] { return t->schema_keys(); };
  return f;
}

// The key belongs to these values of the section's discriminator only.
template <class S>
Field<S> only(std::vector<std::string> values, Field<S> f) {
  f.only = std::move(values);
  return f;
}

template <class S>
class Section {
 public:
  Section(std::initializer_list<Field<S>> fields) : fields_(fields) {}
  // A section whose keys depend on the value of `discriminator` (a type).
  Section(std::string S::*discriminator, std::initializer_list<Field<S>> fields)
      : discriminator_(discriminator), fields_(fields) {}

  // Every key of the section and, dotted, of the mappings inside it; a
  // section that is always there is not listed itself (its keys are).
  std::vector<std::string> schema_keys() const {
    std::vector<std::string> out;
    for (const auto& f : fields_) {
      if (!f.heading) out.push_back(f.key);
      if (f.inner)
        for (const std::string& k : f.inner()) out.push_back(std::string(f.key) + "." + k);
    }
    return out;
  }
  // Every key of the section.
  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    for (const auto& f : fields_) out.push_back(f.key);
    return out;
  }
  // The keys that apply to `s` (its discriminator decides them).
  std::vector<std::string> keys_for(const S& s) const {
    std::vector<std::string> out;
    for (const auto& f : fields_)
      if (applies(f, s)) out.push_back(f.key);
    return out;
  }
  // The first key (in table order) given in `r` (`given(key)`) that does not
  // apply to `s`, with the discriminator values it belongs to.
  template <class Given>
  std::optional<std::pair<std::string, std::vector<std::string>>> misplaced(const S& s,
                                                                            Given given) const {
    for (const auto& f : fields_)
      if (!applies(f, s) && given(f.key)) return std::pair{std::string(f.key), f.only};
    return std::nullopt;
  }
  // Each key that does not apply to `s`, with the values it belongs to.
  std::map<std::string, std::vector<std::string>> owners_of_other_keys(const S& s) const {
    std::map<std::string, std::vector<std::string>> out;
    for (const auto& f : fields_)
      if (!applies(f, s)) out[f.key] = f.only;
    return out;
  }
  // A key that does not apply but is given anyway (what the section's own
  // check lets through, e.g. a null) is still read, so its value is checked.
  void read(const MapReader& r, S& s) const {
    for (const auto& f : fields_)
      if (f.read && (applies(f, s) || r.present(f.key))) f.read(r, s);
  }
  void write(YamlWriter& w, const S& s) const {
    for (const auto& f : fields_)
      if (f.write && applies(f, s)) f.write(w, s);
  }
  // A mapping `key:` holding the section.
  void write(YamlWriter& w, const char* key, const S& s) const {
    w.begin_map(key);
    write(w, s);
    w.end_map();
  }

 private:
  bool applies(const Field<S>& f, const S& s) const {
    return f.only.empty() || !discriminator_ || contains(f.only, s.*discriminator_);
  }
  std::string S::*discriminator_ = nullptr;
  std::vector<Field<S>> fields_;
};

// Field makers, one per kind of value: the key, the member, the range.
template <class S>
Field<S> int_field(const char* key, int S::*m, int lo, int hi = INT_MAX) {
  return {key, [=](const MapReader& r, S& s) { s.*m = r.get_int32(key, s.*m, lo, hi); },
          [=](YamlWriter& w, const S& s) { w.put(key, s.*m); }};
}
template <class S>
Field<S> int64_field(const char* key, int64_t S::*m, int64_t lo, int64_t hi = kInt64Max) {
  return {key, [=](const MapReader& r, S& s) { s.*m = r.get_int(key, s.*m, lo, hi); },
          [=](YamlWriter& w, const S& s) { w.put(key, s.*m); }};
}
template <class S>
Field<S> uint64_field(const char* key, uint64_t S::*m) {
  return {key, [=](const MapReader& r, S& s) { s.*m = r.get_uint64(key, s.*m); },
          [=](YamlWriter& w, const S& s) { w.put(key, s.*m); }};
}
template <class S>
Field<S> double_field(const char* key, double S::*m, Bounds b) {
  return {key, [=](const MapReader& r, S& s) { s.*m = r.get_double(key, s.*m, b); },
          [=](YamlWriter& w, const S& s) { w.put(key, s.*m); }};
}
// null (or absent) = std::nullopt.
template <class S>
Field<S> optional_double_field(const char* key, std::optional<double> S::*m, Bounds b) {
  return {key, [=](const MapReader& r, S& s) { s.*m = r.get_optional_double(key, b); },
          [=](YamlWriter& w, const S& s) { w.put(key, s.*m); }};
}
// null (or absent) = std::nullopt.
template <class S>
Field<S> optional_int64_field(const char* key, std::optional<int64_t> S::*m, int64_t lo,
                              int64_t hi = kInt64Max) {
  return {key, [=](const MapReader& r, S& s) { s.*m = r.get_optional_int(key, lo, hi); },
          [=](YamlWriter& w, const S& s) { w.put(key, s.*m); }};
}
template <class S>
Field<S> bool_field(const char* key, bool S::*m) {
  return {key, [=](const MapReader& r, S& s) { s.*m = r.get_bool(key, s.*m); },
          [=](YamlWriter& w, const S& s) { w.put(key, s.*m); }};
}
template <class S>
Field<S> enum_field(const char* key, std::string S::*m, const std::vector<std::string>& allowed) {
  const std::vector<std::string>* a = &allowed;
  return {key, [=](const MapReader& r, S& s) { s.*m = r.get_enum(key, s.*m, *a); },
          [=](YamlWriter& w, const S& s) { w.put(key, s.*m); }};
}
template <class S>
Field<S> string_field(const char* key, std::string S::*m) {
  return {key, [=](const MapReader& r, S& s) { s.*m = r.get_string(key, s.*m); },
          [=](YamlWriter& w, const S& s) { w.put(key, s.*m); }};
}
// A path, or null (= empty: none).
template <class S>
Field<S> path_or_null_field(const char* key, std::string S::*m) {
  return {key,
          [=](const MapReader& r, S& s) { s.*m = r.has(key) ? r.get_string(key, "") : ""; },
          [=](YamlWriter& w, const S& s) {
            if ((s.*m).empty())
              w.put_null(key);
            else
              w.put(key, s.*m);
          }};
}
template <class S>
Field<S> int64_list_field(const char* key, std::vector<int64_t> S::*m, int64_t lo) {
  return {key, [=](const MapReader& r, S& s) { s.*m = r.get_int_list(key, s.*m, lo); },
          [=](YamlWriter& w, const S& s) { w.put(key, s.*m); }};
}
template <class S>
Field<S> double_list_field(const char* key, std::vector<double> S::*m, Bounds b) {
  return {key, [=](const MapReader& r, S& s) { s.*m = r.get_double_list(key, s.*m, b); },
          [=](YamlWriter& w, const S& s) { w.put(key, s.*m); }};
}
template <class S>
Field<S> enum_list_field(const char* key, std::vector<std::string> S::*m,
                         const std::vector<std::string>& allowed) {
  const std::vector<std::string>* a = &allowed;
  return {key,
          [=](const MapReader& r, S& s) {
            s.*m = r.get_list<std::string>(key, s.*m,
                                           [&](const YAML::Node& n, const std::string& p) {
                                             return to_enum(r.origins(), n, p, *a);
                                           });
          },
          [=](YamlWriter& w, const S& s) { w.put(key, s.*m); }};
}
// An optional sub-mapping (null or absent: none), read and written by its own
// section.
template <class S, class T>
Field<S> optional_section_field(const char* key, std::optional<T> S::*m, const Section<T>& sec) {
  const Section<T>* t = &sec;
  return holding(sec, Field<S>{key,
          [=](const MapReader& r, S& s) {
            if (!r.has(key)) return;
            const MapReader sub(r.origins(), r.at(key), r.path_of(key), t->keys());
            T v;
            t->read(sub, v);
            s.*m = v;
          },
          [=](YamlWriter& w, const S& s) {
            if (s.*m)
              t->write(w, key, *(s.*m));
            else
              w.put_null(key);
          }});
}
// A sub-mapping that is always there (absent or null: all defaults).
template <class S, class T>
Field<S> section_field(const char* key, T S::*m, const Section<T>& sec) {
  const Section<T>* t = &sec;
  Field<S> f = holding(sec, Field<S>{key,
                                     [=](const MapReader& r, S& s) {
                                       const MapReader sub(r.origins(), r.at(key),
                                                           r.path_of(key), t->keys());
                                       t->read(sub, s.*m);
                                     },
                                     [=](YamlWriter& w, const S& s) { t->write(w, key, s.*m); }});
  f.heading = true;
  return f;
}

// `f`, not read when `skip(r)` (it keeps its default).
template <class S>
Field<S> read_unless(bool (*skip)(const MapReader&), Field<S> f) {
  f.read = [skip, read = f.read](const MapReader& r, S& s) {
    if (!skip(r)) read(r, s);
  };
  return f;
}

// A section read from its mapping (absent or null: all defaults).
template <class S>
S read_section(Origins& o, const YAML::Node& node, const std::string& path,
               const Section<S>& sec) {
  const MapReader r(o, node, path, sec.keys());
  S s;
  sec.read(r, s);
  return s;
}

// ---- sections -----------------------------------------------------------------

const Section<RunConfig> kRunSection = {
    {"name",
     [](const MapReader& r, RunConfig& c) {
       c.name = r.get_string("name", c.name);
       // run.name names a directory under runs/: one path component.
       if (c.name.empty() || c.name.find('/') != std::string::npos ||
           c.name.find("..") != std::string::npos || c.name == ".")
         r.fail("name", "run.name '" + c.name +
                            "' must be a plain name (no '/', no '..', not "
                            "empty); to put the run somewhere else, set run.dir");
     },
     [](YamlWriter& w, const RunConfig& c) { w.put("name", c.name); }},
    {"dir",
     [](const MapReader& r, RunConfig& c) {
       c.dir = r.has("dir") ? r.get_string("dir", "") : "runs/" + c.name;
       // Both given and pointing at different runs: run.dir wins. Say so, since
       // a copied resolved config with a new run.name would otherwise append to
       // the old run silently.
       // (<...>/<sweep>/<variant> named <sweep>-<variant>, as ablate names
       // its runs, agrees.)
       const std::filesystem::path dir = std::filesystem::path(c.dir).lexically_normal();
       const std::string parent = dir.parent_path().filename().string();
       if (r.has("dir") && r.has("name") && c.dir != "runs/" + c.name &&
           dir.filename() != c.name && parent != c.name &&
           parent + "-" + dir.filename().string() != c.name)
         log_info("%s: run.dir (%s) and run.name (%s, default dir runs/%s) disagree: run.dir "
                  "wins, the run uses %s; drop run.dir to use runs/%s",
                  r.origins().where("run.dir").c_str(), c.dir.c_str(), c.name.c_str(),
                  c.name.c_str(), c.dir.c_str(), c.name.c_str());
     },
     [](YamlWriter& w, const RunConfig& c) {
       // Only a run.dir other than the default runs/<name>: a copy of this config
       // renamed with run.name must start a new run, not resume this one.
       if (c.dir != "runs/" + c.name) w.put("dir", c.dir);
     }},
    uint64_field("seed", &RunConfig::seed),
};

const Section<RopeScalingConfig> kRopeScalingSection = {
    {"rope_type",
     [](const MapReader& r, RopeScalingConfig& c) {
       if (!r.present("rope_type") && !r.present("type"))
         r.fail("rope_type", r.path_of("rope_type") + " is required: one of " +
                                 join(kRopeTypes, " | ") + ", e.g. {rope_type: yarn, factor: 4}");
       const std::string key = r.present("rope_type") ? "rope_type" : "type";
       c.rope_type = r.get_enum(key, c.rope_type, kRopeTypes);
       if (r.present("rope_type") && r.present("type") &&
           r.get_enum("type", c.rope_type, kRopeTypes) != c.rope_type)
         r.fail("type", r.path_of("type") + "(" + r.at("type").Scalar() + ") contradicts " +
                            r.path_of("rope_type") + "(" + c.rope_type + "); keep only rope_type");
     },
     [](YamlWriter& w, const RopeScalingConfig& c) { w.put("rope_type", c.rope_type); }},
    // HF's legacy spelling of `rope_type`: read with it, never written.
    {"type", {}, {}},
    {"factor",
     [](const MapReader& r, RopeScalingConfig& c) {
       c.factor =
           r.get_double("factor", c.factor, c.rope_type == "longrope" ? above(0) : at_least(1));
     },
     [](YamlWriter& w, const RopeScalingConfig& c) { w.put("factor", c.factor); }},
    // Resolved to model.max_position_embeddings when absent (read_rope_scaling).
    optional_int64_field("original_max_position_embeddings",
                         &RopeScalingConfig::original_max_position_embeddings, 1, kIntMax),
    double_field("beta_fast", &RopeScalingConfig::beta_fast, above(0)),
    double_field("beta_slow", &RopeScalingConfig::beta_slow, above(0)),
    optional_double_field("mscale", &RopeScalingConfig::mscale, above(0)),
    optional_double_field("mscale_all_dim", &RopeScalingConfig::mscale_all_dim, above(0)),
    optional_double_field("attention_factor", &RopeScalingConfig::attention_factor, above(0)),
    double_field("low_freq_factor", &RopeScalingConfig::low_freq_factor, above(0)),
    double_field("high_freq_factor", &RopeScalingConfig::high_freq_factor, above(0)),
    double_list_field("short_factor", &RopeScalingConfig::short_factor, above(0)),
    double_list_field("long_factor", &RopeScalingConfig::long_factor, above(0)),
};

RopeScalingConfig read_rope_scaling(const MapReader& parent, int max_position_embeddings) {
  const MapReader r(parent.origins(), parent.at("rope_scaling"), parent.path_of("rope_scaling"),
                    kRopeScalingSection.keys());
  RopeScalingConfig c;
  kRopeScalingSection.read(r, c);
  if (!c.original_max_position_embeddings)
    c.original_max_position_embeddings = max_position_embeddings;
  if (c.rope_type == "llama3" && !(c.high_freq_factor > c.low_freq_factor))
    r.fail("high_freq_factor", r.path_of("high_freq_factor") + "(" +
                                   shortest_double(c.high_freq_factor) + ") must be > " +
                                   r.path_of("low_freq_factor") + "(" +
                                   shortest_double(c.low_freq_factor) + ") for llama3");
  return c;
}

// The keys of each memory type (docs/memory.md): `only` names the types of a
// key; a key of another type is an error that names its type. model.memory.layers
// needs model.num_hidden_layers and is read by read_memory.
const Section<MemoryConfig> kMemorySection = {
    &MemoryConfig::type,
    {
        enum_field("type", &MemoryConfig::type, kMemoryTypes),
        only({"rmt"}, int_field("num_tokens", &MemoryConfig::num_tokens, 1)),
        int_field("segment_length", &MemoryConfig::segment_length, 1),
        only({"rmt"}, int_field("bptt_segments", &MemoryConfig::bptt_segments, -1)),
        only({"knn", "compressive"},
             Field<MemoryConfig>{"layers", {},
                                 [](YamlWriter& w, const MemoryConfig& c) {
                                   w.put("layers", c.layers);
                                 }}),
        only({"knn"}, int_field("memory_size", &MemoryConfig::memory_size, 1)),
        only({"knn"}, int_field("top_k", &MemoryConfig::top_k, 1)),
        only({"knn"}, enum_field("index", &MemoryConfig::index, kKnnIndexes)),
        only({"compressive"}, int_field("memory_segments", &MemoryConfig::memory_segments, 0)),
        only({"compressive"}, int_field("rate", &MemoryConfig::rate, 2)),
        only({"compressive"}, int_field("levels", &MemoryConfig::levels, 1)),
        only({"compressive"}, int_field("compressed_size", &MemoryConfig::compressed_size, 1)),
        only({"compressive"}, enum_field("compression", &MemoryConfig::compression, kCompressions)),
    }};

// The default memory layer of knn and compressive: one layer at (3L-1)/4.
int default_memory_layer(int num_hidden_layers) { return (3 * num_hidden_layers - 1) / 4; }

// model.memory.layers: distinct 0-based layer indices below num_hidden_layers;
// absent, null or [] resolves to the default layer.
std::vector<int> read_memory_layers(const MapReader& r, int num_hidden_layers) {
  const int L = num_hidden_layers;
  const std::vector<int> layers = r.has("layers")
      ? r.get_list<int>("layers", {},
                        [&](const YAML::Node& n, const std::string& p) {
                          const int64_t v = to_int(r.origins(), n, p, INT_MIN, INT_MAX);
                          if (v < 0 || v >= L)
                            r.origins().fail(p, p + ": must be in [0, " + std::to_string(L - 1) +
                                                    "] (a 0-based layer index below "
                                                    "model.num_hidden_layers(" +
                                                    std::to_string(L) + ")), got " + n.Scalar());
                          return static_cast<int>(v);
                        })
      : std::vector<int>{};
  for (size_t i = 0; i < layers.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (layers[i] == layers[j]) {
        const std::string p = r.path_of("layers") + "[" + std::to_string(i) + "]";
        r.origins().fail(p, p + ": layer " + std::to_string(layers[i]) +
                                " is listed twice (also at [" + std::to_string(j) +
                                "]); list each layer once");
      }
  if (layers.empty()) return {default_memory_layer(L)};
  return layers;
}

MemoryConfig read_memory(const MapReader& parent, int num_hidden_layers) {
  Origins& o = parent.origins();
  const std::string path = parent.path_of("memory");
  const YAML::Node node = parent.at("memory");
  MemoryConfig c;
  // The type first: it decides which keys are valid.
  if (node.IsMap())
    for (auto it = node.begin(); it != node.end(); ++it)
      if (it->first.IsScalar() && it->first.Scalar() == "type") {
        o.set_line(dotted(path, "type"), it->first.Mark());
        c.type = to_enum(o, it->second, dotted(path, "type"), kMemoryTypes);
        break;
      }
  const std::vector<std::string> keys = kMemorySection.keys_for(c);
  std::map<std::string, std::string> foreign;
  for (const auto& [k, types] : kMemorySection.owners_of_other_keys(c))
    foreign[k] = dotted(path, k) + " is a " + join(types, " and ") + " key; this memory is " +
                 c.type + " (set " + dotted(path, "type") + ": " + types.front() +
                 ", or remove " + k + "; " + c.type + " keys: " + join(keys, ", ") + ")";
  const MapReader r(o, node, path, keys, foreign);
  kMemorySection.read(r, c);
  if (c.type == "rmt") return c;
  c.layers = read_memory_layers(r, num_hidden_layers);
  if (c.type == "knn") {
    if (c.top_k > c.memory_size)
      r.fail("top_k", r.path_of("top_k") + "(" + std::to_string(c.top_k) +
                          ") is larger than the store: " + r.path_of("memory_size") + "(" +
                          std::to_string(c.memory_size) +
                          ") rows; lower top_k or raise memory_size");
    return c;
  }
  // compressive: rate^levels, stopping once it exceeds segment_length (no overflow).
  const std::string S = std::to_string(c.segment_length);
  int64_t chunk = 1;
  for (int i = 0; i < c.levels && chunk <= c.segment_length; ++i) chunk *= c.rate;
  if (chunk > c.segment_length || c.segment_length % chunk != 0) {
    const std::string pow = std::to_string(c.rate) + "^" + std::to_string(c.levels);
    const std::string value = chunk > c.segment_length ? "more than " + S : std::to_string(chunk);
    r.fail("segment_length",
           r.path_of("segment_length") + "(" + S + ") is not a multiple of rate^levels = " + pow +
               " = " + value + ": every level compresses by " + r.path_of("rate") +
               "; change segment_length to a multiple of " + pow + ", or lower rate or levels");
  }
  const int per_level = c.compressed_size / c.levels;
  const std::string L = std::to_string(c.levels), C = std::to_string(c.compressed_size);
  if (c.compressed_size % c.levels != 0)
    r.fail("compressed_size", r.path_of("compressed_size") + "(" + C +
                                  ") is not a multiple of " + r.path_of("levels") + "(" + L +
                                  "): every level holds compressed_size / levels slots");
  const int segment_slots = c.segment_length / c.rate;
  if (per_level < segment_slots)
    r.fail("compressed_size",
           r.path_of("compressed_size") + "(" + C + ") / levels(" + L + ") = " +
               std::to_string(per_level) + " slots per level is fewer than segment_length(" + S +
               ") / rate(" + std::to_string(c.rate) + ") = " + std::to_string(segment_slots) +
               ", the slots of one compressed segment; raise compressed_size to at least " +
               std::to_string(static_cast<int64_t>(segment_slots) * c.levels));
  return c;
}

const Section<ModelConfig> kModelSection = {
    int_field("vocab_size", &ModelConfig::vocab_size, 2),
    int_field("hidden_size", &ModelConfig::hidden_size, 1),
    int_field("intermediate_size", &ModelConfig::intermediate_size, 1),
    int_field("num_hidden_layers", &ModelConfig::num_hidden_layers, 1),
    int_field("num_attention_heads", &ModelConfig::num_attention_heads, 1),
    {"num_key_value_heads",
     [](const MapReader& r, ModelConfig& m) {  // null: num_attention_heads
       m.num_key_value_heads = static_cast<int>(
           r.get_optional_int("num_key_value_heads", 1, kIntMax).value_or(m.num_attention_heads));
     },
     [](YamlWriter& w, const ModelConfig& m) {
       w.put("num_key_value_heads", m.num_key_value_heads);
     }},
    {"head_dim",
     [](const MapReader& r, ModelConfig& m) {  // null: 0 here, resolved by read_model
       m.head_dim = static_cast<int>(r.get_optional_int("head_dim", 1, kIntMax).value_or(0));
     },
     [](YamlWriter& w, const ModelConfig& m) { w.put("head_dim", m.head_dim); }},
    double_field("rms_norm_eps", &ModelConfig::rms_norm_eps, above(0)),
    bool_field("tie_word_embeddings", &ModelConfig::tie_word_embeddings),
    int_field("max_position_embeddings", &ModelConfig::max_position_embeddings, 1),
    enum_field("position", &ModelConfig::position, kPositions),
    double_field("rope_theta", &ModelConfig::rope_theta, above(0)),
    holding(kRopeScalingSection, Field<ModelConfig>{"rope_scaling",
     [](const MapReader& r, ModelConfig& m) {
       // HF configs write {rope_type: default} (or type: default) for "no scaling".
       const YAML::Node rs_node = r.at("rope_scaling");
       auto is_default = [&](const char* key) {
         const YAML::Node v = rs_node[key];
         return v.IsDefined() && v.IsScalar() && v.Scalar() == "default";
       };
       const bool rs_default = rs_node.IsMap() && (is_default("rope_type") || is_default("type"));
       if (r.has("rope_scaling") && !rs_default)
         m.rope_scaling = read_rope_scaling(r, m.max_position_embeddings);
     },
     [](YamlWriter& w, const ModelConfig& m) {
       if (m.rope_scaling)
         kRopeScalingSection.write(w, "rope_scaling", *m.rope_scaling);
       else
         w.put_null("rope_scaling");
     }}),
    holding(kMemorySection, Field<ModelConfig>{"memory",
     [](const MapReader& r, ModelConfig& m) {
       if (r.has("memory")) m.memory = read_memory(r, m.num_hidden_layers);
     },
     [](YamlWriter& w, const ModelConfig& m) {
       if (m.memory)  // each type writes exactly its own keys
         kMemorySection.write(w, "memory", *m.memory);
       else
         w.put_null("memory");
     }}),
    double_field("init_std", &ModelConfig::init_std, above(0)),
};

ModelConfig read_model(Origins& o, const YAML::Node& node) {
  ModelConfig m = read_section(o, node, "model", kModelSection);
  const std::optional<int64_t> head_dim =
      m.head_dim > 0 ? std::optional<int64_t>(m.head_dim) : std::nullopt;

  // Cross-field checks inside the model, every factor named.
  const int H = m.num_attention_heads, G = m.num_key_value_heads;
  if (H % G != 0)
    o.fail("model.num_attention_heads",
           "model.num_attention_heads(" + std::to_string(H) +
               ") is not a multiple of model.num_key_value_heads(" + std::to_string(G) +
               "): each kv head serves num_attention_heads / num_key_value_heads query heads");
  std::string head_dim_text;
  if (head_dim) {
    m.head_dim = static_cast<int>(*head_dim);
    head_dim_text = "model.head_dim(" + std::to_string(m.head_dim) + ")";
  } else {
    if (m.hidden_size % H != 0)
      o.fail("model.hidden_size",
             "model.hidden_size(" + std::to_string(m.hidden_size) +
                 ") is not a multiple of model.num_attention_heads(" + std::to_string(H) +
                 "); change one of them or set model.head_dim explicitly");
    m.head_dim = m.hidden_size / H;
    head_dim_text = "model.head_dim(" + std::to_string(m.head_dim) + " = hidden_size " +
                    std::to_string(m.hidden_size) + " / num_attention_heads " +
                    std::to_string(H) + ")";
  }
  if (m.position == "rope" && m.head_dim % 2 != 0)
    o.fail(head_dim ? "model.head_dim" : "model.hidden_size",
           head_dim_text + " must be even for model.position: rope (rotary dims come in pairs)");
  if (m.rope_scaling) {
    if (m.position != "rope")
      o.fail("model.rope_scaling", "model.rope_scaling is set but model.position is '" +
                                       m.position +
                                       "': rope_scaling applies only to position: rope "
                                       "(remove rope_scaling or set position: rope)");
    const auto& rs = *m.rope_scaling;
    const size_t half = static_cast<size_t>(m.head_dim / 2);
    const std::pair<const char*, const std::vector<double>*> factor_lists[] = {
        {"model.rope_scaling.short_factor", &rs.short_factor},
        {"model.rope_scaling.long_factor", &rs.long_factor}};
    for (const auto& [key, list] : factor_lists)
      if (rs.rope_type == "longrope" && list->size() != half)
        o.fail(key, std::string(key) + " has " + std::to_string(list->size()) +
                        " entries; longrope needs head_dim / 2 = " + std::to_string(half));
  }
  return m;
}

// A synthetic source (the mapping form of a data source).
const Section<DataSourceConfig> kSyntheticSourceSection = {
    &DataSourceConfig::synthetic,
    {
        {"synthetic",
         [](const MapReader& r, DataSourceConfig& c) {
           if (!r.present("synthetic"))
             r.fail("synthetic", r.path_of("synthetic") +
                                     " is required in a synthetic source: one of " +
                                     join(kSyntheticGenerators, " | "));
           c.synthetic = r.get_enum("synthetic", "", kSyntheticGenerators);
           // Options of one generator only: naming them for the other is an error.
           if (const auto m = kSyntheticSourceSection.misplaced(
                   c, [&](const std::string& key) { return r.has(key); }))
             r.fail(m->first, r.path_of(m->first) + " applies to synthetic: " +
                                  m->second.front() + " only (this source is " + c.synthetic +
                                  ")");
         },
         [](YamlWriter& w, const DataSourceConfig& c) { w.put("synthetic", c.synthetic); }},
        enum_field("loss", &DataSourceConfig::loss, kSyntheticLoss),
        int64_field("num_sequences", &DataSourceConfig::num_sequences, 1),
        only({"passkey"}, optional_double_field("depth", &DataSourceConfig::depth, closed(0, 1))),
        only({"recall"}, int64_field("pairs", &DataSourceConfig::pairs, 1, kRecallMaxPairs)),
        int64_field("seed_offset", &DataSourceConfig::seed_offset, kInt64Min),
    }};

DataSourceConfig read_data_source(const MapReader& parent, const std::string& key,
                                  int64_t default_seed_offset) {
  Origins& o = parent.origins();
  const std::string path = parent.path_of(key);
  const YAML::Node node = parent.at(key);
  DataSourceConfig c;
  c.seed_offset = default_seed_offset;
  if (node.IsScalar()) {
    c.path = to_string(o, node, path);
    const bool known_ext = std::any_of(
        kTokenFileExtensions.begin(), kTokenFileExtensions.end(), [&](const std::string& ext) {
          return c.path.size() > ext.size() && c.path.ends_with(ext);
        });
    if (!known_ext)
      o.fail(path, path + ": '" + c.path + "' is not a token file; expected " +
                       join(kTokenFileExtensions, " | ") +
                       " (make one with `ringtrain data prepare`) or {synthetic: " +
                       join(kSyntheticGenerators, " | ") + "}");
    return c;
  }
  if (!node.IsMap())
    o.fail(path, path + ": expected a token file path (" + join(kTokenFileExtensions, " | ") +
                     ") or a mapping {synthetic: " + join(kSyntheticGenerators, " | ") +
                     ", ...}, got " + describe(node));
  kSyntheticSourceSection.read(MapReader(o, node, path, kSyntheticSourceSection.keys()), c);
  return c;
}

void write_data_source(YamlWriter& w, const char* key, const DataSourceConfig& s) {
  if (!has_data(s)) {
    w.put_null(key);  // a kNoTraining config without data
    return;
  }
  if (!s.is_synthetic()) {
    w.put(key, s.path);
    return;
  }
  kSyntheticSourceSection.write(w, key, s);
}

// kNoTraining without data.train: only val and shuffle are read.
bool no_training_data(const MapReader& r) {
  return !r.has("train") && r.origins().use() == ConfigUse::kNoTraining;
}

const Section<DataConfig> kDataSection = {
    holding(kSyntheticSourceSection, Field<DataConfig>{"train",
     [](const MapReader& r, DataConfig& c) {
       if (no_training_data(r)) return;
       if (!r.has("train"))
         r.fail("train", "data.train is required: write `data: {train: path/to/tokens.h5}` (" +
                             join(kTokenFileExtensions, " | ") +
                             ") or `data: {train: {synthetic: passkey}}` (or recall)");
       c.train = read_data_source(r, "train", 0);
     },
     [](YamlWriter& w, const DataConfig& c) { write_data_source(w, "train", c.train); }}),
    holding(kSyntheticSourceSection, Field<DataConfig>{"val",
     [](const MapReader& r, DataConfig& c) {
       if (r.has("val")) c.val = read_data_source(r, "val", 1);
     },
     [](YamlWriter& w, const DataConfig& c) {
       if (c.val)
         write_data_source(w, "val", *c.val);
       else
         w.put_null("val");
     }}),
    bool_field("shuffle", &DataConfig::shuffle),
    read_unless(no_training_data, path_or_null_field("tokenizer", &DataConfig::tokenizer)),
};

const Section<OptimizerConfig> kOptimizerSection = {
    &OptimizerConfig::type,
    {
        {"type",
         [](const MapReader& r, OptimizerConfig& c) {
           c.type = r.get_enum("type", c.type, kOptimizers);
           // Keys of one optimizer only: naming them for the other is an error.
           if (const auto m = kOptimizerSection.misplaced(
                   c, [&](const std::string& key) { return r.present(key); }))
             r.fail(m->first, r.path_of(m->first) + " applies to type: " + m->second.front() +
                                  " only (this optimizer is " + c.type + ")");
           if (c.type == "sgd") c.weight_decay = 0.0;  // torch.optim.SGD's default
         },
         [](YamlWriter& w, const OptimizerConfig& c) { w.put("type", c.type); }},
        double_field("lr", &OptimizerConfig::lr, above(0)),
        only({"adamw"},
             Field<OptimizerConfig>{
                 "betas",
                 [](const MapReader& r, OptimizerConfig& c) {
                   const std::vector<double> betas =
                       r.get_double_list("betas", {c.beta1, c.beta2}, half_open(0, 1));
                   if (betas.size() != 2)
                     r.fail("betas", r.path_of("betas") +
                                         ": expected a list of 2 numbers [beta1, beta2], got " +
                                         std::to_string(betas.size()) + " entries");
                   c.beta1 = betas[0];
                   c.beta2 = betas[1];
                 },
                 [](YamlWriter& w, const OptimizerConfig& c) {
                   w.put("betas", std::vector<double>{c.beta1, c.beta2});
                 }}),
        only({"adamw"}, double_field("eps", &OptimizerConfig::eps, above(0))),
        only({"sgd"}, double_field("momentum", &OptimizerConfig::momentum, half_open(0, 1))),
        double_field("weight_decay", &OptimizerConfig::weight_decay, at_least(0)),
        enum_list_field("no_decay", &OptimizerConfig::no_decay, kNoDecayGroups),
    }};

const Section<ScheduleConfig> kScheduleSection = {
    enum_field("type", &ScheduleConfig::type, kSchedules),
    int64_field("warmup_steps", &ScheduleConfig::warmup_steps, 0),
    double_field("min_lr", &ScheduleConfig::min_lr, at_least(0)),
};

const Section<TrainConfig> kTrainSection = {
    int64_field("seq_len", &TrainConfig::seq_len, 2),
    int_field("micro_batch_size", &TrainConfig::micro_batch_size, 1),
    int_field("global_batch_size", &TrainConfig::global_batch_size, 1),
    int64_field("max_steps", &TrainConfig::max_steps, 0),
    section_field("optimizer", &TrainConfig::optimizer, kOptimizerSection),
    section_field("schedule", &TrainConfig::schedule, kScheduleSection),
    double_field("grad_clip", &TrainConfig::grad_clip, at_least(0)),
    enum_field("precision", &TrainConfig::precision, kPrecisions),
    {"activation_checkpointing",  // false | true | full (= true) | selective
     [](const MapReader& r, TrainConfig& c) {
       if (!r.present("activation_checkpointing")) return;
       const YAML::Node n = r.at("activation_checkpointing");
       const std::string v = n.IsScalar() ? n.Scalar() : "";
       bool on = false;
       if (v == "selective")
         c.activation_checkpointing = Checkpointing::kSelective;
       else if (v == "full")
         c.activation_checkpointing = Checkpointing::kFull;
       else if (n.IsScalar() && parse_bool(v, on))
         c.activation_checkpointing = on ? Checkpointing::kFull : Checkpointing::kOff;
       else
         r.fail("activation_checkpointing",
                r.path_of("activation_checkpointing") +
                    ": expected false, true, full or selective, got " + describe(n));
     },
     [](YamlWriter& w, const TrainConfig& c) {
       if (c.activation_checkpointing == Checkpointing::kSelective)
         w.put("activation_checkpointing", "selective");
       else
         w.put("activation_checkpointing", c.activation_checkpointing == Checkpointing::kFull);
     }},
    int_field("nonfinite_tolerance", &TrainConfig::nonfinite_tolerance, 0),
};

const Section<ParallelConfig> kParallelSection = {
    int_field("context_parallel", &ParallelConfig::context_parallel, 1),
    {"data_parallel",
     [](const MapReader& r, ParallelConfig& c) {
       const YAML::Node dp = r.at("data_parallel");
       if (r.has("data_parallel") && !(dp.IsScalar() && dp.Scalar() == "auto")) {
         int64_t v = 0;
         if (!dp.IsScalar() || !parse_number(dp.Scalar(), v) || v < 1 || v > kIntMax)
           r.fail("data_parallel",
                  "parallel.data_parallel: expected an integer >= 1 or auto, got " +
                      describe(dp));
         c.data_parallel = static_cast<int>(v);
       }
     },
     [](YamlWriter& w, const ParallelConfig& c) {
       if (c.data_parallel > 0)
         w.put("data_parallel", c.data_parallel);
       else
         w.put("data_parallel", "auto");
     }},
    enum_field("ring_layout", &ParallelConfig::ring_layout, kRingLayouts),
    enum_field("device", &ParallelConfig::device, kDevices),
    enum_field("shard_optimizer", &ParallelConfig::shard_optimizer, kShardOptimizer),
    double_field("bucket_mb", &ParallelConfig::bucket_mb, above(0)),
    bool_field("overlap_grad_reduce", &ParallelConfig::overlap_grad_reduce),
};

const Section<CheckpointConfig> kCheckpointSection = {
    int64_field("every_steps", &CheckpointConfig::every_steps, 0),
    int_field("keep_last", &CheckpointConfig::keep_last, 1),
    path_or_null_field("init_from", &CheckpointConfig::init_from),
};

const Section<PasskeyEvalConfig> kPasskeyEvalSection = {
    int64_list_field("seq_lens", &PasskeyEvalConfig::seq_lens, 2),
    double_list_field("depths", &PasskeyEvalConfig::depths, closed(0, 1)),
    int_field("trials", &PasskeyEvalConfig::trials, 1),
};

const Section<EvalConfig> kEvalSection = {
    int64_field("every_steps", &EvalConfig::every_steps, 0),
    int64_list_field("seq_lens", &EvalConfig::seq_lens, 2),
    optional_section_field("passkey", &EvalConfig::passkey, kPasskeyEvalSection),
    int64_field("max_sequences", &EvalConfig::max_sequences, 1),
};

const Section<LogConfig> kLogSection = {
    int64_field("every_steps", &LogConfig::every_steps, 1),
};

// Checks across sections (single process); the model's own are in read_model.
void check_cross_sections(const Config& c, const Origins& o, ConfigUse use) {
  const TrainConfig& t = c.train;
  if (t.global_batch_size % t.micro_batch_size != 0)
    o.fail("train.global_batch_size",
           "train.global_batch_size(" + std::to_string(t.global_batch_size) +
               ") is not a multiple of train.micro_batch_size(" +
               std::to_string(t.micro_batch_size) + ")");
  if (t.optimizer.lr < t.schedule.min_lr)
    o.fail("train.schedule.min_lr", "train.schedule.min_lr(" + shortest_double(t.schedule.min_lr) +
                                        ") must be <= train.optimizer.lr(" +
                                        shortest_double(t.optimizer.lr) + ")");
  if (use == ConfigUse::kTrain && t.max_steps > 0 && t.schedule.warmup_steps > t.max_steps)
    log_warn("%s: train.schedule.warmup_steps(%lld) > train.max_steps(%lld): the learning rate "
             "never reaches train.optimizer.lr",
             o.where("train.schedule.warmup_steps").c_str(),
             static_cast<long long>(t.schedule.warmup_steps),
             static_cast<long long>(t.max_steps));
  if (use == ConfigUse::kTrain && !c.model.memory &&
      t.seq_len > c.model.max_position_embeddings)
    log_warn("%s: train.seq_len(%lld) > model.max_position_embeddings(%d): the model is trained "
             "at positions beyond its declared maximum (raise max_position_embeddings, or lower "
             "seq_len)",
             o.where("train.seq_len").c_str(), static_cast<long long>(t.seq_len),
             c.model.max_position_embeddings);
  // knn and compressive over a ring: refused here (rmt is refused by the
  // trainer, with its own reason).
  if (c.model.memory && c.model.memory->type != "rmt" && c.parallel.context_parallel > 1)
    o.fail("parallel.context_parallel",
           "model.memory.type: " + c.model.memory->type + " with parallel.context_parallel(" +
               std::to_string(c.parallel.context_parallel) +
               ") > 1 is not supported: segments are processed in order and every segment "
               "needs the store written by all earlier ones, so a ring over the sequence would "
               "serialize. Use parallel.context_parallel: 1 and scale out with "
               "parallel.data_parallel");
  if (c.model.memory && t.seq_len % c.model.memory->segment_length != 0)
    o.fail("model.memory.segment_length",
           "train.seq_len(" + std::to_string(t.seq_len) +
               ") is not a multiple of model.memory.segment_length(" +
               std::to_string(c.model.memory->segment_length) + ")");
}

// The sections of a config file.
const Section<Config> kConfigSection = {
    section_field("run", &Config::run, kRunSection),
    holding(kModelSection,
            Field<Config>{"model",
                          [](const MapReader& r, Config& c) {
                            c.model = read_model(r.origins(), r.at("model"));
                          },
                          [](YamlWriter& w, const Config& c) {
                            kModelSection.write(w, "model", c.model);
                          },
                          {}, {}, /*heading=*/true}),
    section_field("data", &Config::data, kDataSection),
    section_field("train", &Config::train, kTrainSection),
    section_field("parallel", &Config::parallel, kParallelSection),
    section_field("checkpoint", &Config::checkpoint, kCheckpointSection),
    section_field("eval", &Config::eval, kEvalSection),
    section_field("log", &Config::log, kLogSection),
};

Config read_config(Origins& o, const YAML::Node& root, ConfigUse use) {
  Config c = read_section(o, root, "", kConfigSection);
  check_cross_sections(c, o, use);
  return c;
}

// ---- overrides ------------------------------------------------------------------

// Writes `--set a.b.c=value` onto the tree (value parsed as YAML), creating
// missing or null intermediate mappings, and records that a.b.c (and anything
// it created) came from this override.
void apply_override(YAML::Node root, const std::string& spec, Origins& o) {
  const std::string label = "--set " + spec;
  const std::string usage = " (expected --set key.path=value, e.g. --set train.optimizer.lr=1e-4)";
  const size_t eq = spec.find('=');
  if (eq == std::string::npos) throw UsageError(label + ": missing '='" + usage);
  const std::string key = trim(spec.substr(0, eq));
  std::vector<std::string> parts;
  std::stringstream key_stream(key);
  for (std::string part; std::getline(key_stream, part, '.');) parts.push_back(trim(part));
  if (key.empty() || key.back() == '.' ||
      std::any_of(parts.begin(), parts.end(), [](const std::string& p) { return p.empty(); }))
    throw UsageError(label + ": empty key or key segment" + usage);

  YAML::Node value;
  try {
    value = YAML::Load(spec.substr(eq + 1));
  } catch (const YAML::ParserException& e) {
    throw UsageError(label + ": the value is not valid YAML: " + e.msg);
  }

  YAML::Node cur = root;  // copy construction refers to the same node; reset() rebinds
  std::string path;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    path = dotted(path, parts[i]);
    YAML::Node next = cur[parts[i]];
    if (!next.IsDefined() || next.IsNull()) {
      cur[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next.reset(cur[parts[i]]);
      o.set_override(path, label);
    } else if (!next.IsMap()) {
      throw UsageError(label + ": " + path + " is " + describe(next) +
                       ", not a mapping, so it has no key '" + parts[i + 1] + "'");
    }
    cur.reset(next);
  }
  cur[parts.back()] = value;
  o.set_override(dotted(path, parts.back()), label);
}

}  // namespace

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  return closest(word, candidates);
}

std::vector<std::string> config_keys() { return kConfigSection.schema_keys(); }

// ---- public API ------------------------------------------------------------------

Config parse_config(const std::string& yaml_text, const std::string& path,
                    const std::vector<std::string>& overrides, ConfigUse use) {
  YAML::Node root;
  try {
    // A config is one YAML document; a second one (after `---`) would be
    // ignored silently by a plain load, so it is an error.
    std::vector<YAML::Node> docs = YAML::LoadAll(yaml_text);
    std::erase_if(docs, [](const YAML::Node& d) { return !d.IsDefined() || d.IsNull(); });
    if (docs.size() > 1)
      throw UsageError(path + ": holds " + std::to_string(docs.size()) +
                       " YAML documents (separated by ---); a config is one document: keep one "
                       "(for several runs, write one file each or use --set)");
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    throw UsageError(path + ":" + std::to_string(e.mark.line + 1) + ":" +
                     std::to_string(e.mark.column + 1) + ": invalid YAML: " + e.msg);
  }
  if (!root.IsDefined() || root.IsNull()) root.reset(YAML::Node(YAML::NodeType::Map));
  Origins origins(path, use);
  if (!overrides.empty() && !root.IsMap())
    origins.fail("", "the config must be a mapping of sections (run, model, data, ...), got " +
                         describe(root));
  for (const auto& spec : overrides) apply_override(root, spec, origins);
  Config c = read_config(origins, root, use);
  c.source_path = path;
  return c;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides,
                   ConfigUse use) {
  const std::string expected =
      "; expected a YAML config file (sections run, model, data, train, ...), e.g. "
      "configs/quickstart.yaml";
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw UsageError(path + " is a directory" + expected);
  std::ifstream in(path);
  if (!in)
    throw UsageError("cannot read config file '" + path + "': " + std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  const std::string s = text.str();
  if (s.find_first_not_of(" \t\r\n") == std::string::npos)
    throw UsageError(path + " is empty" + expected);
  if (s.rfind("\x89HDF\r\n\x1a\n", 0) == 0)
    throw UsageError(path + " is an HDF5 file (a checkpoint or token file), not a config" +
                     expected + ". A checkpoint goes to `ringtrain eval CKPT.h5`, `generate`, "
                     "`inspect` or `extend`, or into a config as checkpoint.init_from");
  if (s.find('\0') != std::string::npos)
    throw UsageError(path + " is a binary file, not a config" + expected);
  return parse_config(s, path, overrides, use);
}

void validate_layout(Config& cfg, int world_size) {
  const std::string where = cfg.source_path.empty() ? "config" : cfg.source_path;
  const ParallelConfig& p = cfg.parallel;
  if (!contains(kDevices, p.device))
    throw UsageError(where + ": parallel.device must be one of " + join(kDevices, " | ") +
                     ", got '" + p.device + "'");
  ParallelDims dims;
  try {
    dims = ParallelDims::build(world_size, p.data_parallel, p.context_parallel);
  } catch (const UsageError& e) {
    throw UsageError(where + ": " + e.what());
  }
  const TrainConfig& t = cfg.train;
  const int64_t per_step = static_cast<int64_t>(dims.dp) * t.micro_batch_size;
  if (t.global_batch_size % per_step != 0)
    throw UsageError(where + ": train.global_batch_size(" + std::to_string(t.global_batch_size) +
                     ") is not a multiple of data_parallel(" + std::to_string(dims.dp) +
                     ") * train.micro_batch_size(" + std::to_string(t.micro_batch_size) +
                     ") = " + std::to_string(per_step));
  // Without a ring (context_parallel 1) any length works; a ring cuts the
  // sequence into cp (contiguous) or 2*cp (zigzag) equal chunks.
  const RingLayout layout = parse_ring_layout(p.ring_layout);
  const bool zigzag = layout == RingLayout::kZigzag && dims.cp > 1;
  const int64_t chunks = dims.seq_len_divisor(layout);
  if (t.seq_len % chunks != 0)
    throw UsageError(where + ": train.seq_len(" + std::to_string(t.seq_len) +
                     ") is not a multiple of " + (zigzag ? "2 * " : "") +
                     "parallel.context_parallel(" + std::to_string(dims.cp) + ")" +
                     (zigzag ? " = " + std::to_string(chunks) + " (zigzag ring layout)"
                             : std::string(" (contiguous ring layout)")));
  cfg.parallel.data_parallel = dims.dp;
}

std::string config_to_yaml(const Config& c) {
  YamlWriter w;
  w.begin_map();
  kConfigSection.write(w, c);
  w.end_map();
  return w.str();
}

std::string model_config_to_yaml(const ModelConfig& m) {
  YamlWriter w;
  w.begin_map();
  kModelSection.write(w, "model", m);
  w.end_map();
  return w.str();
}

ModelConfig parse_model_config(const std::string& yaml_text, const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    throw UsageError(path + ":" + std::to_string(e.mark.line + 1) + ":" +
                     std::to_string(e.mark.column + 1) + ": invalid YAML: " + e.msg);
  }
  Origins origins(path);
  if (!root.IsDefined() || root.IsNull()) return ModelConfig{};
  if (!root.IsMap())
    origins.fail("", "expected a config mapping with a model: section, got " + describe(root));
  YAML::Node model = root["model"];
  if (!model.IsDefined() || model.IsNull()) return ModelConfig{};
  return read_model(origins, model);
}

std::vector<ModelKeyDifference> model_config_differences(const ModelConfig& a,
                                                         const ModelConfig& b) {
  // Both through the writer, so every resolved key is compared in one place.
  const YAML::Node ya = YAML::Load(model_config_to_yaml(a))["model"];
  const YAML::Node yb = YAML::Load(model_config_to_yaml(b))["model"];
  auto text = [](const YAML::Node& n) {
    if (!n.IsDefined() || n.IsNull()) return std::string("null");
    YAML::Emitter e;
    e << YAML::Flow << n;
    return std::string(e.c_str());
  };
  std::vector<std::string> keys;
  for (const YAML::Node* m : {&ya, &yb})
    for (const auto& kv : *m) {
      std::string k = kv.first.as<std::string>();
      if (!contains(keys, k)) keys.push_back(k);
    }
  std::vector<ModelKeyDifference> out;
  for (const std::string& k : keys) {
    std::string ta = text(ya[k]), tb = text(yb[k]);
    if (ta != tb) out.push_back({k, ta, tb});
  }
  return out;
}

}  // namespace rt
