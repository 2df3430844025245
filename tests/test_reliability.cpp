// Reliability (docs/reliability.md): malformed adapter configs and folders are refused with
// clear errors and leave the model exactly as it was; absurd sizes are refused before
// anything is allocated; failed or killed writers never lose the previous file; a diverging
// `peft finetune` stops without writing an adapter. The malformed inputs are checked in
// under tests/data/bad_config/ and tests/data/bad_folder/ (seeds for tools/fuzz/ as well).
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

#include "adapters/adalora/config.h"
#include "adapters/folder.h"
#include "adapters/ia3/config.h"
#include "adapters/lora/config.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "testing.h"
#include "tools/charlm.h"
#include "tools/host_models.h"
#include "train/guard.h"

using namespace peft;
namespace fs = std::filesystem;
using peft::testing::error_of;

namespace {

bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }
#define CHECK_HAS(msg, sub)                  \
  do {                                       \
    std::string m_ = (msg);                  \
    INFO("message: " << m_);                 \
    CHECK(has(m_, sub));                     \
  } while (0)

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("peft-reliability-" + std::to_string(::getpid()) + "-" +
                                        std::to_string(counter()++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  static int& counter() {
    static int c = 0;
    return c;
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  // Hidden temporary / staging files left in the folder.
  std::vector<std::string> leftovers() const {
    std::vector<std::string> out;
    for (const auto& e : fs::recursive_directory_iterator(path)) {
      std::string n = e.path().filename().string();
      if (!n.empty() && n[0] == '.') out.push_back(n);
    }
    return out;
  }
};

// Everything observable about a model: repr, every state_dict entry (name, dtype, shape,
// requires_grad, exact bytes), training flags and the adapter names.
std::string snapshot(const nn::Module& m) {
  std::ostringstream os;
  os << m.repr() << "\ntraining=" << m.is_training() << "\n";
  for (const auto& [name, sub] : m.named_modules())
    if (!name.empty()) os << name << " training=" << sub->is_training() << "\n";
  for (const auto& [name, t] : m.state_dict()) {
    os << name << " " << t.desc() << " rg=" << t.requires_grad() << " :";
    Tensor c = t.contiguous();
    const auto* p = static_cast<const unsigned char*>(c.raw_data());
    for (size_t i = 0; i < c.nbytes(); ++i) os << char(p[i]);
    os << "\n";
  }
  for (const auto& [name, p] : m.named_parameters()) os << name << " param rg=" << p.requires_grad() << "\n";
  if (const PeftState* st = peft_state(m)) {
    for (const auto& n : st->adapter_names()) os << "adapter " << n << "\n";
    for (const auto& n : st->active_adapters) os << "active " << n << "\n";
  }
  return os.str();
}

std::shared_ptr<nn::Module> mlp() {
  return tools::build_host_model("mlp", nlohmann::json{{"in", 10}, {"hidden", 20}, {"out", 2}});
}

std::string peft_exe() {
  // tests/test_reliability lives in <build>/tests/; the peft program in <build>/tools/.
  return (fs::read_symlink("/proc/self/exe").parent_path().parent_path() / "tools" / "peft").string();
}

// DIR/base.safetensors (a tiny character LM, optionally with NaN fc1 weights) and
// DIR/words.txt, for running `peft finetune` end to end.
template <class Dir>
void write_tiny_charlm(const Dir& dir, bool nan_weights) {
  lm::CharLMConfig cfg;
  cfg.context = 3;
  cfg.embed = 4;
  cfg.hidden = 8;
  cfg.vocab = lm::Vocab::standard().size();
  Generator g(0);
  lm::CharLM model(cfg, g);
  StateDict sd = model.state_dict();
  if (nan_weights) {
    Tensor w = sd.at("fc1.weight").clone();
    w.fill_(std::numeric_limits<double>::quiet_NaN());
    sd.set("fc1.weight", w);
  }
  io::save_safetensors(dir / "base.safetensors", sd, {cfg.to_metadata()});
  std::ofstream words(dir / "words.txt");
  for (const char* w : {"cat", "dog", "bird", "fish", "horse", "mouse", "sheep", "goat", "duck", "cow", "pig", "hen"})
    words << w << "\n";
}

}  // namespace

// ===========================================================================
// Malformed adapter_config.json: one file per class in tests/data/bad_config/.

TEST_CASE("every malformed adapter config is refused with a clear message") {
  const std::pair<const char*, const char*> cases[] = {
      {"not_json", "adapter config is not valid JSON"},
      {"not_object", "adapter config has no string field `peft_type`"},
      {"empty", "adapter config is not valid JSON"},
      {"no_peft_type", "adapter config has no string field `peft_type`"},
      {"peft_type_not_string", "adapter config has no string field `peft_type`"},
      {"unknown_peft_type", "unsupported peft_type 'PROMPT_TUNING' in adapter config"},
      {"deep_nesting", "adapter config is nested more than 64 levels deep"},
      {"r_string", "LoraConfig: field `r` must be an integer, got \"8\""},
      {"r_zero", "`r` should be a positive integer value but the value passed is 0"},
      {"r_huge", "`r` = 1099511627776 is above peft.cpp's limit of 65536"},
      {"r_uint64", "field `r` = 18446744073709551615 does not fit a 64-bit signed integer"},
      {"r_float", "LoraConfig: field `r` must be an integer, got 8.5"},
      {"alpha_string", "LoraConfig: field `lora_alpha` must be a number, got \"16\""},
      {"bias_unknown", "Requested bias: some, is not implemented."},
      {"target_modules_int", "`target_modules` must be null, a string or a list of strings, got 5"},
      {"target_modules_mixed", "`target_modules` must be a string or a list of strings"},
      {"layers_to_transform_with_regex", "`layers_to_transform` cannot be used when `target_modules` is a str."},
      {"rank_pattern_not_int", "LoraConfig: rank_pattern['lin0'] must be an integer"},
      {"rank_pattern_huge", "rank_pattern['lin0'] = 1099511627776 is above peft.cpp's limit of 65536"},
      {"rank_pattern_negative", "the value passed is -1 (rank_pattern 'lin0')"},
      {"init_weights_unknown", "init_lora_weights=\"pissa\" is not supported by peft.cpp yet"},
      {"dora_with_lora_bias", "The argument lora_bias=True is not supported for DoRA"},
      {"adalora_no_total_step", "AdaLoRA does not work when `total_step` is None"},
      {"adalora_init_r_huge", "AdaLoRA: init_r = 1099511627776 is above peft.cpp's limit of 65536"},
      {"adalora_total_step_uint64", "field `total_step` = 18446744073709551615 does not fit a 64-bit signed integer"},
      {"adalora_no_budget", "don't allow for a budgeting phase"},
      {"adalora_beta1", "AdaLoRA: beta1 must lie in (0, 1), got 1.5"},
      {"adalora_rank_pattern_not_bools", "AdaLoraConfig: rank_pattern['lin0'] must be a list of booleans"},
      {"adalora_dora", "PeftType.ADALORA does not support DoRA."},
      {"ia3_ff_not_subset", "`feedforward_modules` should be a subset of `target_modules`"},
      {"ia3_bool_as_string", "IA3Config: field `fan_in_fan_out` must be a boolean, got \"no\""},
      // found by tools/fuzz/fuzz_config (nlohmann's type_error used to escape)
      {"modules_to_save_not_strings", "adapter config field `modules_to_save` must hold strings, got 3"},
      {"layers_to_transform_not_ints", "adapter config field `layers_to_transform` must hold 64-bit integers, got \"1\""},
      {"layers_to_transform_float", "adapter config field `layers_to_transform` must hold 64-bit integers, got 1.5"},
      {"layers_pattern_not_strings", "adapter config field `layers_pattern` must hold strings, got null"},
  };
  WarningHandler prev = set_warning_handler([](const std::string&) {});
  int files = 0;
  for (const auto& [name, expect] : cases) {
    fs::path p = fs::path("tests/data/bad_config") / (std::string(name) + ".json");
    CAPTURE(p.string());
    REQUIRE(fs::exists(p));
    CHECK_HAS(error_of([&] { config_from_json(read_file(p)); }), expect);
    ++files;
  }
  // every file of the corpus has its case above
  int on_disk = 0;
  for (const auto& e : fs::directory_iterator("tests/data/bad_config")) on_disk += e.path().extension() == ".json";
  CHECK(on_disk == files);
  // each class's own parser refuses a peft_type of the wrong type (fuzz_config: type_error escaped)
  CHECK_HAS(error_of([] { AdaLoraConfig::from_json_string(R"({"peft_type":7})"); }),
            "AdaLoraConfig: peft_type is 7, expected \"ADALORA\"");
  CHECK_HAS(error_of([] { LoraConfig::from_json_string(R"({"peft_type":7})"); }),
            "adapter config field `peft_type` must be a string");
  CHECK_HAS(error_of([] { IA3Config::from_json_string(R"({"peft_type":7})"); }),
            "adapter config field `peft_type` must be a string");
  set_warning_handler(prev);
}

TEST_CASE("absurd sizes in configs are refused before anything is allocated") {
  WarningHandler prev = set_warning_handler([](const std::string&) {});
  // a programmatic config is validated by inject_adapter_in_model before any layer is built
  LoraConfig c;
  c.r = int64_t(1) << 40;
  c.target_modules = {"lin0"};
  auto m = mlp();
  std::string before = snapshot(*m);
  CHECK_HAS(error_of([&] { inject_adapter_in_model(c, *m); }), "is above peft.cpp's limit of 65536");
  CHECK(snapshot(*m) == before);
  // the limit itself is accepted
  c.r = LoraConfig::kMaxRank;
  CHECK(error_of([&] { c.validate(); }) == "<no exception>");
  // AdaLoRA rank_pattern lists longer than any rank
  std::string huge = R"({"peft_type": "ADALORA", "total_step": 10, "target_modules": ["lin0"], "rank_pattern": {"lin0": [)";
  for (int64_t i = 0; i <= LoraConfig::kMaxRank; ++i) huge += i ? ",true" : "true";
  huge += "]}}";
  CHECK_HAS(error_of([&] { config_from_json(huge); }), "rank_pattern['lin0'] lists 65537 ranks, above peft.cpp's limit");
  // schedule arithmetic on extreme values is done without overflow (UBSan build) and, as in
  // PEFT (Python ints), this schedule has a budgeting phase
  CHECK(error_of([] {
          config_from_json(std::string(R"({"peft_type": "ADALORA", "target_modules": ["lin0"], )") +
                           R"("total_step": 4611686018427387904, "tfinal": -9223372036854775808, "tinit": 0})");
        }) == "<no exception>");
  set_warning_handler(prev);
}

// ===========================================================================
// Malformed adapter folders: refused, and the model is exactly as before.

TEST_CASE("a bad adapter folder is refused and leaves the model exactly as it was") {
  const std::pair<const char*, const char*> cases[] = {
      {"no_config", "adapter_config.json (is this a PEFT adapter folder?)"},
      {"config_is_folder", "adapter_config.json: not a regular file"},
      {"no_weights", "adapter_model.safetensors: cannot open for reading"},
      {"config_not_json", "adapter config is not valid JSON"},
      {"config_no_peft_type", "adapter config has no string field `peft_type`"},
      {"rank_huge", "`r` = 1099511627776 is above peft.cpp's limit of 65536"},
      {"rank_uint64", "does not fit a 64-bit signed integer"},
      {"target_not_found", "Target modules {'nope'} not found in the base model"},
      {"wrong_shape", "size mismatch for lin0.lora_A.default.weight"},
      {"rank_mismatch", "size mismatch for lin0.lora_A.default.weight"},
      {"weights_truncated", "adapter_model.safetensors: header length"},
      {"weights_overlap", "overlap in the data section"},
      {"adalora_rank_pattern", "rank_pattern entry 'lin0.lora_E' has 3 entries but the layer has rank 4"},
      {"ia3_ff_not_subset", "`feedforward_modules` should be a subset of `target_modules`"},
      {"modules_to_save_wrong_shape", "size mismatch for lin2.modules_to_save.default.weight"},
  };
  WarningHandler prev = set_warning_handler([](const std::string&) {});
  // a plain model, and one that already holds an adapter (which must survive untouched)
  for (bool with_adapter : {false, true}) {
    auto m = mlp();
    if (with_adapter) {
      LoraConfig c;
      c.r = 3;
      c.target_modules = {"lin0", "lin1"};
      c.modules_to_save = std::vector<std::string>{"lin2"};
      inject_adapter_in_model(c, *m, "first");
    }
    for (const auto& [name, expect] : cases) {
      CAPTURE(name);
      CAPTURE(with_adapter);
      std::string dir = (fs::path("tests/data/bad_folder") / name).string();
      REQUIRE(fs::exists(dir));
      std::string before = snapshot(*m);
      // with a trainable LoRA adapter present, AdaLoRA refuses a second trainable adapter first
      std::string want = with_adapter && std::string(name) == "adalora_rank_pattern"
                             ? "AdaLoraModel supports only 1 trainable adapter"
                             : expect;
      CHECK_HAS(error_of([&] { load_adapter(*m, dir); }), want);
      CHECK(snapshot(*m) == before);
    }
  }
  set_warning_handler(prev);
}

// ===========================================================================
// Writers: a failed or killed save never loses the previous file.

namespace {

// Lowers RLIMIT_FSIZE for the scope (writes beyond it fail with EFBIG; SIGXFSZ ignored).
struct FileSizeLimit {
  rlimit old{};
  void (*old_handler)(int) = nullptr;
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &old);
    old_handler = signal(SIGXFSZ, SIG_IGN);
    rlimit r = old;
    r.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &r);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, old_handler);
  }
};

