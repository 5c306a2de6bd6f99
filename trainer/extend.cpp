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
  // The original length L is the one the model was trained at, train.seq_len,
  // not max_position_embeddings: that is only a cap and may be set larger than
  // any position the model saw (configs/tinyshakespeare.yaml: 1024 vs 256).
  // The scaling formulas (SPEC §4.2) interpolate from the positions the
  // weights have learned, so factor = LEN / seq_len.
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
  head += "#                            the checkpoint's train.seq_len: the longest positions its\n";
  head += "#                            weights have seen (its max_position_embeddings, " +
          std::to_string(cfg.model.max_position_embeddings) + ", is only a cap)\n";
  head += "#  model.max_position_embeddings, train.seq_len = " + std::to_string(o.to) + "\n";
  head += "#  train.optimizer.lr        " + fmt(out.train.optimizer.lr) + " = a tenth of the original peak lr (" +
          fmt(cfg.train.optimizer.lr) + "): PI and YaRN fine-tune\n";
  head += "#                            LLaMA at 2e-5, ~1/15 of its pre-training lr; gentle, so the\n";
  head += "#                            weights stay close to the checkpoint\n";
  head += "#  train.max_steps           200 with 20 warm-up steps, cosine to lr/10 (PI and YaRN\n";
  head += "#                            adapt in a few hundred steps)\n";
  head += "#  train.global_batch_size   " + std::to_string(out.train.global_batch_size) + " x " +
          std::to_string(o.to) + " tokens: about the original run's " + std::to_string(tokens) +
          " tokens per step\n";
  head += "#  train.micro_batch_size    " + std::to_string(out.train.micro_batch_size) +
          ": shrunk with the length, so activations fit as before\n";
  head += "#  run.name                  a new run in runs/<run.name> (run.dir is not pinned, so a\n"
          "#                            renamed copy starts its own run); the original run dir is\n"
          "#                            left untouched\n";
  head += "#  eval.seq_lens             the original and the new length\n";
  head += "# Run:  ringtrain train THIS_FILE\n";
  head += "# Long lengths: shard each sequence over a ring of N ranks (N divides the length/2):\n";
  head += "#       launch/local.sh -np N ringtrain train THIS_FILE --set parallel.context_parallel=N\n";
  head += "#       mpirun -np N ringtrain train THIS_FILE --set parallel.context_parallel=N\n";
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
            << "or shard each sequence over a ring of N ranks (long lengths; N divides " << o.to / 2
            << "):\n"
            << "  launch/local.sh -np N ringtrain train " << path
            << " --set parallel.context_parallel=N\n"
            << "  mpirun -np N ringtrain train " << path << " --set parallel.context_parallel=N\n";
  return kExitOk;
}

}  // namespace rt
