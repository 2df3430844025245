// The one-process communicator, compiled in every build: world() without MPI, and under an
// MPI build for a process that no MPI launcher started.
#include <cstdio>
#include <cstdlib>

#include "runtime/comm.h"
#include "runtime/error.h"

namespace peft::comm {

void Communicator::check_tensor(const Tensor& t, const char* op) {
  PEFT_CHECK(t.dtype() == DType::float32 && t.is_contiguous() && t.device() == Device::cpu, "[comm::", op,
             "] needs a contiguous float32 CPU tensor, got ", t.desc());
}

namespace {

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allreduce(Tensor& t, Reduce) override { check_tensor(t, "allreduce"); }
  void broadcast(Tensor& t, int root) override {
    check_tensor(t, "broadcast");
    PEFT_CHECK(root == 0, "[comm::broadcast] root ", root, " but there is one process");
  }
  Tensor allgather(const Tensor& t) override {
    check_tensor(t, "allgather");
    return t.clone();
  }
  void barrier() override {}
  [[noreturn]] void abort(const std::string& message) override {
    std::fprintf(stderr, "%s\n", message.c_str());
    std::exit(1);
  }
  std::string backend() const override { return "single process"; }
};

}  // namespace

Communicator& single_process() {
  static SingleProcess single;
  return single;
}

}  // namespace peft::comm
