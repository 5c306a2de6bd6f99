// CUDA device discovery. Skips visibly where there is no CUDA build or no
// device; on a GPU machine it checks the runtime sees a named device.
#include <gtest/gtest.h>

#ifdef RINGTRAIN_HAVE_CUDA
#include "model/cuda/device_info.h"
#endif

TEST(CudaDevice, DiscoversDevicesOrSkips) {
#ifndef RINGTRAIN_HAVE_CUDA
  GTEST_SKIP() << "skipped: built without CUDA (nvcc not found)";
#else
  int n = rt::cuda::device_count();
  if (n == 0) GTEST_SKIP() << "skipped: no CUDA device";
  for (int d = 0; d < n; ++d) {
    std::string name = rt::cuda::device_name(d);
    EXPECT_FALSE(name.empty());
    EXPECT_NE(name, "unknown") << "device " << d;
  }
#endif
}
