// User-facing errors and their exit codes (SPEC §1).
//
// Errors a user can cause (config, files, launch) are thrown as one of these
// and turned into a message plus exit code in trainer/cli/main.cpp. Programmer
// errors use RT_CHECK, which aborts with file:line.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace rt {

enum ExitCode : int {
  kExitOk = 0,
  kExitOther = 1,
  kExitUsage = 2,      // bad usage, invalid config or input
  kExitIo = 3,         // I/O or checkpoint error
  kExitNumerical = 4,  // non-finite loss beyond tolerance
};

// Base: carries the exit code. what() is the full message shown to the user.
class Error : public std::runtime_error {
 public:
  Error(ExitCode code, const std::string& msg) : std::runtime_error(msg), code_(code) {}
  ExitCode code() const { return code_; }

 private:
  ExitCode code_;
};

// Invalid config, CLI usage or input data (exit 2).
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& msg) : Error(kExitUsage, msg) {}
};

// I/O or checkpoint failure (exit 3).
class IoError : public Error {
 public:
  explicit IoError(const std::string& msg) : Error(kExitIo, msg) {}
};

// Non-finite loss beyond the configured tolerance (exit 4).
class NumericalError : public Error {
 public:
  explicit NumericalError(const std::string& msg) : Error(kExitNumerical, msg) {}
};

}  // namespace rt

// Programmer-error guard: always on (also in release builds), cheap.
#define RT_CHECK(cond, msg)                                                        \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      std::fprintf(stderr, "internal error at %s:%d: %s (%s)\n", __FILE__, __LINE__, \
                   #cond, std::string(msg).c_str());                              \
      std::abort();                                                                \
    }                                                                              \
  } while (0)
