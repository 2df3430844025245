// io/gguf_writer: bytes equal to gguf-py's GGUFWriter, round trips through our reader (every
// value type, float / quantized tensors, alignment), refusals, atomic writes.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "runtime/generator.h"
#include "runtime/ops.h"
#include "testing.h"

namespace fs = std::filesystem;
using namespace peft;
using peft::testing::error_of;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("peft_gguf_writer_" + std::to_string(::getpid()) + "_" + std::to_string(rand()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

Generator& gen() {
  static Generator g(1234);
  return g;
}

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string from_hex(const std::string& h) {
  std::string out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) out += char(std::stoi(h.substr(i, 2), nullptr, 16));
  return out;
}

// gguf-py (llama.cpp's gguf-py/gguf/gguf_writer.py) wrote this for:
//   GGUFWriter(path, arch="llama"); add_string("general.type", "adapter");
//   add_float32("adapter.lora.alpha", 16.0); add_uint32("t.u32", 7); add_array("t.arr", [1, 2, 3]);
//   add_tensor("a", np.arange(6, dtype=float32).reshape(2, 3)); add_tensor("b", float16 [1, -2, 0.5])
const char* kGgufPyHex =
    "474755460300000002000000000000000500000000000000140000000000000067656e6572616c2e61726368697465637475726508"
    "00000005000000000000006c6c616d610c0000000000000067656e6572616c2e7479706508000000070000000000000061646170"
    "7465721200000000000000616461707465722e6c6f72612e616c70686106000000000080410500000000000000742e7533320400"
    "0000070000000500000000000000742e617272090000000500000003000000000000000100000002000000030000000100000000"
    "0000006102000000030000000000000002000000000000000000000000000000000000000100000000000000620100000003000000"
    "0000000001000000200000000000000000000000000000000000000000000000803f0000004000004040000080400000a040000000"
    "0000000000003c00c000380000000000000000000000000000000000000000000000000000";

}  // namespace

TEST_CASE("gguf writer: the bytes gguf-py writes for the same metadata and tensors") {
  io::GGUFWriter w;
  w.add_string("general.architecture", "llama");
  w.add_string("general.type", "adapter");
  w.add_f32("adapter.lora.alpha", 16.0f);
  w.add_u32("t.u32", 7);
  w.add_i32_array("t.arr", {1, 2, 3});
  w.add_tensor("a", from_vector(std::vector<float>{0, 1, 2, 3, 4, 5}, {2, 3}));
  w.add_tensor("b", from_vector(std::vector<float>{1.0f, -2.0f, 0.5f}, {3}).to(DType::float16));
  const std::string want = from_hex(kGgufPyHex);
  REQUIRE(want.size() == 352);
  const std::string got = w.to_bytes();
  CHECK(got.size() == want.size());
  CHECK(got == want);
  TempDir d;
  w.write(d / "x.gguf");
  CHECK(slurp(d / "x.gguf") == want);
  // nothing but the file is left in the folder (the temporary file was renamed)
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(d.path)) n += (e.path().filename() == "x.gguf") ? 0 : 1;
  CHECK(n == 0);
}

