// Chat templates as llama.cpp's src/llama-chat.cpp detects and renders them (io/chat_template.h).
#include "io/chat_template.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <regex>
#include <sstream>

#include "runtime/error.h"

namespace peft {

namespace {

enum class Format {
  Unknown, ChatML, Llama2, Llama2Sys, Llama2SysBos, Llama2SysStrip, MistralV1, MistralV3, MistralV3Tekken,
  MistralV7, MistralV7Tekken, Phi3, Phi4, Falcon3, Zephyr, Monarch, Gemma, Orion, OpenChat, Vicuna, VicunaOrca,
  DeepSeek, DeepSeek2, DeepSeek3, DeepSeekOcr, CommandR, Llama3, ChatGLM3, ChatGLM4, GLMEdge, MiniCPM, Exaone3,
  Exaone4, ExaoneMoe, RwkvWorld, Granite3, Granite40, Granite41, GigaChat, Megrez, Yandex, Bailing, BailingThink,
  Bailing2, Llama4, SmolVLM, Dots1, HunyuanMoe, OpenAIMoe, HunyuanDense, HunyuanVL, KimiK2, SeedOss, Grok2,
  PanguEmbed, SolarOpen,
};

// llama.cpp's LLM_CHAT_TEMPLATES: the names a template may be given as.
const std::map<std::string, Format>& named_formats() {
  static const std::map<std::string, Format> m = {
      {"chatml", Format::ChatML}, {"llama2", Format::Llama2}, {"llama2-sys", Format::Llama2Sys},
      {"llama2-sys-bos", Format::Llama2SysBos}, {"llama2-sys-strip", Format::Llama2SysStrip},
      {"mistral-v1", Format::MistralV1}, {"mistral-v3", Format::MistralV3},
      {"mistral-v3-tekken", Format::MistralV3Tekken}, {"mistral-v7", Format::MistralV7},
      {"mistral-v7-tekken", Format::MistralV7Tekken}, {"phi3", Format::Phi3}, {"phi4", Format::Phi4},
      {"falcon3", Format::Falcon3}, {"zephyr", Format::Zephyr}, {"monarch", Format::Monarch},
      {"gemma", Format::Gemma}, {"orion", Format::Orion}, {"openchat", Format::OpenChat},
      {"vicuna", Format::Vicuna}, {"vicuna-orca", Format::VicunaOrca}, {"deepseek", Format::DeepSeek},
      {"deepseek2", Format::DeepSeek2}, {"deepseek3", Format::DeepSeek3}, {"deepseek-ocr", Format::DeepSeekOcr},
      {"command-r", Format::CommandR}, {"llama3", Format::Llama3}, {"chatglm3", Format::ChatGLM3},
      {"chatglm4", Format::ChatGLM4}, {"glmedge", Format::GLMEdge}, {"minicpm", Format::MiniCPM},
      {"exaone3", Format::Exaone3}, {"exaone4", Format::Exaone4}, {"exaone-moe", Format::ExaoneMoe},
      {"rwkv-world", Format::RwkvWorld}, {"granite", Format::Granite3}, {"granite-4.0", Format::Granite40},
      {"granite-4.1", Format::Granite41}, {"gigachat", Format::GigaChat}, {"megrez", Format::Megrez},
      {"yandex", Format::Yandex}, {"bailing", Format::Bailing}, {"bailing-think", Format::BailingThink},
      {"bailing2", Format::Bailing2}, {"llama4", Format::Llama4}, {"smolvlm", Format::SmolVLM},
      {"hunyuan-moe", Format::HunyuanMoe}, {"gpt-oss", Format::OpenAIMoe}, {"hunyuan-dense", Format::HunyuanDense},
      {"hunyuan-vl", Format::HunyuanVL}, {"kimi-k2", Format::KimiK2}, {"seed_oss", Format::SeedOss},
      {"grok-2", Format::Grok2}, {"pangu-embedded", Format::PanguEmbed}, {"solar-open", Format::SolarOpen},
  };
  return m;
}

std::string format_name(Format f) {
  if (f == Format::Dots1) return "dots1";
  for (const auto& [name, fmt] : named_formats())
    if (fmt == f) return name;
  return "unknown";
}

// llm_chat_detect_template, marker for marker and in the same order.
Format detect(const std::string& tmpl) {
  if (auto it = named_formats().find(tmpl); it != named_formats().end()) return it->second;
  auto has = [&](const char* s) { return tmpl.find(s) != std::string::npos; };
  if (has("<|im_start|>")) {
    return has("<|im_sep|>") ? Format::Phi4 : has("<end_of_utterance>") ? Format::SmolVLM : Format::ChatML;
  } else if (tmpl.find("mistral") == 0 || has("[INST]")) {
    if (has("[SYSTEM_PROMPT]")) return Format::MistralV7;
    if (has("' [INST] ' + system_message") || has("[AVAILABLE_TOOLS]")) {
      if (has(" [INST]")) return Format::MistralV1;
      if (has("\"[INST]\"")) return Format::MistralV3Tekken;
      return Format::MistralV3;
    }
    if (has("content.strip()")) return Format::Llama2SysStrip;
    if (has("bos_token + '[INST]")) return Format::Llama2SysBos;
    if (has("<<SYS>>")) return Format::Llama2Sys;
    return Format::Llama2;
  } else if (has("<|assistant|>") && has("<|end|>")) {
    return Format::Phi3;
  } else if (has("[gMASK]<sop>")) {
    return Format::ChatGLM4;
  } else if (has("<|assistant|>") && has("<|user|>")) {
    if (has("<|tool_declare|>")) return Format::ExaoneMoe;
    return has("</s>") ? Format::Falcon3 : Format::GLMEdge;
  } else if (has("<|{{ item['role'] }}|>") && has("<|begin_of_image|>")) {
    return Format::GLMEdge;
  } else if (has("<|user|>") && has("<|endoftext|>")) {
    return Format::Zephyr;
  } else if (has("bos_token + message['role']")) {
    return Format::Monarch;
  } else if (has("<start_of_turn>")) {
    return Format::Gemma;
  } else if (has("'\\n\\nAssistant: ' + eos_token")) {
    return Format::Orion;
  } else if (has("GPT4 Correct ")) {
    return Format::OpenChat;
  } else if (has("USER: ") && has("ASSISTANT: ")) {
    return has("SYSTEM: ") ? Format::VicunaOrca : Format::Vicuna;
  } else if (has("### Instruction:") && has("<|EOT|>")) {
    return Format::DeepSeek;
  } else if (has("<|START_OF_TURN_TOKEN|>") && has("<|USER_TOKEN|>")) {
    return Format::CommandR;
  } else if (has("<|start_header_id|>") && has("<|end_header_id|>")) {
    return Format::Llama3;
  } else if (has("[gMASK]sop")) {
    return Format::ChatGLM3;
  } else if (has("<用户>")) {
    return Format::MiniCPM;
  } else if (has("'Assistant: ' + message['content'] + eos_token")) {
    return Format::DeepSeek2;
  } else if (has("<｜Assistant｜>") && has("<｜User｜>") && has("<｜end▁of▁sentence｜>")) {
    return Format::DeepSeek3;
  } else if (has("[|system|]") && has("[|assistant|]") && has("[|endofturn|]")) {
    return has("[|tool|]") ? Format::Exaone4 : Format::Exaone3;
  } else if (has("rwkv-world") || has("{{- 'User: ' + message['content']|trim + '\\n\\n' -}}")) {
    return Format::RwkvWorld;
  } else if (has("<|start_of_role|>")) {
    if (has("<tool_call>") || has("<tools>")) return has("g4_default_system_message") ? Format::Granite40 : Format::Granite41;
    return Format::Granite3;
  } else if (has("message['role'] + additional_special_tokens[0] + message['content'] + additional_special_tokens[1]")) {
    return Format::GigaChat;
  } else if (has("<|role_start|>")) {
    return Format::Megrez;
  } else if (has(" Ассистент:")) {
    return Format::Yandex;
  } else if (has("<role>ASSISTANT</role>") && has("'HUMAN'")) {
    return Format::Bailing;
  } else if (has("<role>ASSISTANT</role>") && has("\"HUMAN\"") && has("<think>")) {
    return Format::BailingThink;
  } else if (has("<role>ASSISTANT</role>") && has("<role>HUMAN</role>") && has("<|role_end|>")) {
    return Format::Bailing2;
  } else if (has("<|header_start|>") && has("<|header_end|>")) {
    return Format::Llama4;
  } else if (has("<|endofuserprompt|>")) {
    return Format::Dots1;
  } else if (has("<|extra_0|>") && has("<|extra_4|>")) {
    return Format::HunyuanMoe;
  } else if (has("<|start|>") && has("<|channel|>")) {
    return Format::OpenAIMoe;
  } else if (has("<｜hy_Assistant｜>") && has("<｜hy_begin▁of▁sentence｜>")) {
    return Format::HunyuanVL;
  } else if (has("<｜hy_Assistant｜>") && has("<｜hy_place▁holder▁no▁3｜>")) {
    return Format::HunyuanDense;
  } else if (has("<|im_assistant|>assistant<|im_middle|>")) {
    return Format::KimiK2;
  } else if (has("<seed:bos>")) {
    return Format::SeedOss;
  } else if (has("'Assistant: '  + message['content'] + '<|separator|>")) {
    return Format::Grok2;
  } else if (has("[unused9]系统：[unused10]")) {
    return Format::PanguEmbed;
  } else if (has("<|begin|>") && has("<|end|>") && has("<|content|>")) {
    return Format::SolarOpen;
  }
  return Format::Unknown;
}

Format detect_or_fail(const std::string& tmpl) {
  const Format f = detect(tmpl);
  if (f == Format::Unknown) {
    size_t cut = std::min<size_t>(tmpl.size(), 60);
    while (cut < tmpl.size() && cut > 0 && (static_cast<unsigned char>(tmpl[cut]) & 0xC0) == 0x80) --cut;  // whole characters
    std::string head = tmpl.substr(0, cut);
    for (char& c : head)
      if (c == '\n' || c == '\r' || c == '\t') c = ' ';
    fail_format("[chat template] no known chat format in the template \"", head, cut < tmpl.size() ? "..." : "",
                "\" (", tmpl.size(), " bytes; llama.cpp's formats are recognised by their markers, e.g. "
                "<|im_start|> for chatml, <|start_header_id|> for llama3; a format name such as \"chatml\" "
                "is accepted too)");
  }
  return f;
}

// llama-chat.cpp's trim: isspace at both ends.
std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::toupper(c)); });
  return s;
}

