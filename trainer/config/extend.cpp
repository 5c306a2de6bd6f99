#include "trainer/config/extend.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include <yaml-cpp/yaml.h>

#include "common/errors.h"
#include "trainer/checkpoint/checkpoint.h"
#include "common/command_name.h"
#include "trainer/config/config.h"

namespace rt {

namespace {

const char* const kMethods[] = {"linear", "ntk", "dynamic", "yarn", "llama3"};

// Whether a config text sets section.key (the parsed Config cannot tell a
// default from an explicit value).
bool config_text_has_key(const std::string& yaml, const char* section, const char* key) {
  try {
    const YAML::Node root = YAML::Load(yaml);
    return root.IsMap() && root[section].IsMap() && root[section][key].IsDefined();
  } catch (const YAML::Exception&) {
    return false;
  }
}

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

}  // namespace

std::string extend_config_yaml(const ExtendOptions& o) {
  if (std::find(std::begin(kMethods), std::end(kMethods), o.method) == std::end(kMethods))
    throw UsageError("extend --method '" + o.method +
                     "' is not one of linear | ntk | dynamic | yarn | llama3");
  const std::string ckpt = std::filesystem::absolute(o.checkpoint).lexically_normal().string();
  CheckpointMeta meta = read_checkpoint_meta(ckpt);  // IoError when missing or corrupt
  Config cfg;
  try {
    cfg = parse_config(meta.config_yaml, ckpt + ":config", {}, ConfigUse::kNoTraining);
  } catch (const UsageError& e) {
    throw UsageError("extend: the checkpoint's config attribute is not a full ringtrain config "
                     "(" + std::string(e.what()) + "); write the fine-tune config by hand with "
                     "checkpoint.init_from: " + ckpt + " and model.rope_scaling");
  }
  if (cfg.model.position != "rope")
    throw UsageError("extend: " + ckpt + " uses model.position: " + cfg.model.position +
                     "; the extension methods (linear | ntk | dynamic | yarn | llama3) rescale RoPE and "
                     "apply to position: rope checkpoints only. " +
                     (cfg.model.position == "alibi"
                          ? "ALiBi needs no rescaling: fine-tune at the new length with "
                            "checkpoint.init_from and a longer train.seq_len"
                          : "A model without positions has nothing to rescale: fine-tune at the "
                            "new length with checkpoint.init_from and a longer train.seq_len"));
  if (cfg.model.rope_scaling)
    throw UsageError("extend: " + ckpt + " already uses rope_scaling " +
                     cfg.model.rope_scaling->rope_type + " (factor " +
                     fmt(cfg.model.rope_scaling->factor) +
                     "); stacking a second scaling is not supported: extend the original "
                     "checkpoint, or edit model.rope_scaling by hand");
  // An imported Hugging Face model (an HF directory, or `ringtrain import`'s
  // checkpoint): its config was derived from config.json, with train.seq_len
  // = max_position_embeddings (the context it was trained for) and an lr
  // estimated from its width (trainer/hf/hf_io.cpp).
  std::string imported_from;
  {
    const nlohmann::json st = nlohmann::json::parse(meta.trainer_state_json, nullptr, false);
    if (st.is_object() && st.contains("imported_from") && st["imported_from"].is_string())
      imported_from = st["imported_from"].get<std::string>();
  }
  // The original length L is the one the model was trained at, train.seq_len,
  // not max_position_embeddings: that is only a cap and may be set larger than
  // any position the model saw (configs/tinyshakespeare.yaml: 1024 vs 256).
  // The scaling formulas (SPEC §4.2) interpolate from the positions the
  // weights have learned, so factor = LEN / seq_len.
  // A weights-only file whose config holds only `model:` (SPEC §8) has no
  // train.seq_len: then max_position_embeddings is the best knowledge of it.
  const bool has_seq_len = config_text_has_key(meta.config_yaml, "train", "seq_len");
  const int64_t original = has_seq_len ? cfg.train.seq_len : cfg.model.max_position_embeddings;
  if (!has_seq_len) cfg.train.seq_len = original;
  if (o.to <= original)
    throw UsageError("extend --to " + std::to_string(o.to) + " is not beyond the checkpoint's "
                     "training length " + std::to_string(original) + ": choose a longer length");
  const double factor = double(o.to) / double(original);

  Config out = cfg;
  out.run.name = cfg.run.name + "-" + o.method + "-" + std::to_string(o.to);
  out.run.dir = "runs/" + out.run.name;
  out.model.max_position_embeddings = int(o.to);
  RopeScalingConfig rs;
  rs.rope_type = o.method;
  rs.factor = factor;
  rs.original_max_position_embeddings = original;
  out.model.rope_scaling = rs;
  out.train.seq_len = o.to;
  // Keep the tokens per optimizer step near the original run's (the
  // micro-batch shrinks with the length so activation memory stays about the
  // same). The layout is left to the launch: data_parallel auto, and the ring
  // size of the original run when it still divides the new length.
  const int64_t tokens = int64_t(cfg.train.global_batch_size) * cfg.train.seq_len;
  out.train.micro_batch_size = int(std::max<int64_t>(1, cfg.train.micro_batch_size * original / o.to));
  out.train.global_batch_size =
      int(std::max<int64_t>(out.train.micro_batch_size, tokens / o.to / out.train.micro_batch_size *
                                                            out.train.micro_batch_size));
  out.parallel.data_parallel = 0;
  // A short, gentle fine-tune. PI fine-tunes LLaMA 7B (pre-trained at peak lr
  // 3e-4) with 2e-5 for 1000 steps and YaRN uses 2e-5 for 400 steps: about a
  // fifteenth of the pre-training lr. A tenth of this checkpoint's peak lr is
  // that rule "scaled to the model": a 7B-style run at 3e-4 gets 3e-5, a tiny
  // character model trained at 1e-3 gets 1e-4 (a fixed 2e-5 would barely move
  // it in 200 steps). 200 steps is enough for the few-hundred-step adaptation
  // both papers report.
  out.train.max_steps = 200;
  // An imported model's steps scale with its size: about 0.1 fine-tuning
  // tokens per parameter (PI: 1000 steps x 64 x 8K tokens for LLaMA 7B,
  // ~0.08; YaRN: 400 x 64 x 64K, ~0.25), 100 to 1000 steps. TinyLlama 1.1B
  // at 8 x 32K tokens per step: 420.
  int64_t params = 0;
  for (const TensorSpec& t : llama_param_specs(cfg.model)) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    params += n;
  }
  const int64_t step_tokens = int64_t(out.train.global_batch_size) * o.to;
  if (!imported_from.empty())
    out.train.max_steps =
        std::clamp<int64_t>(std::llround(0.1 * double(params) / double(step_tokens)), 100, 1000);
  out.train.optimizer.lr = cfg.train.optimizer.lr / 10.0;
  out.train.schedule.type = "cosine";
  out.train.schedule.warmup_steps = 20;
  out.train.schedule.min_lr = out.train.optimizer.lr / 10.0;
  out.checkpoint.init_from = ckpt;
  out.checkpoint.every_steps = 100;
  out.eval.seq_lens = {original, o.to};
  out.eval.every_steps = 0;
  if (out.parallel.context_parallel > 1 && o.to % (2 * out.parallel.context_parallel) != 0)
    out.parallel.context_parallel = 1;

