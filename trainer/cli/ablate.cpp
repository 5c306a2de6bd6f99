// `ringtrain ablate SWEEP.yaml`: the options; the command itself is
// trainer/eval/ablate.cpp.
#include <memory>

#include "trainer/cli/commands.h"
#include "trainer/eval/ablate.h"

namespace rt::cli {

Command add_ablate(CLI::App& app) {
  auto o = std::make_shared<AblateOptions>();
  AblateOptions& ao = *o;
  auto* ablate = app.add_subcommand(
      "ablate",
      "Run a sweep of variants: grid, named, eval-only (from:) and follow-up "
      "(init_from:) variants, seeds; each as its own train + eval process in "
      "runs/<sweep>/<variant>/, resumable; writes summary.md, summary.csv and plots. Exit 0 all "
      "complete, 1 some failed or interrupted, 2 invalid sweep (nothing runs)");
  ablate->add_option("sweep", ao.sweep, "SWEEP.yaml")->required();
  ablate->add_flag("--dry-run", ao.dry_run,
                   "validate every variant and print what would run; run nothing");
  ablate->add_flag("!--no-plots", ao.plots,
                   "skip the PNG plots (launch/plot_ablation.py); the CSV and markdown are "
                   "written");
  ablate->add_option("--only", ao.only, "run only these variants (and those they need)")
      ->take_all();
  ablate->add_option("--set", ao.sets,
                     "override a config key in every training variant (applied after the "
                     "variant's own set:), e.g. --set data.train=PATH")
      ->take_all();
  return {ablate, [o] { return run_ablate_command(*o); }};
}

}  // namespace rt::cli
