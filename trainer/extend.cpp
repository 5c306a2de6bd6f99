#include "trainer/extend.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "common/errors.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"

namespace rt {

namespace {

const char* const kMethods[] = {"linear", "ntk", "dynamic", "yarn", "llama3"};

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
    cfg = parse_config(meta.config_yaml, ckpt + ":config");
  } catch (const UsageError& e) {
    throw UsageError("extend: the checkpoint's config attribute is not a full ringtrain config "
                     "(" + std::string(e.what()) + "); write the fine-tune config by hand with "
                     "checkpoint.init_from: " + ckpt + " and model.rope_scaling");
  }
  if (cfg.model.position != "rope")
    throw UsageError("extend: " + ckpt + " uses model.position: " + cfg.model.position +
                     ", and the extension methods rescale RoPE. " +
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
  // The original length is the one the model was trained at: train.seq_len
  // (max_position_embeddings may be set larger than anything it saw).
  const int64_t original = cfg.train.seq_len;
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
  // Keep the tokens per optimizer step near the original run's.
  const int64_t tokens = int64_t(cfg.train.global_batch_size) * cfg.train.seq_len;
  out.train.micro_batch_size = int(std::max<int64_t>(1, cfg.train.micro_batch_size * original / o.to));
  out.train.global_batch_size =
      int(std::max<int64_t>(out.train.micro_batch_size, tokens / o.to / out.train.micro_batch_size *
                                                            out.train.micro_batch_size));
  // A short, gentle fine-tune: the YaRN and PI papers extend with a few
  // hundred steps at a small learning rate; a tenth of this run's peak lr
  // keeps the weights close to the checkpoint whatever its scale.
  out.train.max_steps = 200;
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
          std::to_string(original) + ", original_max_position_embeddings = the trained length\n";
  head += "#  model.max_position_embeddings, train.seq_len = " + std::to_string(o.to) + "\n";
  head += "#  train.optimizer.lr        " + fmt(out.train.optimizer.lr) +
          " = a tenth of the original peak lr: a gentle fine-tune\n";
  head += "#  train.max_steps           200 with 20 warm-up steps, cosine to lr/10 (PI and YaRN\n";
  head += "#                            extend with a few hundred steps)\n";
  head += "#  train.global_batch_size   " + std::to_string(out.train.global_batch_size) +
          " sequences: about the original run's tokens per step\n";
  head += "#  eval.seq_lens             the original and the new length\n";
  head += "# Run:  ringtrain train THIS_FILE\n";
  head += "# Long lengths over a ring of N ranks:\n";
  head += "#       launch/local.sh -np N ringtrain train THIS_FILE --set parallel.context_parallel=N\n";
  const std::string body = config_to_yaml(out);
  parse_config(body, "extend output");  // what we write must validate
  return head + body;
}

int run_extend_command(const ExtendOptions& o) {
  const std::string yaml = extend_config_yaml(o);
  std::string path = o.out;
  if (path.empty()) {
    Config c = parse_config(yaml, "extend output");
    path = c.run.name + ".yaml";
  }
  std::ofstream f(path);
  f << yaml;
  f.close();
  if (!f) throw IoError("extend: cannot write " + path + " (check the directory exists and is writable)");
  std::cout << "wrote " << path << "\n"
            << "run it:\n  ringtrain train " << path << "\n"
            << "or over a ring of N ranks for long sequences:\n"
            << "  launch/local.sh -np N ringtrain train " << path
            << " --set parallel.context_parallel=N\n";
  return kExitOk;
}

}  // namespace rt
