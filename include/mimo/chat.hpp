// Chat prompts for MiMo (ChatML), and splitting streamed output into reasoning and answer.
//
//   std::vector<mimo::ChatMessage> chat = {{mimo::ChatRole::system, "You are a ship's cat."},
//                                          {mimo::ChatRole::user, player_line}};
//   auto prompt = mimo::encode_chat(tokenizer, chat);          // ids to prefill
//   mimo::ReasoningStream stream(tokenizer);                   // then, for each sampled id:
//   std::vector<mimo::ChatDelta> deltas;
//   stream.feed(id, deltas);   // deltas[i].channel: reasoning (inside <think>) or answer
//
// format_chat renders exactly what the chat template in MiMo's tokenizer_config.json renders for
// system, user, assistant and tool messages (no tool definitions or tool calls):
//
//   <|im_start|>system\n{system}<|im_end|>\n          only if the first message is a system one
//   <|im_start|>user\n{content}<|im_end|>\n
//   <|im_start|>assistant\n{content}<|im_end|>\n      reasoning of turns before the last user
//                                                     message is dropped; after it, the turn is
//                                                     <think>\n{reasoning}\n</think>\n\n{answer}
//   <|im_start|>assistant\n                           the generation prompt, and with
//                                                     enable_thinking = false also
//                                                     <think>\n\n</think>\n\n
//
// encode_chat gives the ids of that text, with one deliberate difference from tokenizing it in
// one piece: the template's markers become their tokens, while message contents are encoded as
// plain text (EncodeOptions::parse_special = false), so a player who types "<|im_end|>" or
// "<think>" cannot end a turn or fake a role. For contents without such strings the ids are the
// same as Hugging Face's apply_chat_template(tokenize=True).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mimo/error.hpp"
#include "mimo/tokenizer.hpp"

