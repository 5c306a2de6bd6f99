#include "trainer/hf/hf_io.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "common/errors.h"
#include "common/log.h"
#include "common/strings.h"
#include "data/tokenizer.h"
#include "trainer/config/config.h"
#include "trainer/hf/safetensors.h"

namespace rt {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

std::string read_text_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw IoError("cannot read " + p.string());
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw IoError("cannot read " + p.string());
  return ss.str();
}

void write_text_file(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary);
  f << text;
  f.close();
  if (!f) throw IoError("cannot write " + p.string() + " (check the directory is writable)");
}

HfModelConfig read_hf_config(const std::string& dir) {
  const fs::path p = fs::path(dir) / "config.json";
  return parse_hf_config(read_text_file(p), p.string());
}

// Every safetensors file of a directory, each opened (mapped) once, and
// where each tensor lives.
struct HfWeights {
  std::vector<std::unique_ptr<SafetensorsReader>> shards;
  std::map<std::string, std::pair<size_t, const StTensorInfo*>> tensors;  // name -> shard, info
  uint64_t file_bytes = 0;
};

HfWeights open_hf_weights(const std::string& dir) {
  HfWeights w;
  const fs::path d(dir);
  std::error_code ec;
  if (fs::exists(d / kIndexName, ec)) {
    const std::string where = (d / kIndexName).string();
    json idx = json::parse(read_text_file(d / kIndexName), nullptr, false);
    if (idx.is_discarded() || !idx.is_object() || !idx.contains("weight_map") ||
        !idx["weight_map"].is_object())
      throw IoError(where + ": not a safetensors index (expected {\"weight_map\": {tensor: "
                            "file}}); re-download or re-export the model");
    std::map<std::string, size_t> shard_of_file;
    for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        throw IoError(where + ": weight_map[\"" + it.key() + "\"] is not a file name");
      const std::string file = it.value().get<std::string>();
      if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
        throw IoError(where + ": weight_map[\"" + it.key() + "\"] = \"" + file +
                      "\" is not a file name in the directory");
      if (!shard_of_file.count(file)) {
        if (!fs::exists(d / file, ec))
          throw IoError(where + " names shard " + file + " (for " + it.key() + ", ...), but " +
                        (d / file).string() + " does not exist: the download is incomplete");
        shard_of_file[file] = w.shards.size();
        w.shards.push_back(std::make_unique<SafetensorsReader>((d / file).string()));
        w.file_bytes += w.shards.back()->file_bytes();
      }
      const size_t s = shard_of_file[file];
      const StTensorInfo* t = w.shards[s]->find(it.key());
      if (!t)
        throw IoError(where + " says " + it.key() + " is in " + file +
                      ", but that file has no such tensor (index and shards disagree)");
      w.tensors[it.key()] = {s, t};
    }
  } else if (fs::exists(d / kSingleName, ec)) {
    w.shards.push_back(std::make_unique<SafetensorsReader>((d / kSingleName).string()));
    w.file_bytes = w.shards[0]->file_bytes();
    for (const StTensorInfo& t : w.shards[0]->tensors()) w.tensors[t.name] = {0, &t};
  } else {
    const bool bin = fs::exists(d / "pytorch_model.bin", ec) ||
                     fs::exists(d / "pytorch_model.bin.index.json", ec);
    throw UsageError(
        dir + " has no " + kSingleName + " or " + kIndexName +
        (bin ? ": it holds PyTorch .bin weights, which ringtrain does not read (pickle). Convert "
               "them: python3 -c \"import transformers as t; "
               "t.AutoModelForCausalLM.from_pretrained('DIR').save_pretrained('OUT')\""
             : ": not a Hugging Face model directory with safetensors weights"));
  }
  return w;
}

struct PlannedTensor {
  const TensorSpec* spec;
  size_t shard;
  const StTensorInfo* info;
};

