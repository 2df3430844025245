// Collective communication between the processes of one training job (data parallelism):
// allreduce, broadcast, allgather and barrier over contiguous float32 tensors. meson.build
// compiles one implementation: comm_mpi.cpp when MPI is found (processes started by
// `mpirun -n N`), comm_single.cpp otherwise (one process; every collective is the identity).
// A GPU implementation (NCCL) is another Communicator.
#pragma once
#include <string>

#include "runtime/tensor.h"

namespace peft::comm {

enum class Reduce { sum, average };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;  // 0 .. size()-1
  virtual int size() const = 0;
  // Replaces `t` on every rank by the sum (or mean) of the ranks' `t`. `t`: contiguous
  // float32 of the same shape on every rank.
  virtual void allreduce(Tensor& t, Reduce op) = 0;
  // Replaces `t` on every rank by rank `root`'s `t`.
  virtual void broadcast(Tensor& t, int root) = 0;
  // The ranks' `t` (same shape on every rank) concatenated along dim 0, in rank order.
  virtual Tensor allgather(const Tensor& t) = 0;
  virtual void barrier() = 0;
  // Prints `message` to stderr (the caller names the rank in it) and stops every rank with
  // exit code 1: the way to end a job when one rank cannot go on while the others may be
  // waiting in a collective.
  [[noreturn]] virtual void abort(const std::string& message) = 0;
  // "MPI (Open MPI v4.1.4)", "single process"
  virtual std::string backend() const = 0;

 protected:
  // Throws unless `t` is a contiguous float32 CPU tensor.
  static void check_tensor(const Tensor& t, const char* op);
};

// The processes started together: all of them when this build has MPI and the process was
// started by mpirun (or another MPI launcher), else just this one. Set up on first use,
// finished at exit.
Communicator& world();
// world() if some code already set it up, else nullptr: error handlers use it to stop the
// other ranks without setting up MPI for commands that never use it.
Communicator* world_if_started();

// A communicator over this process alone (every collective leaves its tensor as it is).
Communicator& single_process();

}  // namespace peft::comm
