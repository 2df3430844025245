// Commands on Hugging Face model folders with text: `peft embed` (sentence embeddings) and
// `peft generate --model` (decoders; `peft generate --base` is the character-level model's).
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "adapters/folder.h"
#include "adapters/peft.h"
#include "io/safetensors.h"
#include "nn/transformers/generate.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tools/args.h"
#include "tools/cli.h"
#include "tools/progress.h"
#include "tools/text_commands.h"
#include "tools/text_model.h"

namespace peft::cli {

namespace fs = std::filesystem;

// Loads adapters DIR... under their folder names (adapter0, adapter1... when names clash).
std::vector<std::string> load_adapter_folders(nn::Module& model, const std::vector<std::string>& dirs) {
  std::vector<std::string> names;
  ScopedWarningHandler keep_others([](const std::string& msg) {
    if (msg.find("multiple adapters") == std::string::npos) std::fprintf(stderr, "peft warning: %s\n", msg.c_str());
  });
  for (size_t i = 0; i < dirs.size(); ++i) {
    std::string name = fs::path(dirs[i]).filename().string();
    if (name.empty()) name = fs::path(dirs[i]).parent_path().filename().string();
    for (char& c : name)
      if (c == '.') c = '_';
    if (name.empty() || std::find(names.begin(), names.end(), name) != names.end())
      name = "adapter" + std::to_string(i);
    load_adapter(model, dirs[i], name);
    names.push_back(name);
  }
  return names;
}

namespace {

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("peft embed: cannot read ", path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) out.push_back(line);
  }
  if (out.empty()) fail("peft embed: ", path, " holds no non-empty lines");
  return out;
}

const char* kEmbedHelp = R"(usage: peft embed --model DIR [--adapter DIR] [--pool mean|cls] [--max-length N]
                  (TEXT... | --input FILE) [--out FILE.safetensors] [--batch N]

Sentence embeddings from a Hugging Face encoder folder (config.json, model.safetensors,
tokenizer.json), computed as sentence-transformers does: tokenized with the folder's
tokenizer (padded to the longest text, truncated at sentence_bert_config.json's
max_seq_length), pooled (1_Pooling/config.json: mean or CLS) and L2-normalised when
modules.json lists a Normalize module.

options:
  --adapter DIR     a PEFT adapter folder (LoRA, IA3, AdaLoRA) applied to the model
  --pool mean|cls   override the folder's pooling (default: the folder's, else mean)
  --max-length N    truncate each text to N tokens (default: the folder's max_seq_length)
  --input FILE      one text per line (instead of TEXT arguments)
  --out FILE        write the embeddings [N, H] as float32 "embeddings" in a safetensors file
                    (atomically); without it the first dimensions of each are printed
  --batch N         texts per forward pass (default 32)
)";

int run_embed(const std::vector<std::string>& argv) {
  Args a(argv, {"model", "adapter", "pool", "max-length", "input", "out", "batch"});
  if (a.help) {
    std::printf("%s", kEmbedHelp);
    return 0;
  }
  std::vector<std::string> texts = a.positional;
  if (a.has("input")) {
    if (!texts.empty()) throw UsageError{"give TEXT arguments or --input FILE, not both"};
    texts = read_lines(a.get("input"));
  }
  if (texts.empty()) throw UsageError{"no text given (TEXT... or --input FILE)"};
  const std::string pool = a.get("pool", "");
  if (!pool.empty() && pool != "mean" && pool != "cls") throw UsageError{"--pool must be mean or cls"};
  const int64_t batch = a.get_int("batch", 32);
  if (batch <= 0) throw UsageError{"--batch must be positive"};
  std::optional<size_t> max_len;
  if (a.has("max-length")) {
    const int64_t m = a.get_int("max-length", 0);
    if (m < 2) throw UsageError{"--max-length must be at least 2"};
    max_len = size_t(m);
  }
  tools::TextModel tm = tools::TextModel::load(a.required("model"));
  if (a.has("adapter")) load_adapter_folders(*tm.model, {a.get("adapter")});
  tm.model->eval();
  NoGradGuard ng;
  std::vector<Tensor> parts;
  Progress bar("embed", int64_t(texts.size()));
  for (size_t i = 0; i < texts.size(); i += size_t(batch)) {
    std::vector<std::string> chunk(texts.begin() + ptrdiff_t(i),
                                   texts.begin() + ptrdiff_t(std::min(texts.size(), i + size_t(batch))));
    parts.push_back(tm.embed(chunk, pool, max_len));
    if (texts.size() > size_t(batch)) bar.update(int64_t(i + chunk.size()), "texts");
  }
  Tensor e = parts.size() == 1 ? parts[0] : cat(parts, 0);
  if (a.has("out")) {
    StateDict sd;
    sd.set("embeddings", e.to(DType::float32).contiguous());
    io::SaveOptions so;
    so.metadata["model"] = a.get("model");
    if (a.has("adapter")) so.metadata["adapter"] = a.get("adapter");
    io::save_safetensors(a.get("out"), sd, so);
    std::printf("embed: wrote %s: %lld x %lld\n", a.get("out").c_str(), (long long)e.size(0), (long long)e.size(1));
    return 0;
  }
  std::vector<float> v = e.to(DType::float32).contiguous().to_vector<float>();
  const int64_t H = e.size(1);
  for (size_t i = 0; i < texts.size(); ++i) {
    std::printf("[");
    for (int64_t d = 0; d < std::min<int64_t>(H, 8); ++d) std::printf("%s%.5f", d ? ", " : "", v[i * size_t(H) + size_t(d)]);
    std::printf("%s] %s\n", H > 8 ? ", ..." : "", texts[i].c_str());
  }
  return 0;
}

