// libFuzzer target: Hugging Face model folders. Input: bytes 0-1 = n (LE), then n bytes of
// config.json, then the bytes of model.safetensors; both are written to a scratch folder and
// load_pretrained reads it. Invariants: it loads or throws peft::Error (never another
// exception, a crash or an absurd allocation); a loaded model runs a forward on 3 tokens,
// and a decoder generates 2 tokens with its KV cache.
// PEFT_FUZZ_WRITE_SEEDS=DIR writes seeds: tiny BERT, GPT-2, Llama and Qwen2 folders.
#include <cstdlib>
#include <fstream>

#include "io/safetensors.h"
#include "nn/transformers/generate.h"
#include "nn/transformers/pretrained.h"
#include "runtime/autograd.h"
#include "tools/fuzz/fuzz_common.h"

using namespace peft;

namespace {

void write_seeds(const std::string& dir) {
  std::filesystem::create_directories(dir);
  const char* configs[] = {
      R"({"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 8, "num_attention_heads": 2,
          "intermediate_size": 16, "num_hidden_layers": 1, "vocab_size": 20, "max_position_embeddings": 16,
          "type_vocab_size": 2, "pad_token_id": 0})",
      R"({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 8, "n_head": 2, "n_layer": 1,
          "vocab_size": 20, "n_positions": 16, "activation_function": "gelu_new"})",
      R"({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8, "num_attention_heads": 2,
          "num_key_value_heads": 1, "intermediate_size": 16, "num_hidden_layers": 1, "vocab_size": 20,
          "max_position_embeddings": 16, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
          "tie_word_embeddings": true})",
      R"({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 8, "num_attention_heads": 2,
          "num_key_value_heads": 2, "intermediate_size": 16, "num_hidden_layers": 1, "vocab_size": 20,
          "max_position_embeddings": 16, "rope_theta": 10000.0})"};
  int k = 0;
  for (const char* c : configs) {
    auto cfg = nlohmann::ordered_json::parse(c);
    auto model = nn::build_pretrained(cfg, "", DType::float32, Device::cpu);
    const std::string st = dir + "/tmp.safetensors";
    StateDict sd;
    for (const auto& [name, t] : model->named_parameters()) sd.set(name, t.detach());
    io::save_safetensors(st, sd);
    std::ifstream in(st, std::ios::binary);
    std::string weights((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::filesystem::remove(st);
    std::ofstream(dir + "/seed" + std::to_string(k++), std::ios::binary) << fuzz::two_part_input(cfg.dump(), weights);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_target(write_seeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string config, weights;
  if (!fuzz::split_two_part(data, size, config, weights)) return 0;
  const std::string dir = fuzz::scratch_dir() + "/model";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json", std::ios::binary) << config;
  std::ofstream(dir + "/model.safetensors", std::ios::binary) << weights;
  std::shared_ptr<nn::PreTrainedModel> model;
  try {
    model = nn::load_pretrained(dir);
  } catch (const Error&) {
    return 0;
  }
  NoGradGuard ng;
  nn::ModelInputs in;
  in.input_ids = from_vector(std::vector<int64_t>{0, 1, 0}, {1, 3});
  try {
    (void)model->forward(in);
    if (model->is_decoder()) {
      nn::GenerateOptions o;
      o.max_new_tokens = 2;
      (void)nn::generate(*model, in.input_ids, Tensor(), o);
    }
  } catch (const Error&) {
    // a vocabulary of one token, max_position_embeddings below 5: refused with a message
  }
  return 0;
}
