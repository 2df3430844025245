// Tokenizers from tokenizer.json (io/tokenizer.h) against the Rust `tokenizers` library's
// outputs (tests/data/hf/tok_*), the real all-MiniLM-L6-v2 tokenizer against the ids of the
// hf_minilm_lora_real golden, and the errors on what is not supported.
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "tests/testing.h"
#include "tools/parity.h"

using namespace peft;
using namespace peft::testing;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {


json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

}  // namespace

TEST_CASE("parity: every tok_* case (ids, ids without special tokens, decoded text)") {
  for (const char* name : {"tok_wordpiece_minilm", "tok_bytelevel_bpe", "tok_sentencepiece_bpe_byte_fallback"}) {
    CAPTURE(name);
    tools::ParityReport r = tools::run_parity_case(std::string("tests/data/hf/") + name);
    for (const auto& c : r.checks) {
      CAPTURE(tools::format_check(c));
      CHECK(c.status == tools::ParityCheck::Status::pass);
    }
    CHECK(r.passed == 4);
    CHECK(r.failed == 0);
  }
}

TEST_CASE("the real all-MiniLM-L6-v2 tokenizer gives the golden's input ids (sentence-transformers' settings)") {
  const std::string dir = testing::minilm_dir();
  REQUIRE(fs::exists(dir + "/tokenizer.json"));
  Tokenizer t = Tokenizer::from_file(dir + "/tokenizer.json");
  // sentence-transformers: padding to the longest text, truncation at max_seq_length (256)
  TruncationParams tr;
  tr.max_length = 256;
  t.set_truncation(tr);
  PaddingParams pad = *t.padding();
  pad.fixed_length.reset();
  t.set_padding(pad);
  const json meta = read_json("tests/data/hf/hf_minilm_lora_real/case.json");
  const auto texts = meta.at("texts").get<std::vector<std::string>>();
  StateDict io = io::load_safetensors("tests/data/hf/hf_minilm_lora_real/io.safetensors");
  std::vector<Encoding> enc = t.encode_batch(texts);
  std::vector<int64_t> ids, mask, types;
  for (const auto& e : enc) {
    ids.insert(ids.end(), e.ids.begin(), e.ids.end());
    mask.insert(mask.end(), e.attention_mask.begin(), e.attention_mask.end());
    types.insert(types.end(), e.type_ids.begin(), e.type_ids.end());
  }
  CHECK(ids == io.at("input_ids").to_vector<int64_t>());
  CHECK(mask == io.at("attention_mask").to_vector<int64_t>());
  CHECK(types == io.at("token_type_ids").to_vector<int64_t>());
  CHECK(t.decode(enc[0].ids) == "a man is playing a guitar.");
}

TEST_CASE("tokenizer: truncation and padding directions, unknown ids, invalid UTF-8") {
  Tokenizer t = Tokenizer::from_file("tests/data/hf/tok_wordpiece_minilm/tokenizer.json");
  // the file pads to 128: [CLS] hello world [SEP] then 124 x [PAD]
  Encoding e = t.encode("Hello world");
  REQUIRE(e.size() == 128);
  CHECK(e.ids[0] == 101);
  CHECK(e.ids[3] == 102);
  CHECK(e.attention_mask[4] == 0);
  CHECK(e.special_tokens_mask[0] == 1);
  CHECK(e.special_tokens_mask[1] == 0);
  // left truncation keeps the end, leaving room for [CLS] and [SEP]; left padding to a multiple of 8
  TruncationParams tr;
  tr.max_length = 4;
  tr.direction = TruncationParams::Direction::Left;
  t.set_truncation(tr);
  PaddingParams p = *t.padding();
  p.fixed_length.reset();
  p.pad_to_multiple_of = 8;
  p.direction = PaddingParams::Direction::Left;
  t.set_padding(p);
  Encoding l = t.encode("one two three four");
  const std::vector<int64_t> want_tail = {101, *t.token_to_id("three"), *t.token_to_id("four"), 102};
  REQUIRE(l.size() == 8);
  CHECK(std::vector<int64_t>(l.ids.begin() + 4, l.ids.end()) == want_tail);
  CHECK(l.ids[0] == 0);
  CHECK(l.attention_mask[3] == 0);
  // the batch pads to its longest member
  auto batch = t.encode_batch({"a", "one two"});
  CHECK(batch[0].size() == batch[1].size());
  // unknown ids are skipped by decode, special tokens on request
  CHECK(t.decode({101, 999999, *t.token_to_id("hello"), 102}) == "hello");
  CHECK(t.decode({101, *t.token_to_id("hello"), 102}, false) == "[CLS] hello [SEP]");
  CHECK(error_of([&] { t.encode(std::string("ab\xff" "c")); }).find("not valid UTF-8 (byte offset 2)") !=
        std::string::npos);
}

TEST_CASE("tokenizer.json: unsupported components and malformed fields are named") {
  json j = read_json("tests/data/hf/tok_wordpiece_minilm/tokenizer.json");
  auto err = [](const json& doc) { return error_of([&] { Tokenizer::from_json_text(doc.dump(), "t.json"); }); };
  json a = j;
  a["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "AAAA"}};
  CHECK(err(a).find("Precompiled") != std::string::npos);
  CHECK(err(a).find("t.json") != std::string::npos);
  json b = j;
  b["model"]["type"] = "Unigram";
  CHECK(err(b).find("Unigram") != std::string::npos);
  json c = j;
  c["padding"]["strategy"] = "Everything";
  CHECK(err(c).find("padding.strategy") != std::string::npos);
  json d = j;
  d["added_tokens"][0]["id"] = -1;
  CHECK(err(d).find("added_tokens[0].id") != std::string::npos);
  json e = j;
  e["truncation"]["stride"] = 4;
  CHECK(err(e).find("truncation.stride 4 is not supported") != std::string::npos);
  json f = j;
  f["truncation"]["max_length"] = 1;
  Tokenizer tiny = Tokenizer::from_json_text(f.dump(), "t.json");
  CHECK(error_of([&] { tiny.encode("hello"); }).find("truncation max_length 1 is smaller than the 2 special tokens") !=
        std::string::npos);
  CHECK(error_of([] { Tokenizer::from_json_text("{\"model\":", "t.json"); }).find("not valid JSON") != std::string::npos);
  CHECK(error_of([] { Tokenizer::from_file("tests/data/hf/nope/tokenizer.json"); }).find("no such file") !=
        std::string::npos);
}
