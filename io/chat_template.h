// Chat templates (`tokenizer.chat_template` of a GGUF file, `chat_template` of a Hugging Face
// tokenizer_config.json) rendered as llama.cpp renders them without a Jinja engine: the format is
// recognised by the markers llama.cpp's llm_chat_detect_template looks for and the text is
// written as its llm_chat_apply_template writes it (src/llama-chat.cpp).
//
// Formats (the names llama.cpp uses; a template may also be given as one of these names):
//   chatml, llama2, llama2-sys, llama2-sys-bos, llama2-sys-strip, mistral-v1, mistral-v3,
//   mistral-v3-tekken, mistral-v7, mistral-v7-tekken, phi3, phi4, falcon3, zephyr, monarch,
//   gemma, orion, openchat, vicuna, vicuna-orca, deepseek, deepseek2, deepseek3, deepseek-ocr,
//   command-r, llama3, chatglm3, chatglm4, glmedge, minicpm, exaone3, exaone4, exaone-moe,
//   rwkv-world, granite, granite-4.0, granite-4.1, gigachat, megrez, yandex, bailing,
//   bailing-think, bailing2, llama4, smolvlm, hunyuan-moe, gpt-oss, hunyuan-dense, hunyuan-vl,
//   kimi-k2, seed_oss, grok-2, pangu-embedded, solar-open, and dots1 (detected only).
// A template that matches none of them is a peft::FormatError quoting its first 60 characters;
// there is no fallback format.
//
// Departures from llama.cpp, both where the template text says more than llama.cpp reads of it:
//  - Default system prompt. A ChatML template that writes a fixed system turn when the first
//    message is not a system message (SmolLM2: "You are a helpful AI assistant named SmolLM,
//    trained by Hugging Face"; Qwen2.5: "You are Qwen, created by Alibaba Cloud. ...") gets that
//    turn here, as the template (and Hugging Face's apply_chat_template) renders it; llama.cpp's
//    renderer leaves it out. It is detected only from a literal
//    '<|im_start|>system\n...<|im_end|>' string in a template that tests messages[0]'s role
//    against 'system' (chat_default_system_prompt); anything less explicit gets no default.
//    Pass a system message to choose the prompt; the rendering then equals llama.cpp's.
//  - BOS/EOS texts. Where llama.cpp writes the Llama-2 family's literal "<s>" / "</s>" (llama2,
//    mistral, monarch, orion, vicuna, gigachat), the given bos_token / eos_token are written
//    instead (an empty one keeps llama.cpp's literal); with a model's own "<s>" / "</s>" the text
//    is llama.cpp's. The BOS at the very start is never written: Tokenizer::encode(text, true)
//    adds it where the model wants it, as llama.cpp does.
#pragma once
#include <optional>
#include <string>
#include <vector>

namespace peft {

struct ChatMessage {
  std::string role;     // "system", "user", "assistant" (some formats know "tool", ...)
  std::string content;
};

// The format's name ("chatml", "llama3", ...); peft::FormatError when no format is recognised.
std::string detect_chat_format(const std::string& template_text);

// The conversation as text for the model; add_generation_prompt appends the assistant turn's
// header (for the formats that have one).
std::string render_chat(const std::string& template_text, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt, const std::string& bos_token = "",
                        const std::string& eos_token = "");

// The system prompt a ChatML template writes when the first message is not a system message
// (see above); nullopt for other templates.
std::optional<std::string> chat_default_system_prompt(const std::string& template_text);

}  // namespace peft
