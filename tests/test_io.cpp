// io/: StateDict and safetensors (reader validation, zero-copy, lazy, conversion, writer
// layout byte-identical to Python's safetensors, atomic writes).
#include <doctest/doctest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "io/state_dict.h"
#include "runtime/half.h"
#include "testing.h"

namespace fs = std::filesystem;
using namespace peft;
using namespace peft::io;

namespace {

// A fresh folder under /tmp, removed with everything in it at scope exit.
struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "peft_test_io_XXXXXX").string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    REQUIRE(::mkdtemp(buf.data()) != nullptr);
    path = buf.data();
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
};

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), "cannot read " << path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  REQUIRE(f.good());
  f.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(f.good());
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return s;
}

// 8-byte length + header (verbatim, no padding) + data.
std::string st_file(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

std::string zeros_bytes(size_t n) { return std::string(n, '\0'); }

// The message of the peft::Error thrown by opening `path`, or "" when it opens.
std::string open_error(const std::string& path, const ReadLimits& limits = {}) {
  try {
    SafetensorsFile::open(path, limits);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string save_error(const std::string& path, const StateDict& sd, const SaveOptions& o = {}) {
  try {
    save_safetensors(path, sd, o);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

#define CHECK_HAS(msg, needle) \
  CHECK_MESSAGE(contains((msg), (needle)), "message: \"" << (msg) << "\" lacks \"" << (needle) << "\"")

std::string raw_bytes(const Tensor& t) {
  Tensor c = t.contiguous();
  if (c.numel() == 0) return "";
  return std::string(static_cast<const char*>(c.raw_data()), c.nbytes());
}

// A state dict of every runtime dtype with awkward shapes (0-d, empty, 3-d).
StateDict all_dtypes() {
  StateDict sd;
  sd.set("f32", from_vector(std::vector<float>{1.5f, -2.25f, 3e-38f, 1e30f, -0.0f, 7.f}, {2, 3}));
  sd.set("f64", from_vector(std::vector<double>{3.141592653589793, -1e-300}, {2}));
  Tensor bf = from_vector(std::vector<float>{1.f, -2.5f, 0.1f, 65504.f}, {2, 1, 2}).to(DType::bfloat16);
  sd.set("bf16", bf);
  sd.set("f16", from_vector(std::vector<float>{0.5f, -3.f, 1e-4f}, {3}).to(DType::float16));
  // int64 extremes written directly (from_vector goes through double)
  Tensor i64 = empty({4}, DType::int64);
  const int64_t iv[4] = {INT64_MIN, -1, 0, INT64_MAX};
  std::memcpy(i64.data_ptr<int64_t>(), iv, sizeof iv);
  sd.set("i64", i64);
  Tensor b = from_vector(std::vector<int64_t>{1, 0, 1}, {3}).to(DType::bool_);
  sd.set("bool", b);
  sd.set("scalar", scalar_tensor(42.0, DType::float32));
  sd.set("empty", empty({0, 3}, DType::float32));
  sd.set("empty_i64", empty({2, 0}, DType::int64));
  return sd;
}

}  // namespace

// ===========================================================================
TEST_CASE("StateDict keeps insertion order, replaces in place, erases and reports missing keys") {
  StateDict sd;
  CHECK(sd.empty());
  sd.set("b", zeros({1}));
  sd.set("a", ones({2}));
  sd.set("c", zeros({3}));
  sd.set("a", zeros({5}));  // replaced, keeps its position
  CHECK(sd.keys() == std::vector<std::string>{"b", "a", "c"});
  CHECK(sd.at("a").shape() == Shape{5});
  CHECK(sd.contains("c"));
  CHECK(sd.find("zz") == nullptr);
  CHECK(sd.erase("b"));
  CHECK_FALSE(sd.erase("b"));
  CHECK(sd.keys() == std::vector<std::string>{"a", "c"});
  CHECK(sd.at("c").shape() == Shape{3});  // index rebuilt after erase
  sd.set("d", zeros({4}));
  CHECK(sd.keys() == std::vector<std::string>{"a", "c", "d"});
  try {
    sd.at("lora_A");
    FAIL("no throw");
  } catch (const Error& e) {
    CHECK_HAS(std::string(e.what()), "no key 'lora_A'");
    CHECK_HAS(std::string(e.what()), "'a', 'c', 'd'");
  }
  StateDict none;
  CHECK_THROWS_WITH_AS(none.at("x"), doctest::Contains("empty"), Error);
}

// ===========================================================================
TEST_CASE("round trip of every dtype keeps values bit-exact and shapes (0-d, empty)") {
  TempDir dir;
  StateDict sd = all_dtypes();
  std::string p = dir / "all.safetensors";
  save_safetensors(p, sd);
  StateDict back = load_safetensors(p);
  REQUIRE(back.size() == sd.size());
  for (const auto& [name, t] : sd) {
    CAPTURE(name);
    REQUIRE(back.contains(name));
    const Tensor& u = back.at(name);
    CHECK(u.dtype() == t.dtype());
    CHECK(u.shape() == t.shape());
    CHECK(raw_bytes(u) == raw_bytes(t));
  }
  CHECK(back.at("scalar").dim() == 0);
  CHECK(back.at("scalar").item() == 42.0);
  const int64_t* iv = back.at("i64").data_ptr<int64_t>();
  CHECK(std::vector<int64_t>(iv, iv + 4) == std::vector<int64_t>{INT64_MIN, -1, 0, INT64_MAX});
  // load_safetensors orders by name, as Python's load_file
  auto keys = back.keys();
  CHECK(std::is_sorted(keys.begin(), keys.end()));
}

TEST_CASE("non-contiguous, grad-requiring and expanded tensors are saved as their values") {
  TempDir dir;
  Generator g(7);
  Tensor a = randn({3, 4}, g);
  Tensor at = a.t();  // non-contiguous
  Tensor w = randn({2, 2}, g).requires_grad_(true);
  Tensor e = from_vector(std::vector<float>{1, 2, 3}, {3, 1}).expand({3, 4});
  StateDict sd;
  sd.set("at", at);
  sd.set("w", w);
  sd.set("e", e);
  sd.set("sl", a.slice(1, 0, 4, 2));
  save_safetensors(dir / "x.safetensors", sd);
  StateDict back = load_safetensors(dir / "x.safetensors");
  CHECK(back.at("at").shape() == Shape{4, 3});
  CHECK_ALLCLOSE(back.at("at"), at, 0, 0);
  CHECK_ALLCLOSE(back.at("w"), w.detach(), 0, 0);
  CHECK_ALLCLOSE(back.at("e"), e, 0, 0);
  CHECK_ALLCLOSE(back.at("sl"), a.slice(1, 0, 4, 2), 0, 0);
  CHECK_FALSE(back.at("w").requires_grad());
}

TEST_CASE("metadata round trip, including characters JSON must escape") {
  TempDir dir;
  SaveOptions o;
  o.metadata = {{"format", "pt"}, {"note", "quote \" backslash \\ newline \n tab \t ctl \x01 utf8 \xc3\xa9"}};
  StateDict sd;
  sd.set("x\"y", ones({1}));
  save_safetensors(dir / "m.safetensors", sd, o);
  CHECK(read_safetensors_metadata(dir / "m.safetensors") == o.metadata);
  auto f = SafetensorsFile::open(dir / "m.safetensors");
  CHECK(f->metadata() == o.metadata);
  CHECK(f->contains("x\"y"));
  std::string bytes = read_bytes(dir / "m.safetensors");
  CHECK_HAS(bytes, "\\u0001");  // serde_json's escape of control characters
  CHECK_HAS(bytes, "\xc3\xa9");  // non-ASCII written as UTF-8, not escaped
  // no metadata: no __metadata__ key at all
  save_safetensors(dir / "n.safetensors", sd);
  CHECK(read_safetensors_metadata(dir / "n.safetensors").empty());
  CHECK_FALSE(contains(read_bytes(dir / "n.safetensors"), "__metadata__"));
  // invalid UTF-8 cannot be written as JSON
  StateDict bad;
  bad.set("\xff", ones({1}));
  CHECK_HAS(save_error(dir / "u.safetensors", bad), "not valid UTF-8");
  CHECK_FALSE(fs::exists(dir / "u.safetensors"));
}

// ===========================================================================
TEST_CASE("writer layout: byte-identical to the Rust crate's own serialization tests") {
  TempDir dir;
  // safetensors/src/tensor.rs test_empty: {} padded to 8 bytes
  save_safetensors(dir / "e.safetensors", StateDict());
  CHECK(read_bytes(dir / "e.safetensors") == le64(8) + "{}      ");
  SaveOptions o;
  o.metadata = {{"framework", "pt"}};
  save_safetensors(dir / "em.safetensors", StateDict(), o);
  CHECK(read_bytes(dir / "em.safetensors") ==
        le64(40) + "{\"__metadata__\":{\"framework\":\"pt\"}}     ");
  // test_serialization: "attn.0" F32 [1, 2, 3] = 0..5 (header needs no padding)
  StateDict sd;
  sd.set("attn.0", from_vector(std::vector<float>{0, 1, 2, 3, 4, 5}, {1, 2, 3}));
  save_safetensors(dir / "a.safetensors", sd);
  std::string data;
  for (float v : {0.f, 1.f, 2.f, 3.f, 4.f, 5.f}) data.append(reinterpret_cast<const char*>(&v), 4);
  CHECK(read_bytes(dir / "a.safetensors") ==
        le64(64) + "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}" + data);
}

TEST_CASE("writer orders tensors by dtype alignment descending then name; all data aligned") {
  TempDir dir;
  StateDict sd = all_dtypes();
  save_safetensors(dir / "o.safetensors", sd);
  auto f = SafetensorsFile::open(dir / "o.safetensors");
  std::vector<std::string> order;
  for (const TensorInfo& ti : f->tensors()) order.push_back(ti.name);
  CHECK(order == std::vector<std::string>{"empty_i64", "i64", "f64", "empty", "f32", "scalar",
                                          "bf16", "f16", "bool"});
  CHECK(f->header_size() % 8 == 0);
  uint64_t expect = 0;
  for (const TensorInfo& ti : f->tensors()) {
    CHECK(ti.begin == expect);  // packed, no holes
    CHECK((8 + f->header_size() + ti.begin) % st_dtype_size(ti.dtype) == 0);
    expect = ti.end;
  }
  CHECK(f->data_size() == expect);
  CHECK(f->file_size() == 8 + f->header_size() + f->data_size());
}

TEST_CASE("re-saving golden files written by Python safetensors is byte-identical") {
  int checked = 0;
  TempDir dir;
  for (const auto& e : fs::recursive_directory_iterator("tests/data/peft")) {
    if (e.path().extension() != ".safetensors") continue;
    std::string src = e.path().string();
    CAPTURE(src);
    auto f = SafetensorsFile::open(src);
    StateDict sd = load_safetensors(src);
    SaveOptions o;
    o.metadata = f->metadata();
    std::string out = dir / "copy.safetensors";
    save_safetensors(out, sd, o);
    CHECK(read_bytes(out) == read_bytes(src));
    ++checked;
  }
  MESSAGE("byte-identical rewrites: " << checked);
  CHECK(checked >= 60);
  // the ones the brief names explicitly
  for (const char* p : {"tests/data/peft/lora_seed_example/peft/adapter_model.safetensors",
                        "tests/data/peft/lora_seed_example/peft_bfloat16/adapter_model.safetensors",
                        "tests/data/peft/lora_seed_example/io.safetensors",
                        "tests/data/peft/lora_training_adamw/io.safetensors"}) {
    CAPTURE(p);
    auto f = SafetensorsFile::open(p);
    SaveOptions o;
    o.metadata = f->metadata();
    save_safetensors(dir / "c2.safetensors", load_safetensors(p), o);
    CHECK(read_bytes(dir / "c2.safetensors") == read_bytes(p));
  }
}

// ===========================================================================
TEST_CASE("golden files: dtypes, shapes and metadata as PEFT wrote them") {
  auto io = SafetensorsFile::open("tests/data/peft/lora_seed_example/io.safetensors");
  CHECK(io->info("input").dtype == StDType::I64);
  CHECK(io->info("input").shape == Shape{2, 8});
  CHECK(io->info("output_base").dtype == StDType::F32);
  CHECK(io->info("output_base").shape == Shape{2, 8, 10});
  Tensor input = io->get("input");
  CHECK(input.dtype() == DType::int64);
  for (int64_t v : input.to_vector<int64_t>()) CHECK((v >= 0 && v < 10));  // token ids, V = 10
  CHECK(io->get("output_base").dtype() == DType::float32);
  CHECK(io->tensors().front().name == "input");  // header order: I64 first

  auto ad = SafetensorsFile::open("tests/data/peft/lora_seed_example/peft/adapter_model.safetensors");
  CHECK(ad->metadata() == std::map<std::string, std::string>{{"format", "pt"}});
  CHECK(ad->info("base_model.model.linear.lora_A.weight").shape == Shape{64, 10});
  CHECK(ad->info("base_model.model.linear.lora_B.weight").shape == Shape{10, 64});
  // same adapter saved without the prefix
  auto raw = SafetensorsFile::open("tests/data/peft/lora_seed_example/adapter_default.safetensors");
  CHECK_ALLCLOSE(ad->get("base_model.model.linear.lora_A.weight"),
                 raw->get("linear.lora_A.weight"), 0, 0);

  auto tr = SafetensorsFile::open("tests/data/peft/lora_training_adamw/io.safetensors");
  CHECK(tr->info("losses").dtype == StDType::F64);
  CHECK(tr->get("losses").dtype() == DType::float64);
  CHECK(tr->get("losses").shape() == Shape{10});

  // every golden loads completely
  int files = 0;
  size_t tensors = 0;
  for (const auto& e : fs::recursive_directory_iterator("tests/data/peft")) {
    if (e.path().extension() != ".safetensors") continue;
    StateDict sd = load_safetensors(e.path().string());
    auto header = SafetensorsFile::open(e.path().string());
    CHECK(sd.size() == header->tensors().size());
    for (const auto& [name, t] : sd) {
      CAPTURE(name);
      CHECK(t.shape() == header->info(name).shape);  // as the header declares
      if (is_floating(t.dtype())) CHECK(t.to_vector<double>().size() == size_t(t.numel()));  // data readable
    }
    tensors += sd.size();
    ++files;
  }
  MESSAGE("golden files read: " << files << ", tensors: " << tensors);
  CHECK(files >= 60);
}

TEST_CASE("get(name, dtype) converts: bf16 golden -> float32") {
  const char* bf = "tests/data/peft/lora_seed_example/merged_default_bfloat16.safetensors";
  const char* f32 = "tests/data/peft/lora_seed_example/merged_default.safetensors";
  auto fb = SafetensorsFile::open(bf);
  auto ff = SafetensorsFile::open(f32);
  Tensor w16 = fb->get("linear.weight");
  CHECK(w16.dtype() == DType::bfloat16);
  Tensor w = fb->get("linear.weight", DType::float32);
  CHECK(w.dtype() == DType::float32);
  CHECK(w.shape() == Shape{10, 10});
  CHECK_ALLCLOSE(w, w16.to(DType::float32), 0, 0);  // exact widening
  CHECK_ALLCLOSE(w, ff->get("linear.weight"), 1e-2, 1e-2);
  // LoadOptions.convert converts floating tensors only
  LoadOptions lo;
  lo.convert = true;
  lo.dtype = DType::float32;
  StateDict sd = load_safetensors(bf, lo);
  for (const auto& [name, t] : sd) CHECK(t.dtype() == DType::float32);
  StateDict io = load_safetensors("tests/data/peft/lora_seed_example/io.safetensors",
                                  LoadOptions{false, true, DType::bfloat16, {}});
  CHECK(io.at("input").dtype() == DType::int64);
  CHECK(io.at("output_base").dtype() == DType::bfloat16);
  CHECK_THROWS_WITH_AS(load_safetensors(bf, LoadOptions{false, true, DType::int64, {}}),
                       doctest::Contains("LoadOptions::dtype must be a floating dtype"), Error);
}

// ===========================================================================
TEST_CASE("zero-copy: tensors view the mapping, which lives as long as they do") {
  TempDir dir;
  StateDict sd;
  sd.set("a", from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2}));
  sd.set("b", from_vector(std::vector<float>{5, 6}, {2}));
  std::string p = dir / "z.safetensors";
  save_safetensors(p, sd);
  Tensor a, b;
  uint64_t off_a = 0, off_b = 0;
  {
    auto f = SafetensorsFile::open(p);
    a = f->get("a");
    b = f->get("b");
    off_a = f->info("a").begin;
    off_b = f->info("b").begin;
  }  // the file object is gone
  REQUIRE(a.impl().storage);
  REQUIRE(a.impl().storage->owner);
  // both views hold the same mapping, at the distance the header gives
  CHECK(a.impl().storage->owner == b.impl().storage->owner);
  CHECK(static_cast<char*>(b.raw_data()) - static_cast<char*>(a.raw_data()) ==
        std::ptrdiff_t(off_b) - std::ptrdiff_t(off_a));
  // the file may even disappear: the mapping keeps the bytes
  fs::remove(p);
  CHECK(a.to_vector<float>() == std::vector<float>{1, 2, 3, 4});
  CHECK(b.to_vector<float>() == std::vector<float>{5, 6});
  // writes into a view are private (copy-on-write), never reach the file
  save_safetensors(p, sd);
  Tensor c = load_safetensors(p).at("a");
  c.fill_(9.0);
  CHECK(c.to_vector<float>() == std::vector<float>{9, 9, 9, 9});
  CHECK(load_safetensors(p).at("a").to_vector<float>() == std::vector<float>{1, 2, 3, 4});
}

TEST_CASE("misaligned data is copied; I32/U8 become int64; bool bytes are normalised") {
  TempDir dir;
  // pad the header so the data starts at a file offset of 1 modulo 4
  std::string h = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
  while ((8 + h.size()) % 4 != 1) h += ' ';
  std::string data(8, '\0');
  float v[2] = {1.5f, -2.f};
  std::memcpy(data.data(), v, 8);
  write_bytes(dir / "m.safetensors", st_file(h, data));
  auto f = SafetensorsFile::open(dir / "m.safetensors");
  Tensor x = f->get("x");
  CHECK(x.to_vector<float>() == std::vector<float>{1.5f, -2.f});
  CHECK(reinterpret_cast<uintptr_t>(x.raw_data()) % 4 == 0);
  CHECK(x.impl().storage->owner != f->get("x").impl().storage->owner);  // fresh copies

  std::string h2 =
      "{\"i\":{\"dtype\":\"I32\",\"shape\":[3],\"data_offsets\":[0,12]},"
      "\"u\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[12,14]},"
      "\"b\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[14,17]}}";
  std::string d2(17, '\0');
  int32_t iv[3] = {-1, 2, 2147483647};
  std::memcpy(d2.data(), iv, 12);
  d2[12] = char(0);
  d2[13] = char(255);
  d2[14] = 1;
  d2[15] = 0;
  d2[16] = 7;
  write_bytes(dir / "i.safetensors", st_file(h2, d2));
  auto g = SafetensorsFile::open(dir / "i.safetensors");
  CHECK(g->info("i").dtype == StDType::I32);
  Tensor i = g->get("i");
  CHECK(i.dtype() == DType::int64);
  CHECK(i.to_vector<int64_t>() == std::vector<int64_t>{-1, 2, 2147483647});
  CHECK(g->get("u").to_vector<int64_t>() == std::vector<int64_t>{0, 255});
  CHECK(g->get_meta("u").dtype() == DType::int64);
  CHECK(g->get("i", DType::float64).to_vector<double>() == std::vector<double>{-1, 2, 2147483647});
  Tensor b = g->get("b");
  CHECK(b.dtype() == DType::bool_);
  CHECK(b.to_vector<double>() == std::vector<double>{1, 0, 1});
  CHECK(static_cast<const uint8_t*>(b.raw_data())[2] == 1);
}

TEST_CASE("lazy: get_meta and LoadOptions.lazy give meta tensors without touching data") {
  const char* p = "tests/data/peft/lora_seed_example/io.safetensors";
  auto f = SafetensorsFile::open(p);
  Tensor m = f->get_meta("output_base");
  CHECK(m.is_meta());
  CHECK(m.shape() == Shape{2, 8, 10});
  CHECK(m.dtype() == DType::float32);
  CHECK_FALSE(m.impl().storage);
  LoadOptions lo;
  lo.lazy = true;
  StateDict sd = load_safetensors(p, lo);
  CHECK(sd.size() == f->tensors().size());
  for (const auto& [name, t] : sd) {
    CAPTURE(name);
    CHECK(t.is_meta());
    CHECK(t.shape() == f->info(name).shape);
    CHECK(t.dtype() == runtime_dtype(f->info(name).dtype));
  }
  lo.convert = true;
  lo.dtype = DType::bfloat16;
  StateDict sb = load_safetensors(p, lo);
  CHECK(sb.at("output_base").dtype() == DType::bfloat16);
  CHECK(sb.at("input").dtype() == DType::int64);
  CHECK(sb.at("input").is_meta());
  // a missing name is reported with the file
  CHECK_THROWS_WITH_AS(f->get("nope"), doctest::Contains("io.safetensors: no tensor named 'nope'"),
                       Error);
  CHECK_THROWS_WITH_AS(f->get_meta("nope"), doctest::Contains("no tensor named 'nope'"), Error);
}

// ===========================================================================
TEST_CASE("SaveOptions.convert converts floating tensors and keeps integer ones") {
  TempDir dir;
  StateDict sd;
  Tensor w = from_vector(std::vector<float>{0.1f, 0.2f, 1.f / 3}, {3});
  sd.set("w", w);
  sd.set("ids", from_vector(std::vector<int64_t>{1, 2}, {2}));
  sd.set("d", from_vector(std::vector<double>{0.5}, {1}));
  SaveOptions o;
  o.convert = true;
  o.dtype = DType::bfloat16;
  save_safetensors(dir / "c.safetensors", sd, o);
  auto f = SafetensorsFile::open(dir / "c.safetensors");
  CHECK(f->info("w").dtype == StDType::BF16);
  CHECK(f->info("d").dtype == StDType::BF16);
  CHECK(f->info("ids").dtype == StDType::I64);
  CHECK(raw_bytes(f->get("w")) == raw_bytes(w.to(DType::bfloat16)));
  o.dtype = DType::int64;
  CHECK_HAS(save_error(dir / "c2.safetensors", sd, o), "must be a floating dtype");
}

TEST_CASE("saving rejects meta, undefined and reserved-name tensors before touching the disk") {
  TempDir dir;
  StateDict sd;
  sd.set("ok", ones({2}));
  sd.set("lora_A", empty({4, 8}, DType::float32, Device::meta));
  std::string msg = save_error(dir / "x.safetensors", sd);
  CHECK_HAS(msg, "cannot save meta tensor 'lora_A'");
  StateDict u;
  u.set("u", Tensor());
  CHECK_HAS(save_error(dir / "x.safetensors", u), "tensor 'u': it is undefined");
  StateDict r;
  r.set("__metadata__", ones({1}));
  CHECK_HAS(save_error(dir / "x.safetensors", r), "reserved");
  CHECK(dir.entries().empty());
}

// ===========================================================================
namespace {

struct BadCase {
  const char* file;  // name in tests/data/bad/
  std::string bytes;
  const char* expect;  // substring of the error message
};

std::string tensor_entry(const std::string& name, const std::string& dtype,
                         const std::string& shape, const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

// A JSON object from its entries.
std::string obj(const std::vector<std::string>& entries) {
  std::string s = "{";
  for (size_t i = 0; i < entries.size(); ++i) s += (i ? "," : "") + entries[i];
  return s + "}";
}

std::vector<BadCase> bad_cases() {
  std::string ok = tensor_entry("x", "F32", "[2,3]", "[0,24]");
  return {
      {"empty.safetensors", "", "file is empty (0 bytes)"},
      {"short.safetensors", std::string("\x05\0\0\0\0", 5), "file is only 5 bytes"},
      {"header_beyond_file.safetensors", le64(1000) + "{}", "header length 1000 exceeds the file size (10 bytes"},
      {"header_absurd.safetensors", le64(~0ull) + "{}      ", "header length 18446744073709551615 exceeds the limit of 104857600 bytes"},
      {"header_zero.safetensors", le64(0), "header is not valid JSON"},
      {"bad_json.safetensors", st_file("{\"x\":{\"dtype\":"), "header is not valid JSON"},
      {"bad_utf8.safetensors", st_file("{\"\xff\xfe\":1}"), "header is not valid JSON"},
      {"not_object.safetensors", st_file("[1,2]"), "header is an array, not a JSON object"},
      {"deep_nesting.safetensors", st_file(std::string(200, '[') + std::string(200, ']')), "nested more than 8 levels"},
      {"duplicate_key.safetensors", st_file(obj({ok, ok}), zeros_bytes(24)), "has the key 'x' twice"},
      {"entry_not_object.safetensors", st_file("{\"x\":5}"), "tensor 'x' entry is an integer"},
      {"missing_offsets.safetensors", st_file("{\"x\":{\"dtype\":\"F32\",\"shape\":[1]}}", zeros_bytes(4)), "tensor 'x' has no 'data_offsets' field"},
      {"unknown_dtype.safetensors", st_file(obj({tensor_entry("x", "F8_E4M3", "[2]", "[0,2]")}), zeros_bytes(2)), "tensor 'x' has dtype 'F8_E4M3', which peft.cpp cannot read"},
      {"dtype_not_string.safetensors", st_file("{\"x\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", zeros_bytes(4)), "tensor 'x' has dtype 7, which is not a string"},
      {"negative_shape.safetensors", st_file(obj({tensor_entry("x", "F32", "[2,-3]", "[0,24]")}), zeros_bytes(24)), "tensor 'x' has shape [2,-3]: dimensions must be non-negative integers"},
      {"float_shape.safetensors", st_file(obj({tensor_entry("x", "F32", "[2.5]", "[0,8]")}), zeros_bytes(8)), "tensor 'x' has shape [2.5]: dimensions must be non-negative integers"},
      {"shape_not_list.safetensors", st_file(obj({tensor_entry("x", "F32", "6", "[0,24]")}), zeros_bytes(24)), "tensor 'x' has shape 6, which is not a list"},
      {"huge_dim.safetensors", st_file(obj({tensor_entry("x", "U8", "[18446744073709551615]", "[0,1]")}), zeros_bytes(1)), "dimensions must be non-negative integers below 2^63"},
      {"numel_overflow.safetensors", st_file(obj({tensor_entry("x", "F32", "[4294967296,4294967296,2]", "[0,8]")}), zeros_bytes(8)), "tensor 'x' has shape [4294967296, 4294967296, 2] of F32 whose byte size overflows 64 bits"},
      {"bytes_overflow.safetensors", st_file(obj({tensor_entry("x", "F64", "[4611686018427387904]", "[0,8]")}), zeros_bytes(8)), "whose byte size overflows 64 bits"},
      {"offsets_out_of_range.safetensors", st_file(obj({tensor_entry("x", "F32", "[100]", "[0,400]")}), zeros_bytes(24)), "tensor 'x' has data_offsets [0, 400] but the data section is only 24 bytes"},
      {"begin_after_end.safetensors", st_file(obj({tensor_entry("x", "F32", "[2]", "[12,4]")}), zeros_bytes(24)), "tensor 'x' has data_offsets [12, 4]: begin > end"},
      {"offsets_arity.safetensors", st_file(obj({tensor_entry("x", "F32", "[2]", "[0]")}), zeros_bytes(8)), "expected [begin, end], two non-negative integers"},
      {"negative_offset.safetensors", st_file(obj({tensor_entry("x", "F32", "[2]", "[-8,0]")}), zeros_bytes(8)), "expected [begin, end], two non-negative integers"},
      {"size_mismatch.safetensors", st_file(obj({tensor_entry("x", "F32", "[2,3]", "[0,12]")}), zeros_bytes(12)), "tensor 'x' has data_offsets [0, 12] but shape [2, 3] of F32 needs 24 bytes"},
      {"overlap.safetensors", st_file(obj({tensor_entry("a", "F32", "[4]", "[0,16]"), tensor_entry("b", "F32", "[4]", "[8,24]")}), zeros_bytes(24)), "tensors 'a' [0, 16] and 'b' [8, 24] overlap"},
      {"overlap_contained.safetensors", st_file(obj({tensor_entry("big", "F32", "[6]", "[0,24]"), tensor_entry("in", "U8", "[4]", "[4,8]"), tensor_entry("c", "U8", "[1]", "[10,11]")}), zeros_bytes(24)), "tensors 'big' [0, 24] and 'in' [4, 8] overlap"},
      {"metadata_not_object.safetensors", st_file("{\"__metadata__\":[1]}"), "__metadata__ must be an object of string to string, but it is an array"},
      {"metadata_not_string.safetensors", st_file("{\"__metadata__\":{\"format\":1}}"), "__metadata__ must be an object of string to string, but key 'format' has an integer value 1"},
  };
}

}  // namespace

TEST_CASE("every malformed file is rejected with a message naming the file and the problem") {
  TempDir dir;
  auto cases = bad_cases();
  for (const BadCase& c : cases) {
    CAPTURE(c.file);
    std::string p = dir / c.file;
    write_bytes(p, c.bytes);
    std::string msg = open_error(p);
    CHECK_HAS(msg, p + ": ");
    CHECK_HAS(msg, c.expect);
    // the other entry points report the same
    CHECK_THROWS_WITH_AS(load_safetensors(p), doctest::Contains(c.expect), Error);
    CHECK_THROWS_WITH_AS(read_safetensors_metadata(p), doctest::Contains(c.expect), Error);
  }
  MESSAGE("malformed cases checked: " << cases.size());

  // The checked-in corpus (tests/data/bad/, seed for fuzzing) says the same. Set
  // PEFT_WRITE_BAD_CORPUS=1 to regenerate it from the table above.
  if (const char* w = std::getenv("PEFT_WRITE_BAD_CORPUS"); w && std::string(w) == "1") {
    fs::create_directories("tests/data/bad");
    for (const BadCase& c : cases) write_bytes(std::string("tests/data/bad/") + c.file, c.bytes);
  }
  int corpus = 0;
  for (const BadCase& c : cases) {
    std::string p = std::string("tests/data/bad/") + c.file;
    if (!fs::exists(p)) continue;
    CAPTURE(p);
    CHECK(read_bytes(p) == c.bytes);
    CHECK_HAS(open_error(p), c.expect);
    ++corpus;
  }
  MESSAGE("checked-in corpus files: " << corpus);
  CHECK(corpus == int(cases.size()));
}

TEST_CASE("limits, odd paths, and what the reader accepts leniently") {
  TempDir dir;
  std::string good = dir / "good.safetensors";
  StateDict sd;
  sd.set("a", ones({2}));
  sd.set("b", ones({3}));
  save_safetensors(good, sd);
  ReadLimits small;
  small.max_header_bytes = 16;
  CHECK_HAS(open_error(good, small), "exceeds the limit of 16 bytes (ReadLimits::max_header_bytes)");
  ReadLimits few;
  few.max_tensors = 1;
  CHECK_HAS(open_error(good, few), "header lists 2 tensors, more than the limit of 1");
  CHECK_HAS(open_error(dir / "missing.safetensors"), "cannot open for reading: No such file");
  CHECK_HAS(open_error(dir.path), "is a directory");

  // holes between tensors and trailing bytes are accepted (see io/safetensors.h)
  std::string h = obj({tensor_entry("a", "F32", "[1]", "[8,12]"), tensor_entry("b", "U8", "[0]", "[30,30]")});
  std::string data(40, '\0');
  float one = 1.f;
  std::memcpy(data.data() + 8, &one, 4);
  write_bytes(dir / "holes.safetensors", st_file(h, data));
  auto f = SafetensorsFile::open(dir / "holes.safetensors");
  CHECK(f->get("a").item() == 1.0);
  CHECK(f->get("b").numel() == 0);
  // empty ranges may sit anywhere, even inside another tensor's bytes
  std::string h2 = obj({tensor_entry("a", "F32", "[2]", "[0,8]"), tensor_entry("e", "F32", "[0]", "[4,4]")});
  write_bytes(dir / "e.safetensors", st_file(h2, zeros_bytes(8)));
  CHECK(open_error(dir / "e.safetensors").empty());
  // unknown fields in an entry are ignored; trailing header spaces are fine
  std::string h3 = "{\"x\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4],\"extra\":1}}   ";
  write_bytes(dir / "x.safetensors", st_file(h3, zeros_bytes(4)));
  CHECK(SafetensorsFile::open(dir / "x.safetensors")->get("x").dim() == 0);
}

// ===========================================================================
TEST_CASE("atomic writes: failures throw, leave the old file intact and no temporary behind") {
  TempDir dir;
  StateDict small;
  small.set("a", ones({4}));
  std::string target = dir / "adapter.safetensors";
  save_safetensors(target, small);
  const std::string before = read_bytes(target);

  // a folder that does not exist; a "folder" that is a file
  CHECK_HAS(save_error(dir / "no/such/dir/x.safetensors", small), "the folder '" + (dir / "no/such/dir") + "' does not exist");
  CHECK_HAS(save_error(target + "/x.safetensors", small), "is not a folder");
  // the target is an existing folder: the rename fails after the data was written
  fs::create_directory(dir / "sub");
  CHECK_HAS(save_error(dir / "sub", small), "is an existing folder");
  CHECK(fs::is_directory(dir / "sub"));
  CHECK_HAS(save_error(dir.path + "/", small), "names a folder");

  // an injected write failure half way: the file-size limit makes write() fail with EFBIG
  StateDict big;
  big.set("w", zeros({64, 1024}));  // 256 KiB
  struct rlimit old_lim {};
  REQUIRE(::getrlimit(RLIMIT_FSIZE, &old_lim) == 0);
  auto old_sig = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old_lim;
  lim.rlim_cur = 64 * 1024;
  REQUIRE(::setrlimit(RLIMIT_FSIZE, &lim) == 0);
  std::string msg = save_error(target, big);
  ::setrlimit(RLIMIT_FSIZE, &old_lim);
  ::signal(SIGXFSZ, old_sig);
  CHECK_HAS(msg, target + ": cannot save: writing the temporary file");
  CHECK_HAS(msg, "left unchanged");
  CHECK(read_bytes(target) == before);
  CHECK(dir.entries() == std::vector<std::string>{"adapter.safetensors", "sub"});

  // a folder without write permission (root ignores permissions: skipped there)
  if (::geteuid() != 0) {
    fs::create_directory(dir / "ro");
    save_safetensors(dir / "ro/t.safetensors", small);
    std::string ro_before = read_bytes(dir / "ro/t.safetensors");
    fs::permissions(dir / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    CHECK_HAS(save_error(dir / "ro/t.safetensors", big), "cannot create a temporary file");
    fs::permissions(dir / "ro", fs::perms::owner_all);
    CHECK(read_bytes(dir / "ro/t.safetensors") == ro_before);
  }

  // success replaces the file, keeps its permissions and writes through a symlink
  ::chmod(target.c_str(), 0600);
  save_safetensors(target, big);
  CHECK(load_safetensors(target).at("w").shape() == Shape{64, 1024});
  CHECK((fs::status(target).permissions() & fs::perms::all) ==
        (fs::perms::owner_read | fs::perms::owner_write));
  fs::create_symlink("adapter.safetensors", dir / "link.safetensors");
  save_safetensors(dir / "link.safetensors", small);
  CHECK(fs::is_symlink(dir / "link.safetensors"));
  CHECK(read_bytes(target) == before);
  CHECK(dir.entries() == std::vector<std::string>{"adapter.safetensors", "link.safetensors", "sub"});
}

// ===========================================================================
TEST_CASE("mutated files never crash the reader: they load or throw peft::Error") {
  // Deterministic mutations of real files (bit flips in the header, truncation, a random header
  // length, digit edits in the JSON); every accepted file must also read all its tensors.
  TempDir dir;
  std::mt19937_64 rng(20240607);
  int rejected = 0, accepted = 0;
  const std::vector<std::string> seeds = {
      read_bytes("tests/data/peft/lora_seed_example/io.safetensors"),
      read_bytes("tests/data/peft/lora_seed_example/peft/adapter_model.safetensors"),
      read_bytes("tests/data/peft/lora_seed_example/merged_default_bfloat16.safetensors")};
  std::string p = dir / "fuzz.safetensors";
  for (int iter = 0; iter < 1500; ++iter) {
    std::string b = seeds[size_t(iter) % seeds.size()];
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | uint8_t(b[size_t(i)]);
    switch (rng() % 5) {
      case 0:  // flip bits in the header
        for (int k = 0, n = int(1 + rng() % 4); k < n; ++k)
          b[8 + size_t(rng() % hlen)] ^= char(1u << (rng() % 8));
        break;
      case 1:  // truncate
        b.resize(size_t(rng() % b.size()));
        break;
      case 2:  // random header length
        for (int i = 0; i < 8; ++i) b[size_t(i)] = char(i < 2 || rng() % 4 == 0 ? rng() : 0);
        break;
      case 3: {  // change a digit in the JSON
        for (int tries = 0; tries < 50; ++tries) {
          size_t at = 8 + size_t(rng() % hlen);
          if (b[at] >= '0' && b[at] <= '9') {
            b[at] = char('0' + rng() % 10);
            if (rng() % 3 == 0) b.insert(at, 1, char('0' + rng() % 10));
            break;
          }
        }
        break;
      }
      default:  // swap two header bytes
        std::swap(b[8 + size_t(rng() % hlen)], b[8 + size_t(rng() % hlen)]);
        break;
    }
    write_bytes(p, b);
    try {
      auto f = SafetensorsFile::open(p);
      for (const TensorInfo& ti : f->tensors()) {
        Tensor t = f->get(ti.name);
        CHECK(t.shape() == ti.shape);
        CHECK(raw_bytes(t).size() == t.nbytes());  // every byte readable
        (void)f->get_meta(ti.name);
      }
      ++accepted;
    } catch (const Error&) {
      ++rejected;
    }
  }
  MESSAGE("mutated files: " << accepted << " accepted, " << rejected << " rejected");
  CHECK(rejected > 0);
}

TEST_CASE("write_file_atomic replaces a file whole, and leaves it alone on failure") {
  const fs::path dir = fs::temp_directory_path() / ("peft_atomic_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "report.json").string();
  write_file_atomic(path, "old");
  write_file_atomic(path, "new contents");
  std::ifstream in(path);
  std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(got == "new contents");
  // a target that is a folder: the rename fails, the temporary file is removed
  fs::create_directories(dir / "sub");
  CHECK(testing::error_of([&] { write_file_atomic((dir / "sub").string(), "x"); }).find("cannot save") !=
        std::string::npos);
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += e.is_regular_file();
  CHECK(files == 1);  // report.json only: no temporary file left behind
  CHECK(unique_temp_suffix() != unique_temp_suffix());
  fs::remove_all(dir);
}

TEST_CASE("temporary files of a killed writer are removed by the next write to the same place") {
  const fs::path dir = fs::temp_directory_path() / ("peft_stale_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  // a writer that died: a child process that exits at once, so its pid is free
  pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  int status = 0;
  ::waitpid(dead, &status, 0);
  const std::string stale = "." + std::string("w.safetensors") + ".tmp." + std::to_string(dead) + ".0.deadbeef";
  const std::string mine = "." + std::string("w.safetensors") + ".tmp." + std::to_string(::getpid()) + ".99.cafe0000";
  const std::string other = ".other.safetensors.tmp." + std::to_string(dead) + ".0.deadbeef";
  for (const auto& f : {stale, mine, other}) std::ofstream(dir / f) << "partial";
  StateDict sd;
  sd.set("x", ones({2}));
  save_safetensors((dir / "w.safetensors").string(), sd);
  CHECK(!fs::exists(dir / stale));  // the dead writer's leftover is gone
  CHECK(fs::exists(dir / mine));    // a live process's file is never touched
  CHECK(fs::exists(dir / other));   // nor another file's
  CHECK(remove_stale_temp_files(dir.string(), "other.safetensors") == 1);
  fs::remove_all(dir);
}

// ---- dictd databases (io/dictd.h) ----
#include "io/dictd.h"

TEST_CASE("dictd: base-64 numbers, entries from .dict.dz or .dict, errors name the index line") {
  CHECK(io::dictd_b64_decode("A") == 0);
  CHECK(io::dictd_b64_decode("/") == 63);
  CHECK(io::dictd_b64_decode("BdqM") == ((1u * 64 + 29) * 64 + 42) * 64 + 12);
  CHECK_THROWS_WITH(io::dictd_b64_decode("B-q"), doctest::Contains("'B-q' is not a base-64"));

  // tests/data/dictd/mini: gzip text, 11 index lines, the first dictd's own "00databaseshort"
  const std::string mini = "tests/data/dictd/mini";
  std::vector<io::DictdEntry> e = io::read_dictd(mini);
  REQUIRE(e.size() == 10);
  CHECK(e[0].headword == "abacus");
  CHECK(e[0].text == "ABACUS, n.  In Rome, an instrument for counting\nbeads.\n\n    A verse that is not scored.\n\n");
  CHECK(e[2].headword == "cui bono");
  CHECK(e[9].text == "JEALOUS, adj.  Unduly concerned about the preservation of that which\ncan be lost only if not worth keeping.\n\n");
  CHECK(io::read_dictd(mini + ".index").size() == 10);
  CHECK(io::read_dictd(mini + ".dict.dz")[5].headword == "fork");

  TempDir tmp;
  const std::string db = tmp / "d";
  fs::copy_file(mini + ".index", db + ".index");
  {  // an uncompressed .dict is read as it is
    std::ofstream(db + ".dict") << std::string(2000, 'x');
    CHECK(io::read_dictd(db)[1].text == std::string(60, 'x'));
  }
  {
    std::ofstream(db + ".index", std::ios::app) << "zebra\tZZZZ\tB\n";
    CHECK_THROWS_WITH(io::read_dictd(db), doctest::Contains((db + ".index:12: entry 'zebra' at bytes").c_str()));
  }
  {
    std::ofstream(db + ".index") << "abacus\tA\tp\nbroken line\n";
    CHECK_THROWS_WITH(io::read_dictd(db), doctest::Contains((db + ".index:2: expected 'headword<TAB>offset<TAB>length'").c_str()));
  }
  fs::remove(db + ".dict");
  CHECK_THROWS_WITH(io::read_dictd(db), doctest::Contains("cannot open"));
  std::ofstream(db + ".dict.dz") << "not gzip at all";  // zlib reads a non-gzip file as plain
  std::ofstream(db + ".index") << "a\tA\tp\n";
  CHECK_THROWS_WITH(io::read_dictd(db), doctest::Contains("lies outside the 15-byte dictionary text"));
}
