// `ringtrain train CONFIG.yaml [--set KEY=VALUE ...]`: train or fine-tune.
#include <csignal>
#include <memory>

#include "common/errors.h"
#include "common/log.h"
#include "parallel/comm.h"
#include "trainer/cli/commands.h"
#include "trainer/config/config.h"
#include "trainer/train/memory_check.h"
#include "trainer/train/trainer.h"

namespace rt::cli {

Config load_validated(const std::string& path, const std::vector<std::string>& overrides) {
  Config cfg = load_config(path, overrides);
  validate_layout(cfg, parallel_runtime().world->size());
  check_model_state_fits(cfg, parallel_runtime().local_size);
  return cfg;
}

namespace {

struct TrainArgs {
  std::string config;
  std::vector<std::string> overrides;
};

int cmd_train(const std::string& config, const std::vector<std::string>& overrides) {
  Config cfg = load_validated(config, overrides);
  Trainer trainer(cfg, {});
  install_stop_signal_handlers();
  trainer.fit();
  if (int sig = trainer.stopped_by_signal()) {
    // Like torchtitan: a requested stop that saved cleanly is a success.
    log_info("stopped by %s at step %lld; checkpoint saved in %s/checkpoints; run the same "
             "command again to resume",
             sig == SIGINT ? "SIGINT" : "SIGTERM", (long long)trainer.step(),
             trainer.run_dir().c_str());
    return kExitOk;
  }
  log_info("done: %lld steps, %lld tokens; run dir %s", (long long)trainer.step(),
           (long long)trainer.tokens_seen(), trainer.run_dir().c_str());
  return kExitOk;
}

}  // namespace

Command add_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto* train = app.add_subcommand(
      "train",
      "Train or fine-tune from a YAML config. Resumes from the newest usable checkpoint in the "
      "run dir (else starts from checkpoint.init_from's weights, if set); one train per run dir "
      "(RUN_DIR/.lock). SIGINT/SIGTERM: stop at the next micro-batch boundary, save the last "
      "completed step, exit 0 (under MPI signal launch/local.sh, not mpirun)");
  train->add_option("config", a->config, "config YAML")->required();
  train->add_option("--set", a->overrides, "override a config key: --set train.optimizer.lr=1e-4")
      ->take_all();
  return {train, [a] { return cmd_train(a->config, a->overrides); }};
}

}  // namespace rt::cli
