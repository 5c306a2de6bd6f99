// Small helpers shared by the GoogleTest suites.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <exception>
#include <filesystem>
#include <string>

namespace rt::testing {

// Runs f, expects it to throw E, returns the message (test failure otherwise).
template <class E, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no exception";
  return "";
}

// A fresh, empty directory for the running test: /tmp/<prefix>_<pid>_<test>.
inline std::string fresh_test_dir(const std::string& prefix) {
  namespace fs = std::filesystem;
  const std::string dir =
      (fs::temp_directory_path() /
       (prefix + "_" + std::to_string(::getpid()) + "_" +
        ::testing::UnitTest::GetInstance()->current_test_info()->name()))
          .string();
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

}  // namespace rt::testing