StateDict big_state(int64_t n, double v) {
  StateDict sd;
  sd.set("w", full({n}, v));
  return sd;
}

}  // namespace

TEST_CASE("a failing write leaves the previous safetensors file and adapter folder intact") {
  TempDir dir;
  std::string p = dir / "model.safetensors";
  io::save_safetensors(p, big_state(16, 1.0));
  const std::string old_bytes = read_file(p);
  {
    FileSizeLimit limit(4096);
    CHECK_HAS(error_of([&] { io::save_safetensors(p, big_state(1 << 16, 2.0)); }),
              "File too large; the existing file (if any) was left unchanged");
  }
  CHECK(read_file(p) == old_bytes);
  CHECK(dir.leftovers().empty());

  // save_pretrained: both files are staged before either replaces the old one
  auto m = mlp();
  LoraConfig c;
  c.r = 2;
  c.target_modules = {"lin0"};
  inject_adapter_in_model(c, *m);
  save_pretrained(*m, dir / "adapter");
  const std::string old_w = read_file(dir / "adapter/adapter_model.safetensors");
  const std::string old_c = read_file(dir / "adapter/adapter_config.json");
  auto m2 = mlp();
  LoraConfig c2;
  c2.r = 512;  // a bigger adapter: its weights hit the limit
  c2.target_modules = {"lin0", "lin1"};
  inject_adapter_in_model(c2, *m2);
  {
    FileSizeLimit limit(8192);
    CHECK_HAS(error_of([&] { save_pretrained(*m2, dir / "adapter"); }), "File too large");
  }
  CHECK(read_file(dir / "adapter/adapter_model.safetensors") == old_w);
  CHECK(read_file(dir / "adapter/adapter_config.json") == old_c);
  CHECK(dir.leftovers().empty());
  // and the folder still loads
  auto m3 = mlp();
  CHECK(error_of([&] { load_adapter(*m3, dir / "adapter"); }) == "<no exception>");
}

