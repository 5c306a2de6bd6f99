// ringtrain: the command-line entry point (SPEC §1). Each command adds its
// options and handler in its own file (trainer/cli/<command>.cpp, declared in
// commands.h); this file builds the app, parses, and dispatches to the one
// command given. Every user error becomes a message and an exit code from
// common/errors.h.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "common/command_name.h"
#include "common/errors.h"
#include "common/log.h"
#include "common/strings.h"
#include "parallel/comm.h"
#include "trainer/cli/commands.h"
#include "trainer/config/config.h"

namespace rt {
namespace {

int run(int argc, char** argv) {
  CLI::App app{
      "ringtrain: train and fine-tune long-context transformers.\n"
      "Launch multi-process runs with mpirun; see README.md and docs/cli.md."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ringtrain 0.1.0");

  const std::vector<cli::Command> commands = {
      cli::add_train(app),    cli::add_eval(app),   cli::add_bench(app),
      cli::add_plan(app),     cli::add_inspect(app), cli::add_generate(app),
      cli::add_extend(app),   cli::add_import(app), cli::add_export(app),
      cli::add_ablate(app),   cli::add_data(app)};

  if (argc > 1 && argv[1][0] != '-') {
    const std::string word = argv[1];
    std::vector<std::string> names;
    for (const CLI::App* sub : app.get_subcommands({})) names.push_back(sub->get_name());
    if (std::find(names.begin(), names.end(), word) == names.end())
      throw UsageError("unknown command '" + word + "'; did you mean '" + closest_match(word, names) +
                       "'? (commands: " + join(names, ", ") + "; see " + ringtrain_command() +
                       " --help)");
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }

  const bool rank0 = parallel_runtime().world->rank() == 0;
  for (const cli::Command& c : commands)
    if (c.sub->parsed()) return c.ranks == cli::Ranks::kRank0 && !rank0 ? kExitOk : c.run();
  return kExitUsage;
}

}  // namespace
}  // namespace rt

// Threads per rank default to this node's cores divided by its ranks
// (SPEC §12), so that `mpirun -np 4` on 2 cores does not thrash;
// OMP_NUM_THREADS overrides.
static void set_default_threads(const rt::ParallelRuntime& prt) {
  if (std::getenv("OMP_NUM_THREADS")) return;
  const int cores = int(std::thread::hardware_concurrency());
  omp_set_num_threads(std::max(1, cores / std::max(1, prt.local_size)));
}

int main(int argc, char** argv) {
  rt::ParallelRuntime& prt = rt::init_parallel_runtime(&argc, &argv);
  rt::set_log_rank(prt.world->rank());
  set_default_threads(prt);
  const bool many = prt.world->size() > 1;
  const std::string who = many ? "[rank " + std::to_string(prt.world->rank()) + "] " : "";
  int code = rt::kExitOk;
  try {
    code = rt::run(argc, argv);
  } catch (const rt::Error& e) {
    std::fprintf(stderr, "%serror: %s\n", who.c_str(), e.what());
    code = e.code();
  } catch (const std::bad_alloc&) {
    // Parameters and optimizer state were checked to fit before allocating
    // (memory_check.h), so what did not fit is the activations.
    std::fprintf(stderr,
                 "%serror: out of memory (the parameters and optimizer state fit; the "
                 "activations did not): lower train.seq_len or train.micro_batch_size, raise "
                 "parallel.context_parallel, or set train.activation_checkpointing: true (the "
                 "least memory; selective keeps every layer's attention output)\n",
                 who.c_str());
    code = rt::kExitOther;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%serror: %s\n", who.c_str(), e.what());
    code = rt::kExitOther;
  }
  // A failing rank brings the whole job down at once (SPEC §1): the others
  // may be waiting for it inside a collective.
  if (code != rt::kExitOk && many) {
    std::fflush(stderr);
    prt.world->abort(code);
  }
  rt::finalize_parallel_runtime();
  return code;
}
