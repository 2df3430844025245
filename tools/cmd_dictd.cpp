// `peft dictd-data`: supervised fine-tuning examples from a dictd dictionary (Debian's dict-*
// packages), one chat exchange per entry: "Define WORD ..." -> the entry's first paragraph.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/atomic_file.h"
#include "io/dictd.h"
#include "runtime/error.h"
#include "runtime/generator.h"
#include "tools/args.h"
#include "tools/cli.h"

namespace peft::cli {
namespace {

const char* kHelp = R"(usage: peft dictd-data --dict PATH --out DIR [--heldout-fraction F] [--seed S] [--prompt TEXT]

Builds chat fine-tuning data from a dictd database (PATH: /usr/share/dictd/devil, or its
.index / .dict / .dict.dz file; Debian's dict-devil is Ambrose Bierce's Devil's Dictionary).
Each entry whose first line reads "WORD, part-of-speech. ..." becomes one example:
  {"messages": [{"role": "user", "content": PROMPT with {word} replaced by WORD},
                {"role": "assistant", "content": the entry's first paragraph, on one line}]}
A seeded shuffle holds out a fraction F (default 0.1, seed 0). Writes DIR/train.jsonl and
DIR/heldout.jsonl (for `peft finetune --data ... --eval ...`).

  --prompt TEXT   default "Define {word} the way the Devil's Dictionary would."
)";

struct Example {
  std::string word, definition;
};

// "ABASEMENT, n.  A decent and customary mental attitude in the presence\nof wealth..." ->
// {"ABASEMENT", "ABASEMENT, n. A decent and customary ..."}: the first paragraph with its
// line breaks and runs of spaces folded; nullopt when the first line has no "WORD, ".
std::optional<Example> parse_entry(const std::string& text) {
  const size_t para_end = std::min(text.find("\n\n"), text.size());
  const std::string para = text.substr(0, para_end);
  const size_t comma = para.find(", ");
  const size_t first_line_end = std::min(para.find('\n'), para.size());
  if (comma == std::string::npos || comma == 0 || comma > first_line_end) return std::nullopt;
  Example e;
  e.word = para.substr(0, comma);
  bool space = false;
  for (char c : para) {
    const bool ws = c == ' ' || c == '\n' || c == '\t' || c == '\r';
    if (ws) {
      space = !e.definition.empty();
      continue;
    }
    if (space) e.definition += ' ';
    space = false;
    e.definition += c;
  }
  return e;
}

std::string to_jsonl(const std::vector<Example>& examples, const std::string& prompt) {
  std::string out;
  for (const auto& e : examples) {
    std::string p = prompt;
    for (size_t at = p.find("{word}"); at != std::string::npos; at = p.find("{word}", at + e.word.size()))
      p.replace(at, 6, e.word);
    nlohmann::json line = {{"messages", nlohmann::json::array({{{"role", "user"}, {"content", p}},
                                                               {{"role", "assistant"}, {"content", e.definition}}})}};
    out += line.dump() + "\n";
  }
  return out;
}

int run_dictd_data(const std::vector<std::string>& argv) {
  Args a(argv, {"dict", "out", "heldout-fraction", "seed", "prompt"});
  if (a.help) {
    std::printf("%s", kHelp);
    return 0;
  }
  if (!a.positional.empty()) throw UsageError{"unexpected argument '" + a.positional[0] + "'"};
  const std::string dict = a.required("dict"), out = a.required("out");
  const double fraction = a.get_double("heldout-fraction", 0.1);
  if (!(fraction > 0 && fraction < 1)) throw UsageError{"--heldout-fraction must lie strictly between 0 and 1"};
  const std::string prompt = a.get("prompt", "Define {word} the way the Devil's Dictionary would.");
  if (prompt.find("{word}") == std::string::npos) throw UsageError{"--prompt must contain {word}"};

  std::vector<Example> all;
  size_t skipped = 0;
  for (const auto& entry : io::read_dictd(dict)) {
    if (auto e = parse_entry(entry.text)) all.push_back(std::move(*e));
    else ++skipped;
  }
  const size_t held = size_t(std::llround(fraction * double(all.size())));
  if (held == 0 || held >= all.size())
    fail("dictd-data: ", all.size(), " entries cannot be split with --heldout-fraction ", fraction);
  Generator g(uint64_t(a.get_int("seed", 0)));
  for (size_t i = all.size() - 1; i > 0; --i) {
    const size_t j = size_t(g.next_double() * double(i + 1));
    std::swap(all[i], all[std::min(j, i)]);
  }
  const std::vector<Example> heldout(all.begin(), all.begin() + ptrdiff_t(held)), train(all.begin() + ptrdiff_t(held), all.end());
  std::filesystem::create_directories(out);
  io::write_file_atomic(out + "/train.jsonl", to_jsonl(train, prompt));
  io::write_file_atomic(out + "/heldout.jsonl", to_jsonl(heldout, prompt));
  std::printf("dictd-data: %zu entries (%zu without a 'WORD, ' first line skipped): %zu train, %zu held out -> %s/{train,heldout}.jsonl\n",
              all.size(), skipped, train.size(), heldout.size(), out.c_str());
  return 0;
}

Registrar reg({"dictd-data", "chat fine-tuning data from a dictd dictionary (e.g. the Devil's Dictionary)", run_dictd_data});

}  // namespace
}  // namespace peft::cli
