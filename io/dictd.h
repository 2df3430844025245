#pragma once
// Reading a dictd database (the format of Debian's dict-* packages): NAME.index lists
// "headword<TAB>offset<TAB>length" with offsets and lengths in dictd's base-64 digits, into
// NAME.dict or the gzip-compatible NAME.dict.dz.
#include <string>
#include <vector>

namespace peft::io {

struct DictdEntry {
  std::string headword;  // as the index spells it (dictd folds case and drops punctuation)
  std::string text;      // the entry's bytes in the .dict file
};

// path: the database without extension (/usr/share/dictd/devil), or its .index, .dict or
// .dict.dz file. Entries in index order; dictd's own "00-database-*" entries are left out.
// Errors name the file and, for the index, the line.
std::vector<DictdEntry> read_dictd(const std::string& path);

// dictd's base-64 number, most significant digit first ("BdqM" -> 383628); throws on a
// character outside its alphabet.
uint64_t dictd_b64_decode(const std::string& digits);

}  // namespace peft::io
