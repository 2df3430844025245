// Post-processors of tokenizer.json (Rust `tokenizers` src/processors/), for single sequences.
#include <unordered_map>

#include "io/tokenizer/internal.h"

namespace peft::tok {
namespace {

void append_special(Encoding& out, const std::vector<int64_t>& ids,
                    const std::vector<std::string>& toks, int64_t type_id) {
  for (size_t i = 0; i < ids.size(); ++i) {
    out.ids.push_back(ids[i]);
    out.tokens.push_back(toks[i]);
    out.type_ids.push_back(type_id);
    out.attention_mask.push_back(1);
    out.special_tokens_mask.push_back(1);
  }
}
void append_seq(Encoding& out, Encoding& e, std::optional<int64_t> type_id) {
  for (size_t i = 0; i < e.ids.size(); ++i) {
    out.ids.push_back(e.ids[i]);
    out.tokens.push_back(std::move(e.tokens[i]));
    out.type_ids.push_back(type_id ? *type_id : e.type_ids[i]);
    out.attention_mask.push_back(e.attention_mask[i]);
    out.special_tokens_mask.push_back(e.special_tokens_mask[i]);
  }
}

class Template : public PostProcessor {
 public:
  struct Special {
    std::vector<int64_t> ids;
    std::vector<std::string> tokens;
  };
  struct Item {
    bool is_seq;
    std::string special;  // id of the special token
    int64_t type_id;
  };

  Template(const json& j, const std::string& path, const Ctx& ctx) {
    const json& sp = field(j, "special_tokens", path, ctx);
    if (!sp.is_object()) ctx.fail("field '", path, ".special_tokens' must be an object");
    for (auto it = sp.begin(); it != sp.end(); ++it) {
      std::string where = path + ".special_tokens." + it.key();
      const json& ids = field(it.value(), "ids", where, ctx);
      const json& toks = field(it.value(), "tokens", where, ctx);
      if (!ids.is_array() || !toks.is_array() || ids.size() != toks.size()) {
        ctx.fail("field '", where, "': ids and tokens must be arrays of the same length");
      }
      Special s;
      for (const json& v : ids) {
        if (!v.is_number_unsigned()) ctx.fail("field '", where, ".ids' must hold non-negative integers");
        s.ids.push_back(v.get<int64_t>());
      }
      for (const json& v : toks) {
        if (!v.is_string()) ctx.fail("field '", where, ".tokens' must hold strings");
        s.tokens.push_back(v.get<std::string>());
      }
      specials_[it.key()] = std::move(s);
    }
    parse_template(field(j, "single", path, ctx), path + ".single", ctx);
    for (const Item& it : single_) {
      if (!it.is_seq) added_ += specials_.at(it.special).ids.size();
    }
  }
  size_t added_tokens() const override { return added_; }
  void process(Encoding& e, bool add_special) const override {
    Encoding out;
    for (const Item& it : single_) {
      if (it.is_seq) {
        append_seq(out, e, it.type_id);
      } else if (add_special) {
        const Special& s = specials_.at(it.special);
        append_special(out, s.ids, s.tokens, it.type_id);
      }
    }
    e = std::move(out);
  }