const char* kGenerateHelp = R"(usage: peft generate --model DIR [--adapter DIR ...] --prompt TEXT [options]

Continues a prompt with a Hugging Face decoder folder (GPT-2, Llama, Qwen2, Mistral: config.json,
model.safetensors, tokenizer.json), printing tokens as they come. With several adapters the
batch holds one row per adapter (each row its own adapter: mixed batch) and every
continuation is printed at the end. Defaults come from generation_config.json.

options:
  --adapter DIR        a PEFT adapter folder (repeatable)
  --prompt TEXT        the text to continue (required)
  --max-new-tokens N   tokens to add (default 32)
  --temperature T      sample with this temperature (> 0); without --temperature, --top-k,
  --top-k K            --top-p or --sample the choice is greedy
  --top-p P
  --sample             sample with the folder's settings
  --seed S             sampling stream (default 0)
)";

}  // namespace

int run_text_generate(const std::vector<std::string>& argv) {
  Args a(argv, {"model", "prompt", "max-new-tokens", "temperature", "top-k", "top-p", "seed"}, {"sample"}, {"adapter"});
  if (a.help) {
    std::printf("%s", kGenerateHelp);
    return 0;
  }
  if (!a.positional.empty()) throw UsageError{"unexpected argument '" + a.positional[0] + "'"};
  const std::string dir = a.required("model"), prompt = a.required("prompt");
  nn::GenerateOptions o = nn::read_generation_config(dir);
  o.max_new_tokens = a.get_int("max-new-tokens", 32);
  if (o.max_new_tokens < 0) throw UsageError{"--max-new-tokens must be >= 0"};
  const bool sample = a.has("sample") || a.has("temperature") || a.has("top-k") || a.has("top-p");
  o.do_sample = sample;
  if (a.has("temperature")) o.temperature = a.get_double("temperature", 1.0);
  if (a.has("top-k")) o.top_k = a.get_int("top-k", 0);
  if (a.has("top-p")) o.top_p = a.get_double("top-p", 1.0);
  o.seed = uint64_t(a.get_int("seed", 0));
  tools::TextModel tm = tools::TextModel::load(dir);
  const Tokenizer& tok = tm.tok();
  std::vector<std::string> names = load_adapter_folders(*tm.model, a.all("adapter"));
  Encoding enc = tok.encode_batch({prompt}, true, std::nullopt, std::nullopt)[0];
  if (enc.ids.empty()) fail("peft generate: the prompt encodes to no tokens");
  const int64_t rows = std::max<int64_t>(1, int64_t(names.size()));
  std::vector<int64_t> ids;
  for (int64_t r = 0; r < rows; ++r) ids.insert(ids.end(), enc.ids.begin(), enc.ids.end());
  Tensor input = from_vector(ids, {rows, int64_t(enc.ids.size())});
  if (rows == 1) {
    // stream: decode everything generated so far and print what is new
    std::vector<int64_t> gen;
    std::string shown;
    std::printf("%s", prompt.c_str());
    std::fflush(stdout);
    nn::generate(*tm.model, input, Tensor(), o, [&](const std::vector<int64_t>& step) {
      gen.push_back(step[0]);
      const std::string text = tok.decode(gen, true);
      if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
        std::printf("%s", text.c_str() + shown.size());
        std::fflush(stdout);
        shown = text;
      }
    });
    std::printf("\n");
    return 0;
  }
  Tensor out = forward_mixed_batch(*tm.model, names, [&] { return nn::generate(*tm.model, input, Tensor(), o); });
  const int64_t T = out.size(1), P = int64_t(enc.ids.size());
  std::vector<int64_t> all = out.to_vector<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<int64_t> gen(all.begin() + r * T + P, all.begin() + (r + 1) * T);
    std::printf("[%s] %s%s\n", names[size_t(r)].c_str(), prompt.c_str(), tok.decode(gen, true).c_str());
  }
  return 0;
}

namespace {
Registrar reg_embed({"embed", "sentence embeddings from a Hugging Face encoder folder (+ adapter)", run_embed});
}  // namespace

}  // namespace peft::cli
