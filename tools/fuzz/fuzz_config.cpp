// libFuzzer target: adapter_config.json parsing. The text goes through config_from_json
// (peft_type picks the class) and through each config class's own parser
// (LoraConfig / AdaLoraConfig / IA3Config ::from_json_string, which validate()).
// Every input must parse or throw peft::Error; a config that parses must survive a
// round trip through its own adapter_config.json text unchanged.
#include "adapters/adalora/config.h"
#include "adapters/ia3/config.h"
#include "adapters/lora/config.h"
#include "tools/fuzz/fuzz_common.h"

using namespace peft;

namespace {

template <class Parse>
void try_parse(const std::string& text, Parse parse) {
  PeftConfigPtr c;
  try {
    c = parse(text);
  } catch (const Error&) {
    return;
  }
  std::string saved;
  try {
    saved = c->to_json_string();
  } catch (const Error& e) {
    fuzz::die(std::string("a parsed config cannot be written: ") + e.what());
  }
  PeftConfigPtr again;
  try {
    again = parse(saved);
  } catch (const Error& e) {
    fuzz::die(std::string("a written config does not parse again: ") + e.what() + "\n" + saved);
  }
  if (again->to_json_string() != saved) fuzz::die("round trip changed the config:\n" + saved);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::silence_warnings();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try_parse(text, [](const std::string& t) { return config_from_json(t); });
  try_parse(text, [](const std::string& t) -> PeftConfigPtr { return LoraConfig::from_json_string(t); });
  try_parse(text, [](const std::string& t) -> PeftConfigPtr { return AdaLoraConfig::from_json_string(t); });
  try_parse(text, [](const std::string& t) -> PeftConfigPtr { return IA3Config::from_json_string(t); });
  return 0;
}
