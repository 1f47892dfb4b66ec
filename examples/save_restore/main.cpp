// Saving a conversation and picking it up later (a game's save file): the session's state (tokens
// and KV cache) goes to a file; a new process restores it and continues without recomputing the
// conversation.
//   save_restore <checkpoint dir with tokenizer.json> <state file>
// The first run (no state file yet) talks and saves; the second restores and continues.
#include <mimo/chat.hpp>
#include <mimo/generate.hpp>
#include <mimo/mimo.hpp>

#include <cstdio>
#include <filesystem>
#include <string>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: save_restore <checkpoint dir> <state file>\n");
    return 2;
  }
  auto fail = [](const mimo::Error& e) {
    std::fprintf(stderr, "%s\n", e.describe().c_str());
    return 1;
  };
  auto model = mimo::Model<mimo::Cpu>::load(argv[1]);
  if (!model) return fail(model.error());
  auto tokenizer = mimo::Tokenizer::load(argv[1]);
  if (!tokenizer) return fail(tokenizer.error());
  auto session = model->new_session({.context = 1024});
  if (!session) return fail(session.error());
  auto sampler = mimo::Sampler::create({.temperature = 0.7f, .top_p = 0.9f, .seed = 3},
                                       static_cast<int32_t>(model->config().vocab_size));
  if (!sampler) return fail(sampler.error());

  const std::filesystem::path state = argv[2];
  std::vector<int32_t> prompt;
  std::error_code ec;
  if (std::filesystem::exists(state, ec)) {
    // A corrupted or foreign file is refused and the session stays usable (here: empty).
    if (auto s = session->restore_file(state); !s) return fail(s.error());
    std::printf("restored %lld tokens of conversation\n", static_cast<long long>(session->size()));
    // The next user turn, after the assistant's reply that ended the saved conversation.
    auto turn = tokenizer->encode("\n<|im_start|>user\nAnd after that?<|im_end|>\n<|im_start|>assistant\n");
    if (!turn) return fail(turn.error());
    prompt = *turn;
  } else {
    const mimo::ChatMessage chat[] = {{mimo::ChatRole::user, "Tell me about the old lighthouse."}};
    auto ids = mimo::encode_chat(*tokenizer, chat);
    if (!ids) return fail(ids.error());
    prompt = *ids;
  }
  auto result = mimo::generate(*session, prompt, *sampler,
                               {.max_tokens = 32,
                                .on_token = [](const mimo::TokenEvent& e) {
                                  std::fwrite(e.text.data(), 1, e.text.size(), stdout);
                                  return true;
                                }},
                               &*tokenizer);
  if (!result) return fail(result.error());
  std::printf("\n");
  if (auto s = session->save_file(state); !s) return fail(s.error());
  std::printf("saved %lld tokens to %s\n", static_cast<long long>(session->size()), state.string().c_str());
  return 0;
}
