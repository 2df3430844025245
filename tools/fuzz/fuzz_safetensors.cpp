// libFuzzer target: the safetensors reader (header length, JSON header, tensor table,
// data ranges) on arbitrary bytes. Every input must either open, with every tensor
// readable (views and copies, conversion to float32), or throw peft::Error.
// Seeds: tests/data/bad/*.safetensors and the goldens' *.safetensors (tools/fuzz/README.md).
#include <cstring>

#include "io/safetensors.h"
#include "tools/fuzz/fuzz_common.h"

using namespace peft;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::MemFile f(data, size);
  const std::string path = f.path();
  io::ReadLimits limits;
  limits.max_header_bytes = 1 << 20;  // keep single inputs fast; the check is the same
  limits.max_tensors = 4096;
  std::shared_ptr<io::SafetensorsFile> file;
  try {
    file = io::SafetensorsFile::open(path, limits);
  } catch (const Error&) {
    return 0;  // a clear refusal is the expected answer to most inputs
  }
  // Accepted: every declared range lies inside the data section and matches its shape.
  if (file->header_size() + file->data_size() + 8 != file->file_size()) fuzz::die("sizes inconsistent");
  for (const io::TensorInfo& ti : file->tensors()) {
    if (ti.end > file->data_size() || ti.begin > ti.end) fuzz::die("range outside data: " + ti.name);
    Tensor meta = file->get_meta(ti.name);
    Tensor t = file->get(ti.name);
    if (t.shape() != ti.shape || meta.shape() != ti.shape) fuzz::die("shape mismatch: " + ti.name);
    // Touch every byte (ASan sees any read outside the mapping).
    unsigned char acc = 0;
    Tensor c = t.contiguous();
    const auto* p = static_cast<const unsigned char*>(c.raw_data());
    for (size_t i = 0; i < c.nbytes(); ++i) acc = static_cast<unsigned char>(acc ^ p[i]);
    volatile unsigned char sink = acc;
    (void)sink;
    if (is_floating(t.dtype()) && t.numel() <= 4096) (void)t.to(DType::float32);
  }
  (void)file->metadata();
  try {
    io::LoadOptions lo;
    lo.limits = limits;
    lo.convert = true;
    (void)io::load_safetensors(path, lo);
  } catch (const Error& e) {
    fuzz::die(std::string("opened, but load_safetensors refused: ") + e.what());
  }
  return 0;
}
