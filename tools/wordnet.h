// (gloss -> lemma) pairs from WordNet's database files (Debian's wordnet-base,
// /usr/share/wordnet/data.{noun,verb,adj}), their split and TSV files, for the
// definition-search fine-tuning job (peft wordnet-pairs, peft finetune-embed).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace peft::cli {

struct TextPair {
  std::string query;  // the gloss's first clause
  std::string doc;    // the synset's first lemma, '_' as spaces
  std::string id;     // "n:00001740" (part of speech and synset offset)
};

// One pair per synset of data.noun, data.verb and data.adj; identical (query, doc) pairs
// once. A malformed line is a peft::Error naming the file and line.
std::vector<TextPair> read_wordnet_pairs(const std::string& wordnet_dir);

// Seeded Fisher-Yates shuffle (peft's Philox generator), then the first `heldout` pairs are
// held out and the rest are the training set.
void split_pairs(std::vector<TextPair> all, size_t heldout, uint64_t seed, std::vector<TextPair>& train,
                 std::vector<TextPair>& held);

// TSV with a header line "id\tquery\tdoc"; tabs and newlines inside fields are spaces.
void write_pairs_tsv(const std::string& path, const std::vector<TextPair>& pairs);
std::vector<TextPair> read_pairs_tsv(const std::string& path);

}  // namespace peft::cli