TEST_CASE("a writer killed mid-way leaves the previous file intact (SIGKILL)") {
  TempDir dir;
  std::string p = dir / "big.safetensors";
  io::save_safetensors(p, big_state(16, 1.0));
  const std::string old_bytes = read_file(p);
  // Round 0: save_safetensors of 256 MiB over a small file. Round 1: save_pretrained of a
  // 128 MiB adapter over a saved folder. Everything is built before fork(): the child only
  // writes (OpenMP runtimes are not fork-safe).
  StateDict big = big_state(int64_t(1) << 26, 3.0);
  auto small = mlp();
  LoraConfig sc;
  sc.r = 2;
  sc.target_modules = {"lin0"};
  inject_adapter_in_model(sc, *small);
  save_pretrained(*small, dir / "adapter");
  fs::copy(dir / "adapter", dir / "ref");
  auto large = tools::build_host_model("mlp", nlohmann::json{{"in", 10}, {"hidden", 4000}, {"out", 2}});
  LoraConfig lc;
  lc.r = 4096;
  lc.target_modules = {"lin1"};
  inject_adapter_in_model(lc, *large);

  for (int round = 0; round < 2; ++round) {
    CAPTURE(round);
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      try {
        if (round == 0) io::save_safetensors(p, big);
        else save_pretrained(*large, dir / "adapter");
      } catch (...) {
        _exit(3);
      }
      _exit(0);
    }
    // Kill once this round's temporary file exists and has started to grow (round 0's killed
    // writer left its own temporary file in dir, so round 1 looks in dir/adapter only).
    const fs::path watch = round == 0 ? dir.path : dir.path / "adapter";
    bool killed = false;
    for (int i = 0; i < 20000 && !killed; ++i) {
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(watch, ec)) {
        std::string n = e.path().filename().string();
        if (n[0] == '.' && has(n, ".tmp.") && e.is_regular_file(ec) && e.file_size(ec) > 65536 && !ec) {
          kill(child, SIGKILL);
          killed = true;
          break;
        }
      }
      if (!killed) std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    int status = 0;
    waitpid(child, &status, 0);
    CHECK(killed);
    CHECK(WIFSIGNALED(status));
    if (round == 0) {
      CHECK(read_file(p) == old_bytes);
      CHECK(io::load_safetensors(p).at("w").to_vector<float>() == std::vector<float>(16, 1.f));
    } else {
      CHECK(read_file(dir / "adapter/adapter_model.safetensors") == read_file(dir / "ref/adapter_model.safetensors"));
      CHECK(read_file(dir / "adapter/adapter_config.json") == read_file(dir / "ref/adapter_config.json"));
      auto m = mlp();
      CHECK(error_of([&] { load_adapter(*m, dir / "adapter"); }) == "<no exception>");
    }
    // a killed process cannot clean up: only hidden temporary files remain, never the target
    for (const std::string& n : dir.leftovers()) CHECK((has(n, ".tmp.") || has(n, ".saving.")));
  }
}

