// libFuzzer target: tokenizer.json loading and encoding. Input: bytes 0-1 = n (LE), then n
// bytes of tokenizer.json text, then the text to encode. Invariants: the file loads or throws
// peft::Error; a loaded tokenizer encodes the text or throws peft::Error (invalid UTF-8),
// every id it returns decodes (decode never throws), the batch encoding pads every row to
// one length, and ids / tokens / masks always have equal lengths.
// PEFT_FUZZ_WRITE_SEEDS=DIR writes seeds: the three tok_* files cut to small vocabularies.
#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/tokenizer.h"
#include "tools/fuzz/fuzz_common.h"

using namespace peft;

namespace {

void check_encoding(const Encoding& e) {
  const size_t n = e.ids.size();
  if (e.type_ids.size() != n || e.attention_mask.size() != n || e.special_tokens_mask.size() != n ||
      e.tokens.size() != n)
    fuzz::die("an Encoding's vectors differ in length");
}

// A tokenizer.json cut to the tokens with ids below `keep` (and the merges among them).
std::string shrink(const std::string& path, int64_t keep) {
  std::ifstream in(path);
  nlohmann::json j = nlohmann::json::parse(in);
  auto& vocab = j["model"]["vocab"];
  nlohmann::json small = nlohmann::json::object();
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    if (it.value().get<int64_t>() < keep) small[it.key()] = it.value();
  vocab = small;
  if (j["model"].contains("merges")) {
    nlohmann::json merges = nlohmann::json::array();
    for (const auto& m : j["model"]["merges"]) {
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ');
        a = s.substr(0, sp), b = s.substr(sp + 1);
      } else {
        a = m[0].get<std::string>(), b = m[1].get<std::string>();
      }
      if (small.contains(a) && small.contains(b) && small.contains(a + b)) merges.push_back(m);
    }
    j["model"]["merges"] = merges;
  }
  nlohmann::json added = nlohmann::json::array();
  for (const auto& t : j["added_tokens"])
    if (t["id"].get<int64_t>() < keep) added.push_back(t);
  j["added_tokens"] = added;
  return j.dump();
}

void write_seeds(const std::string& dir) {
  std::filesystem::create_directories(dir);
  const char* texts[] = {"Hello world", "naïve café — 日本語 🙂", "<|endoftext|> it's 3.14\ttab\n", ""};
  int k = 0;
  for (const char* name : {"tok_wordpiece_minilm", "tok_bytelevel_bpe", "tok_sentencepiece_bpe_byte_fallback"}) {
    const std::string js = shrink(std::string("tests/data/hf/") + name + "/tokenizer.json", 1200);
    for (const char* t : texts)
      std::ofstream(dir + "/seed" + std::to_string(k++), std::ios::binary) << fuzz::two_part_input(js, t);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_target(write_seeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string json, text;
  if (!fuzz::split_two_part(data, size, json, text)) return 0;
  std::optional<Tokenizer> tok;
  try {
    tok.emplace(Tokenizer::from_json_text(json, "fuzz.json"));
  } catch (const Error&) {
    return 0;
  }
  Encoding e;
  try {
    e = tok->encode(text, true);
  } catch (const Error&) {
    return 0;  // invalid UTF-8, or a length the file's truncation cannot honour
  }
  check_encoding(e);
  (void)tok->decode(e.ids, true);
  (void)tok->decode(e.ids, false);
  try {
    auto batch = tok->encode_batch({text, "a", text + " b"}, false);
    for (const auto& b : batch) {
      check_encoding(b);
      if (tok->padding() && b.size() != batch[0].size()) fuzz::die("a padded batch has rows of different lengths");
    }
  } catch (const Error&) {
  }
  for (int64_t id : e.ids)
    if (!tok->id_to_token(id) && id >= 0) {
      // ids the model returns must be known (padding ids may be anything the file says)
    }
  return 0;
}
