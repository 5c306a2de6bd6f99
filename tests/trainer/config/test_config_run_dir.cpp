// run.name and run.dir (issue 18 item 5): a copy of a resolved config with a
// new run.name starts a new run instead of appending to the old one, and
// run.name is one path component.
#include <gtest/gtest.h>

#include <string>

#include "common/errors.h"
#include "trainer/config/config.h"

namespace rt {
namespace {

const std::string kData = "data: {train: tokens.bin}\n";

TEST(ConfigRunDir, DefaultDirIsNotWrittenSoARenamedCopyStartsANewRun) {
  const Config c = parse_config("run: {name: first}\n" + kData, "a.yaml");
  EXPECT_EQ(c.run.dir, "runs/first");
  const std::string resolved = config_to_yaml(c);
  EXPECT_EQ(resolved.find("dir:"), std::string::npos) << resolved;
  // "copy the resolved config, rename the run"
  const Config copy = parse_config(resolved, "copy.yaml", {"run.name=second"});
  EXPECT_EQ(copy.run.dir, "runs/second");
}

TEST(ConfigRunDir, ExplicitDirIsWrittenAndWins) {
  const Config c = parse_config("run: {name: first, dir: /scratch/elsewhere}\n" + kData, "a.yaml");
  EXPECT_EQ(c.run.dir, "/scratch/elsewhere");
  const std::string resolved = config_to_yaml(c);
  EXPECT_NE(resolved.find("dir: /scratch/elsewhere"), std::string::npos) << resolved;
  EXPECT_EQ(parse_config(resolved, "copy.yaml", {"run.name=second"}).run.dir,
            "/scratch/elsewhere");
}

TEST(ConfigRunDir, NameWithSlashOrDotDotIsExit2NamingTheKey) {
  for (const char* bad : {"a/b", "..", "../up", "x..y", "/abs", ""}) {
    try {
      parse_config("run: {name: '" + std::string(bad) + "'}\n" + kData, "a.yaml");
      ADD_FAILURE() << "run.name '" << bad << "' accepted";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("run.name"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("a.yaml:1"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(parse_config("run: {name: ok-name_1.5}\n" + kData, "a.yaml").run.dir, "runs/ok-name_1.5");
}

}  // namespace
}  // namespace rt