 private:
  void add_piece(const std::string& text, const std::string& where, const Ctx& ctx) {
    std::string id = text;
    int64_t type_id = 0;
    size_t colon = text.find(':');
    if (colon != std::string::npos) {
      id = text.substr(0, colon);
      try {
        type_id = std::stoll(text.substr(colon + 1));
      } catch (...) {
        ctx.fail("cannot build a template piece from \"", text, "\" (", where, ")");
      }
    }
    if (!id.empty() && id[0] == '$') {
      std::string r = id.substr(1);
      if (r == "B" || r == "b") ctx.fail("'", where, "': the single template uses sequence B");
      if (!(r.empty() || r == "A" || r == "a")) {
        try {
          type_id = std::stoll(r);
        } catch (...) {
          ctx.fail("cannot build a template piece from \"", text, "\" (", where, ")");
        }
      }
      single_.push_back({true, "", type_id});
    } else {
      add_special(id, type_id, where, ctx);
    }
  }
  void add_special(const std::string& id, int64_t type_id, const std::string& where, const Ctx& ctx) {
    if (!specials_.count(id)) {
      ctx.fail("missing special token '", id, "' in '", where, "' (not in special_tokens)");
    }
    single_.push_back({false, id, type_id});
  }
  void parse_template(const json& t, const std::string& path, const Ctx& ctx) {
    if (t.is_string()) {  // "[CLS] $A [SEP]"
      std::string s = t.get<std::string>(), w;
      for (size_t i = 0; i <= s.size(); ++i) {
        if (i == s.size() || s[i] == ' ') {
          if (!w.empty()) add_piece(w, path, ctx);
          w.clear();
        } else {
          w += s[i];
        }
      }
      return;
    }
    if (!t.is_array()) ctx.fail("field '", path, "' must be an array of pieces");
    for (size_t i = 0; i < t.size(); ++i) {
      const json& p = t[i];
      std::string where = path + "[" + std::to_string(i) + "]";
      if (p.is_string()) {
        add_piece(p.get<std::string>(), where, ctx);
      } else if (p.is_object() && p.contains("Sequence")) {
        const json& q = p["Sequence"];
        std::string id = get_string(q, "id", where + ".Sequence", ctx);
        if (id == "B") ctx.fail("'", where, "': the single template uses sequence B");
        if (id != "A") ctx.fail("field '", where, ".Sequence.id' must be \"A\" or \"B\"");
        single_.push_back({true, "", static_cast<int64_t>(get_uint(q, "type_id", where + ".Sequence", ctx))});
      } else if (p.is_object() && p.contains("SpecialToken")) {
        const json& q = p["SpecialToken"];
        add_special(get_string(q, "id", where + ".SpecialToken", ctx),
                    static_cast<int64_t>(get_uint(q, "type_id", where + ".SpecialToken", ctx)), where, ctx);
      } else {
        ctx.fail("field '", where, "' must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
    }
  }

  std::unordered_map<std::string, Special> specials_;
  std::vector<Item> single_;
  size_t added_ = 0;
};

// BertProcessing and RobertaProcessing on a single sequence: cls + A + sep.
class ClsSep : public PostProcessor {
 public:
  ClsSep(const json& j, const std::string& path, const Ctx& ctx) {
    read(j, "cls", path, ctx, cls_tok_, cls_id_);
    read(j, "sep", path, ctx, sep_tok_, sep_id_);
  }
  size_t added_tokens() const override { return 2; }
  void process(Encoding& e, bool add_special) const override {
    if (!add_special) return;
    Encoding out;
    append_special(out, {cls_id_}, {cls_tok_}, 0);
    append_seq(out, e, std::nullopt);
    append_special(out, {sep_id_}, {sep_tok_}, 0);
    e = std::move(out);
  }

 private:
  static void read(const json& j, const char* key, const std::string& path, const Ctx& ctx,
                   std::string& tok, int64_t& id) {
    const json& v = field(j, key, path, ctx);
    if (!v.is_array() || v.size() != 2 || !v[0].is_string() || !v[1].is_number_unsigned()) {
      ctx.fail("field '", path, ".", key, "' must be [token, id]");
    }
    tok = v[0].get<std::string>();
    id = v[1].get<int64_t>();
  }
  std::string cls_tok_, sep_tok_;
  int64_t cls_id_ = 0, sep_id_ = 0;
};

class NoOp : public PostProcessor {  // ByteLevel: offsets only
 public:
  size_t added_tokens() const override { return 0; }
  void process(Encoding&, bool) const override {}
};

class SequencePP : public PostProcessor {
 public:
  explicit SequencePP(std::vector<std::unique_ptr<PostProcessor>> v) : v_(std::move(v)) {}
  size_t added_tokens() const override {
    size_t n = 0;
    for (const auto& p : v_) n += p->added_tokens();
    return n;
  }
  void process(Encoding& e, bool add_special) const override {
    for (const auto& p : v_) p->process(e, add_special);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> v_;
};

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const json& j, const std::string& path,
                                                   const Ctx& ctx) {
  std::string type = type_of(j, path, ctx);
  if (type == "TemplateProcessing") return std::make_unique<Template>(j, path, ctx);
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    return std::make_unique<ClsSep>(j, path, ctx);
  }
  if (type == "ByteLevel") return std::make_unique<NoOp>();
  if (type == "Sequence") {
    const json& list = field(j, "processors", path, ctx);
    if (!list.is_array()) ctx.fail("field '", path, ".processors' must be an array");
    std::vector<std::unique_ptr<PostProcessor>> v;
    for (size_t i = 0; i < list.size(); ++i) {
      v.push_back(make_post_processor(list[i], path + ".processors[" + std::to_string(i) + "]", ctx));
    }
    return std::make_unique<SequencePP>(std::move(v));
  }
  ctx.fail("post-processor type '", type, "' (", path,
           ") is not supported; supported: TemplateProcessing, BertProcessing, RobertaProcessing, "
           "ByteLevel, Sequence");
}

}  // namespace peft::tok
