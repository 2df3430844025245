// io/gguf: the reader (metadata of every type, tensor infos, zero-copy views), dequantization of
// every GGML type against gguf-py / llama.cpp (tests/data/gguf/types*, written by
// tools/reference/make_gguf_goldens.py, which checks that gguf-py and llama.cpp's to_float agree bit
// for bit), and a table of malformed files, each refused with a FormatError naming the field.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "io/safetensors.h"
#include "testing.h"

namespace fs = std::filesystem;
using namespace peft;
using namespace peft::io;
using peft::testing::error_of;
using peft::testing::max_abs_diff;

namespace {

const char* kTypes = "tests/data/gguf/types.gguf";

// A GGUF file built byte by byte, so each malformed case changes exactly one field.
struct GGUFBuilder {
  std::string b;
  void u8(uint8_t v) { b.push_back(char(v)); }
  void u32(uint32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); }
  void u64(uint64_t v) { b.append(reinterpret_cast<const char*>(&v), 8); }
  void f32(float v) { b.append(reinterpret_cast<const char*>(&v), 4); }
  void str(const std::string& s) {
    u64(s.size());
    b += s;
  }
  void header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    b = "GGUF";
    u32(version);
    u64(n_tensors);
    u64(n_kv);
  }
  void kv_u32(const std::string& k, uint32_t v) {
    str(k);
    u32(4);
    u32(v);
  }
  void kv_str(const std::string& k, const std::string& v) {
    str(k);
    u32(8);
    str(v);
  }
  // tensor info: name, dims (innermost first), ggml type, offset
  void tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name);
    u32(uint32_t(ne.size()));
    for (uint64_t d : ne) u64(d);
    u32(type);
    u64(offset);
  }
  void pad(size_t align = 32) {
    while (b.size() % align) b.push_back('\0');
  }
  std::string write(const std::string& name) const {
    const std::string path = (fs::temp_directory_path() / ("peft_gguf_" + name + ".gguf")).string();
    std::ofstream(path, std::ios::binary).write(b.data(), std::streamsize(b.size()));
    return path;
  }
};

// A valid file: two metadata entries, one F32 [2, 4] tensor and one Q8_0 [1, 32] tensor.
GGUFBuilder valid_file() {
  GGUFBuilder g;
  g.header(3, 2, 2);
  g.kv_str("general.architecture", "llama");
  g.kv_u32("general.alignment", 32);
  g.tensor("a", {4, 2}, 0, 0);
  g.tensor("q", {32, 1}, 8, 32);
  g.pad();
  for (int i = 0; i < 8; ++i) g.f32(float(i) * 0.5f);
  g.pad();
  const uint16_t d = 0x3C00;  // f16 1.0
  g.b.append(reinterpret_cast<const char*>(&d), 2);
  for (int i = 0; i < 32; ++i) g.u8(uint8_t(int8_t(i - 16)));
  return g;
}

}  // namespace

TEST_CASE("gguf: a hand-built file reads back (metadata, shapes row-major, zero-copy views, Q8_0 values)") {
  const std::string path = valid_file().write("valid");
  auto f = GGUFFile::open(path);
  CHECK(f->version() == 3);
  CHECK(f->alignment() == 32);
  CHECK(f->get_string("general.architecture") == "llama");
  REQUIRE(f->tensors().size() == 2);
  const GGUFTensorInfo& a = f->info("a");
  CHECK(a.shape == Shape{2, 4});
  CHECK(a.nbytes == 32);
  Tensor ta = f->tensor("a");
  CHECK(ta.dtype() == DType::float32);
  CHECK(ta.raw_data() == static_cast<const void*>(f->data(a)));  // a view of the mapping
  CHECK(ta.at({1, 3}) == 3.5);
  Tensor q = f->tensor("q");
  CHECK(q.dtype() == DType::q8_0);
  CHECK(q.shape() == Shape{1, 32});
  CHECK(q.nbytes() == 34);
  Tensor qf = q.to(DType::float32);
  CHECK(qf.at({0, 0}) == -16.0);
  CHECK(qf.at({0, 31}) == 15.0);
  CHECK(error_of([&] { f->info("missing"); }).find("no tensor named 'missing'") != std::string::npos);
  CHECK(error_of([&] { f->get_int("general.architecture"); }).find("expected an integer") != std::string::npos);
  CHECK(error_of([&] { f->get_string("nope"); }).find("'nope' is missing") != std::string::npos);
  CHECK(is_gguf_file(path));
  fs::remove(path);
}