// ===========================================================================
// Numeric faults.

TEST_CASE("DivergenceGuard: a rising loss or an exploding gradient stops a run after warm-up") {
  train::DivergenceGuard g(5);
  for (int s = 0; s < 20; ++s) CHECK(g.check(s, 2.0 - 0.02 * s, 1.0 + 0.01 * s) == "");
  // one noisy batch is not divergence (the loss is smoothed)
  CHECK(g.check(20, 5.0, 1.2) == "");
  std::string why;
  for (int s = 21; s < 60 && why.empty(); ++s) why = g.check(s, 40.0, 1.0);
  CHECK(has(why, "training diverged at step"));
  CHECK(has(why, "the smoothed loss"));
  train::DivergenceGuard h(5);
  for (int s = 0; s < 20; ++s) CHECK(h.check(s, 1.0, 2.0) == "");
  CHECK(has(h.check(20, 1.0, 500.0), "the gradient norm 500 is over 100x its recent median 2"));
  train::DivergenceGuard k(100);  // non-finite values stop at once, warm-up or not
  CHECK(has(k.check(0, std::nan(""), 1.0), "the loss became nan at step 1"));
  CHECK(has(k.check(0, 1.0, INFINITY), "the gradient norm became inf at step 1"));
  // warm-up: early rises are not judged
  train::DivergenceGuard w(10);
  CHECK(w.check(0, 1.0) == "");
  CHECK(w.check(1, 100.0) == "");
}

