// Data-parallel fine-tuning over comm::world() (`mpirun -n N peft finetune ...`): every rank
// holds the whole model, computes its shard of each global batch, and one allreduce per step
// averages the trainable gradients (and the loss), so every rank takes the same optimizer
// step as one process would on the global batch. Without mpirun (or in a build without MPI)
// there is one rank and every call below is the identity.
#pragma once
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "nn/optim.h"
#include "runtime/comm.h"

namespace peft::train {

class DataParallel {
 public:
  // `command` prefixes messages ("finetune-embed"). The ranks are `comm`'s: comm::world()
  // (every process mpirun started) or comm::single_process() (this one alone).
  explicit DataParallel(std::string command, comm::Communicator& comm = comm::world());
  int rank() const { return comm_.rank(); }
  int size() const { return comm_.size(); }
  // Rank 0 prints progress and writes checkpoints and results; the others compute.
  bool is_main() const { return rank() == 0; }
  // Where progress goes: stderr on rank 0, nullptr (silent) elsewhere.
  FILE* log() const { return is_main() ? stderr : nullptr; }

  // Stops every rank unless every rank has the same settings (name, value); values are
  // compared by hash, so a value may be a whole data set (see digest()). Rank 0 names the
  // ranks and settings that differ, then the job stops (comm::Communicator::abort).
  void require_same(const std::vector<std::pair<std::string, std::string>>& settings);

  // Rank 0's values of `params` replace every rank's: all ranks start from one adapter. Then
  // ranks other than 0 reseed the default generator (dropout masks), which would otherwise
  // drop the same positions in every rank's shard; rank 0 keeps its stream.
  void broadcast_parameters(const nn::NamedTensors& params);

  // Rows [begin, end) of a global batch of `batch` rows are this rank's. Throws a peft::Error
  // unless the batch splits evenly (a mean over equal shards is the global mean).
  struct Shard {
    int64_t begin = 0, end = 0;
    int64_t size() const { return end - begin; }
  };
  Shard shard(int64_t batch) const;

  // The global batch's rows of a per-row tensor ([shard rows, ...] -> [batch rows, ...]):
  // the other ranks' rows (allgather) as constants around this rank's own rows, which keep
  // their autograd history. A loss of these rows is the global batch's loss on every rank,
  // but its backward reaches only this rank's rows: backpropagate loss * size() so that
  // average_gradients() gives the one-process gradient.
  Tensor gather_rows(const Tensor& local) const;

  // After backward of this rank's loss: every rank's gradients of `params` become their mean
  // over the ranks, in one allreduce of one flat buffer that also carries `local_loss`; returns
  // the mean loss. A parameter without a gradient counts as zero. `local_weight` (> 0) weights
  // this rank in both means (the tokens its loss averages over, when ranks hold different
  // numbers): ranks of equal weight give the plain mean.
  double average_gradients(const nn::NamedTensors& params, double local_loss, double local_weight = 1.0);

  // Bytes one rank sends into average_gradients' allreduce: float32 gradients, loss and weight.
  static int64_t gradient_bytes(const nn::NamedTensors& params);

  // A short fingerprint of `bytes` (FNV-1a, 64 bits, hex) for require_same.
  static std::string digest(const std::string& bytes);
  // digest() of a file's bytes (a base model, a data file).
  static std::string file_digest(const std::string& path);
  // digest() of a vector's bytes (tokenized data).
  template <class T>
  static std::string digest(const std::vector<T>& v) {
    return digest(std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T)));
  }

 private:
  std::string command_;
  comm::Communicator& comm_;
};

}  // namespace peft::train