// Matches the directory's tensors to the model's parameters: all problems
// (missing, other shape, unexpected) in one UsageError. Returns the reads in
// file order (shard by shard, by offset).
std::vector<PlannedTensor> plan_reads(const HfWeights& w, const std::vector<TensorSpec>& specs,
                                      const ModelConfig& m, const std::string& dir,
                                      const std::vector<std::string>& optional) {
  auto is_optional = [&](const std::string& n) {
    return std::find(optional.begin(), optional.end(), n) != optional.end();
  };
  std::vector<std::string> problems;
  std::vector<PlannedTensor> plan;
  for (const TensorSpec& s : specs) {
    auto it = w.tensors.find(s.name);
    if (it == w.tensors.end()) {
      if (!is_optional(s.name))
        problems.push_back(s.name + " is missing (config.json expects shape " +
                           shape_str(s.shape) + ")");
      continue;
    }
    if (it->second.second->shape != s.shape) {
      problems.push_back(s.name + " has shape " + shape_str(it->second.second->shape) +
                         ", config.json implies " + shape_str(s.shape));
      continue;
    }
    plan.push_back({&s, it->second.first, it->second.second});
  }
  std::vector<std::string> extra;
  for (const auto& [name, where] : w.tensors) {
    bool known = std::any_of(specs.begin(), specs.end(),
                             [&](const TensorSpec& s) { return s.name == name; });
    if (known || is_optional(name)) continue;
    // Buffers older transformers saved, and a tied head saved anyway: not parameters.
    if (name.size() > 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0)
      continue;
    if (name == "lm_head.weight" && m.tie_word_embeddings) continue;
    extra.push_back(name);
  }
  if (!extra.empty()) {
    std::string list;
    for (size_t i = 0; i < extra.size() && i < 8; ++i) list += (i ? ", " : "") + extra[i];
    if (extra.size() > 8) list += ", ... (" + std::to_string(extra.size()) + " in all)";
    problems.push_back("tensors that a Llama model with this config.json does not have: " + list);
  }
  if (!problems.empty()) {
    std::string msg = dir + ": the weights do not match config.json: ";
    for (size_t i = 0; i < problems.size(); ++i) msg += (i ? "; " : "") + problems[i];
    throw UsageError(msg);
  }
  std::sort(plan.begin(), plan.end(), [](const PlannedTensor& a, const PlannedTensor& b) {
    return a.shard != b.shard ? a.shard < b.shard : a.info->begin < b.info->begin;
  });
  return plan;
}

std::string dtype_summary(const std::vector<PlannedTensor>& plan) {
  std::map<std::string, int> n;
  for (const PlannedTensor& p : plan) ++n[st_dtype_name(p.info->dtype)];
  std::string s;
  for (const auto& [k, v] : n) s += (s.empty() ? "" : ", ") + k + " x" + std::to_string(v);
  return s;
}

// Pre-training lr of Llama-family models by width: Llama 2 7B (4096) 3e-4,
// TinyLlama (2048) 4e-4, Llama 2 70B (8192) 1.5e-4 ~ 3e-4 * sqrt(4096 / d).
double estimated_pretraining_lr(int hidden) {
  return std::min(1e-3, 3e-4 * std::sqrt(4096.0 / hidden));
}

}  // namespace

bool is_hf_dir(const std::string& path) {
  std::error_code ec;
  return !path.empty() && fs::is_directory(path, ec) &&
         fs::exists(fs::path(path) / "config.json", ec);
}

const std::vector<std::string>& hf_side_files() {
  static const std::vector<std::string> k = {
      "config.json",          "generation_config.json", "tokenizer.model", "tokenizer.json",
      "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"};
  return k;
}

bool is_tokenizer_file(const std::string& name) {
  return name != "config.json" && name != "generation_config.json";
}