TEST_CASE("gguf writer: every value type and tensor dtype round-trips through the reader") {
  TempDir d;
  io::GGUFWriter w;
  w.add_string("s", "héllo");
  w.add_u32("u32", 4000000000u);
  w.add_i32("i32", -7);
  w.add_u64("u64", 1ull << 40);
  w.add_f32("f32", 0.1f);
  w.add_f64("f64", 0.1);
  w.add_bool("b", true);
  w.add_string_array("sa", {"a", "", "ccc"});
  w.add_u32_array("ua", {1, 4000000000u});
  w.add_f32_array("fa", {0.5f, -1.25f});
  io::GGUFValue i8;
  i8.type = io::GGUFValueType::i8;
  i8.value = -100;
  w.add("i8", i8);
  CHECK(w.has("i8"));
  CHECK_FALSE(w.has("nope"));
  Tensor f32 = randn({5, 7}, gen());
  Tensor f16 = randn({3, 1, 2, 9}, gen()).to(DType::float16);  // 108 bytes: the next tensor starts padded
  Tensor bf16 = randn({11}, gen()).to(DType::bfloat16);
  Tensor i64 = from_vector(std::vector<int64_t>{-1, 2, 3}, {3});
  auto tiny = io::GGUFFile::open("tests/data/gguf/tiny_llama.q8_0.gguf");
  Tensor q8 = tiny->tensor("blk.0.attn_v.weight");  // GGML blocks, written as they are
  REQUIRE(q8.dtype() == DType::q8_0);
  Tensor strided = randn({4, 6}, gen()).t();  // not contiguous: written in row-major order
  w.add_tensor("f32", f32);
  w.add_tensor("f16", f16);
  w.add_tensor("bf16", bf16);
  w.add_tensor("i64", i64);
  w.add_tensor("q8", q8);
  w.add_tensor("strided", strided);
  w.write(d / "all.gguf");

  auto f = io::GGUFFile::open(d / "all.gguf");
  CHECK(f->version() == 3);
  CHECK(f->alignment() == 32);
  CHECK_FALSE(f->has("general.alignment"));  // 32 is the default, not written (as gguf-py)
  CHECK(f->data_offset() % 32 == 0);
  CHECK(f->get_string("s") == "héllo");
  CHECK(f->find("u32")->type == io::GGUFValueType::u32);
  CHECK(f->get_int("u32") == 4000000000ll);
  CHECK(f->get_int("i32") == -7);
  CHECK(f->find("u64")->type == io::GGUFValueType::u64);
  CHECK(f->get_int("u64") == (1ll << 40));
  CHECK(f->find("f32")->type == io::GGUFValueType::f32);
  CHECK(f->get_float("f32") == double(0.1f));
  CHECK(f->get_float("f64") == 0.1);
  CHECK(f->get_bool("b"));
  CHECK(f->get_int("i8") == -100);
  CHECK(f->find("i8")->type == io::GGUFValueType::i8);
  CHECK(f->get_string_array("sa") == std::vector<std::string>{"a", "", "ccc"});
  CHECK(f->find("ua")->elem_type == io::GGUFValueType::u32);
  CHECK(f->get_int_array("ua") == std::vector<int64_t>{1, 4000000000ll});
  CHECK(f->get_float_array("fa") == std::vector<double>{0.5, -1.25});
  CHECK(f->metadata().size() == 11);
  CHECK(f->metadata()[0].first == "s");  // file order is the order added
  CHECK(f->metadata()[10].first == "i8");

  REQUIRE(f->tensors().size() == 6);
  const char* order[] = {"f32", "f16", "bf16", "i64", "q8", "strided"};
  for (size_t i = 0; i < 6; ++i) {
    CHECK(f->tensors()[i].name == order[i]);
    CHECK(f->tensors()[i].offset % 32 == 0);
  }
  CHECK(f->info("f16").ne == std::vector<uint64_t>{9, 2, 1, 3});
  CHECK(f->info("f16").ggml_type == 1);
  CHECK(f->info("bf16").ggml_type == 30);
  CHECK(f->info("q8").ggml_type == 8);
  // each tensor starts at the previous one's end rounded up to 32: 140 bytes -> 160, +108 -> 288,
  // +22 -> 320, +24 -> 352
  CHECK(f->info("f32").offset == 0);
  CHECK(f->info("f16").offset == 160);
  CHECK(f->info("bf16").offset == 288);
  CHECK(f->info("i64").offset == 320);
  CHECK(f->info("q8").offset == 352);
  CHECK(f->tensor("f32").to_vector<float>() == f32.to_vector<float>());
  CHECK(f->tensor("f16").shape() == f16.shape());
  CHECK(f->tensor("f16").to_vector<float>() == f16.to_vector<float>());
  CHECK(f->tensor("bf16").to_vector<float>() == bf16.to_vector<float>());
  CHECK(f->tensor("i64").to_vector<int64_t>() == std::vector<int64_t>{-1, 2, 3});
  CHECK(f->tensor("strided").shape() == Shape{6, 4});
  CHECK(f->tensor("strided").to_vector<float>() == strided.contiguous().to_vector<float>());
  // quantized blocks byte for byte: dequantized equal, raw bytes equal
  const auto& qi = f->info("q8");
  CHECK(qi.shape == tiny->info("blk.0.attn_v.weight").shape);
  REQUIRE(qi.nbytes == tiny->info("blk.0.attn_v.weight").nbytes);
  CHECK(std::memcmp(f->data(qi), tiny->data(tiny->info("blk.0.attn_v.weight")), qi.nbytes) == 0);
  // the file ends with the last tensor's padded data, as gguf-py writes it
  CHECK(f->file_size() == f->data_offset() + (f->info("strided").offset + 96 + 31) / 32 * 32);
}

TEST_CASE("gguf writer: a whole model file's metadata copies through add(key, value)") {
  auto src = io::GGUFFile::open("tests/data/gguf/tiny_llama.q8_0.gguf");
  io::GGUFWriter w;
  for (const auto& [k, v] : src->metadata()) w.add(k, v);
  for (const auto& ti : src->tensors()) w.add_tensor(ti.name, src->tensor(ti.name));
  TempDir d;
  w.write(d / "copy.gguf");
  auto f = io::GGUFFile::open(d / "copy.gguf");
  REQUIRE(f->metadata().size() == src->metadata().size());
  for (size_t i = 0; i < f->metadata().size(); ++i) {
    const auto& [k, v] = f->metadata()[i];
    const auto& [k0, v0] = src->metadata()[i];
    CAPTURE(k0);
    CHECK(k == k0);
    CHECK(v.type == v0.type);
    CHECK(v.elem_type == v0.elem_type);
    CHECK(v.value == v0.value);
  }
  REQUIRE(f->tensors().size() == src->tensors().size());
  for (const auto& ti : src->tensors()) {
    const auto& c = f->info(ti.name);
    CHECK(c.ne == ti.ne);
    CHECK(c.ggml_type == ti.ggml_type);
    REQUIRE(c.nbytes == ti.nbytes);
    CHECK(std::memcmp(f->data(c), src->data(ti), ti.nbytes) == 0);
  }
  CHECK(f->get_string_array("tokenizer.ggml.tokens") == src->get_string_array("tokenizer.ggml.tokens"));
}

