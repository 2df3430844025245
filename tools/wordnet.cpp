#include "tools/wordnet.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "io/atomic_file.h"
#include "runtime/error.h"
#include "runtime/generator.h"

namespace peft::cli {

namespace {

std::string clean_field(std::string s) {
  for (char& c : s)
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
  return s;
}

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

}  // namespace

std::vector<TextPair> read_wordnet_pairs(const std::string& dir) {
  std::vector<TextPair> out;
  std::set<std::pair<std::string, std::string>> seen;
  for (const char* pos : {"noun", "verb", "adj"}) {
    const std::string path = (std::filesystem::path(dir) / (std::string("data.") + pos)).string();
    std::ifstream in(path);
    if (!in) fail("wordnet: cannot read ", path, " (Debian: apt-get install wordnet-base)");
    std::string line;
    int64_t lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      if (line.empty() || line[0] == ' ') continue;  // the license header lines start with two spaces
      // synset_offset lex_filenum ss_type w_cnt(hex) word lex_id ... | gloss
      std::istringstream ss(line);
      std::string offset, lexfile, type, wcnt, word;
      if (!(ss >> offset >> lexfile >> type >> wcnt >> word))
        fail("wordnet: ", path, " line ", lineno, " is not a synset line");
      const size_t bar = line.find(" | ");
      if (bar == std::string::npos) continue;  // no gloss
      std::string gloss = line.substr(bar + 3);
      const size_t semi = gloss.find(';');
      if (semi != std::string::npos) gloss = gloss.substr(0, semi);
      gloss = trim(gloss);
      // adjective markers: "word(a)", "word(p)", "word(ip)"
      const size_t paren = word.find('(');
      if (paren != std::string::npos) word = word.substr(0, paren);
      for (char& c : word)
        if (c == '_') c = ' ';
      if (gloss.empty() || word.empty()) continue;
      if (!seen.insert({gloss, word}).second) continue;
      out.push_back({clean_field(gloss), clean_field(word), std::string(1, pos[0]) + ":" + offset});
    }
  }
  if (out.empty()) fail("wordnet: no synsets found in ", dir);
  return out;
}

void split_pairs(std::vector<TextPair> all, size_t heldout, uint64_t seed, std::vector<TextPair>& train,
                 std::vector<TextPair>& held) {
  if (heldout >= all.size()) fail("wordnet: --heldout ", heldout, " leaves no training pairs (", all.size(), " in all)");
  Generator g(seed);
  for (size_t i = all.size() - 1; i > 0; --i) {
    const size_t j = size_t(g.next_double() * double(i + 1));
    std::swap(all[i], all[std::min(j, i)]);
  }
  held.assign(all.begin(), all.begin() + ptrdiff_t(heldout));
  train.assign(all.begin() + ptrdiff_t(heldout), all.end());
}

void write_pairs_tsv(const std::string& path, const std::vector<TextPair>& pairs) {
  std::string text = "id\tquery\tdoc\n";
  for (const auto& p : pairs) text += p.id + '\t' + clean_field(p.query) + '\t' + clean_field(p.doc) + '\n';
  io::write_file_atomic(path, text);
}

std::vector<TextPair> read_pairs_tsv(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("cannot read ", path);
  std::vector<TextPair> out;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (lineno == 1 && line.rfind("id\t", 0) == 0) continue;
    if (line.empty()) continue;
    const size_t a = line.find('\t'), b = a == std::string::npos ? a : line.find('\t', a + 1);
    if (b == std::string::npos) fail(path, " line ", lineno, ": expected three tab-separated fields (id, query, doc)");
    out.push_back({line.substr(a + 1, b - a - 1), line.substr(b + 1), line.substr(0, a)});
    if (out.back().query.empty() || out.back().doc.empty()) fail(path, " line ", lineno, ": empty query or doc");
  }
  if (out.empty()) fail(path, " holds no pairs");
  return out;
}

}  // namespace peft::cli