TEST_CASE("peft finetune stops a diverging run (learning rate 1e30) without writing an adapter (skipped: the peft program is not built)" *
          doctest::skip(!fs::exists(peft_exe()))) {
  std::string exe = peft_exe();
  TempDir dir;
  write_tiny_charlm(dir, /*nan_weights=*/false);
  std::string cmd = exe + " finetune --base " + (dir / "base.safetensors") + " --data " + (dir / "words.txt") +
                    " --out " + (dir / "out") + " --steps 40 --batch 8 --lr 1e30 > " + (dir / "log.txt") + " 2>&1";
  int rc = std::system(cmd.c_str());
  std::string log = read_file(dir / "log.txt");
  INFO("log: " << log);
  CHECK(WIFEXITED(rc));
  CHECK(WEXITSTATUS(rc) == 1);
  CHECK(has(log, "finetune: training diverged at step"));
  CHECK(has(log, "stopping (no checkpoint was written in this run); try a lower learning rate"));
  CHECK(!fs::exists(dir / "out/adapter_model.safetensors"));
}

TEST_CASE("peft finetune stops on a non-finite loss without writing an adapter (skipped: the peft program is not built)" *
          doctest::skip(!fs::exists(peft_exe()))) {
  std::string exe = peft_exe();
  TempDir dir;
  // A numeric fault in the base model (NaN weights) makes the very first loss NaN. (A huge
  // learning rate does not: the loss is a stable log-softmax and stays finite, if absurd.)
  write_tiny_charlm(dir, /*nan_weights=*/true);
  std::string cmd = exe + " finetune --base " + (dir / "base.safetensors") + " --data " + (dir / "words.txt") +
                    " --out " + (dir / "out") + " --steps 20 --batch 8 > " + (dir / "log.txt") + " 2>&1";
  int rc = std::system(cmd.c_str());
  std::string log = read_file(dir / "log.txt");
  INFO("log: " << log);
  CHECK(WIFEXITED(rc));
  CHECK(WEXITSTATUS(rc) == 1);
  CHECK(has(log, "finetune: the loss became nan at step 1; stopping (no checkpoint was written in this run)"));
  CHECK(!fs::exists(dir / "out/adapter_model.safetensors"));
}

