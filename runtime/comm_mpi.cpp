// Chosen by meson.build when MPI is found: the world is MPI_COMM_WORLD when an MPI launcher
// (mpirun, mpiexec, srun) started this process, else this process alone (so a plain
// `peft finetune` never starts MPI).
// the C API only: Open MPI's deprecated C++ bindings warn under -Wextra
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "runtime/comm.h"
#include "runtime/error.h"

namespace peft::comm {

namespace {

// Environment variables the launchers set for every process they start.
bool started_by_mpi_launcher() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(var)) return true;
  return false;
}

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  fail("[comm] ", call, " failed: ", std::string(text, size_t(len)));
}

// MPI counts are int: larger buffers go in pieces.
constexpr int64_t kMaxCount = int64_t(1) << 30;

class MpiWorld final : public Communicator {
 public:
  MpiWorld() {
    int provided = 0;
    // MPI is called from the main thread only; OpenMP threads compute between the calls.
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    // errors come back as codes, so they become peft::Error with MPI's text
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    std::atexit([] {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Finalize();
    });
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void allreduce(Tensor& t, Reduce op) override {
    check_tensor(t, "allreduce");
    float* p = t.data_ptr<float>();
    for (int64_t i = 0; i < t.numel(); i += kMaxCount)
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, p + i, int(std::min(kMaxCount, t.numel() - i)), MPI_FLOAT, MPI_SUM,
                              MPI_COMM_WORLD),
                "MPI_Allreduce");
    if (op == Reduce::average) {
      const float inv = 1.0f / float(size_);
      for (int64_t i = 0; i < t.numel(); ++i) p[i] *= inv;
    }
  }

  void broadcast(Tensor& t, int root) override {
    check_tensor(t, "broadcast");
    PEFT_CHECK(root >= 0 && root < size_, "[comm::broadcast] root ", root, " is not a rank of ", size_);
    float* p = t.data_ptr<float>();
    for (int64_t i = 0; i < t.numel(); i += kMaxCount)
      check_mpi(MPI_Bcast(p + i, int(std::min(kMaxCount, t.numel() - i)), MPI_FLOAT, root, MPI_COMM_WORLD),
                "MPI_Bcast");
  }

  Tensor allgather(const Tensor& t) override {
    check_tensor(t, "allgather");
    PEFT_CHECK(t.dim() >= 1, "[comm::allgather] needs at least one dimension, got ", t.desc());
    PEFT_CHECK(t.numel() * size_ <= kMaxCount, "[comm::allgather] ", t.desc(), " x ", size_, " ranks is too large");
    // every rank must send as many numbers: compare before MPI would truncate
    long long mine = t.numel(), least = 0, most = 0;
    check_mpi(MPI_Allreduce(&mine, &least, 1, MPI_LONG_LONG, MPI_MIN, MPI_COMM_WORLD), "MPI_Allreduce");
    check_mpi(MPI_Allreduce(&mine, &most, 1, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
    PEFT_CHECK(least == most, "[comm::allgather] the ranks' tensors differ in size (", least, " to ", most,
               " numbers; rank ", rank_, " has ", t.desc(), ")");
    Shape shape = t.shape();
    shape[0] *= size_;
    Tensor out = zeros(shape);
    check_mpi(MPI_Allgather(t.data_ptr<float>(), int(mine), MPI_FLOAT, out.data_ptr<float>(), int(mine), MPI_FLOAT,
                            MPI_COMM_WORLD),
              "MPI_Allgather");
    return out;
  }

  void barrier() override { check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }

  [[noreturn]] void abort(const std::string& message) override {
    std::fprintf(stderr, "%s\n", message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::exit(1);  // MPI_Abort does not return; this keeps [[noreturn]] honest
  }

  std::string backend() const override {
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(version, &len);
    std::string v(version, size_t(len));
    return "MPI (" + v.substr(0, v.find_first_of(",\n")) + ")";
  }

 private:
  int rank_ = 0, size_ = 1;
};

Communicator* started = nullptr;

}  // namespace

Communicator& world() {
  if (!started) {
    if (started_by_mpi_launcher()) {
      static MpiWorld mpi;
      started = &mpi;
    } else {
      started = &single_process();
    }
  }
  return *started;
}

Communicator* world_if_started() { return started; }

}  // namespace peft::comm
