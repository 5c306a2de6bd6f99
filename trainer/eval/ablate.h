// `ringtrain ablate SWEEP.yaml` (SPEC §10): expands a sweep (a base config, a
// grid of dotted keys, named variants, eval-only and follow-up variants,
// seeds) into runs, validates every one before the first starts, runs each
// as its own child process (`ringtrain train` then `ringtrain eval`, under
// launch/local.sh when `launch: {np: N}`), resumes what was interrupted, and
// writes summary.md / summary.csv / summary.json (and plots through
// launch/plot_ablation.py) after every finished variant.
#pragma once

#include <string>
#include <vector>

namespace rt {

struct AblateOptions {
  std::string sweep;              // SWEEP.yaml
  bool dry_run = false;           // validate and print the plan; run nothing
  bool plots = true;              // launch/plot_ablation.py after every variant
  std::vector<std::string> only;  // run only these variants (and what they need)
  std::vector<std::string> sets;  // --set key=value: every variant, after its own set:
};

// Exit codes: 0 every selected variant complete; 1 some variant failed (or
// was blocked by a failed one) or the sweep was interrupted by SIGINT/SIGTERM
// (the running child stopped cleanly; run the same command again to go on);
// 2 invalid sweep or variant (nothing ran); 3 the run directory is unwritable.
int run_ablate_command(const AblateOptions& o);

}  // namespace rt