  std::string head;
  head += "# Fine-tune " + ckpt + "\n";
  head += "# from its training length " + std::to_string(original) + " to " + std::to_string(o.to) +
          " tokens with RoPE scaling '" + o.method + "' (factor " + fmt(factor) + ").\n";
  head += "# Written by `ringtrain extend`; edit freely. What was chosen and why:\n";
  head += "#  checkpoint.init_from      weights only: optimizer, step and data start fresh (SPEC §4.4)\n";
  head += "#  model.rope_scaling        " + o.method + ", factor = " + std::to_string(o.to) + " / " +
          std::to_string(original) + "; original_max_position_embeddings = " +
          std::to_string(original) + ",\n";
  if (imported_from.empty()) {
    head += "#                            the checkpoint's train.seq_len: the longest positions its\n";
    head += "#                            weights have seen (its max_position_embeddings, " +
            std::to_string(cfg.model.max_position_embeddings) + ", is only a cap)\n";
  } else {
    head += "#                            the max_position_embeddings of the Hugging Face model's\n";
    head += "#                            config.json (" + imported_from + "): the context it was trained for\n";
  }
  head += "#  model.max_position_embeddings, train.seq_len = " + std::to_string(o.to) + "\n";
  if (imported_from.empty())
    head += "#  train.optimizer.lr        " + fmt(out.train.optimizer.lr) + " = a tenth of the original peak lr (" +
            fmt(cfg.train.optimizer.lr) + "): PI and YaRN fine-tune\n";
  else
    head += "#  train.optimizer.lr        " + fmt(out.train.optimizer.lr) + " = a tenth of the estimated pre-training lr " +
            fmt(cfg.train.optimizer.lr) + "\n#                            (3e-4 * sqrt(4096 / hidden_size): Llama 2 7B 3e-4, TinyLlama 4e-4);\n"
            "#                            PI and YaRN fine-tune\n";
  head += "#                            LLaMA at 2e-5, ~1/15 of its pre-training lr; gentle, so the\n";
  head += "#                            weights stay close to the checkpoint\n";
  if (imported_from.empty()) {
    head += "#  train.max_steps           200 with 20 warm-up steps, cosine to lr/10 (PI and YaRN\n";
    head += "#                            adapt in a few hundred steps)\n";
  } else {
    head += "#  train.max_steps           " + std::to_string(out.train.max_steps) +
            " = ~0.1 tokens per parameter (" + std::to_string(params) + " parameters,\n";
    head += "#                            " + std::to_string(step_tokens) +
            " tokens per step; PI used ~0.08, YaRN ~0.25), within 100..1000;\n";
    head += "#                            20 warm-up steps, cosine to lr/10\n";
    head += "#  data.train                SET THIS: text tokenized with the model's own tokenizer\n";
    head += "#                            (ringtrain data prepare ... --tokenizer MODEL_DIR/tokenizer.model)\n";
  }
  head += "#  train.global_batch_size   " + std::to_string(out.train.global_batch_size) + " x " +
          std::to_string(o.to) + " tokens: about the original run's " + std::to_string(tokens) +
          " tokens per step\n";
  head += "#  train.micro_batch_size    " + std::to_string(out.train.micro_batch_size) +
          ": shrunk with the length, so activations fit as before\n";
  head += "#  run.name                  a new run in runs/<run.name> (run.dir is not pinned, so a\n"
          "#                            renamed copy starts its own run); the original run dir is\n"
          "#                            left untouched\n";
  head += "#  eval.seq_lens             the original and the new length\n";
  const std::string self = ringtrain_command();
  head += "# Run:  " + self + " train THIS_FILE\n";
  head += "# Long lengths: shard each sequence over a ring of N ranks (N divides the length/2):\n";
  head += "#       launch/local.sh -np N " + self + " train THIS_FILE --set parallel.context_parallel=N\n";
  head += "#       mpirun -np N " + self + " train THIS_FILE --set parallel.context_parallel=N\n";
  const std::string body = config_to_yaml(out);
  std::string data_note;
  if (!has_data(out.data.train))
    data_note = "# The checkpoint's config names no training data: set data.train before training\n"
                "#       (edit data.train below, or --set data.train=FILE on the command line).\n";
  parse_config(body, "extend output", {}, ConfigUse::kNoTraining);  // what we write must validate
  return head + data_note + body;
}

int run_extend_command(const ExtendOptions& o) {
  const std::string yaml = extend_config_yaml(o);
  std::string path = o.out;
  if (path.empty()) {
    Config c = parse_config(yaml, "extend output", {}, ConfigUse::kNoTraining);
    path = c.run.name + ".yaml";
  }
  std::ofstream f(path);
  f << yaml;
  f.close();
  if (!f) throw IoError("extend: cannot write " + path + " (check the directory exists and is writable)");
  const std::string self = ringtrain_command();
  std::cout << "wrote " << path << "\n"
            << "run it:\n  " << self << " train " << path << "\n"
            << "or shard each sequence over a ring of N ranks (long lengths; N divides " << o.to / 2
            << "):\n"
            << "  launch/local.sh -np N " << self << " train " << path
            << " --set parallel.context_parallel=N\n"
            << "  mpirun -np N " << self << " train " << path << " --set parallel.context_parallel=N\n";
  return kExitOk;
}

}  // namespace rt
