// main() for MPI test programs (tests/parallel/mpi_*.cpp): initialise MPI through the
// parallel runtime, run the GoogleTest cases on every rank, and fail the
// program when any rank failed. Only rank 0 prints passing tests.
#pragma once

#include <gtest/gtest.h>

#include "parallel/comm.h"

inline int run_mpi_tests(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  rt::ParallelRuntime& runtime = rt::init_parallel_runtime(&argc, &argv);
  if (runtime.world->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    ::testing::GTEST_FLAG(brief) = true;  // other ranks print failures only
    (void)listeners;
  }
  int64_t failed = RUN_ALL_TESTS() != 0;
  runtime.world->allreduce_sum(&failed, 1);
  rt::finalize_parallel_runtime();
  return failed ? 1 : 0;
}