TEST_CASE("gguf: every metadata value type, nested arrays, defaults") {
  GGUFBuilder g;
  g.header(2, 0, 14);
  auto key = [&](const std::string& k, uint32_t t) {
    g.str(k);
    g.u32(t);
  };
  key("u8", 0), g.u8(200);
  key("i8", 1), g.u8(uint8_t(int8_t(-5)));
  key("u16", 2), g.b.append("\x34\x12", 2);
  key("i16", 3), g.b.append("\xfe\xff", 2);
  key("u32", 4), g.u32(4000000000u);
  key("i32", 5), g.u32(uint32_t(-7));
  key("f32", 6), g.f32(0.25f);
  key("bool", 7), g.u8(1);
  key("str", 8), g.str("héllo");
  key("u64", 10), g.u64(1ull << 40);
  key("i64", 11), g.u64(uint64_t(-3));
  key("f64", 12), g.b.append("\0\0\0\0\0\0\xf8\x3f", 8);  // 1.5
  key("arr", 9), g.u32(8), g.u64(2), g.str("a"), g.str("bc");
  key("nested", 9), g.u32(9), g.u64(2);  // [[1, 2], []] of i32
  g.u32(5), g.u64(2), g.u32(1), g.u32(2);
  g.u32(5), g.u64(0);
  const std::string path = g.write("types_kv");
  auto f = GGUFFile::open(path);
  CHECK(f->get_int("u8") == 200);
  CHECK(f->get_int("i8") == -5);
  CHECK(f->get_int("u16") == 0x1234);
  CHECK(f->get_int("i16") == -2);
  CHECK(f->get_int("u32") == 4000000000ll);
  CHECK(f->get_int("i32") == -7);
  CHECK(f->get_float("f32") == 0.25);
  CHECK(f->get_bool("bool"));
  CHECK(f->get_string("str") == "héllo");
  CHECK(f->get_int("u64") == (1ll << 40));
  CHECK(f->get_int("i64") == -3);
  CHECK(f->get_float("f64") == 1.5);
  CHECK(f->get_string_array("arr") == std::vector<std::string>{"a", "bc"});
  const GGUFValue* n = f->find("nested");
  REQUIRE(n);
  CHECK(n->type == GGUFValueType::array);
  CHECK(n->elem_type == GGUFValueType::array);
  CHECK(n->value.dump() == "[[1,2],[]]");
  CHECK(f->get_int("absent", 42) == 42);
  CHECK(error_of([&] { (void)f->get_int("str", 0); }).find("expected an integer") != std::string::npos);
  fs::remove(path);
}