std::vector<std::pair<std::string, std::string>> hf_tokenizer_files(const std::string& dir) {
  std::vector<std::pair<std::string, std::string>> out;
  std::error_code ec0;
  if (!fs::is_regular_file(fs::path(dir) / "tokenizer.model", ec0)) return out;  // none we can load
  for (const std::string& name : hf_side_files()) {
    const fs::path p = fs::path(dir) / name;
    std::error_code ec;
    if (is_tokenizer_file(name) && fs::is_regular_file(p, ec))
      out.emplace_back(name, read_text_file(p));
  }
  return out;
}

CheckpointMeta hf_dir_checkpoint_meta(const std::string& dir) {
  const std::string abs = fs::absolute(dir).lexically_normal().string();
  HfModelConfig hf = read_hf_config(dir);
  Config cfg;
  std::string base = fs::path(abs).filename().string();
  if (base.empty()) base = fs::path(abs).parent_path().filename().string();
  cfg.run.name = "hf-" + base;
  cfg.run.dir = "runs/" + cfg.run.name;
  cfg.model = hf.model;
  cfg.data.train.path = "data/train.h5";
  // A fine-tune at the model's own length, ~256K tokens per step.
  cfg.train.seq_len = hf.model.max_position_embeddings;
  cfg.train.micro_batch_size = 1;
  cfg.train.global_batch_size = int(std::max<int64_t>(1, (int64_t(1) << 18) / cfg.train.seq_len));
  cfg.train.optimizer.lr = estimated_pretraining_lr(hf.model.hidden_size);
  cfg.train.schedule.min_lr = cfg.train.optimizer.lr / 10;
  cfg.checkpoint.init_from = abs;
  CheckpointMeta meta;
  meta.config_yaml = config_to_yaml(cfg);
  parse_config(meta.config_yaml, abs + " (config derived from config.json)");  // must validate
  meta.trainer_state_json = json{{"imported_from", abs}}.dump();
  // The model's tokenizer (data/tokenizer.h): its files travel in the
  // checkpoint's /tokenizer group, identified by the SentencePiece model's hash.
  meta.tokenizer_files = hf_tokenizer_files(abs);
  std::error_code ec;
  if (meta.tokenizer_files.empty() && fs::is_regular_file(fs::path(abs) / "tokenizer.json", ec))
    log_warn("%s: its tokenizer.json (Hugging Face BPE) is not supported yet, so text (.txt data, "
             "prompts, synthetic tasks) is read as bytes; prepare token files with the model's own "
             "tokenizer. The file is kept and exported.", abs.c_str());
  for (const auto& [name, bytes] : meta.tokenizer_files)
    if (name == "tokenizer.model") meta.tokenizer = sentencepiece_from_bytes(bytes, abs + "/" + name)->id();
  return meta;
}

void load_hf_weights(const std::string& dir, LlamaModel& model,
                     const std::vector<std::string>& optional) {
  HfWeights w = open_hf_weights(dir);
  const ModelConfig& m = model.config();
  const std::vector<TensorSpec>& specs = model.master().specs();  // fp32 (the master copy)
  std::vector<PlannedTensor> plan = plan_reads(w, specs, m, dir, optional);
  std::vector<float> host;
  Backend& be = model.backend();
  for (const PlannedTensor& p : plan) {
    host.resize(size_t(p.info->numel));
    w.shards[p.shard]->read_f32(*p.info, host.data());
    be.copy_to_device(model.master().f32(*p.spec), host.data(), host.size() * sizeof(float));
  }
  model.sync_compute_weights();
}

CheckpointContents inspect_hf_dir(const std::string& dir) {
  CheckpointContents c;
  c.meta = hf_dir_checkpoint_meta(dir);
  HfWeights w = open_hf_weights(dir);
  std::vector<float> host;
  for (const auto& [name, where] : w.tensors) {
    CheckpointTensorInfo t;
    t.name = name;
    t.shape = where.second->shape;
    t.numel = where.second->numel;
    host.resize(size_t(t.numel));
    w.shards[where.first]->read_f32(*where.second, host.data());
    c.model.push_back(t);
  }
  c.file_bytes = int64_t(w.file_bytes);
  return c;
}

