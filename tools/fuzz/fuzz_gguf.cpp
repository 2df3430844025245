// libFuzzer target: the GGUF reader (header, metadata of every type, tensor infos, data ranges)
// and what reads a GGUF file's metadata next: the transformers config (gguf_model_config) and the
// tokenizer (Tokenizer::from_gguf, then encode / decode of a short text). Every input must either
// open, with every tensor's bytes inside the mapping and every readable tensor dequantizable, or
// throw peft::Error; so must the config and the tokenizer. Seeds: tests/data/gguf/*.gguf.
#include <cstring>

#include "io/gguf.h"
#include "io/tokenizer.h"
#include "nn/transformers/pretrained.h"
#include "tools/fuzz/fuzz_common.h"

using namespace peft;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::MemFile f(data, size);
  io::GGUFLimits limits;
  limits.max_tensors = 4096;  // keep single inputs fast; the checks are the same
  limits.max_kv = 4096;
  limits.max_array_elems = 1 << 20;
  std::shared_ptr<io::GGUFFile> file;
  try {
    file = io::GGUFFile::open(f.path(), limits);
  } catch (const Error&) {
    return 0;  // a clear refusal is the expected answer to most inputs
  }
  if (file->data_offset() % file->alignment()) fuzz::die("data section not aligned");
  for (const io::GGUFTensorInfo& ti : file->tensors()) {
    if (file->data_offset() + ti.offset + ti.nbytes > file->file_size()) fuzz::die("tensor data outside the file: " + ti.name);
    // Touch every byte (ASan sees any read outside the mapping).
    const uint8_t* p = file->data(ti);
    unsigned char acc = 0;
    for (uint64_t i = 0; i < ti.nbytes; ++i) acc = static_cast<unsigned char>(acc ^ p[i]);
    volatile unsigned char sink = acc;
    (void)sink;
    if (!io::ggml_runtime_dtype(ti.ggml_type)) {
      try {
        (void)file->tensor(ti.name);
        fuzz::die("an unreadable GGML type was read: " + ti.name);
      } catch (const Error&) {
      }
      continue;
    }
    Tensor t = file->tensor(ti.name);
    if (t.shape() != ti.shape || t.nbytes() != ti.nbytes) fuzz::die("tensor shape or size mismatch: " + ti.name);
    if (t.numel() <= 8192 && (is_quantized(t.dtype()) || is_floating(t.dtype()))) (void)t.to(DType::float32);
  }
  try {
    (void)nn::gguf_model_config(*file);
  } catch (const Error&) {
  }
  try {
    Tokenizer tok = Tokenizer::from_gguf(*file);
    for (const char* text : {"Hello world", " a\n\t<|im_start|>b 123 ünï", ""}) {
      Encoding e = tok.encode(text, true);
      if (e.ids.size() != e.tokens.size() || e.ids.size() != e.attention_mask.size()) fuzz::die("encoding lengths differ");
      (void)tok.encode(text, false, false);
      (void)tok.decode(e.ids, false);
      (void)tok.decode(e.ids, true);
    }
  } catch (const Error&) {
  }
  return 0;
}
