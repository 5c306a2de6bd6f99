#include "trainer/hf/hf_config.h"

#include <cmath>
#include <cstdio>

#include "common/errors.h"
#include "trainer/config/config.h"

namespace rt {

namespace {

using json = nlohmann::json;

std::string value_text(const json& v) { return v.dump(); }

// Reads an integer key (HF default when absent or null); UsageError names it.
int get_int(const json& j, const std::string& key, int def, const std::string& where,
            int min_value = 1) {
  if (!j.contains(key) || j[key].is_null()) return def;
  const json& v = j[key];
  if (!v.is_number_integer() || v.get<int64_t>() < min_value || v.get<int64_t>() > (1ll << 31) - 1)
    throw UsageError(where + ": " + key + " = " + value_text(v) + " must be an integer >= " +
                     std::to_string(min_value));
  return int(v.get<int64_t>());
}

double get_double(const json& j, const std::string& key, double def, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return def;
  const json& v = j[key];
  if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() <= 0)
    throw UsageError(where + ": " + key + " = " + value_text(v) + " must be a positive number");
  return v.get<double>();
}

[[noreturn]] void unsupported(const std::string& where, const std::string& key, const json& v,
                              const std::string& why) {
  throw UsageError(where + ": " + key + " = " + value_text(v) +
                   " is not supported: ringtrain's model " + why +
                   " (SPEC §3; only Llama-architecture models import)");
}

bool truthy(const json& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string()) return !v.get<std::string>().empty();
  return !v.empty();
}

// rope_scaling / rope_parameters -> RopeScalingConfig (nullopt for "default").
std::optional<RopeScalingConfig> read_rope(const json& r, const std::string& key,
                                           const json& top, const std::string& where) {
  const std::string at = where + ": " + key;
  if (!r.is_object()) throw UsageError(at + " = " + value_text(r) + " must be an object or null");
  static const char* const kKnown[] = {
      "rope_type", "type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
      "mscale", "mscale_all_dim", "attention_factor", "low_freq_factor", "high_freq_factor",
      "short_factor", "long_factor", "rope_theta", "partial_rotary_factor", "truncate",
      "finetuned"};
  for (auto it = r.begin(); it != r.end(); ++it) {
    bool known = false;
    for (const char* k : kKnown) known = known || it.key() == k;
    if (!known)
      throw UsageError(at + "." + it.key() + " = " + value_text(it.value()) +
                       " is not a RoPE scaling key ringtrain knows (SPEC §4.2); remove it if it "
                       "does not change the frequencies");
  }
  std::string type;
  if (r.contains("rope_type") && r["rope_type"].is_string()) type = r["rope_type"];
  else if (r.contains("type") && r["type"].is_string()) type = r["type"];
  else throw UsageError(at + " has no rope_type (or type): " + value_text(r));
  if (r.contains("partial_rotary_factor") && get_double(r, "partial_rotary_factor", 1, at) != 1.0)
    unsupported(where, key + ".partial_rotary_factor", r["partial_rotary_factor"],
                "rotates the whole head (partial rotary is another architecture)");
  if (r.contains("truncate") && r["truncate"].is_boolean() && !r["truncate"].get<bool>())
    unsupported(where, key + ".truncate", r["truncate"],
                "rounds YaRN's correction range (truncate: true, the default)");
  if (type == "default") return std::nullopt;
  static const char* const kTypes[] = {"linear", "ntk", "dynamic", "yarn", "llama3", "longrope"};
  bool ok = false;
  for (const char* t : kTypes) ok = ok || type == t;
  if (!ok)
    throw UsageError(at + ".rope_type = \"" + type +
                     "\" is not supported; ringtrain computes default | linear | dynamic | yarn | "
                     "llama3 | longrope (and ntk)");
  RopeScalingConfig c;
  c.rope_type = type;
  c.factor = get_double(r, "factor", 1.0, at);
  if (r.contains("original_max_position_embeddings"))
    c.original_max_position_embeddings = get_int(r, "original_max_position_embeddings", 0, at);
  else if (top.contains("original_max_position_embeddings") &&
           !top["original_max_position_embeddings"].is_null())
    c.original_max_position_embeddings = get_int(top, "original_max_position_embeddings", 0, where);
  c.beta_fast = get_double(r, "beta_fast", c.beta_fast, at);
  c.beta_slow = get_double(r, "beta_slow", c.beta_slow, at);
  auto opt = [&](const char* k) -> std::optional<double> {
    if (!r.contains(k) || r[k].is_null()) return std::nullopt;
    return get_double(r, k, 1.0, at);
  };
  c.mscale = opt("mscale");
  c.mscale_all_dim = opt("mscale_all_dim");
  c.attention_factor = opt("attention_factor");
  c.low_freq_factor = get_double(r, "low_freq_factor", c.low_freq_factor, at);
  c.high_freq_factor = get_double(r, "high_freq_factor", c.high_freq_factor, at);
  using Slot = std::pair<const char*, std::vector<double>*>;
  for (auto [k, dst] : {Slot{"short_factor", &c.short_factor}, Slot{"long_factor", &c.long_factor}}) {
    if (!r.contains(k) || r[k].is_null()) continue;
    if (!r[k].is_array()) throw UsageError(at + "." + k + " must be a list of numbers");
    for (const json& v : r[k]) {
      if (!v.is_number()) throw UsageError(at + "." + k + " must be a list of numbers");
      dst->push_back(v.get<double>());
    }
  }
  return c;
}

}  // namespace