int run_import_command(const ImportOptions& o) {
  if (!is_hf_dir(o.dir))
    throw UsageError("import: " + o.dir + " is not a Hugging Face model directory (a directory "
                     "with config.json and model.safetensors or model.safetensors.index.json)");
  const auto t0 = std::chrono::steady_clock::now();
  CheckpointMeta meta = hf_dir_checkpoint_meta(o.dir);
  const ModelConfig m = parse_model_config(meta.config_yaml, o.dir);
  HfWeights w = open_hf_weights(o.dir);
  const std::vector<TensorSpec> specs = llama_param_specs(m);
  std::vector<PlannedTensor> plan = plan_reads(w, specs, m, o.dir, {});
  WeightsCheckpointWriter out(o.out, meta);
  std::vector<float> host;
  int64_t params = 0;
  for (const PlannedTensor& p : plan) {
    host.resize(size_t(p.info->numel));
    w.shards[p.shard]->read_f32(*p.info, host.data());
    out.add_tensor(p.spec->name, p.spec->shape, host.data());
    params += p.info->numel;
  }
  std::vector<std::string> kept;
  for (const std::string& name : hf_side_files()) {
    const fs::path p = fs::path(o.dir) / name;
    std::error_code ec;
    if (!fs::is_regular_file(p, ec)) continue;
    if (meta.tokenizer_files.empty() || !is_tokenizer_file(name))  // else in /tokenizer
      out.add_file(name, read_text_file(p));
    kept.push_back(name);
  }
  out.finish();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string files;
  for (const std::string& k : kept) files += (files.empty() ? "" : ", ") + k;
  std::cout << "imported " << o.dir << " -> " << o.out << ": " << plan.size() << " tensors, "
            << params << " parameters (" << dtype_summary(plan) << " -> float32), "
            << w.shards.size() << " safetensors file(s), " << format_bytes(double(w.file_bytes))
            << " read in " << std::fixed;
  std::cout.precision(2);
  std::cout << s << " s; kept " << (files.empty() ? "no side files" : files) << "\n";
  if (m.rope_scaling)
    std::cout << "rope_scaling: " << m.rope_scaling->rope_type << ", factor "
              << m.rope_scaling->factor << ", original_max_position_embeddings "
              << m.rope_scaling->original_max_position_embeddings.value_or(0) << "\n";
  return kExitOk;
}

uint64_t parse_byte_size(const std::string& s, const std::string& option) {
  size_t i = 0;
  while (i < s.size() && (std::isdigit((unsigned char)s[i]) || s[i] == '.')) ++i;
  std::string num = s.substr(0, i), unit = s.substr(i);
  for (char& c : unit) c = char(std::toupper((unsigned char)c));
  static const std::map<std::string, double> kUnits = {
      {"", 1},           {"B", 1},          {"KB", 1e3},        {"MB", 1e6},
      {"GB", 1e9},       {"TB", 1e12},      {"KIB", 1024.0},    {"MIB", 1048576.0},
      {"GIB", 1073741824.0}, {"TIB", 1099511627776.0}};
  double v = 0;
  try {
    size_t used = 0;
    v = std::stod(num, &used);
    if (used != num.size()) throw std::invalid_argument(num);
  } catch (const std::exception&) {
    throw UsageError(option + " '" + s + "' is not a size: write e.g. 5GB, 500MB or 2GiB");
  }
  auto u = kUnits.find(unit);
  if (u == kUnits.end() || !(v * u->second >= 1))
    throw UsageError(option + " '" + s + "' is not a size: write e.g. 5GB, 500MB or 2GiB");
  return uint64_t(v * u->second);
}