TEST_CASE("gguf: malformed files are refused with a FormatError naming the field") {
  struct Case {
    const char* name;
    std::function<void(GGUFBuilder&)> make;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"bad magic", [](GGUFBuilder& g) { g.b[0] = 'X'; }, "not 'GGUF'"},
      {"version 1", [](GGUFBuilder& g) { g.b[4] = 1; }, "version 1"},
      {"version 4", [](GGUFBuilder& g) { g.b[4] = 4; }, "version 4 is not supported"},
      {"tensor count past the file", [](GGUFBuilder& g) { std::memset(&g.b[8], 0x7f, 4); }, "tensor_count"},
      {"kv count past the file", [](GGUFBuilder& g) { std::memset(&g.b[16], 0x7f, 4); }, "metadata_kv_count"},
      {"truncated header", [](GGUFBuilder& g) { g.b.resize(20); }, "24-byte header"},
      {"key length past the end",
       [](GGUFBuilder& g) {
         g.header(3, 0, 1);
         g.u64(1ull << 40);
         g.b.append(16, '\0');
       },
       "string length"},
      {"unknown value type",
       [](GGUFBuilder& g) {
         g.header(3, 0, 1);
         g.str("k");
         g.u32(13);
       },
       "unknown value type 13"},
      {"bool not 0/1",
       [](GGUFBuilder& g) {
         g.header(3, 0, 1);
         g.str("k");
         g.u32(7);
         g.u8(2);
       },
       "is not 0 or 1"},
      {"array longer than the file",
       [](GGUFBuilder& g) {
         g.header(3, 0, 1);
         g.str("k");
         g.u32(9);
         g.u32(4);
         g.u64(1u << 20);
       },
       "array of 1048576 u32"},
      {"arrays nested too deep",
       [](GGUFBuilder& g) {
         g.header(3, 0, 1);
         g.str("k");
         g.u32(9);
         for (int i = 0; i < 6; ++i) g.u32(9), g.u64(1);
       },
       "nested deeper"},
      {"duplicate key",
       [](GGUFBuilder& g) {
         g.header(3, 0, 2);
         g.kv_u32("k", 1);
         g.kv_u32("k", 2);
       },
       "duplicate metadata key 'k'"},
      {"alignment not a power of two",
       [](GGUFBuilder& g) {
         g.header(3, 0, 1);
         g.kv_u32("general.alignment", 24);
       },
       "general.alignment 24 is not a power of two"},
      {"alignment of the wrong type",
       [](GGUFBuilder& g) {
         g.header(3, 0, 1);
         g.kv_str("general.alignment", "32");
       },
       "general.alignment must be a u32"},
      {"zero dimensions",
       [](GGUFBuilder& g) {
         g.header(3, 1, 0);
         g.tensor("t", {}, 0, 0);
       },
       "has 0 dimensions"},
      {"five dimensions",
       [](GGUFBuilder& g) {
         g.header(3, 1, 0);
         g.tensor("t", {1, 1, 1, 1, 1}, 0, 0);
       },
       "has 5 dimensions"},
      {"a zero dimension",
       [](GGUFBuilder& g) {
         g.header(3, 1, 0);
         g.tensor("t", {4, 0}, 0, 0);
       },
       "dimension 1 is 0"},
      {"element count overflow",
       [](GGUFBuilder& g) {
         g.header(3, 1, 0);
         g.tensor("t", {1ull << 40, 1ull << 40}, 0, 0);
       },
       "overflows 64 bits"},
      {"unknown ggml type",
       [](GGUFBuilder& g) {
         g.header(3, 1, 0);
         g.tensor("t", {32}, 4, 0);
       },
       "GGML type 4, which GGML does not define"},
      {"row not whole blocks",
       [](GGUFBuilder& g) {
         g.header(3, 1, 0);
         g.tensor("t", {40}, 8, 0);
       },
       "not a multiple of the block size 32"},
      {"offset not aligned",
       [](GGUFBuilder& g) {
         g.header(3, 1, 0);
         g.tensor("t", {4}, 0, 8);
       },
       "offset 8 is not a multiple of the alignment 32"},
      {"data past the end",
       [](GGUFBuilder& g) {
         g.header(3, 1, 0);
         g.tensor("t", {64}, 0, 0);
         g.pad();
         g.b.append(100, '\0');
       },
       "runs past the end of the file"},
      {"overlapping tensors",
       [](GGUFBuilder& g) {
         g.header(3, 2, 0);
         g.tensor("a", {16}, 0, 0);
         g.tensor("b", {16}, 0, 32);
         g.pad();
         g.b.append(128, '\0');
       },
       "overlap"},
      {"duplicate tensor names",
       [](GGUFBuilder& g) {
         g.header(3, 2, 0);
         g.tensor("a", {4}, 0, 0);
         g.tensor("a", {4}, 0, 32);
         g.pad();
         g.b.append(64, '\0');
       },
       "duplicate tensor name 'a'"},
  };
  for (const Case& c : cases) {
    const std::string name = c.name;
    CAPTURE(name);
    GGUFBuilder g = valid_file();
    c.make(g);
    const std::string path = g.write("bad");
    bool format_error = false;
    std::string msg;
    try {
      GGUFFile::open(path);
    } catch (const FormatError& e) {
      format_error = true;
      msg = e.what();
    } catch (const std::exception& e) {
      msg = std::string("other exception: ") + e.what();
    }
    CHECK_MESSAGE(format_error, msg);
    CHECK_MESSAGE(msg.find(c.expect) != std::string::npos, msg);
    CHECK(msg.find(path) != std::string::npos);  // names the file
    fs::remove(path);
  }
  CHECK(error_of([] { GGUFFile::open("tests/data/gguf/does-not-exist.gguf"); }).find("cannot open") != std::string::npos);
}

