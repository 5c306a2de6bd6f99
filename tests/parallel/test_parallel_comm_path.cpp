// The choice of transport for device buffers (parallel/comm_path.h): MPI for
// host buffers, NCCL for one rank per GPU in a build with NCCL, pinned-host
// staging when ranks share a GPU or NCCL is missing, and the test hook
// RINGTRAIN_COMM_STAGING. A pure function: every case, every message.
#include <gtest/gtest.h>

#include <cstdlib>

#include "common/errors.h"
#include "parallel/comm_path.h"

namespace rt {
namespace {

CommSituation gpu(int world, int local_size, int devices, bool nccl) {
  CommSituation s;
  s.device_buffers = true;
  s.have_nccl = nccl;
  s.world = world;
  s.local_size = local_size;
  s.device_count = devices;
  return s;
}

TEST(CommPath, CpuBackendUsesMpi) {
  CommSituation s;
  s.world = 4;
  s.local_size = 4;
  for (bool nccl : {false, true}) {
    s.have_nccl = nccl;
    const CommChoice c = choose_comm_path(s);
    EXPECT_EQ(c.path, CommPath::kMpi);
    EXPECT_EQ(c.why, "comm: CPU backend, buffers travel over MPI");
  }
}

TEST(CommPath, OneRankPerGpuWithNcclUsesNccl) {
  for (auto [world, local, devices] : {std::tuple{1, 1, 1}, {4, 4, 4}, {8, 4, 8}, {16, 8, 8}}) {
    CommSituation s = gpu(world, local, devices, true);
    s.device = local - 1;
    const CommChoice c = choose_comm_path(s);
    EXPECT_EQ(c.path, CommPath::kNccl) << world << " " << local << " " << devices;
    EXPECT_NE(c.why.find("NCCL on GPU " + std::to_string(local - 1)), std::string::npos) << c.why;
  }
}

TEST(CommPath, RanksSharingAGpuAreStaged) {
  for (bool nccl : {false, true})
    for (auto [local, devices] : {std::pair{2, 1}, {4, 1}, {8, 4}}) {
      const CommChoice c = choose_comm_path(gpu(local, local, devices, nccl));
      EXPECT_EQ(c.path, CommPath::kStaged) << local << " ranks on " << devices;
      EXPECT_NE(c.why.find("comm: ranks share GPU 0"), std::string::npos) << c.why;
      EXPECT_NE(c.why.find("device buffers travel through pinned host memory over MPI"),
                std::string::npos)
          << c.why;
    }
}

TEST(CommPath, NoNcclIsStaged) {
  const CommChoice c = choose_comm_path(gpu(2, 2, 2, false));
  EXPECT_EQ(c.path, CommPath::kStaged);
  EXPECT_NE(c.why.find("this build has no NCCL"), std::string::npos) << c.why;
  EXPECT_NE(c.why.find("libnccl-dev"), std::string::npos) << c.why;
}

TEST(CommPath, ForcedStagingWinsEverywhere) {
  CommSituation cpu;
  cpu.force_staging = true;
  EXPECT_EQ(choose_comm_path(cpu).path, CommPath::kStaged);
  EXPECT_NE(choose_comm_path(cpu).why.find("RINGTRAIN_COMM_STAGING=1"), std::string::npos);
  CommSituation g = gpu(4, 4, 4, true);
  g.force_staging = true;
  EXPECT_EQ(choose_comm_path(g).path, CommPath::kStaged);
}

TEST(CommPath, EnvironmentVariable) {
  unsetenv("RINGTRAIN_COMM_STAGING");
  EXPECT_FALSE(comm_staging_forced());
  setenv("RINGTRAIN_COMM_STAGING", "0", 1);
  EXPECT_FALSE(comm_staging_forced());
  setenv("RINGTRAIN_COMM_STAGING", "1", 1);
  EXPECT_TRUE(comm_staging_forced());
  EXPECT_TRUE(comm_situation(-1, 1).force_staging);
  setenv("RINGTRAIN_COMM_STAGING", "yes", 1);
  try {
    comm_staging_forced();
    ADD_FAILURE() << "RINGTRAIN_COMM_STAGING=yes accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("expected 1"), std::string::npos) << e.what();
  }
  unsetenv("RINGTRAIN_COMM_STAGING");
}

TEST(CommPath, SituationOfThisProcess) {
  const CommSituation s = comm_situation(-1, 1);
  EXPECT_FALSE(s.device_buffers);
  EXPECT_EQ(s.local_size, 1);  // not launched by mpirun
  EXPECT_EQ(s.device_count, 0);  // no device count asked for host buffers
  EXPECT_EQ(s.have_nccl, nccl_compiled_in());
  EXPECT_STREQ(comm_path_name(CommPath::kStaged), "staged");
}

}  // namespace
}  // namespace rt