namespace {

// The files the model came with: `from` itself (HF directory or a
// checkpoint's /files), else up the checkpoint.init_from chain.
std::vector<std::pair<std::string, std::string>> find_side_files(const std::string& from,
                                                                 std::string* found_in) {
  std::string path = from;
  for (int depth = 0; depth < 16 && !path.empty(); ++depth) {
    if (is_hf_dir(path)) {
      std::vector<std::pair<std::string, std::string>> out;
      for (const std::string& name : hf_side_files()) {
        const fs::path p = fs::path(path) / name;
        std::error_code ec;
        if (fs::is_regular_file(p, ec)) out.emplace_back(name, read_text_file(p));
      }
      *found_in = path;
      return out;
    }
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) {
      if (depth > 0)
        log_warn("export: %s (checkpoint.init_from of the checkpoint) no longer exists; no "
                 "tokenizer files to copy (pass --tokenizer-from)", path.c_str());
      return {};
    }
    auto files = CheckpointTensorReader(path).files();
    if (!files.empty()) {
      *found_in = path;
      return files;
    }
    std::string next;
    try {
      YAML::Node root = YAML::Load(read_checkpoint_meta(path).config_yaml);
      if (root["checkpoint"] && root["checkpoint"]["init_from"] &&
          root["checkpoint"]["init_from"].IsScalar())
        next = root["checkpoint"]["init_from"].Scalar();
    } catch (const YAML::Exception&) {
    }
    if (next == path) break;
    path = next;
  }
  return {};
}

}  // namespace