// llm_chat_apply_template.
std::string apply(Format tmpl, const std::vector<ChatMessage>& chat, bool add_ass, const std::string& bos,
                  const std::string& eos) {
  std::ostringstream ss;
  using F = Format;
  if (tmpl == F::ChatML) {
    for (const auto& m : chat) ss << "<|im_start|>" << m.role << "\n" << m.content << "<|im_end|>\n";
    if (add_ass) ss << "<|im_start|>assistant\n";
  } else if (tmpl == F::MistralV7 || tmpl == F::MistralV7Tekken) {
    const char* sp = tmpl == F::MistralV7 ? " " : "";
    for (const auto& m : chat) {
      if (m.role == "system") ss << "[SYSTEM_PROMPT]" << sp << m.content << "[/SYSTEM_PROMPT]";
      else if (m.role == "user") ss << "[INST]" << sp << m.content << "[/INST]";
      else ss << sp << m.content << eos;
    }
  } else if (tmpl == F::MistralV1 || tmpl == F::MistralV3 || tmpl == F::MistralV3Tekken) {
    const std::string leading = tmpl == F::MistralV1 ? " " : "";
    const std::string trailing = tmpl == F::MistralV3Tekken ? "" : " ";
    const bool trim_assistant = tmpl == F::MistralV3;
    bool inside_turn = false;
    for (const auto& m : chat) {
      if (!inside_turn) {
        ss << leading << "[INST]" << trailing;
        inside_turn = true;
      }
      if (m.role == "system") {
        ss << m.content << "\n\n";
      } else if (m.role == "user") {
        ss << m.content << leading << "[/INST]";
      } else {
        ss << trailing << (trim_assistant ? trim(m.content) : m.content) << eos;
        inside_turn = false;
      }
    }
  } else if (tmpl == F::Llama2 || tmpl == F::Llama2Sys || tmpl == F::Llama2SysBos || tmpl == F::Llama2SysStrip) {
    const bool system_supported = tmpl != F::Llama2;
    const bool bos_inside_history = tmpl == F::Llama2SysBos;
    const bool strip = tmpl == F::Llama2SysStrip;
    bool inside_turn = true;  // no BOS at the beginning
    ss << "[INST] ";
    for (const auto& m : chat) {
      const std::string content = strip ? trim(m.content) : m.content;
      if (!inside_turn) {
        inside_turn = true;
        ss << (bos_inside_history ? bos + "[INST] " : "[INST] ");
      }
      if (m.role == "system") {
        if (system_supported) ss << "<<SYS>>\n" << content << "\n<</SYS>>\n\n";
        else ss << content << "\n";
      } else if (m.role == "user") {
        ss << content << " [/INST]";
      } else {
        ss << content << eos;
        inside_turn = false;
      }
    }
  } else if (tmpl == F::Phi3) {
    for (const auto& m : chat) ss << "<|" << m.role << "|>\n" << m.content << "<|end|>\n";
    if (add_ass) ss << "<|assistant|>\n";
  } else if (tmpl == F::Phi4) {
    for (const auto& m : chat) ss << "<|im_start|>" << m.role << "<|im_sep|>" << m.content << "<|im_end|>";
    if (add_ass) ss << "<|im_start|>assistant<|im_sep|>";
  } else if (tmpl == F::Falcon3) {
    for (const auto& m : chat) ss << "<|" << m.role << "|>\n" << m.content << "\n";
    if (add_ass) ss << "<|assistant|>\n";
  } else if (tmpl == F::Zephyr) {
    for (const auto& m : chat) ss << "<|" << m.role << "|>" << "\n" << m.content << "<|endoftext|>\n";
    if (add_ass) ss << "<|assistant|>\n";
  } else if (tmpl == F::Monarch) {
    for (size_t i = 0; i < chat.size(); ++i)
      ss << (i == 0 ? std::string() : bos) << chat[i].role << "\n" << chat[i].content << eos << "\n";
    if (add_ass) ss << bos << "assistant\n";
  } else if (tmpl == F::Gemma) {
    std::string system_prompt;
    for (const auto& m : chat) {
      if (m.role == "system") {  // no system turn in gemma: merged into the next user turn
        system_prompt += trim(m.content);
        continue;
      }
      const std::string role = m.role == "assistant" ? "model" : m.role;
      ss << "<start_of_turn>" << role << "\n";
      if (!system_prompt.empty() && role != "model") {
        ss << system_prompt << "\n\n";
        system_prompt.clear();
      }
      ss << trim(m.content) << "<end_of_turn>\n";
    }
    if (add_ass) ss << "<start_of_turn>model\n";
  } else if (tmpl == F::Orion) {
    std::string system_prompt;
    for (const auto& m : chat) {
      if (m.role == "system") {
        system_prompt += m.content;
        continue;
      } else if (m.role == "user") {
        ss << "Human: ";
        if (!system_prompt.empty()) {
          ss << system_prompt << "\n\n";
          system_prompt.clear();
        }
        ss << m.content << "\n\nAssistant: " << eos;
      } else {
        ss << m.content << eos;
      }
    }
  } else if (tmpl == F::OpenChat) {
    for (const auto& m : chat) {
      if (m.role == "system") {
        ss << m.content << "<|end_of_turn|>";
      } else {
        std::string role = m.role;
        if (!role.empty()) role[0] = char(std::toupper(static_cast<unsigned char>(role[0])));
        ss << "GPT4 Correct " << role << ": " << m.content << "<|end_of_turn|>";
      }
    }
    if (add_ass) ss << "GPT4 Correct Assistant:";
  } else if (tmpl == F::Vicuna || tmpl == F::VicunaOrca) {
    for (const auto& m : chat) {
      if (m.role == "system") {
        if (tmpl == F::VicunaOrca) ss << "SYSTEM: " << m.content << "\n";
        else ss << m.content << "\n\n";
      } else if (m.role == "user") {
        ss << "USER: " << m.content << "\n";
      } else if (m.role == "assistant") {
        ss << "ASSISTANT: " << m.content << eos << "\n";
      }
    }
    if (add_ass) ss << "ASSISTANT:";
  } else if (tmpl == F::DeepSeek) {
    for (const auto& m : chat) {
      if (m.role == "system") ss << m.content;
      else if (m.role == "user") ss << "### Instruction:\n" << m.content << "\n";
      else if (m.role == "assistant") ss << "### Response:\n" << m.content << "\n<|EOT|>\n";
    }
    if (add_ass) ss << "### Response:\n";
  } else if (tmpl == F::CommandR) {
    for (const auto& m : chat) {
      if (m.role == "system") ss << "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>" << trim(m.content) << "<|END_OF_TURN_TOKEN|>";
      else if (m.role == "user") ss << "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>" << trim(m.content) << "<|END_OF_TURN_TOKEN|>";
      else if (m.role == "assistant")
        ss << "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>" << trim(m.content) << "<|END_OF_TURN_TOKEN|>";
    }
    if (add_ass) ss << "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>";
  } else if (tmpl == F::Llama3) {
    for (const auto& m : chat)
      ss << "<|start_header_id|>" << m.role << "<|end_header_id|>\n\n" << trim(m.content) << "<|eot_id|>";
    if (add_ass) ss << "<|start_header_id|>assistant<|end_header_id|>\n\n";
  } else if (tmpl == F::ChatGLM3) {
    ss << "[gMASK]" << "sop";
    for (const auto& m : chat) ss << "<|" << m.role << "|>" << "\n " << m.content;
    if (add_ass) ss << "<|assistant|>";
  } else if (tmpl == F::ChatGLM4) {
    ss << "[gMASK]" << "<sop>";
    for (const auto& m : chat) ss << "<|" << m.role << "|>" << "\n" << m.content;
    if (add_ass) ss << "<|assistant|>\n";
  } else if (tmpl == F::GLMEdge) {
    for (const auto& m : chat) ss << "<|" << m.role << "|>" << "\n" << m.content;
    if (add_ass) ss << "<|assistant|>";
  } else if (tmpl == F::MiniCPM) {
    for (const auto& m : chat) {
      if (m.role == "user") ss << "<用户>" << trim(m.content) << "<AI>";
      else ss << trim(m.content);
    }
  } else if (tmpl == F::DeepSeek2) {
    for (const auto& m : chat) {
      if (m.role == "system") ss << m.content << "\n\n";
      else if (m.role == "user") ss << "User: " << m.content << "\n\n";
      else if (m.role == "assistant") ss << "Assistant: " << m.content << "<｜end▁of▁sentence｜>";
    }
    if (add_ass) ss << "Assistant:";
  } else if (tmpl == F::DeepSeek3) {
    for (const auto& m : chat) {
      if (m.role == "system") ss << m.content << "\n\n";
      else if (m.role == "user") ss << "<｜User｜>" << m.content;
      else if (m.role == "assistant") ss << "<｜Assistant｜>" << m.content << "<｜end▁of▁sentence｜>";
    }
    if (add_ass) ss << "<｜Assistant｜>";
  } else if (tmpl == F::DeepSeekOcr) {
    for (const auto& m : chat) ss << m.content;
  } else if (tmpl == F::Exaone3 || tmpl == F::Exaone4) {
    for (const auto& m : chat) {
      if (m.role == "system") ss << "[|system|]" << trim(m.content) << "[|endofturn|]\n";
      else if (m.role == "user") ss << "[|user|]" << trim(m.content) << "\n";
      else if (m.role == "assistant") ss << "[|assistant|]" << trim(m.content) << "[|endofturn|]\n";
      else if (m.role == "tool" && tmpl == F::Exaone4) ss << "[|tool|]" << trim(m.content) << "[|endofturn|]\n";
    }
    if (add_ass) ss << "[|assistant|]";
  } else if (tmpl == F::ExaoneMoe) {
    for (const auto& m : chat) {
      if (m.role == "system" || m.role == "user" || m.role == "assistant" || m.role == "tool")
        ss << "<|" << m.role << "|>\n" << trim(m.content) << "<|endofturn|>\n";
    }
    if (add_ass) ss << "<|assistant|>\n";
  } else if (tmpl == F::RwkvWorld) {
    for (size_t i = 0; i < chat.size(); ++i) {
      const auto& m = chat[i];
      if (m.role == "system") {
        ss << "System: " << trim(m.content) << "\n\n";
      } else if (m.role == "user") {
        ss << "User: " << trim(m.content) << "\n\n";
        if (i == chat.size() - 1) ss << "Assistant:";
      } else if (m.role == "assistant") {
        ss << "Assistant: " << trim(m.content) << "\n\n";
      }
    }
  } else if (tmpl == F::Granite3) {
    for (const auto& m : chat) {
      ss << "<|start_of_role|>" << m.role << "<|end_of_role|>";
      if (m.role == "assistant_tool_call") ss << "<|tool_call|>";
      ss << m.content << "<|end_of_text|>\n";
    }
    if (add_ass) ss << "<|start_of_role|>assistant<|end_of_role|>";
  } else if (tmpl == F::Granite40 || tmpl == F::Granite41) {
    for (const auto& m : chat) {
      if (m.role == "assistant_tool_call") ss << "<|start_of_role|>assistant<|end_of_role|><|tool_call|>";
      else ss << "<|start_of_role|>" << m.role << "<|end_of_role|>";
      ss << m.content << "<|end_of_text|>\n";
    }
    if (add_ass) ss << "<|start_of_role|>assistant<|end_of_role|>";
  } else if (tmpl == F::GigaChat) {
    const bool has_system = !chat.empty() && chat[0].role == "system";
    if (has_system) ss << bos << chat[0].content << "<|message_sep|>";
    else ss << bos;
    for (size_t i = has_system ? 1 : 0; i < chat.size(); ++i) {
      if (chat[i].role == "user")
        ss << "user<|role_sep|>" << chat[i].content << "<|message_sep|>" << "available functions<|role_sep|>[]<|message_sep|>";
      else if (chat[i].role == "assistant")
        ss << "assistant<|role_sep|>" << chat[i].content << "<|message_sep|>";
    }
    if (add_ass) ss << "assistant<|role_sep|>";
  } else if (tmpl == F::Megrez) {
    for (const auto& m : chat) ss << "<|role_start|>" << m.role << "<|role_end|>" << m.content << "<|turn_end|>";
    if (add_ass) ss << "<|role_start|>assistant<|role_end|>";
  } else if (tmpl == F::Yandex) {
    for (const auto& m : chat) {
      if (m.role == "user") ss << " Пользователь: " << m.content << "\n\n";
      else if (m.role == "assistant") ss << " Ассистент: " << m.content << "\n\n";
    }
    if (add_ass) ss << " Ассистент:[SEP]";
  } else if (tmpl == F::Bailing || tmpl == F::BailingThink) {
    for (const auto& m : chat) ss << "<role>" << (m.role == "user" ? std::string("HUMAN") : upper(m.role)) << "</role>" << m.content;
    if (add_ass) {
      ss << "<role>ASSISTANT</role>";
      if (tmpl == F::BailingThink) ss << "<think>";
    }
  } else if (tmpl == F::Bailing2) {
    if (chat.empty() || chat[0].role != "system") ss << "<role>SYSTEM</role>detailed thinking off<|role_end|>";
    for (const auto& m : chat)
      ss << "<role>" << (m.role == "user" ? std::string("HUMAN") : upper(m.role)) << "</role>" << m.content << "<|role_end|>";
    if (add_ass) ss << "<role>ASSISTANT</role>";
  } else if (tmpl == F::Llama4) {
    for (const auto& m : chat) ss << "<|header_start|>" << m.role << "<|header_end|>\n\n" << trim(m.content) << "<|eot|>";
    if (add_ass) ss << "<|header_start|>assistant<|header_end|>\n\n";
  } else if (tmpl == F::SmolVLM) {
    ss << "<|im_start|>";  // <|im_start|> as BOS; the turns are not ChatML
    for (const auto& m : chat) {
      if (m.role == "system") ss << m.content << "\n\n";
      else if (m.role == "user") ss << "User: " << m.content << "<end_of_utterance>\n";
      else ss << "Assistant: " << m.content << "<end_of_utterance>\n";
    }
    if (add_ass) ss << "Assistant:";
  } else if (tmpl == F::Dots1) {
    for (const auto& m : chat) {
      if (m.role == "system") ss << "<|system|>" << m.content << "<|endofsystem|>";
      else if (m.role == "user") ss << "<|userprompt|>" << m.content << "<|endofuserprompt|>";
      else ss << "<|response|>" << m.content << "<|endofresponse|>";
    }
    if (add_ass) ss << "<|response|>";
  } else if (tmpl == F::HunyuanMoe) {
    for (const auto& m : chat) {
      if (m.role == "system") ss << "<|startoftext|>" << m.content << "<|extra_4|>";
      else if (m.role == "assistant") ss << m.content << "<|eos|>";
      else ss << "<|startoftext|>" << m.content << "<|extra_0|>";
    }
  } else if (tmpl == F::OpenAIMoe) {
    for (const auto& m : chat)
      ss << "<|start|>" << m.role << "<|message|>" << m.content << (m.role == "assistant" ? "<|return|>" : "<|end|>");
    if (add_ass) ss << "<|start|>assistant";
  } else if (tmpl == F::HunyuanDense) {
    for (size_t i = 0; i < chat.size(); ++i) {
      if (i == 0 && chat[i].role == "system") ss << chat[i].content << "<｜hy_place▁holder▁no▁3｜>";
      if (chat[i].role == "assistant") ss << "<｜hy_Assistant｜>" << chat[i].content << "<｜hy_place▁holder▁no▁2｜>";
      else if (chat[i].role == "user") ss << "<｜hy_User｜>" << chat[i].content << "<｜hy_Assistant｜>";
    }
  } else if (tmpl == F::HunyuanVL) {
    ss << "<｜hy_begin▁of▁sentence｜>";
    for (size_t i = 0; i < chat.size(); ++i) {
      if (i == 0 && chat[i].role == "system") {
        ss << chat[i].content << "<｜hy_place▁holder▁no▁3｜>";
        continue;
      }
      if (chat[i].role == "user") ss << chat[i].content << "<｜hy_User｜>";
      else if (chat[i].role == "assistant") ss << chat[i].content << "<｜hy_Assistant｜>";
    }
  } else if (tmpl == F::KimiK2) {
    for (const auto& m : chat) {
      if (m.role == "system") ss << "<|im_system|>system<|im_middle|>";
      else if (m.role == "user") ss << "<|im_user|>user<|im_middle|>";
      else if (m.role == "assistant") ss << "<|im_assistant|>assistant<|im_middle|>";
      else if (m.role == "tool") ss << "<|im_system|>tool<|im_middle|>";
      ss << m.content << "<|im_end|>";
    }
    if (add_ass) ss << "<|im_assistant|>assistant<|im_middle|>";
  } else if (tmpl == F::SeedOss) {
    for (const auto& m : chat)
      ss << "<seed:bos>" << m.role << "\n" << (m.role == "assistant" ? trim(m.content) : m.content) << "<seed:eos>";
    if (add_ass) ss << "<seed:bos>assistant\n";
  } else if (tmpl == F::Grok2) {
    for (const auto& m : chat) {
      if (m.role == "system") ss << "System: " << trim(m.content) << "<|separator|>\n\n";
      else if (m.role == "user") ss << "Human: " << trim(m.content) << "<|separator|>\n\n";
      else if (m.role == "assistant") ss << "Assistant: " << m.content << "<|separator|>\n\n";
    }
    if (add_ass) ss << "Assistant:";
  } else if (tmpl == F::PanguEmbed) {
    static const std::map<std::string, std::string> kRoles = {
        {"system", "系统"}, {"user", "用户"}, {"assistant", "助手"}, {"tool", "工具"}, {"function", "方法"}};
    for (size_t i = 0; i < chat.size(); ++i) {
      if (i == 0 && chat[i].role != "system") ss << "[unused9]系统：[unused10]";
      if (auto it = kRoles.find(chat[i].role); it != kRoles.end())
        ss << "[unused9]" << it->second << "：" << chat[i].content << "[unused10]";
    }
    if (add_ass) ss << "[unused9]助手：";
  } else if (tmpl == F::SolarOpen) {
    for (const auto& m : chat) ss << "<|begin|>" << m.role << "<|content|>" << m.content << "<|end|>";
    if (add_ass) ss << "<|begin|>assistant";
  } else {
    fail_format("[chat template] the format '", format_name(tmpl), "' cannot be rendered");
  }
  return ss.str();
}

