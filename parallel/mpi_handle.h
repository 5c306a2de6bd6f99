// The MPI communicator behind a Comm, for the few places that call MPI
// directly (non-blocking collectives of the gradient reducer). MPI_COMM_NULL
// for a single-process Comm (no MPI).
#pragma once

#include <mpi.h>

#include "parallel/comm.h"

namespace rt {

MPI_Comm mpi_handle(const Comm& c);

}  // namespace rt
