// Embedding the model in a game loop:
//   - the main loop ticks at 60 Hz and must keep its frame time;
//   - generation runs on one worker thread (the model computes with exactly that thread);
//   - text reaches the main loop through a queue, drained once per tick;
//   - two NPCs hold their own sessions over one shared model;
//   - when the player walks away from an NPC, its generation is cancelled at once.
// At the end it prints the tick jitter measured while generating.
//   game_loop <checkpoint dir with tokenizer.json> [seconds]
#include <mimo/chat.hpp>
#include <mimo/generate.hpp>
#include <mimo/mimo.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using Clock = std::chrono::steady_clock;

// Text from the worker to the main loop.
struct TextEvent {
  int npc;
  std::string text;
  bool done;
};

class TextQueue {
 public:
  void push(TextEvent e) {
    std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(std::move(e));
  }
  std::vector<TextEvent> drain() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<TextEvent> out(std::make_move_iterator(events_.begin()), std::make_move_iterator(events_.end()));
    events_.clear();
    return out;
  }

 private:
  std::mutex mutex_;
  std::deque<TextEvent> events_;
};

// A request for the worker: an NPC answers a line.
struct Request {
  int npc;
  std::string line;
};

struct Npc {
  std::string name;
  std::string persona;
  std::optional<mimo::Session<mimo::Cpu>> session;
  std::atomic<bool> cancel{false};  // set by the main loop when the player leaves
};

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: game_loop <checkpoint dir> [seconds]\n");
    return 2;
  }
  const double seconds = argc > 2 ? std::atof(argv[2]) : 6.0;
  auto model = mimo::Model<mimo::Cpu>::load(argv[1]);
  auto tokenizer = mimo::Tokenizer::load(argv[1]);
  if (!model || !tokenizer) {
    std::fprintf(stderr, "%s\n", (!model ? model.error() : tokenizer.error()).describe().c_str());
    return 1;
  }
  // The worker computes with a pool of one thread: itself. Idle, it sleeps.
  auto pool = mimo::cpu::ThreadPool::create(1);
  if (!pool) return 1;
  Npc npcs[2];
  npcs[0].name = "Smith";
  npcs[0].persona = "You are a blacksmith in a mountain village.";
  npcs[1].name = "Oracle";
  npcs[1].persona = "You are a cryptic oracle.";
  for (auto& npc : npcs) {
    auto s = model->new_session({.context = 1024, .backend = {.pool = *pool}});
    if (!s) {
      std::fprintf(stderr, "%s\n", s.error().describe().c_str());
      return 1;
    }
    npc.session.emplace(std::move(*s));
  }

  TextQueue text;
  std::mutex requests_mutex;
  std::condition_variable requests_ready;
  std::deque<Request> requests;
  std::atomic<bool> quit{false};

  std::thread worker([&] {
    auto sampler = mimo::Sampler::create({.temperature = 0.8f, .top_p = 0.95f, .seed = 11},
                                         static_cast<int32_t>(model->config().vocab_size));
    while (true) {
      Request r;
      {
        std::unique_lock<std::mutex> lock(requests_mutex);
        requests_ready.wait(lock, [&] { return quit || !requests.empty(); });
        if (quit && requests.empty()) return;
        r = std::move(requests.front());
        requests.pop_front();
      }
      Npc& npc = npcs[r.npc];
      npc.cancel = false;
      const mimo::ChatMessage chat[] = {{mimo::ChatRole::system, npc.persona}, {mimo::ChatRole::user, r.line}};
      auto prompt = mimo::encode_chat(*tokenizer, chat);
      if (!prompt || !npc.session->truncate(0)) continue;
      auto result = mimo::generate(*npc.session, *prompt, *sampler,
                                   {.max_tokens = 200,
                                    .on_token = [&](const mimo::TokenEvent& e) {
                                      if (!e.text.empty()) text.push({r.npc, std::string(e.text), false});
                                      return true;
                                    },
                                    .cancel = &npc.cancel},
                                   &*tokenizer);
      text.push({r.npc, result ? " [" + std::string(mimo::to_string(result->stop)) + "]" : " [" + result.error().describe() + "]", true});
    }
  });

  auto ask = [&](int npc, std::string line) {
    {
      std::lock_guard<std::mutex> lock(requests_mutex);
      requests.push_back({npc, std::move(line)});
    }
    requests_ready.notify_one();
  };

  // The main loop: 60 ticks a second, a little "game work" in each.
  const auto tick = std::chrono::microseconds(16667);
  const auto start = Clock::now();
  auto next = start;
  std::vector<double> lateness_ms;
  std::string shown[2];
  int frame = 0;
  ask(0, "Can you forge me a sword?");
  ask(1, "What does the future hold?");
  while (Clock::now() - start < std::chrono::duration<double>(seconds)) {
    std::this_thread::sleep_until(next);
    lateness_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - next).count());
    next += tick;
    // Game work: physics, rendering... (a fixed 2 ms of computation here).
    const auto work_end = Clock::now() + std::chrono::milliseconds(2);
    while (Clock::now() < work_end) {
    }
    for (auto& e : text.drain()) shown[e.npc] += e.text;  // "render" the dialogue
    ++frame;
    if (frame == 90) {
      npcs[1].cancel = true;  // the player walks away from the oracle mid-sentence
    }
    if (frame == 120) ask(0, "How much will it cost?");
  }
  quit = true;
  for (auto& npc : npcs) npc.cancel = true;
  requests_ready.notify_one();
  worker.join();
  for (auto& e : text.drain()) shown[e.npc] += e.text;

  for (int i = 0; i < 2; ++i) std::printf("%s: %s\n", npcs[i].name.c_str(), shown[i].c_str());
  std::sort(lateness_ms.begin(), lateness_ms.end());
  auto at = [&](double q) { return lateness_ms[static_cast<size_t>(q * static_cast<double>(lateness_ms.size() - 1))]; };
  std::printf("ticks: %zu at 60 Hz; lateness of a tick: median %.3f ms, p99 %.3f ms, max %.3f ms\n", lateness_ms.size(),
              at(0.5), at(0.99), lateness_ms.back());
  return 0;
}
