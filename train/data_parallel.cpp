#include "train/data_parallel.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "runtime/error.h"
#include "runtime/generator.h"
#include "runtime/ops.h"

namespace peft::train {

namespace {

uint64_t fnv1a(const std::string& bytes) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return h;
}

// float32 holds integers below 2^24 exactly: a 64-bit hash travels as four 16-bit pieces.
void append_hash(std::vector<float>& out, uint64_t h) {
  for (int i = 0; i < 4; ++i) out.push_back(float((h >> (16 * i)) & 0xffff));
}

}  // namespace

DataParallel::DataParallel(std::string command, comm::Communicator& comm) : command_(std::move(command)), comm_(comm) {}

std::string DataParallel::digest(const std::string& bytes) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fnv1a(bytes));
  return hex;
}

std::string DataParallel::file_digest(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot read it");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return digest(bytes.str());
}

void DataParallel::require_same(const std::vector<std::pair<std::string, std::string>>& settings) {
  if (size() == 1) return;
  PEFT_CHECK(settings.size() <= 24, "require_same: at most 24 settings, got ", settings.size());
  std::vector<float> mine;
  for (const auto& [name, value] : settings) append_hash(mine, fnv1a(name + "=" + value));
  Tensor root = from_vector(mine, {int64_t(mine.size())});
  comm_.broadcast(root, 0);
  const std::vector<float> theirs = root.to_vector<float>();
  // one float per rank: a bit for each setting that differs from rank 0's (exact below 2^24)
  uint32_t differs = 0;
  for (size_t i = 0; i < settings.size(); ++i)
    if (!std::equal(mine.begin() + ptrdiff_t(4 * i), mine.begin() + ptrdiff_t(4 * i + 4), theirs.begin() + ptrdiff_t(4 * i)))
      differs |= 1u << i;
  const std::vector<float> all = comm_.allgather(from_vector(std::vector<float>{float(differs)}, {1})).to_vector<float>();
  bool any = false;
  for (float f : all) any = any || f != 0;
  if (!any) return;
  if (!is_main()) {
    comm_.barrier();  // rank 0 never joins: it reports and stops every rank
    fail(command_, ": this rank's settings differ from rank 0's (see rank 0's message)");
  }
  std::ostringstream msg;
  msg << "the ranks were started with different settings:";
  for (size_t r = 1; r < all.size(); ++r) {
    const auto mask = uint32_t(all[r]);
    if (!mask) continue;
    msg << " rank " << r << " differs from rank 0 in";
    const char* sep = " ";
    for (size_t i = 0; i < settings.size(); ++i)
      if (mask & (1u << i)) {
        msg << sep << settings[i].first;
        if (settings[i].second.size() <= 40) msg << " (rank 0: " << settings[i].second << ")";
        sep = ", ";
      }
    msg << ";";
  }
  msg << " start every rank with the same options and data";
  fail(msg.str());
}

namespace {

int64_t total_numel(const nn::NamedTensors& params) {
  int64_t n = 0;
  for (const auto& [name, p] : params) {
    PEFT_CHECK(p.dtype() == DType::float32, "data parallel training needs float32 parameters; ", name, " is ",
               p.desc());
    n += p.numel();
  }
  return n;
}

}  // namespace

void DataParallel::broadcast_parameters(const nn::NamedTensors& params) {
  if (size() == 1) return;
  Tensor flat = zeros({total_numel(params)});
  float* f = flat.data_ptr<float>();
  for (const auto& [name, p] : params) {
    const std::vector<float> v = p.to_vector<float>();
    f = std::copy(v.begin(), v.end(), f);
  }
  comm_.broadcast(flat, 0);
  int64_t at = 0;
  for (const auto& [name, p] : params) {
    Tensor(p).copy_(flat.narrow(0, at, p.numel()).view(p.shape()));
    at += p.numel();
  }
  if (rank() > 0) manual_seed(default_generator().seed() + 0x9e3779b97f4a7c15ull * uint64_t(rank()));
}

DataParallel::Shard DataParallel::shard(int64_t batch) const {
  if (batch % size() != 0)
    fail(command_, ": a batch of ", batch, " does not split evenly over ", size(), " ranks; use a multiple of ",
         size());
  const int64_t per = batch / size();
  return {rank() * per, (rank() + 1) * per};
}

Tensor DataParallel::gather_rows(const Tensor& local) const {
  if (size() == 1) return local;
  const Tensor all = comm_.allgather(local.detach().contiguous());
  const int64_t rows = local.size(0), begin = rank() * rows, total = all.size(0);
  std::vector<Tensor> parts;
  if (begin > 0) parts.push_back(all.narrow(0, 0, begin));
  parts.push_back(local);
  if (begin + rows < total) parts.push_back(all.narrow(0, begin + rows, total - begin - rows));
  return cat(parts, 0);
}

double DataParallel::average_gradients(const nn::NamedTensors& params, double local_loss, double local_weight) {
  PEFT_CHECK(std::isfinite(local_weight) && local_weight > 0, command_, ": a rank's weight must be positive, not ",
             local_weight);
  if (size() == 1) return local_loss;
  const int64_t n = total_numel(params);
  Tensor flat = zeros({n + 2});
  float* f = flat.data_ptr<float>();
  const float w = float(local_weight);
  for (const auto& [name, p] : params) {
    if (Tensor g = p.grad(); g.defined()) {
      const std::vector<float> v = g.to(DType::float32).to_vector<float>();
      if (w == 1.0f) std::copy(v.begin(), v.end(), f);
      else for (size_t i = 0; i < v.size(); ++i) f[i] = v[i] * w;
    }
    f += p.numel();
  }
  f[0] = float(local_loss) * w;
  f[1] = w;
  comm_.allreduce(flat, comm::Reduce::sum);
  const float total_weight = flat.data_ptr<float>()[n + 1];
  const Tensor mean = div(flat.narrow(0, 0, n + 1), double(total_weight));
  int64_t at = 0;
  for (const auto& [name, p] : params) {
    Tensor(p).set_grad(mean.narrow(0, at, p.numel()).view(p.shape()).clone());
    at += p.numel();
  }
  return double(mean.data_ptr<float>()[n]);
}

int64_t DataParallel::gradient_bytes(const nn::NamedTensors& params) {
  return (total_numel(params) + 2) * int64_t(sizeof(float));
}

}  // namespace peft::train
