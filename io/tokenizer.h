// peft::Tokenizer: loads a Hugging Face `tokenizer.json` and encodes/decodes text with the
// same ids as the Rust `tokenizers` library (or the vocabulary of a GGUF file with llama.cpp's
// ids, from_gguf) (the pipeline added tokens → normalizer →
// pre-tokenizer → model → post-processor → truncation/padding, and the decoder chain).
//
// Supported components (anything else in a file is a peft::Error naming the component and
// the file, never a silent difference):
//   normalizers:     BertNormalizer, Lowercase, NFC, NFD, NFKC, NFKD, StripAccents, Strip,
//                    Replace, Prepend, Sequence
//   pre-tokenizers:  BertPreTokenizer, ByteLevel, Metaspace, Whitespace, WhitespaceSplit,
//                    Punctuation, Digits, Split, Sequence
//   models:          BPE (byte_fallback, fuse_unk, continuing_subword_prefix,
//                    end_of_word_suffix, ignore_merges), WordPiece
//   post-processors: TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence
//   decoders:        WordPiece, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip,
//                    BPEDecoder, Sequence
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace peft::io {
class GGUFFile;
}

namespace peft {

// One encoded sequence; every vector has the same length.
struct Encoding {
  std::vector<int64_t> ids;
  std::vector<int64_t> type_ids;
  std::vector<int64_t> attention_mask;       // 0 on padding
  std::vector<int64_t> special_tokens_mask;  // 1 on tokens added by the post-processor / padding
  std::vector<std::string> tokens;
  size_t size() const { return ids.size(); }
};

struct TruncationParams {
  enum class Strategy { LongestFirst, OnlyFirst, OnlySecond };
  enum class Direction { Right, Left };
  size_t max_length = 512;
  size_t stride = 0;
  Strategy strategy = Strategy::LongestFirst;
  Direction direction = Direction::Right;
};

struct PaddingParams {
  enum class Direction { Right, Left };
  std::optional<size_t> fixed_length;  // nullopt: BatchLongest
  std::optional<size_t> pad_to_multiple_of;
  Direction direction = Direction::Right;
  int64_t pad_id = 0;
  int64_t pad_type_id = 0;
  std::string pad_token = "[PAD]";
};

class Tokenizer {
 public:
  // Throws peft::Error naming the file and the field for unreadable/malformed files and for
  // components or options that are not supported.
  static Tokenizer from_file(const std::string& path);
  // `origin` names the text in error messages.
  static Tokenizer from_json_text(const std::string& text,
                                  const std::string& origin = "<tokenizer.json text>");
  // The tokenizer of a GGUF file (io/gguf.h), token for token llama.cpp's (a port of its
  // llama-vocab.cpp, io/tokenizer/gguf_vocab.cpp): `tokenizer.ggml.model` "llama" (SentencePiece),
  // "gpt2" (byte-level BPE; the pre-tokenizer is named by `tokenizer.ggml.pre`, an unknown name
  // is a peft::FormatError naming it) or "gemma4". encode(text, true) is llama_tokenize with
  // add_special = true and parse_special = true, what `llama-tokenize -m FILE -p TEXT --ids`
  // prints: BOS (and EOS) where the file asks for them (tokenizer.ggml.add_bos_token, else
  // llama.cpp's default for the vocabulary type), control and user-defined tokens matched in the
  // text; encode(text, false) is the same without BOS/EOS (--no-bos). The special tokens mask
  // marks the BOS/EOS. decode is llama_detokenize(remove_special = false, unparse_special =
  // !skip_special_tokens): control tokens print nothing unless asked for, unknown ids are
  // skipped. Truncation and padding apply as for tokenizer.json. The file may be closed after.
  static Tokenizer from_gguf(const io::GGUFFile& file);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // `text` must be valid UTF-8 (peft::Error naming the byte offset otherwise). Applies the
  // file's truncation and padding (a fixed padding length pads a single encoding too).
  Encoding encode(const std::string& text, bool add_special_tokens = true) const;
  // GGUF vocabularies: llama_tokenize's parse_special. false leaves control tokens written in the
  // text as plain text (llama-perplexity tokenizes so); encode() parses them (llama-tokenize's
  // default). A tokenizer.json tokenizer takes only parse_special = true.
  Encoding encode(const std::string& text, bool add_special_tokens, bool parse_special) const;
  // Encodes each text, then pads the batch (BatchLongest pads to the longest one).
  std::vector<Encoding> encode_batch(const std::vector<std::string>& texts,
                                     bool add_special_tokens = true) const;
  // The same with these truncation / padding settings instead of the file's.
  std::vector<Encoding> encode_batch(const std::vector<std::string>& texts, bool add_special_tokens,
                                     const std::optional<TruncationParams>& truncation,
                                     const std::optional<PaddingParams>& padding) const;
  // Unknown ids are skipped (as the Rust library does).
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const;
  std::vector<std::string> decode_batch(const std::vector<std::vector<int64_t>>& batch,
                                        bool skip_special_tokens = true) const;

  std::optional<int64_t> token_to_id(const std::string& token) const;
  std::optional<std::string> id_to_token(int64_t id) const;
  // With added tokens: the model's vocabulary plus the added tokens it lacks.
  size_t vocab_size(bool with_added_tokens = true) const;

  const std::optional<TruncationParams>& truncation() const;
  const std::optional<PaddingParams>& padding() const;
  void set_truncation(std::optional<TruncationParams> t);
  void set_padding(std::optional<PaddingParams> p);

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Checks one reference case folder (`tokenizer.json` + `case.json` with `cases`:
// [{text, ids, ids_no_special, decoded}]): every case's ids (with and without special
// tokens) and decoded text must be equal. Appends one line per failure (and a summary) to
// `report`; returns the number of failures (a file that cannot be loaded counts as one).
int run_tokenizer_case(const std::string& case_dir, std::string& report);

}  // namespace peft