TEST_CASE("gguf: every type dequantizes bit-equal to gguf-py and llama.cpp (types.gguf)") {
  auto f = GGUFFile::open(kTypes);
  auto expected = load_safetensors("tests/data/gguf/types_dequant.safetensors");
  const std::vector<std::pair<std::string, DType>> types = {
      {"f32", DType::float32}, {"f16", DType::float16}, {"bf16", DType::bfloat16}, {"q4_0", DType::q4_0},
      {"q4_1", DType::q4_1},   {"q5_0", DType::q5_0},   {"q5_1", DType::q5_1},     {"q8_0", DType::q8_0},
      {"q4_k", DType::q4_k},   {"q5_k", DType::q5_k},   {"q6_k", DType::q6_k}};
  REQUIRE(f->tensors().size() == types.size());
  for (const auto& [name, dt] : types) {
    CAPTURE(name);
    Tensor t = f->tensor("t." + name);
    CHECK(t.dtype() == dt);
    CHECK(t.shape() == Shape{4, 512});
    CHECK(t.nbytes() == f->info("t." + name).nbytes);
    Tensor got = t.to(DType::float32);
    const Tensor& want = expected.at("t." + name);
    const std::vector<float> g = got.to_vector<float>(), w = want.to_vector<float>();
    REQUIRE(g.size() == w.size());
    size_t differ = 0;
    for (size_t i = 0; i < g.size(); ++i) differ += std::memcmp(&g[i], &w[i], 4) != 0;
    CHECK_MESSAGE(differ == 0, differ, " values differ in their bits");
  }
}

TEST_CASE("gguf: quantized tensors stay block storage: row views, refused transposes, writes and quantizing") {
  auto f = GGUFFile::open(kTypes);
  Tensor q = f->tensor("t.q4_1");
  Tensor rows = q.narrow(0, 1, 2);  // whole rows: a view
  CHECK(rows.same_storage(q));
  CHECK(max_abs_diff(rows.to(DType::float32), q.to(DType::float32).narrow(0, 1, 2)) == 0);
  CHECK(error_of([&] { q.t(); }).find("would split its blocks") != std::string::npos);
  CHECK(error_of([&] { q.narrow(1, 0, 16); }).find("would split its blocks") != std::string::npos);
  CHECK(error_of([&] { q.clone().copy_(zeros({4, 512})); }).find("quantized tensors are read-only") != std::string::npos);
  CHECK(error_of([&] { zeros({4, 512}).to(DType::q4_0); }).find("does not quantize") != std::string::npos);
  CHECK(error_of([&] { q.requires_grad_(true); }).find("only floating-point tensors") != std::string::npos);
  CHECK(error_of([&] { q.at({0, 0}); }).find("dequantizing") != std::string::npos);
  CHECK(error_of([&] { add(q, q); }).find("[add] does not take the q4_1") != std::string::npos);
  CHECK(error_of([&] { sum(q); }).find("dequantize with .to(float32) first") != std::string::npos);
  Tensor c = q.clone();  // a copy of the blocks
  CHECK_FALSE(c.same_storage(q));
  CHECK(max_abs_diff(c.to(DType::float32), q.to(DType::float32)) == 0);
}