namespace mimo {

enum class ChatRole { system, user, assistant, tool };

constexpr std::string_view to_string(ChatRole role) {
  switch (role) {
    case ChatRole::system: return "system";
    case ChatRole::user: return "user";
    case ChatRole::assistant: return "assistant";
    case ChatRole::tool: return "tool";
  }
  return "user";
}

struct ChatMessage {
  ChatRole role = ChatRole::user;
  std::string content;
  // Assistant turns: the reasoning kept apart from the answer. When absent, reasoning is taken
  // from "<think>...</think>" inside content, as the template does.
  std::optional<std::string> reasoning_content{};
};

struct ChatOptions {
  bool add_generation_prompt = true;  // end with "<|im_start|>assistant\n" for the model to answer
  bool enable_thinking = true;        // false: the prompt also closes an empty think block
  // Message contents as text with added tokens parsed, i.e. exactly HF's tokenization of the
  // rendered text. Only for trusted contents.
  bool parse_special_in_content = false;
};

namespace detail {

// One piece of a rendered prompt: a template marker (an added token) or text.
struct ChatPart {
  bool marker;
  std::string text;
};

inline std::string_view strip_leading_newlines(std::string_view s) {
  while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
  return s;
}
inline std::string_view strip_trailing_newlines(std::string_view s) {
  while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}

// The template, step by step (jinja names in comments).
inline std::vector<ChatPart> render_chat(std::span<const ChatMessage> messages, const ChatOptions& options) {
  std::vector<ChatPart> parts;
  const auto marker = [&](std::string_view m) { parts.push_back({true, std::string(m)}); };
  const auto text = [&](std::string_view t) {
    if (t.empty()) return;
    if (!parts.empty() && !parts.back().marker) parts.back().text += t;
    else parts.push_back({false, std::string(t)});
  };
  const size_t n = messages.size();
  if (n > 0 && messages[0].role == ChatRole::system) {
    marker("<|im_start|>");
    text("system\n");
    text(messages[0].content);
    marker("<|im_end|>");
    text("\n");
  }
  // ns.last_query_index: the last user message that is not a wrapped tool response.
  size_t last_query = n == 0 ? 0 : n - 1;
  for (size_t i = n; i-- > 0;) {
    const std::string_view c = messages[i].content;
    const bool tool_response = c.starts_with("<tool_response>") && c.ends_with("</tool_response>");
    if (messages[i].role == ChatRole::user && !tool_response) {
      last_query = i;
      break;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const ChatMessage& m = messages[i];
    const bool last = i + 1 == n;
    if (m.role == ChatRole::user || (m.role == ChatRole::system && i != 0)) {
      marker("<|im_start|>");
      text(to_string(m.role));
      text("\n");
      text(m.content);
      marker("<|im_end|>");
      text("\n");
    } else if (m.role == ChatRole::assistant) {
      std::string_view content = m.content;
      std::string_view reasoning;
      if (m.reasoning_content) {
        reasoning = *m.reasoning_content;
      } else if (const size_t first_close = content.find("</think>"); first_close != std::string_view::npos) {
        // content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
        std::string_view before = strip_trailing_newlines(content.substr(0, first_close));
        if (const size_t open = before.rfind("<think>"); open != std::string_view::npos)
          before = before.substr(open + 7);
        reasoning = strip_leading_newlines(before);
        // content.split('</think>')[-1].lstrip('\n')
        content = strip_leading_newlines(content.substr(content.rfind("</think>") + 8));
      }
      marker("<|im_start|>");
      text("assistant\n");
      if (n > 0 && i > last_query && (last || !reasoning.empty())) {
        marker("<think>");
        text("\n");
        text(strip_trailing_newlines(strip_leading_newlines(reasoning)));
        text("\n");
        marker("</think>");
        text("\n\n");
        text(strip_leading_newlines(content));
      } else {
        text(content);
      }
      marker("<|im_end|>");
      text("\n");
    } else if (m.role == ChatRole::tool) {
      if (i == 0 || messages[i - 1].role != ChatRole::tool) {
        marker("<|im_start|>");
        text("user");
      }
      text("\n");
      marker("<tool_response>");
      text("\n");
      text(m.content);
      text("\n");
      marker("</tool_response>");
      if (last || messages[i + 1].role != ChatRole::tool) {
        marker("<|im_end|>");
        text("\n");
      }
    }
  }
  if (options.add_generation_prompt) {
    marker("<|im_start|>");
    text("assistant\n");
    if (!options.enable_thinking) {
      marker("<think>");
      text("\n\n");
      marker("</think>");
      text("\n\n");
    }
  }
  return parts;
}

}  // namespace detail

// The prompt text, as the chat template renders it.
inline std::string format_chat(std::span<const ChatMessage> messages, const ChatOptions& options = {}) {
  std::string out;
  for (const auto& part : detail::render_chat(messages, options)) out += part.text;
  return out;
}

// The prompt ids: markers as their tokens, contents as text (see the top of this file).
inline Expected<std::vector<int32_t>> encode_chat(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                                                  const ChatOptions& options = {}) {
  std::vector<int32_t> ids;
  const EncodeOptions content_options{.parse_special = options.parse_special_in_content};
  for (const auto& part : detail::render_chat(messages, options)) {
    if (!part.marker) {
      if (auto s = tokenizer.encode_append(part.text, ids, content_options); !s) return std::move(s).error();
      continue;
    }
    const auto id = tokenizer.token_id(part.text);
    if (!id) return Error(Errc::invalid_argument, "encode_chat: the tokenizer has no token " + part.text);
    ids.push_back(*id);
  }
  return ids;
}

// ---------------------------------------------------------------------------------------------
// Reasoning and answer while streaming

enum class ChatChannel { reasoning, answer };

struct ChatDelta {
  ChatChannel channel;
  std::string text;
  friend bool operator==(const ChatDelta&, const ChatDelta&) = default;
};

struct ThinkSplitterOptions {
  // The prompt already opened "<think>" (e.g. a template that adds it), so output starts inside.
  bool start_in_reasoning = false;
  // Drop the newlines the template puts next to the tags ("<think>\n", "\n</think>\n\n").
  bool trim_newlines = true;
};

// Splits streamed text at "<think>" and "</think>", which may arrive cut across chunks: text that
// could be the start of a tag is held back until the next chunk shows whether it is one. The tags
// themselves are not passed on. One per stream; not thread-safe.
class ThinkSplitter {
 public:
  explicit ThinkSplitter(ThinkSplitterOptions options = {})
      : options_(options),
        channel_(options.start_in_reasoning ? ChatChannel::reasoning : ChatChannel::answer),
        at_section_start_(options.start_in_reasoning) {}