int run_export_command(const ExportOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  if (is_hf_dir(o.checkpoint))
    throw UsageError("export: " + o.checkpoint + " is already a Hugging Face directory; export "
                     "takes a ringtrain checkpoint (.h5)");
  const uint64_t max_shard = parse_byte_size(o.max_shard_size, "--max-shard-size");
  if (!o.dtype.empty() && o.dtype != "bf16" && o.dtype != "fp32")
    throw UsageError("export --dtype '" + o.dtype + "' is not one of bf16 | fp32");
  CheckpointMeta meta = read_checkpoint_meta(o.checkpoint);
  const ModelConfig m = parse_model_config(meta.config_yaml, o.checkpoint + ":config");
  check_hf_exportable(m, "export " + o.checkpoint);

  std::string files_from;
  auto side = find_side_files(o.tokenizer_from.empty() ? o.checkpoint : o.tokenizer_from,
                              &files_from);
  if (!o.tokenizer_from.empty() && files_from.empty())
    throw UsageError("export --tokenizer-from " + o.tokenizer_from +
                     ": no tokenizer or config files found there (a Hugging Face directory or "
                     "an imported checkpoint is expected)");
  json carried = json::object();
  std::string source_dtype;
  for (const auto& [name, bytes] : side)
    if (name == "config.json") {
      json c = json::parse(bytes, nullptr, false);
      if (c.is_object()) {
        for (const char* k : {"bos_token_id", "eos_token_id", "pad_token_id"})
          if (c.contains(k)) carried[k] = c[k];
        // transformers 5 writes `dtype`, 4.x `torch_dtype`.
        for (const char* k : {"torch_dtype", "dtype"})
          if (c.contains(k) && c[k].is_string()) source_dtype = c[k];
      }
    }
  const std::string dtype =
      !o.dtype.empty() ? o.dtype : (source_dtype == "float32" ? "fp32" : "bf16");
  const StDType st = dtype == "fp32" ? StDType::kF32 : StDType::kBF16;

  // The checkpoint must hold exactly the model's parameters.
  CheckpointTensorReader reader(o.checkpoint);
  const std::vector<TensorSpec> specs = llama_param_specs(m);
  {
    std::map<std::string, std::vector<int64_t>> have;
    for (const CheckpointTensorInfo& t : reader.model_tensors()) have[t.name] = t.shape;
    std::string problems;
    for (const TensorSpec& s : specs) {
      auto it = have.find(s.name);
      if (it == have.end()) problems += (problems.empty() ? "" : "; ") + s.name + " is missing";
      else if (it->second != s.shape)
        problems += (problems.empty() ? "" : "; ") + s.name + " has shape " +
                    shape_str(it->second) + ", its config implies " + shape_str(s.shape);
      if (it != have.end()) have.erase(it);
    }
    for (const auto& [name, shape] : have)
      problems += (problems.empty() ? "" : "; ") + ("unexpected /model/" + name);
    if (!problems.empty())
      throw UsageError("export " + o.checkpoint + ": /model does not match its config: " +
                       problems);
  }

  const fs::path out(o.out);
  std::error_code ec;
  if (fs::exists(out, ec) && !(fs::is_directory(out, ec) && fs::is_empty(out, ec)))
    throw UsageError("export --out " + o.out + " exists and is not an empty directory; choose a "
                     "new directory (nothing is overwritten)");
  fs::create_directories(out, ec);
  if (ec) throw IoError("export: cannot create " + o.out + ": " + ec.message());

  // Shards: parameters in model order, a new file when the next tensor
  // would pass --max-shard-size (a larger tensor gets a file of its own).
  std::vector<std::vector<const TensorSpec*>> shards(1);
  uint64_t in_shard = 0, total = 0;
  for (const TensorSpec& s : specs) {
    const uint64_t b = st_tensor_bytes(st, s.shape);
    if (!shards.back().empty() && in_shard + b > max_shard) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(&s);
    in_shard += b;
    total += b;
  }
  json weight_map = json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    char name[64];
    if (shards.size() == 1)
      std::snprintf(name, sizeof name, "%s", kSingleName);
    else
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    std::vector<StTensorToWrite> tensors;
    for (const TensorSpec* s : shards[i]) {
      tensors.push_back({s->name, s->shape, [&reader, s](std::vector<float>& v) {
                           reader.read(s->name, v);
                         }});
      weight_map[s->name] = name;
    }
    write_safetensors((out / name).string(), st, tensors, {{"format", "pt"}});
  }
  if (shards.size() > 1)
    write_text_file(out / kIndexName,
                    json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}
                            .dump(2) + "\n");
  const std::string torch_dtype = dtype == "fp32" ? "float32" : "bfloat16";
  write_text_file(out / "config.json", hf_config_json(m, torch_dtype, carried).dump(2) + "\n");
  bool have_generation = false;
  std::vector<std::string> copied;
  for (const auto& [name, bytes] : side) {
    if (name == "config.json") continue;
    write_text_file(out / name, bytes);
    copied.push_back(name);
    have_generation = have_generation || name == "generation_config.json";
  }
  if (!have_generation) {
    nlohmann::ordered_json g;
    g["_from_model_config"] = true;
    for (auto it = carried.begin(); it != carried.end(); ++it) g[it.key()] = it.value();
    write_text_file(out / "generation_config.json", g.dump(2) + "\n");
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string list;
  for (const std::string& c : copied) list += (list.empty() ? "" : ", ") + c;
  std::cout << "exported " << o.checkpoint << " -> " << o.out << ": " << specs.size()
            << " tensors as " << torch_dtype << ", " << shards.size() << " safetensors file(s), "
            << format_bytes(double(total)) << " in ";
  std::cout.precision(2);
  std::cout << std::fixed << s << " s\n";
  if (m.rope_scaling)
    std::cout << "config.json rope_scaling: "
              << hf_config_json(m, torch_dtype, carried)["rope_scaling"].dump() << "\n";
  if (list.empty())
    std::cout << "no tokenizer files: the checkpoint came with none (a byte-level ringtrain "
                 "model, or pass --tokenizer-from HF_DIR)\n";
  else
    std::cout << "copied from " << files_from << ": " << list << "\n";
  return kExitOk;
}

}  // namespace rt