HfModelConfig parse_hf_config(const std::string& json_text, const std::string& where) {
  json j = json::parse(json_text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    throw UsageError(where + ": not a JSON object (a Hugging Face config.json is expected)");

  // The architecture: Llama only.
  if (j.contains("architectures") && !j["architectures"].is_null()) {
    const json& a = j["architectures"];
    if (!a.is_array() || a.size() != 1 || a[0] != "LlamaForCausalLM")
      unsupported(where, "architectures", a, "is LlamaForCausalLM");
  }
  if (j.contains("model_type") && !j["model_type"].is_null() && j["model_type"] != "llama")
    unsupported(where, "model_type", j["model_type"], "is model_type llama");
  if (j.contains("hidden_act") && j["hidden_act"] != "silu")
    unsupported(where, "hidden_act", j["hidden_act"], "uses a SwiGLU MLP (hidden_act silu)");
  for (const char* k : {"attention_bias", "mlp_bias"})
    if (j.contains(k) && truthy(j[k]))
      unsupported(where, k, j[k], "has no bias vectors");
  for (const char* k : {"sliding_window", "use_sliding_window"})
    if (j.contains(k) && truthy(j[k]))
      unsupported(where, k, j[k], "attends to every earlier position (no sliding window)");
  for (const char* k : {"num_local_experts", "num_experts", "n_routed_experts", "n_shared_experts",
                        "num_experts_per_tok", "moe_intermediate_size", "router_aux_loss_coef"})
    if (j.contains(k) && truthy(j[k]))
      unsupported(where, k, j[k], "has one dense MLP per layer (no mixture of experts)");
  if (j.contains("partial_rotary_factor") && get_double(j, "partial_rotary_factor", 1, where) != 1)
    unsupported(where, "partial_rotary_factor", j["partial_rotary_factor"],
                "rotates the whole head");
  for (const char* k : {"qk_layernorm", "use_qk_norm", "qk_norm"})
    if (j.contains(k) && truthy(j[k])) unsupported(where, k, j[k], "has no q/k norms");

  // LlamaConfig's defaults where a key is absent, as transformers does.
  ModelConfig m;
  m.vocab_size = get_int(j, "vocab_size", 32000, where);
  m.hidden_size = get_int(j, "hidden_size", 4096, where);
  m.intermediate_size = get_int(j, "intermediate_size", 11008, where);
  m.num_hidden_layers = get_int(j, "num_hidden_layers", 32, where);
  m.num_attention_heads = get_int(j, "num_attention_heads", 32, where);
  m.num_key_value_heads = get_int(j, "num_key_value_heads", m.num_attention_heads, where);
  m.head_dim = get_int(j, "head_dim", 0, where);
  if (m.head_dim == 0) {
    if (m.hidden_size % m.num_attention_heads != 0)
      throw UsageError(where + ": hidden_size " + std::to_string(m.hidden_size) +
                       " is not a multiple of num_attention_heads " +
                       std::to_string(m.num_attention_heads) + " and head_dim is not given");
    m.head_dim = m.hidden_size / m.num_attention_heads;
  }
  m.rms_norm_eps = get_double(j, "rms_norm_eps", 1e-6, where);
  m.max_position_embeddings = get_int(j, "max_position_embeddings", 2048, where);
  if (j.contains("tie_word_embeddings") && !j["tie_word_embeddings"].is_null()) {
    if (!j["tie_word_embeddings"].is_boolean())
      throw UsageError(where + ": tie_word_embeddings = " + value_text(j["tie_word_embeddings"]) +
                       " must be true or false");
    m.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  }
  m.position = "rope";
  m.rope_theta = get_double(j, "rope_theta", 10000.0, where);
  m.init_std = get_double(j, "initializer_range", 0.02, where);
  // transformers 5 keeps theta and scaling in rope_parameters; 4.x in
  // rope_theta + rope_scaling. Both present: rope_parameters wins (it is
  // what transformers 5 reads).
  if (j.contains("rope_parameters") && !j["rope_parameters"].is_null()) {
    const json& rp = j["rope_parameters"];
    if (rp.is_object() && rp.contains("rope_theta"))
      m.rope_theta = get_double(rp, "rope_theta", m.rope_theta, where + ": rope_parameters");
    m.rope_scaling = read_rope(rp, "rope_parameters", j, where);
  } else if (j.contains("rope_scaling") && !j["rope_scaling"].is_null() &&
             !(j["rope_scaling"].is_object() && j["rope_scaling"].empty())) {
    m.rope_scaling = read_rope(j["rope_scaling"], "rope_scaling", j, where);
  }

  // Resolve and range-check through the config reader (the same checks as a
  // YAML model section: GQA divisibility, longrope list lengths, ...).
  try {
    m = parse_model_config(model_config_to_yaml(m), where + " (as a ringtrain model section)");
  } catch (const UsageError& e) {
    throw UsageError(std::string(e.what()) + " [from the Hugging Face config " + where + "]");
  }

  HfModelConfig out;
  out.model = m;
  for (const char* k : {"torch_dtype", "dtype"})  // transformers 5 writes `dtype`
    if (j.contains(k) && j[k].is_string()) out.torch_dtype = j[k];
  out.carried = json::object();
  for (const char* k : {"bos_token_id", "eos_token_id", "pad_token_id"})
    if (j.contains(k)) out.carried[k] = j[k];
  return out;
}

void check_hf_exportable(const ModelConfig& m, const std::string& what) {
  if (m.position != "rope")
    throw UsageError(what + ": model.position is " + m.position +
                     "; Hugging Face LlamaForCausalLM has RoPE positions only, so this model "
                     "cannot be exported (only position: rope models export)");
  if (m.memory)
    throw UsageError(what + ": model.memory (" + m.memory->type +
                     ") is set; Hugging Face LlamaForCausalLM has no recurrent memory, so this "
                     "model cannot be exported");
}

nlohmann::ordered_json hf_config_json(const ModelConfig& m, const std::string& torch_dtype,
                                      const nlohmann::json& carried) {
  check_hf_exportable(m, "export");
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["vocab_size"] = m.vocab_size;
  j["hidden_size"] = m.hidden_size;
  j["intermediate_size"] = m.intermediate_size;
  j["num_hidden_layers"] = m.num_hidden_layers;
  j["num_attention_heads"] = m.num_attention_heads;
  j["num_key_value_heads"] = m.num_key_value_heads;
  j["head_dim"] = m.head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = m.max_position_embeddings;
  j["rms_norm_eps"] = m.rms_norm_eps;
  double theta = m.rope_theta;
  nlohmann::ordered_json rs = nullptr;
  if (const auto& r = m.rope_scaling) {
    if (r->rope_type == "ntk") {
      // Static NTK-aware scaling is a change of base (SPEC §4.2): HF has no
      // type for it, the equivalent theta says the same.
      const double D = m.head_dim;
      theta = m.rope_theta * std::pow(r->factor, D / (D - 2));
    } else {
      rs = nlohmann::ordered_json::object();
      rs["rope_type"] = r->rope_type;
      rs["factor"] = r->factor;
      const int64_t orig = r->original_max_position_embeddings.value_or(m.max_position_embeddings);
      // transformers 4.44 takes yarn's and dynamic's original length from
      // max_position_embeddings; vLLM and newer transformers from this key
      // (deriving yarn's factor as max_position_embeddings / it). Written when
      // it differs from max_position_embeddings, and always for the types
      // that require it.
      if (orig != m.max_position_embeddings || r->rope_type == "llama3" ||
          r->rope_type == "longrope")
        rs["original_max_position_embeddings"] = orig;
      if (r->rope_type == "yarn") {
        rs["beta_fast"] = r->beta_fast;
        rs["beta_slow"] = r->beta_slow;
        if (r->mscale) rs["mscale"] = *r->mscale;
        if (r->mscale_all_dim) rs["mscale_all_dim"] = *r->mscale_all_dim;
      }
      if (r->attention_factor) rs["attention_factor"] = *r->attention_factor;
      if (r->rope_type == "llama3") {
        rs["low_freq_factor"] = r->low_freq_factor;
        rs["high_freq_factor"] = r->high_freq_factor;
      }
      if (r->rope_type == "longrope") {
        rs["short_factor"] = r->short_factor;
        rs["long_factor"] = r->long_factor;
      }
    }
  }
  j["rope_theta"] = theta;
  j["rope_scaling"] = rs;
  j["tie_word_embeddings"] = m.tie_word_embeddings;
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["mlp_bias"] = false;
  j["initializer_range"] = m.init_std;
  j["pretraining_tp"] = 1;
  j["use_cache"] = true;
  j["torch_dtype"] = torch_dtype;
  for (auto it = carried.begin(); it != carried.end(); ++it) j[it.key()] = it.value();
  return j;
}

}  // namespace rt
