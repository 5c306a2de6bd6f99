// The `ringtrain` commands (SPEC §1), one file each in trainer/cli/: a file
// adds its subcommand with its options and help to the app and returns how
// to run it; main.cpp only dispatches. Every user error becomes a message and
// an exit code from common/errors.h.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

#include "trainer/config/config.h"

namespace rt::cli {

// Which ranks run a command under mpirun. Commands without collectives run on
// rank 0 only (one printout, one writer of each file); the others wait for it.
enum class Ranks { kAll, kRank0 };

struct Command {
  CLI::App* sub = nullptr;    // the subcommand; sub->parsed() after app.parse
  std::function<int()> run;   // its handler, reading the parsed options
  Ranks ranks = Ranks::kAll;
};

// In the order `--help` lists them.
Command add_train(CLI::App& app);     // train.cpp
Command add_eval(CLI::App& app);      // eval.cpp
Command add_bench(CLI::App& app);     // bench.cpp
Command add_plan(CLI::App& app);      // plan.cpp
Command add_inspect(CLI::App& app);   // inspect.cpp
Command add_generate(CLI::App& app);  // generate.cpp
Command add_extend(CLI::App& app);    // extend.cpp
Command add_import(CLI::App& app);    // import.cpp
Command add_export(CLI::App& app);    // export.cpp
Command add_ablate(CLI::App& app);    // ablate.cpp
Command add_data(CLI::App& app);      // data.cpp (`data prepare`)

// The config a training run uses (train, bench): loaded with the --set
// overrides, its layout checked against the world size, and the model's
// parameters and optimizer state checked to fit this node (train.cpp).
Config load_validated(const std::string& path, const std::vector<std::string>& overrides);

}  // namespace rt::cli