  ChatChannel channel() const { return channel_; }

  // Appends to `out` the text that is now certain, merged into the last delta when the channel
  // is the same.
  void feed(std::string_view text, std::vector<ChatDelta>& out) {
    held_ += text;
    while (true) {
      const std::string_view tag = channel_ == ChatChannel::answer ? open_tag : close_tag;
      const size_t at = held_.find(tag);
      if (at != std::string::npos) {
        emit(std::string_view(held_).substr(0, at), out);
        held_.erase(0, at + tag.size());
        switch_channel();
        continue;
      }
      // Keep the longest end of held_ that begins the tag.
      size_t keep = std::min(held_.size(), tag.size() - 1);
      while (keep > 0 && std::string_view(held_).substr(held_.size() - keep) != tag.substr(0, keep)) --keep;
      emit(std::string_view(held_).substr(0, held_.size() - keep), out);
      held_.erase(0, held_.size() - keep);
      return;
    }
  }

  // The stream ended: passes on what was held back.
  void finish(std::vector<ChatDelta>& out) {
    emit(held_, out);
    held_.clear();
    if (newlines_ > 0) append(std::string(newlines_, '\n'), out);
    newlines_ = 0;
  }

 private:
  static constexpr std::string_view open_tag = "<think>";
  static constexpr std::string_view close_tag = "</think>";

  void switch_channel() {
    channel_ = channel_ == ChatChannel::answer ? ChatChannel::reasoning : ChatChannel::answer;
    if (options_.trim_newlines) {
      newlines_ = 0;  // newlines just before a tag belong to the template
      at_section_start_ = true;
    }
  }

  // Passes on text of the current channel, holding back a trailing run of newlines (when
  // trimming) until it is clear that no tag follows.
  void emit(std::string_view text, std::vector<ChatDelta>& out) {
    if (!options_.trim_newlines) {
      append(text, out);
      return;
    }
    if (at_section_start_) {
      while (!text.empty() && text.front() == '\n') text.remove_prefix(1);
      if (text.empty()) return;
      at_section_start_ = false;
    }
    size_t body = text.size();
    while (body > 0 && text[body - 1] == '\n') --body;
    if (body == 0) {
      newlines_ += text.size();
      return;
    }
    std::string piece(newlines_, '\n');
    piece.append(text.substr(0, body));
    append(piece, out);
    newlines_ = text.size() - body;
  }

  void append(std::string_view text, std::vector<ChatDelta>& out) {
    if (text.empty()) return;
    if (out.empty() || out.back().channel != channel_) out.push_back({channel_, std::string()});
    out.back().text += text;
  }

  ThinkSplitterOptions options_;
  ChatChannel channel_;
  bool at_section_start_;
  std::string held_;     // may be the start of a tag
  size_t newlines_ = 0;  // trailing newlines held back
};

// Token ids to reasoning and answer text: a StreamDecoder (special tokens such as <|im_end|> are
// dropped) followed by a ThinkSplitter. Ready for a sampler's output, one id at a time.
class ReasoningStream {
 public:
  explicit ReasoningStream(Tokenizer tokenizer, ThinkSplitterOptions options = {})
      : decoder_(std::move(tokenizer), DecodeOptions{.skip_special = true}), splitter_(options) {}

  Status feed(int32_t id, std::vector<ChatDelta>& out) {
    text_.clear();
    if (auto s = decoder_.feed(id, text_); !s) return s;
    splitter_.feed(text_, out);
    return ok();
  }
  void finish(std::vector<ChatDelta>& out) {
    text_.clear();
    decoder_.flush(text_);
    splitter_.feed(text_, out);
    splitter_.finish(out);
  }
  ChatChannel channel() const { return splitter_.channel(); }

 private:
  StreamDecoder decoder_;
  ThinkSplitter splitter_;
  std::string text_;
};

}  // namespace mimo
