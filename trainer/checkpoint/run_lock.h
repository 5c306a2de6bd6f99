// The run-directory lock (issue 18 item 4): one training process per run dir.
//
// RUN_DIR/.lock is flock()ed (exclusive, non-blocking) for the run's lifetime
// and holds "pid host start-time" of the holder. A second `train` on the same
// run dir gets a UsageError (exit 2) naming that PID and host. The kernel
// drops a flock when its process dies, however it dies, so a lock file whose
// holder is gone (kill -9, node crash on a local disk) is simply taken over,
// and that is logged with the dead holder's PID and host. Under MPI only the
// writing rank (rank 0) takes it; its failure brings the job down (MPI_Abort).
// On NFS, flock is emulated with POSIX locks (Linux >= 2.6.12, NFSv4).
#pragma once

#include <string>

namespace rt {

class RunLock {
 public:
  // Creates run_dir if needed. Throws UsageError when another live process
  // holds the lock, IoError when the lock file cannot be created.
  explicit RunLock(const std::string& run_dir);
  ~RunLock();  // empties the file (a clean release) and unlocks
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace rt
