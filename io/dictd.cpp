#include "io/dictd.h"

#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "runtime/error.h"

namespace peft::io {
namespace {

namespace fs = std::filesystem;

std::string read_dict_text(const std::string& dict, const std::string& dz) {
  if (fs::exists(dict)) {
    std::ifstream in(dict, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    if (!in) fail("dictd: cannot read ", dict);
    return ss.str();
  }
  // dictzip is gzip with a random-access table in an extra field: zlib reads it whole
  gzFile f = gzopen(dz.c_str(), "rb");
  if (!f) fail("dictd: cannot open ", dz, " (nor ", dict, ")");
  std::string text;
  char buf[1 << 16];
  int n = 0;
  while ((n = gzread(f, buf, sizeof buf)) > 0) text.append(buf, size_t(n));
  int err = 0;
  const std::string why = n < 0 ? gzerror(f, &err) : "";
  gzclose(f);
  if (n < 0) fail("dictd: ", dz, " is not a readable gzip/dictzip file: ", why);
  return text;
}

}  // namespace

uint64_t dictd_b64_decode(const std::string& digits) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  if (digits.empty() || digits.size() > 10) fail("dictd: '", digits, "' is not a base-64 offset or length");
  uint64_t v = 0;
  for (char c : digits) {
    const char* p = c ? std::strchr(alphabet, c) : nullptr;
    if (!p) fail("dictd: '", digits, "' is not a base-64 offset or length");
    v = v * 64 + uint64_t(p - alphabet);
  }
  return v;
}

std::vector<DictdEntry> read_dictd(const std::string& path) {
  std::string base = path;
  for (const char* ext : {".dict.dz", ".index", ".dict"})
    if (base.size() > std::strlen(ext) && base.compare(base.size() - std::strlen(ext), std::string::npos, ext) == 0) {
      base.resize(base.size() - std::strlen(ext));
      break;
    }
  const std::string index = base + ".index";
  std::ifstream in(index);
  if (!in) fail("dictd: cannot read ", index);
  const std::string text = read_dict_text(base + ".dict", base + ".dict.dz");
  std::vector<DictdEntry> out;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty()) continue;
    const size_t t1 = line.find('\t'), t2 = t1 == std::string::npos ? t1 : line.find('\t', t1 + 1);
    if (t2 == std::string::npos)
      fail(index, ":", lineno, ": expected 'headword<TAB>offset<TAB>length', got '", line.substr(0, 80), "'");
    std::string word = line.substr(0, t1);
    uint64_t off = 0, len = 0;
    try {
      off = dictd_b64_decode(line.substr(t1 + 1, t2 - t1 - 1));
      len = dictd_b64_decode(line.substr(t2 + 1));
    } catch (const Error& e) {
      fail(index, ":", lineno, ": ", e.what());
    }
    if (off > text.size() || len > text.size() - off)
      fail(index, ":", lineno, ": entry '", word, "' at bytes [", off, ", ", off + len, ") lies outside the ",
           text.size(), "-byte dictionary text");
    if (word.rfind("00database", 0) == 0 || word.rfind("00-database", 0) == 0) continue;
    out.push_back({std::move(word), text.substr(size_t(off), size_t(len))});
  }
  return out;
}

}  // namespace peft::io