TEST_CASE("errors come in kinds a caller can catch separately, with unchanged messages") {
  // an op's operands: ShapeError
  Tensor a = zeros({2, 3}), b = zeros({4, 5});
  CHECK_THROWS_AS(matmul(a, b), ShapeError);
  CHECK_THROWS_WITH_AS(matmul(a, b), doctest::Contains("[matmul] shapes [2, 3] and [4, 5]"), Error);
  // a name that is not there: KeyError
  nn::Linear lin(3, 2);
  CHECK_THROWS_AS(lin.param("nope"), KeyError);
  CHECK_THROWS_AS(lin.get_submodule("nope"), KeyError);
  StateDict sd;
  sd.set("weight", zeros({2, 3}));
  CHECK_THROWS_AS(lin.load_state_dict(sd), KeyError);  // bias missing
  sd.set("bias", zeros({5}));
  CHECK_THROWS_AS(lin.load_state_dict(sd), ShapeError);  // names fine, a size differs
  // malformed contents: FormatError
  CHECK_THROWS_AS(config_from_json(std::string("{\"peft_type\": ")), FormatError);
  CHECK_THROWS_AS(config_from_json(std::string("{\"peft_type\": 3}")), FormatError);
  const fs::path garbage = fs::temp_directory_path() / "peft_error_kinds_garbage.safetensors";
  {
    std::ofstream(garbage) << "this is not a safetensors file at all";
  }
  CHECK_THROWS_AS(io::load_safetensors(garbage.string()), FormatError);
  fs::remove(garbage);
  // the file system: IOError
  CHECK_THROWS_AS(io::write_file_atomic("/nonexistent-dir-for-peft-test/x.bin", "data"), IOError);
  CHECK_THROWS_AS(io::load_safetensors("/nonexistent-dir-for-peft-test/x.safetensors"), IOError);
  // every kind is still a peft::Error
  CHECK_THROWS_AS(lin.param("nope"), Error);
  CHECK(testing::error_of([&] { lin.param("nope"); }).find("has no parameter 'nope'") != std::string::npos);
}

// ===========================================================================
// set_peft_model_state_dict is all-or-nothing for every method: a checkpoint whose i-th
// tensor does not fit fails and leaves the model exactly as it was, for every i, including
// AdaLoRA's rank_pattern resize that runs before the tensors are loaded.

namespace {

// One checkpoint per method, saved from a model that holds the adapter, and a config to load it with.
struct MethodCase {
  const char* name;
  PeftConfigPtr config;
};

std::vector<MethodCase> all_or_nothing_cases() {
  std::vector<MethodCase> out;
  auto lora = std::make_shared<LoraConfig>();
  lora->r = 3;
  lora->target_modules = {"lin0", "lin1"};
  lora->modules_to_save = std::vector<std::string>{"lin2"};
  lora->bias = "lora_only";
  out.push_back({"LORA", lora});
  auto ia3 = std::make_shared<IA3Config>();
  ia3->target_modules = {"lin0", "lin1"};
  ia3->feedforward_modules = {"lin1"};
  out.push_back({"IA3", ia3});
  auto ada = std::make_shared<AdaLoraConfig>();
  ada->init_r = 4;
  ada->target_r = 2;
  ada->total_step = 10;
  ada->target_modules = {"lin0", "lin1"};
  // as the allocator leaves it: ranks 3 and 1 of 4
  ada->rank_pattern = AdaLoraConfig::RankPattern{{"lin0.lora_E", {true, false, true, true}},
                                                 {"lin1.lora_E", {false, false, true, false}}};
  out.push_back({"ADALORA rank_pattern", ada});
  return out;
}

}  // namespace