TEST_CASE("gguf writer: another alignment is written as general.alignment and honoured") {
  io::GGUFWriter w(64);
  w.add_tensor("x", randn({3}, gen()));
  w.add_tensor("y", randn({5}, gen()));
  TempDir d;
  w.write(d / "a64.gguf");
  auto f = io::GGUFFile::open(d / "a64.gguf");
  CHECK(f->alignment() == 64);
  CHECK(f->find("general.alignment")->type == io::GGUFValueType::u32);
  CHECK(f->data_offset() % 64 == 0);
  CHECK(f->info("y").offset == 64);
  CHECK(error_of([] { io::GGUFWriter bad(48); }).find("48 is not a power of two") != std::string::npos);
}

TEST_CASE("gguf writer: mistakes are refused when added, naming the key or tensor") {
  io::GGUFWriter w;
  w.add_u32("k", 1);
  CHECK(error_of([&] { w.add_string("k", "x"); }).find("'k' is added twice") != std::string::npos);
  CHECK(error_of([&] { w.add_u32("", 1); }).find("empty") != std::string::npos);
  io::GGUFValue v;
  v.type = io::GGUFValueType::u8;
  v.value = 300;
  CHECK(error_of([&] { w.add("u8", v); }).find("'u8': out of range for type u8") != std::string::npos);
  v.type = io::GGUFValueType::u32;
  v.value = -1;
  CHECK(error_of([&] { w.add("neg", v); }).find("out of range") != std::string::npos);
  v.type = io::GGUFValueType::string;
  v.value = 3;
  CHECK(error_of([&] { w.add("str", v); }).find("not a string") != std::string::npos);
  v.type = io::GGUFValueType::array;
  v.elem_type = io::GGUFValueType::array;
  v.value = nlohmann::ordered_json::array();
  CHECK(error_of([&] { w.add("nested", v); }).find("arrays of array are not supported") != std::string::npos);
  v.type = io::GGUFValueType::u32;
  v.value = 16;
  CHECK(error_of([&] { w.add("general.alignment", v); }).find("differs from the writer's alignment 32") !=
        std::string::npos);
  CHECK_FALSE(w.has("u8"));  // nothing refused was kept
  CHECK_FALSE(w.has("general.alignment"));

  w.add_tensor("t", zeros({2}));
  CHECK(error_of([&] { w.add_tensor("t", zeros({2})); }).find("'t' is added twice") != std::string::npos);
  CHECK(error_of([&] { w.add_tensor(std::string(64, 'n'), zeros({2})); }).find("at most 63") != std::string::npos);
  CHECK(error_of([&] { w.add_tensor("bool", zeros({2}).to(DType::bool_)); }).find("no tensor type for dtype bool") !=
        std::string::npos);
  CHECK(error_of([&] { w.add_tensor("5d", zeros({1, 1, 1, 1, 2})); }).find("5 dimensions") != std::string::npos);
  CHECK(error_of([&] { w.add_tensor("meta", empty({2}, DType::float32, Device::meta)); }).find("is on meta") !=
        std::string::npos);
  CHECK(w.tensor_count() == 1);
}

TEST_CASE("gguf writer: a failed write leaves the target as it was and no temporary file") {
  TempDir d;
  io::GGUFWriter w;
  w.add_tensor("t", randn({4}, gen()));
  // the target is a non-empty folder: the rename fails after the data was written
  fs::create_directories(d.path / "taken");
  std::ofstream(d / "taken/keep") << "old";
  const std::string err = error_of([&] { w.write(d / "taken"); });
  CHECK(err.find("cannot save") != std::string::npos);
  CHECK(err.find("left unchanged") != std::string::npos);
  CHECK(slurp(d / "taken/keep") == "old");
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(d.path)) entries += e.path().filename() == "taken" ? 0 : 1;
  CHECK(entries == 0);
  // a folder that does not exist
  CHECK(error_of([&] { w.write(d / "no/such/dir.gguf"); }).find("cannot create the temporary file") != std::string::npos);
  // over an existing file: replaced whole
  std::ofstream(d / "old.gguf") << "previous contents";
  w.write(d / "old.gguf");
  CHECK(io::GGUFFile::open(d / "old.gguf")->tensors().size() == 1);
}