// Python/Jinja string-literal escapes of the literals the default system prompt is read from.
std::string unescape_literal(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    const char c = s[++i];
    switch (c) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      default: out += c; break;  // \\ \' \" and anything else: the character itself
    }
  }
  return out;
}

}  // namespace

std::string detect_chat_format(const std::string& template_text) { return format_name(detect_or_fail(template_text)); }

std::optional<std::string> chat_default_system_prompt(const std::string& template_text) {
  if (detect(template_text) != Format::ChatML) return std::nullopt;
  // the template decides on the first message's role ...
  static const std::regex first_role_test(
      R"(messages\[0\](\[\s*'role'\s*\]|\[\s*"role"\s*\]|\.role)\s*(!=|==)\s*['"]system['"])");
  if (!std::regex_search(template_text, first_role_test)) return std::nullopt;
  // ... and writes a whole system turn from one literal: '<|im_start|>system\n PROMPT <|im_end|>'
  static const std::regex single(R"('<\|im_start\|>system(\\n|\n)((?:[^'\\{}]|\\.)+?)<\|im_end\|>)");
  static const std::regex dbl(R"("<\|im_start\|>system(\\n|\n)((?:[^"\\{}]|\\.)+?)<\|im_end\|>)");
  std::smatch m;
  if (std::regex_search(template_text, m, single) || std::regex_search(template_text, m, dbl))
    return unescape_literal(m[2].str());
  return std::nullopt;
}

std::string render_chat(const std::string& template_text, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt, const std::string& bos_token, const std::string& eos_token) {
  const Format f = detect_or_fail(template_text);
  const std::string bos = bos_token.empty() ? "<s>" : bos_token;  // llama.cpp's literals
  const std::string eos = eos_token.empty() ? "</s>" : eos_token;
  if (f == Format::ChatML && !messages.empty() && messages[0].role != "system") {
    if (std::optional<std::string> prompt = chat_default_system_prompt(template_text)) {
      std::vector<ChatMessage> with_system;
      with_system.reserve(messages.size() + 1);
      with_system.push_back({"system", *prompt});
      with_system.insert(with_system.end(), messages.begin(), messages.end());
      return apply(f, with_system, add_generation_prompt, bos, eos);
    }
  }
  return apply(f, messages, add_generation_prompt, bos, eos);
}

}  // namespace peft
