// Hugging Face `config.json` (LlamaConfig) <-> ringtrain's ModelConfig (SPEC §13).
//
// Import reads the LlamaConfig keys, RoPE scaling from `rope_scaling` or
// transformers 5's `rope_parameters` (`type` or `rope_type`; `default` = no
// scaling), and refuses what ringtrain's model cannot compute — biases,
// sliding windows, mixture of experts, another architecture or activation,
// partial rotary — with a UsageError (exit 2) naming the key and its value.
// Keys that do not change the math (token ids, use_cache, torch_dtype,
// transformers_version, ...) are accepted and carried to export.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "model/model_config.h"

namespace rt {

struct HfModelConfig {
  ModelConfig model;           // resolved and validated (position: rope)
  std::string torch_dtype;     // config.json's torch_dtype ("" when absent)
  nlohmann::json carried;      // bos/eos/pad token ids, kept for export
};

// `where` names the file in messages (e.g. "models/tiny/config.json").
HfModelConfig parse_hf_config(const std::string& json_text, const std::string& where);

// config.json for a ringtrain model: LlamaForCausalLM, the rope_scaling in
// the form transformers and vLLM read (static `ntk` becomes the equivalent
// rope_theta, since HF has no such type), torch_dtype ("bfloat16" |
// "float32"), plus `carried`. UsageError for what HF Llama cannot represent
// (position alibi or none, memory).
nlohmann::ordered_json hf_config_json(const ModelConfig& m, const std::string& torch_dtype,
                                      const nlohmann::json& carried);

// Throws UsageError unless HF's LlamaForCausalLM can represent m.
void check_hf_exportable(const ModelConfig& m, const std::string& what);

}  // namespace rt