TEST_CASE("set_peft_model_state_dict fails on any bad tensor and leaves the model exactly as it was") {
  ScopedWarningHandler quiet;
  for (const auto& mc : all_or_nothing_cases()) {
    CAPTURE(mc.name);
    // the checkpoint, saved as PEFT names it (AdaLoRA's trimmed by rank_pattern)
    auto src = mlp();
    inject_adapter_in_model(*mc.config, *src, "default");
    peft_config(*src, "default")->inference_mode = false;
    StateDict ckpt = get_peft_model_state_dict(*src, "default");
    REQUIRE(ckpt.size() >= 2);
    // it loads cleanly into a fresh model (so each failure below is the injected one)
    {
      auto ok = mlp();
      inject_adapter_in_model(*mc.config, *ok, "default");
      nn::LoadResult r = set_peft_model_state_dict(*ok, ckpt, "default");
      CHECK(r.unexpected_keys.empty());
    }
    size_t index = 0;
    for (const auto& [bad_key, bad_value] : ckpt) {
      CAPTURE(bad_key);
      StateDict broken;
      for (const auto& [k, v] : ckpt) broken.set(k, k == bad_key ? zeros({v.numel() + 1}) : v);
      auto m = mlp();
      inject_adapter_in_model(*mc.config, *m, "default");
      const std::string before = snapshot(*m);
      CHECK_HAS(error_of([&] { set_peft_model_state_dict(*m, broken, "default"); }), "size mismatch");
      CHECK(snapshot(*m) == before);
      ++index;
    }
    CHECK(index == ckpt.size());
  }
  // a rank_pattern entry that does not fit fails before any layer is resized
  auto ada = std::dynamic_pointer_cast<AdaLoraConfig>(all_or_nothing_cases()[2].config->clone());
  ada->rank_pattern->push_back({"lin1.lora_E", {true}});  // rank 1 of 4 entries: wrong length
  ada->rank_pattern->front().second = {true, true, false, false};
  auto m = mlp();
  inject_adapter_in_model(*ada, *m, "default");
  const std::string before = snapshot(*m);
  CHECK_HAS(error_of([&] { set_peft_model_state_dict(*m, StateDict{}, "default"); }), "rank_pattern entry");
  CHECK(snapshot(*m) == before);
}

// ===========================================================================
// Memory: injection wraps the base layers and allocates only the adapter's own tensors.

TEST_CASE("injecting LoRA r=8 allocates no more than the adapter's bytes plus 1 MiB, at peak as well") {
  // 3 Linear layers of 1024x1024 (12 MiB of float32 weights): one copied base weight is 4 MiB
  auto m = tools::build_host_model("mlp", nlohmann::json{{"in", 1024}, {"hidden", 1024}, {"out", 1024}});
  std::vector<const void*> base_data;
  for (const auto& [n, p] : m->named_parameters()) base_data.push_back(p.raw_data());
  LoraConfig c;
  c.r = 8;
  c.target_modules = {"lin0", "lin1", "lin2"};
  const size_t before = cpu_allocated_bytes();
  reset_cpu_allocated_peak();
  inject_adapter_in_model(c, *m);
  const size_t after = cpu_allocated_bytes(), peak = cpu_allocated_peak_bytes();
  size_t adapter = 0;
  for (const auto& [n, t] : get_peft_model_state_dict(*m)) adapter += t.nbytes();
  CHECK(adapter == 3 * 8 * (1024 + 1024) * 4);
  const size_t slack = size_t(1) << 20;
  INFO("before " << before << ", after " << after << ", peak " << peak << ", adapter " << adapter);
  CHECK(after <= before + adapter + slack);
  CHECK(peak <= before + adapter + slack);
  // the base weights are the same storage, wrapped, not copies
  size_t i = 0;
  for (const auto& [n, p] : m->named_parameters())
    if (n.find("lora_") == std::string::npos) {
      REQUIRE(i < base_data.size());
      CHECK(p.raw_data() == base_data[i++]);
    }
  CHECK(i == base_data.size());
}
