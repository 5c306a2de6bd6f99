#include "common/command_name.h"

#include <cstdlib>
#include <filesystem>
#include <sstream>

namespace rt {

namespace fs = std::filesystem;

std::string ringtrain_command() {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "ringtrain";
  if (const char* path = std::getenv("PATH")) {
    std::stringstream dirs(path);
    for (std::string dir; std::getline(dirs, dir, ':');) {
      if (dir.empty()) continue;
      const fs::path candidate = fs::path(dir) / self.filename();
      if (fs::exists(candidate, ec) && fs::equivalent(candidate, self, ec))
        return self.filename().string();
    }
  }
  const fs::path cwd = fs::current_path(ec);
  if (!ec) {
    const fs::path rel = self.lexically_relative(cwd);
    if (!rel.empty() && *rel.begin() != "..") return "./" + rel.string();
  }
  return self.string();
}

}  // namespace rt
