// Session<Backend>: one conversation's state over a shared Model: the tokens so far, the KV caches
// of the main model and of each MTP step, and the outputs (logits, hidden states) of the last
// forward pass. A session is used by one thread at a time; sessions of one model run
// concurrently. Copies are explicit (copy()), state can be saved to bytes or a file and restored.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "mimo/backend/backend.hpp"
#include "mimo/detail/aligned_buffer.hpp"
#include "mimo/detail/byte_stream.hpp"
#include "mimo/detail/mapped_file.hpp"
#include "mimo/error.hpp"
#include "mimo/model.hpp"
#include "mimo/transformer.hpp"

namespace mimo {

struct AppendOptions {
  OutputRows logits = OutputRows::last;
  OutputRows hidden = OutputRows::last;       // post-norm hidden states kept for MTP drafting
  const std::atomic<bool>* cancel = nullptr;  // checked between layers; a cancelled append changes nothing
  // Rows whose greedy choice the backend computes where the logits are (on a GPU: only the ids
  // come back, and .logits = none copies no logits at all): Logits::argmax.
  OutputRows argmax = OutputRows::none;
  // Rows whose top_count largest logits the backend selects where the logits are (a sampler's
  // candidates, Sampler::candidates_needed; on a GPU only those come back): Logits::top_ids and
  // top_logits. top_count in [1, min(vocab_size, max_top_count)] when top is not none.
  OutputRows top = OutputRows::none;
  int32_t top_count = 0;
};

// Logits of the rows of one forward pass, row-major [rows, vocab], in host memory. A view into the
// session: valid until its next forward pass. The caller may edit it (bias, masks) before sampling.
struct Logits {
  float* data = nullptr;
  int64_t rows = 0;
  int64_t vocab = 0;
  // For the rows AppendOptions::argmax selected (the last argmax.size() rows of the append), the
  // index of the largest logit (the first on ties), or -1 where a row holds NaN or +inf, or only
  // -inf (the rows a sampler refuses). Empty for MTP logits.
  std::span<const int32_t> argmax = {};
  // For the rows AppendOptions::top selected (the last top_rows() rows of the append), top_count
  // entries per row: the ids and logits of its top_count largest logits (logit descending, then
  // lower id; -0 == +0), in ascending id order. A row a sampler refuses (NaN or +inf, or only
  // -inf) has ids -1. Empty for MTP logits.
  int32_t top_count = 0;
  std::span<const int32_t> top_ids = {};
  std::span<const float> top_logits = {};
  std::span<float> row(int64_t i) const { return {data + i * vocab, static_cast<size_t>(vocab)}; }
  int64_t top_rows() const { return top_count > 0 ? static_cast<int64_t>(top_ids.size()) / top_count : 0; }
  std::span<const int32_t> top_ids_of(int64_t i) const { return top_ids.subspan(static_cast<size_t>(i * top_count), static_cast<size_t>(top_count)); }
  std::span<const float> top_logits_of(int64_t i) const { return top_logits.subspan(static_cast<size_t>(i * top_count), static_cast<size_t>(top_count)); }
  std::span<float> last() const { return row(rows - 1); }
};

// One batch of a Multi-Token-Prediction step. Step 0 combines the main model's post-norm hidden
// state at position t with the embedding of token x_{t+1} and predicts x_{t+2}; step k > 0 takes
// the output of step k-1 at t with token x_{t+1+k}, through layer min(k, num_nextn_predict_layers-1).
struct MtpBatch {
  int step = 0;
  Rows source{};                           // the incoming hidden states (backend memory); when empty:
                                           // the kept hidden rows of the last append (step 0), or
                                           // the outputs of step-1's last batch (step > 0)
  std::span<const int32_t> source_rows{};  // per row: the row of `source` it combines
  std::span<const int32_t> tokens{};     // per row: the token whose embedding is combined
  std::span<const int64_t> positions{};  // per row: RoPE position t
  OutputRows logits = OutputRows::all;
};

template <class B>
class Session {
 public:
  Session(Session&&) noexcept = default;
  Session& operator=(Session&&) noexcept = default;
  Session(const Session&) = delete;  // copies are explicit: copy()
  Session& operator=(const Session&) = delete;

  const Model<B>& model() const { return model_; }
  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }  // tokens in the KV cache
  int64_t capacity() const { return capacity_; }
  std::span<const int32_t> tokens() const { return tokens_; }

  // Runs the model on `tokens` at positions size()..size()+n-1 and keeps their keys and values.
  // Returns the logits selected by options.logits (valid until the next forward pass). On error
  // (bad token, full context, cancellation) the session is unchanged.
  Expected<Logits> append(std::span<const int32_t> tokens, const AppendOptions& options = {});
  Expected<Logits> append(std::initializer_list<int32_t> tokens, const AppendOptions& options = {}) {
    return append(std::span<const int32_t>(tokens.begin(), tokens.size()), options);
  }

  // Forgets every token from position `length` on (speculative decoding rolls back rejected drafts).
  // MTP entries are kept consistent with the tokens: step k's entry at position p combined token
  // x_{p+1+k}; an entry may run one token ahead of the session (the drafter's row for the pending
  // token) and is checked against that token when it is appended. Truncation drops entries that
  // would run further ahead. The last pass's outputs (logits, argmax ids, top selections, hidden
  // rows) of the dropped positions go too, so the last row left is the one after the last token
  // kept (none if the pass began after it).
  Status truncate(int64_t length) {
    if (length < 0 || length > size()) {
      return Error(Errc::invalid_argument, "truncate: length " + std::to_string(length) + " is not in [0, " +
                                               std::to_string(size()) + "]");
    }
    // Every output row ends at size(): row i of r rows belongs to position size() - r + i.
    const int64_t dropped = size() - length;
    const auto kept = [dropped](int64_t rows) { return std::max<int64_t>(0, rows - dropped); };
    logits_rows_ = kept(logits_rows_);
    argmax_.resize(static_cast<size_t>(kept(static_cast<int64_t>(argmax_.size()))));
    top_ids_.resize(static_cast<size_t>(kept(logits().top_rows()) * top_count_));
    top_logits_.resize(top_ids_.size());
    hidden_.count = std::clamp<int64_t>(length - hidden_position_, 0, hidden_.count);
    tokens_.resize(static_cast<size_t>(length));
    for (size_t k = 0; k < mtp_.size(); ++k) drop_mtp_entries(k, [&](int64_t index, int32_t) { return index > length; });
    return ok();
  }

  // Rows per forward chunk (and the most rows one MTP batch may have).
  int64_t batch() const { return batch_; }

  // The logits (and argmax ids) of the main model's last forward pass (a mutable view).
  Logits logits() {
    return Logits{logits_host_.data(), logits_rows_, model_.config().vocab_size, argmax_, top_count_, top_ids_, top_logits_};
  }
  // The logits of the last MTP batch (kept apart, so drafting never replaces the main logits), over
  // the token ids below Model::draft_vocab().
  Logits mtp_logits() { return Logits{mtp_logits_buf_.data(), mtp_logits_rows_, model_.draft_vocab()}; }

  // Post-norm hidden states kept from the last append (rows selected by AppendOptions::hidden),
  // and the position of its first row: row i belongs to position hidden_position() + i (a
  // truncate drops the rows of the positions it drops).
  Rows hidden() const { return hidden_; }
  int64_t hidden_position() const { return hidden_position_; }

  // Runs one MTP step; see MtpBatch. New rows are appended to that step's own KV cache. Returns
  // the logits of the selected rows (also mtp_logits()).
  Expected<Logits> mtp_forward(const MtpBatch& batch, const std::atomic<bool>* cancel = nullptr);
  // Entries in step's MTP cache, and rolling them back.
  int64_t mtp_size(int step) const {
    return step >= 0 && step < static_cast<int>(mtp_.size()) ? static_cast<int64_t>(mtp_[step].positions.size()) : 0;
  }
  // The positions of step's entries, increasing.
  std::span<const int64_t> mtp_positions(int step) const {
    return step >= 0 && step < static_cast<int>(mtp_.size()) ? std::span<const int64_t>(mtp_[step].positions)
                                                               : std::span<const int64_t>();
  }
  Status mtp_truncate(int step, int64_t entries) {
    if (step < 0 || entries < 0 || entries > mtp_size(step)) {
      return Error(Errc::invalid_argument, "mtp_truncate: step " + std::to_string(step) + " has " +
                                               std::to_string(mtp_size(step)) + " entries, asked for " +
                                               std::to_string(entries));
    }
    if (step < static_cast<int>(mtp_.size())) {
      mtp_[step].positions.resize(static_cast<size_t>(entries));
      mtp_[step].combined.resize(static_cast<size_t>(entries));
    }
    return ok();
  }
  // Outputs (post final_layernorm) of step's last batch.
  Rows mtp_output(int step) const {
    return step >= 0 && step < static_cast<int>(mtp_.size()) ? mtp_[step].output : Rows{};
  }

  // A deep copy: KV caches, tokens and the outputs of the last pass (branching a conversation).
  Expected<Session> copy() const;

  // Saves the state (tokens, KV caches, the last row's logits and hidden state, MTP caches) in a
  // versioned, checksummed binary format tied to this model's config and weights.
  Status save(std::vector<std::byte>& out) const;
  Status save_file(const std::filesystem::path& path) const;
  // Restores a saved state into this session (whose context must hold it). The input is fully
  // validated first: on any error the session is unchanged and usable.
  Status restore(std::span<const std::byte> state);
  Status restore_file(const std::filesystem::path& path);

  typename B::Context& context() { return ctx_; }

 private:
  friend class Model<B>;
  struct MtpState {
    typename B::KvCache kv;
    std::vector<int64_t> positions;  // of the entries in the cache, increasing
    std::vector<int32_t> combined;   // the token each entry combined (x_{p+1+k} for step k)
    typename B::Buffer output_buf;
    Rows output;
    bool allocated = false;
  };

  explicit Session(Model<B> model) : model_(std::move(model)) {}

  Status write_state(detail::ByteWriter& w) const;

  // Drops step k's entries from the first one for which stale(token index, token) holds.
  template <class Stale>
  void drop_mtp_entries(size_t k, Stale&& stale) {
    auto& m = mtp_[k];
    size_t keep = 0;
    while (keep < m.positions.size() &&
           !stale(m.positions[keep] + 1 + static_cast<int64_t>(k), m.combined[keep]))
      ++keep;
    m.positions.resize(keep);
    m.combined.resize(keep);
  }
  Status ensure_mtp(size_t step) {
    if (step >= mtp_.size()) mtp_.resize(step + 1);
    if (mtp_[step].allocated) return ok();
    if (auto s = B::make_kv_cache(ctx_, mtp_[step].kv, 1, attention_shape(model_.config()), capacity_); !s) return s;
    mtp_[step].allocated = true;
    return ok();
  }

  Status validate_tokens(std::span<const int32_t> tokens, const char* what) const {
    const int64_t V = model_.config().vocab_size;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] < 0 || tokens[i] >= V) {
        return Error(Errc::invalid_argument, std::string(what) + ": token id " + std::to_string(tokens[i]) +
                                                 " at index " + std::to_string(i) + " is not in [0, " +
                                                 std::to_string(V) + ")");
      }
    }
    return ok();
  }
  Status ensure_logits(int64_t rows) {
    const uint64_t n = static_cast<uint64_t>(rows) * model_.config().vocab_size;
    if (logits_host_.size() < n) {
      if (auto s = logits_buf_.reserve(n, "logits"); !s) return s;
      logits_host_ = std::span<float>(logits_buf_.data(), n);
    }
    return ok();
  }
  // Forgets every output of the last pass (after a failed append: they are partly overwritten).
  void drop_outputs() {
    logits_rows_ = 0;
    clear_selections();
    hidden_.count = 0;
    hidden_position_ = size();
  }
  // Forgets the argmax ids and top selections of the last append.
  void clear_selections() {
    argmax_.clear();
    top_count_ = 0;
    top_ids_.clear();
    top_logits_.clear();
  }
  Status ensure_hidden(int64_t rows) {
    auto r = B::rows(hidden_buf_, rows, model_.config().hidden_size, "hidden states");
    if (!r) return std::move(r).error();
    hidden_ = *r;
    return ok();
  }

  Model<B> model_;
  int64_t capacity_ = 0;
  int64_t batch_ = 0;
  std::vector<int32_t> tokens_;
  typename B::Context ctx_;
  typename B::KvCache kv_;
  Activations<B> act_;
  std::vector<int64_t> positions_;
  typename B::Buffer chunk_hidden_buf_;  // post-norm rows of the current chunk
  typename B::Buffer hidden_buf_;        // kept post-norm rows of the last append
  Rows hidden_;
  int64_t hidden_position_ = 0;
  typename B::Buffer logits_dev_buf_;    // logits rows as the backend computes them
  mimo::detail::AlignedBuffer<float> logits_buf_; // host copy
  std::span<float> logits_host_;
  int64_t logits_rows_ = 0;
  std::vector<int32_t> argmax_;          // of the last append's AppendOptions::argmax rows
  int32_t top_count_ = 0;                // and of its AppendOptions::top rows
  std::vector<int32_t> top_ids_;
  std::vector<float> top_logits_;
  mimo::detail::AlignedBuffer<float> mtp_logits_buf_;
  int64_t mtp_logits_rows_ = 0;
  std::vector<MtpState> mtp_;
  typename B::Buffer gather_buf_;
};


// ---------------------------------------------------------------------------------------------

template <class B>
Expected<Logits> Session<B>::append(std::span<const int32_t> tokens, const AppendOptions& options) {
  const ModelConfig& c = model_.config();
  const Weights<B>& w = model_.weights();
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (auto st = validate_tokens(tokens, "append"); !st) return std::move(st).error();
  if (n > capacity_ - size()) {
    return Error(Errc::context_full, "append: " + std::to_string(n) + " tokens do not fit: the session holds " +
                                         std::to_string(size()) + " of " + std::to_string(capacity_));
  }
  const auto trailing = [n](OutputRows r) { return r == OutputRows::all ? n : r == OutputRows::last ? std::min<int64_t>(n, 1) : 0; };
  const int64_t logit_rows = trailing(options.logits), hidden_rows = trailing(options.hidden);
  const int64_t argmax_rows = trailing(options.argmax), top_rows = trailing(options.top);
  if (top_rows > 0 && (options.top_count < 1 || options.top_count > std::min<int64_t>(c.vocab_size, max_top_count))) {
    return Error(Errc::invalid_argument, "append: top_count " + std::to_string(options.top_count) + " is not in [1, " +
                                             std::to_string(std::min<int64_t>(c.vocab_size, max_top_count)) + "]");
  }
  const int64_t computed_rows = std::max({logit_rows, argmax_rows, top_rows});  // the rows through lm_head
  if (auto st = ensure_logits(logit_rows); !st) return std::move(st).error();
  // From here a failure drops the last pass's outputs: ensure_logits may have moved the logits
  // buffer (without its contents) and ensure_hidden resized the hidden rows.
  if (auto st = ensure_hidden(hidden_rows); !st) {
    drop_outputs();
    return std::move(st).error();
  }
  auto logits_dev = B::rows(logits_dev_buf_, std::min(computed_rows, batch_), c.vocab_size, "logits");
  if (!logits_dev) {
    drop_outputs();
    return std::move(logits_dev).error();
  }
  argmax_.assign(static_cast<size_t>(argmax_rows), -1);
  top_count_ = top_rows > 0 ? options.top_count : 0;
  const size_t top_size = static_cast<size_t>(top_rows) * static_cast<size_t>(top_count_);
  top_ids_.assign(top_size, -1);
  top_logits_.assign(top_size, 0.0f);

  const int64_t start = size();
  hidden_position_ = start + n - hidden_rows;
  const int64_t keep_from = n - hidden_rows, logits_from = n - logit_rows, argmax_from = n - argmax_rows;
  const int64_t top_from = n - top_rows;
  for (int64_t first = 0; first < n; first += batch_) {
    const int64_t m = std::min(batch_, n - first);
    const int64_t pos0 = start + first;
    positions_.resize(static_cast<size_t>(m));
    for (int64_t i = 0; i < m; ++i) positions_[i] = pos0 + i;
    Activations<B>& a = act_.with_rows(m);
    const Rows chunk_hidden{chunk_hidden_buf_.data(), m, c.hidden_size, c.hidden_size};
    // Keep the requested hidden rows and compute the requested logits of this chunk: rows
    // [c0, end) through lm_head, of which [l0, end) come to the host, [a0, end) get an argmax and
    // [t0, end) a top selection.
    const int64_t end = first + m;
    const int64_t h0 = std::max(first, keep_from), c0 = std::max(first, n - computed_rows);
    const int64_t l0 = std::max(first, logits_from), a0 = std::max(first, argmax_from), t0 = std::max(first, top_from);
    const Rows out{logits_dev->data, std::max<int64_t>(end - c0, 0), c.vocab_size, c.vocab_size};
    // One forward pass, enqueued as a unit (a GPU backend may replay it as a graph).
    Status st = B::forward(ctx_, [&](typename B::Context& x) -> Status {
      B::embed(x, w.embed_tokens, tokens.subspan(first, m), a.x);
      if (auto s = main_stack<B>(x, c, w, kv_, pos0, positions_, a, chunk_hidden, options.cancel); !s) return s;
      if (h0 < end) B::copy_rows(x, chunk_hidden.slice(h0 - first, end - h0), hidden_.slice(h0 - keep_from, end - h0));
      if (c0 < end) B::linear(x, chunk_hidden.slice(c0 - first, end - c0), {{&w.lm_head, nullptr, out}});
      if (a0 < end) B::argmax_rows(x, out.slice(a0 - c0, end - a0));
      if (t0 < end) B::top_rows(x, out.slice(t0 - c0, end - t0), top_count_);
      return ok();
    });
    if (st && l0 < end) st = B::to_host(ctx_, out.slice(l0 - c0, end - l0), logits_host_.data() + (l0 - logits_from) * c.vocab_size);
    if (st && a0 < end) {
      st = B::read_argmax(ctx_, std::span<int32_t>(argmax_).subspan(static_cast<size_t>(a0 - argmax_from), static_cast<size_t>(end - a0)));
    }
    if (st && t0 < end) {
      const size_t at = static_cast<size_t>(t0 - top_from) * static_cast<size_t>(top_count_);
      const size_t size = static_cast<size_t>(end - t0) * static_cast<size_t>(top_count_);
      st = B::read_top(ctx_, std::span<int32_t>(top_ids_).subspan(at, size), std::span<float>(top_logits_).subspan(at, size));
    }
    if (!st) {
      tokens_.resize(static_cast<size_t>(start));  // drop earlier chunks too: the session is unchanged
      drop_outputs();
      return std::move(st).error();
    }
    tokens_.insert(tokens_.end(), tokens.begin() + first, tokens.begin() + first + m);
  }
  logits_rows_ = logit_rows;
  // MTP entries that ran ahead of the session must match the tokens now appended.
  for (size_t k = 0; k < mtp_.size(); ++k) {
    drop_mtp_entries(k, [&](int64_t index, int32_t token) {
      return index >= start && (index >= size() || tokens_[static_cast<size_t>(index)] != token);
    });
  }
  return logits();
}

template <class B>
Expected<Logits> Session<B>::mtp_forward(const MtpBatch& b, const std::atomic<bool>* cancel) {
  const ModelConfig& c = model_.config();
  const Weights<B>& w = model_.weights();
  const int K = static_cast<int>(c.num_nextn_predict_layers);
  if (K == 0) return Error(Errc::invalid_argument, "mtp_forward: the checkpoint has no MTP layers");
  if (b.step < 0 || b.step > 64) return Error(Errc::invalid_argument, "mtp_forward: step " + std::to_string(b.step) + " is not in [0, 64]");
  const int64_t n = static_cast<int64_t>(b.tokens.size());
  if (b.source_rows.size() != b.tokens.size() || b.positions.size() != b.tokens.size()) {
    return Error(Errc::invalid_argument, "mtp_forward: source_rows, tokens and positions differ in length");
  }
  if (n > batch_) {
    return Error(Errc::invalid_argument, "mtp_forward: " + std::to_string(n) + " rows exceed the session batch of " +
                                             std::to_string(batch_));
  }
  if (auto st = validate_tokens(b.tokens, "mtp_forward"); !st) return std::move(st).error();
  const Rows source = b.source.data ? b.source : b.step == 0 ? hidden_ : mtp_output(b.step - 1);
  for (size_t i = 0; i < b.source_rows.size(); ++i) {
    if (b.source_rows[i] < 0 || b.source_rows[i] >= source.count) {
      return Error(Errc::invalid_argument, "mtp_forward: source row " + std::to_string(b.source_rows[i]) +
                                               " is not among the " + std::to_string(source.count) + " rows of " +
                                               (b.step == 0 ? "kept hidden states" : "the previous step's outputs"));
    }
    if (b.positions[i] < 0 || b.positions[i] >= capacity_) {
      return Error(Errc::invalid_argument, "mtp_forward: position " + std::to_string(b.positions[i]) + " is outside the context");
    }
  }
  if (auto s = ensure_mtp(static_cast<size_t>(b.step)); !s) return std::move(s).error();
  MtpState& st = mtp_[b.step];
  const int64_t length = static_cast<int64_t>(st.positions.size());
  if (n > capacity_ - length) {
    return Error(Errc::context_full, "mtp_forward: step " + std::to_string(b.step) + " cache holds " +
                                         std::to_string(length) + " of " + std::to_string(capacity_) + " entries");
  }
  for (size_t i = 0; i < b.positions.size(); ++i) {
    const int64_t previous = i > 0 ? b.positions[i - 1] : length > 0 ? st.positions.back() : -1;
    if (b.positions[i] <= previous) {
      return Error(Errc::invalid_argument, "mtp_forward: positions must increase past the cache's last entry (" +
                                               std::to_string(previous) + "), found " + std::to_string(b.positions[i]));
    }
  }
  if (cancel && cancel->load(std::memory_order_relaxed)) return Error(Errc::cancelled, "MTP step cancelled");

  auto prev = B::rows(gather_buf_, n, c.hidden_size, "MTP inputs");
  if (!prev) return std::move(prev).error();
  auto out = B::rows(st.output_buf, n, c.hidden_size, "MTP outputs");
  if (!out) return std::move(out).error();
  const int64_t logit_rows = b.logits == OutputRows::all ? n : b.logits == OutputRows::last ? std::min<int64_t>(n, 1) : 0;
  mtp_logits_rows_ = 0;
  const int64_t vocab = model_.draft_vocab();
  if (auto s = mtp_logits_buf_.reserve(static_cast<uint64_t>(std::max<int64_t>(logit_rows, 1)) * vocab, "MTP logits"); !s) {
    return std::move(s).error();
  }
  auto logits_dev = B::rows(logits_dev_buf_, std::max<int64_t>(logit_rows, 1), vocab, "logits");
  if (!logits_dev) return std::move(logits_dev).error();
  logits_dev->count = logit_rows;
  const MtpWeights<B>& layer = w.mtp_layers[static_cast<size_t>(std::min(b.step, K - 1))];
  Status done = B::forward(ctx_, [&](typename B::Context& x) -> Status {
    B::gather_rows(x, source, b.source_rows, *prev);
    mtp_layer<B>(x, c, w, layer, st.kv, length, *prev, b.tokens, b.positions, act_.with_rows(n), *out);
    if (logit_rows > 0) B::linear(x, out->slice(n - logit_rows, logit_rows), {{&w.mtp_head(), nullptr, *logits_dev}});
    return ok();
  });
  if (done && logit_rows > 0) done = B::to_host(ctx_, *logits_dev, mtp_logits_buf_.data());
  if (!done) return std::move(done).error();
  st.output = *out;
  st.positions.insert(st.positions.end(), b.positions.begin(), b.positions.end());
  st.combined.insert(st.combined.end(), b.tokens.begin(), b.tokens.end());
  mtp_logits_rows_ = logit_rows;
  return mtp_logits();
}

template <class B>
Expected<Session<B>> Session<B>::copy() const {
  auto fresh = model_.new_session(
      SessionOptions<B>{.context = capacity_, .batch = batch_, .backend = B::shared_context_options(ctx_)});
  if (!fresh) return fresh;
  Session<B>& s = *fresh;
  s.tokens_ = tokens_;
  if (auto st = B::copy_kv_cache(s.kv_, kv_, size()); !st) return std::move(st).error();
  // The outputs of the last pass.
  if (hidden_.count > 0) {
    if (auto st = s.ensure_hidden(hidden_.count); !st) return std::move(st).error();
    B::copy_rows(s.ctx_, hidden_, s.hidden_);
  }
  s.hidden_position_ = hidden_position_;
  if (auto st = s.ensure_logits(logits_rows_); !st) return std::move(st).error();
  std::copy(logits_host_.begin(), logits_host_.begin() + logits_rows_ * model_.config().vocab_size, s.logits_host_.begin());
  s.logits_rows_ = logits_rows_;
  s.argmax_ = argmax_;
  s.top_count_ = top_count_;
  s.top_ids_ = top_ids_;
  s.top_logits_ = top_logits_;
  s.mtp_.resize(mtp_.size());
  for (size_t k = 0; k < mtp_.size(); ++k) {
    if (!mtp_[k].allocated) continue;
    if (auto st = B::copy_kv_cache(s.mtp_[k].kv, mtp_[k].kv, static_cast<int64_t>(mtp_[k].positions.size())); !st) {
      return std::move(st).error();
    }
    s.mtp_[k].allocated = true;
    s.mtp_[k].positions = mtp_[k].positions;
    s.mtp_[k].combined = mtp_[k].combined;
    auto out = B::rows(s.mtp_[k].output_buf, mtp_[k].output.count, model_.config().hidden_size, "MTP outputs");
    if (!out) return std::move(out).error();
    B::copy_rows(s.ctx_, mtp_[k].output, *out);
    s.mtp_[k].output = *out;
  }
  return fresh;
}


// ----- saved state -----
//
// Layout (little-endian): "MIMOSESS", u32 version, u64 model fingerprint, u32 KV format, u64
// layers, kv heads, head_dim; u64 n, i32 tokens[n], main KV (backend layout of n entries);
// u64 logits rows (0 or 1), f32 logits[V]; u64 hidden rows (0 or 1), f32 hidden[H]; (version
// 2:) u64 argmax rows (0 or 1), i32 argmax; u64 top count (0: none), i32 top ids[count], f32 top
// logits[count]; u64 MTP steps, for each u64 entries, i64 positions[entries], i32 combined
// tokens[entries] and its KV; then u64 checksum of everything before it. Version 1 (without the
// last row's argmax and top selection) is still read.

namespace detail {
inline constexpr char kSessionMagic[8] = {'M', 'I', 'M', 'O', 'S', 'E', 'S', 'S'};
inline constexpr uint32_t kSessionVersion = 2;

// Identifies the model a state belongs to: its config, size and a sample of its weights.
template <class B>
uint64_t model_fingerprint(const Model<B>& m) {
  RunningHash h;
  const std::string json = m.config().to_json();
  h.update(json.data(), json.size());
  const uint64_t bytes = m.checkpoint().tensor_bytes();
  h.update(&bytes, sizeof bytes);
  for (const char* name : {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}) {
    const TensorView t = m.checkpoint().find(name);
    if (t) h.update(t.data, static_cast<size_t>(std::min<uint64_t>(t.nbytes(), 4096)));
  }
  return h.digest();
}
}  // namespace detail

template <class B>
Status Session<B>::write_state(detail::ByteWriter& w) const {
  const ModelConfig& c = model_.config();
  const int64_t n = size();
  Status s = w.write(detail::kSessionMagic, 8);
  if (s) s = w.put<uint32_t>(detail::kSessionVersion);
  if (s) s = w.put<uint64_t>(detail::model_fingerprint(model_));
  if (s) s = w.put<uint32_t>(B::kv_format(kv_));
  for (int64_t v : {c.num_hidden_layers, c.num_key_value_heads, c.head_dim}) {
    if (s) s = w.put<uint64_t>(static_cast<uint64_t>(v));
  }
  if (s) s = w.put<uint64_t>(static_cast<uint64_t>(n));
  if (s) s = w.write(tokens_.data(), tokens_.size() * sizeof(int32_t));
  if (s) s = B::kv_save(kv_, n, w);
  // The last row's logits and hidden state, so a restored session can sample right away.
  const bool has_logits = logits_rows_ > 0;
  if (s) s = w.put<uint64_t>(has_logits ? 1 : 0);
  if (s && has_logits) {
    s = w.write(logits_host_.data() + (logits_rows_ - 1) * c.vocab_size, static_cast<size_t>(c.vocab_size) * sizeof(float));
  }
  const bool has_hidden = hidden_.count > 0 && hidden_position_ + hidden_.count == n;  // the row of position n - 1
  if (s) s = w.put<uint64_t>(has_hidden ? 1 : 0);
  if (s && has_hidden) s = B::rows_save(hidden_.slice(hidden_.count - 1, 1), w);
  // The last row's argmax id and top selection, so that a session whose last pass brought back
  // only those continues from them too.
  if (s) s = w.put<uint64_t>(argmax_.empty() ? 0 : 1);
  if (s && !argmax_.empty()) s = w.put<int32_t>(argmax_.back());
  const size_t top_count = top_ids_.empty() ? 0 : static_cast<size_t>(top_count_);
  if (s) s = w.put<uint64_t>(top_count);
  if (s && top_count) s = w.write(top_ids_.data() + top_ids_.size() - top_count, top_count * sizeof(int32_t));
  if (s && top_count) s = w.write(top_logits_.data() + top_logits_.size() - top_count, top_count * sizeof(float));
  if (s) s = w.put<uint64_t>(mtp_.size());
  for (const auto& m : mtp_) {
    const int64_t entries = m.allocated ? static_cast<int64_t>(m.positions.size()) : 0;
    if (s) s = w.put<uint64_t>(static_cast<uint64_t>(entries));
    if (s && entries) s = w.write(m.positions.data(), m.positions.size() * sizeof(int64_t));
    if (s && entries) s = w.write(m.combined.data(), m.combined.size() * sizeof(int32_t));
    if (s && entries) s = B::kv_save(m.kv, entries, w);
  }
  if (s) s = w.finish();
  return s;
}

template <class B>
Status Session<B>::save(std::vector<std::byte>& out) const {
  out.clear();
  detail::ByteWriter w(out);
  return write_state(w);
}

template <class B>
Status Session<B>::save_file(const std::filesystem::path& path) const {
  std::FILE* f = std::fopen(path.string().c_str(), "wb");
  if (!f) return Error(Errc::io, path.string() + ": cannot create");
  detail::ByteWriter w(f, path.string());
  Status s = write_state(w);
  if (std::fclose(f) != 0 && s) s = Error(Errc::io, path.string() + ": close failed");
  return s;
}

template <class B>
Status Session<B>::restore(std::span<const std::byte> state) {
  const ModelConfig& c = model_.config();
  const std::string what = "session state";
  auto bad = [&](const std::string& why) { return Error(Errc::corrupt_state, what + ": " + why); };
  if (state.size() < 8 + 4 + 8) return bad("too short (" + std::to_string(state.size()) + " bytes)");
  if (std::memcmp(state.data(), detail::kSessionMagic, 8) != 0) return bad("not a mimo session state");
  // The checksum covers everything before it: check it before trusting any field.
  {
    detail::RunningHash h;
    h.update(state.data(), state.size() - 8);
    uint64_t stored;
    std::memcpy(&stored, state.data() + state.size() - 8, 8);
    if (h.digest() != stored) return bad("checksum mismatch (the data is corrupted or truncated)");
  }
  detail::ByteReader r(state.first(state.size() - 8), what);
  (void)r.take(8, "magic");
  auto version = r.get<uint32_t>("version");
  if (!version) return std::move(version).error();
  if (*version != 1 && *version != detail::kSessionVersion) return bad("version " + std::to_string(*version) + " is not supported");
  auto fingerprint = r.get<uint64_t>("model fingerprint");
  if (!fingerprint) return std::move(fingerprint).error();
  if (*fingerprint != detail::model_fingerprint(model_)) return bad("saved with a different model");
  auto format = r.get<uint32_t>("KV format");
  if (!format) return std::move(format).error();
  if (*format != B::kv_format(kv_)) return bad("saved with another KV cache format");
  for (int64_t expected : {c.num_hidden_layers, c.num_key_value_heads, c.head_dim}) {
    auto v = r.get<uint64_t>("KV shape");
    if (!v) return std::move(v).error();
    if (*v != static_cast<uint64_t>(expected)) return bad("KV cache shape differs from the model's");
  }
  auto n = r.get<uint64_t>("token count");
  if (!n) return std::move(n).error();
  if (*n > static_cast<uint64_t>(capacity_)) {
    return Error(Errc::context_full, what + ": " + std::to_string(*n) + " tokens do not fit a session of " +
                                         std::to_string(capacity_));
  }
  auto token_bytes = r.take(*n * sizeof(int32_t), "tokens");
  if (!token_bytes) return std::move(token_bytes).error();
  std::vector<int32_t> tokens(static_cast<size_t>(*n));
  if (*n) std::memcpy(tokens.data(), token_bytes->data(), token_bytes->size());
  if (auto s = validate_tokens(tokens, "session state"); !s) return bad(s.error().message());
  auto kv = r.take(B::kv_bytes(kv_, static_cast<int64_t>(*n)), "KV cache");
  if (!kv) return std::move(kv).error();

  auto logits_rows = r.get<uint64_t>("logits rows");
  if (!logits_rows) return std::move(logits_rows).error();
  if (*logits_rows > 1) return bad("more than one row of logits");
  auto logits = r.take(*logits_rows * c.vocab_size * sizeof(float), "logits");
  if (!logits) return std::move(logits).error();
  auto hidden_rows = r.get<uint64_t>("hidden rows");
  if (!hidden_rows) return std::move(hidden_rows).error();
  if (*hidden_rows > 1) return bad("more than one hidden row");
  auto hidden = r.take(*hidden_rows * c.hidden_size * sizeof(float), "hidden state");
  if (!hidden) return std::move(hidden).error();
  std::vector<int32_t> argmax, top_ids;
  std::vector<float> top_logits;
  if (*version >= 2) {
    auto argmax_rows = r.get<uint64_t>("argmax rows");
    if (!argmax_rows) return std::move(argmax_rows).error();
    if (*argmax_rows > 1) return bad("more than one argmax row");
    if (*argmax_rows) {
      auto id = r.get<int32_t>("argmax");
      if (!id) return std::move(id).error();
      if (*id < -1 || *id >= c.vocab_size) return bad("argmax " + std::to_string(*id) + " is outside the vocabulary");
      argmax.push_back(*id);
    }
    auto top_count = r.get<uint64_t>("top count");
    if (!top_count) return std::move(top_count).error();
    if (*top_count > static_cast<uint64_t>(std::min<int64_t>(c.vocab_size, max_top_count))) {
      return bad("top count " + std::to_string(*top_count) + " is more than the vocabulary or max_top_count");
    }
    auto id_bytes = r.take(*top_count * sizeof(int32_t), "top ids");
    if (!id_bytes) return std::move(id_bytes).error();
    auto logit_bytes = r.take(*top_count * sizeof(float), "top logits");
    if (!logit_bytes) return std::move(logit_bytes).error();
    top_ids.resize(static_cast<size_t>(*top_count));
    top_logits.resize(top_ids.size());
    if (*top_count) {
      std::memcpy(top_ids.data(), id_bytes->data(), id_bytes->size());
      std::memcpy(top_logits.data(), logit_bytes->data(), logit_bytes->size());
    }
    // Ascending ids of the vocabulary, or a refused row's -1s.
    const bool refused = !top_ids.empty() && std::all_of(top_ids.begin(), top_ids.end(), [](int32_t id) { return id == -1; });
    for (size_t i = 0; i < top_ids.size() && !refused; ++i) {
      if (top_ids[i] < 0 || top_ids[i] >= c.vocab_size || (i > 0 && top_ids[i] <= top_ids[i - 1])) {
        return bad("top ids are not ascending ids of the vocabulary");
      }
    }
  }

  auto steps = r.get<uint64_t>("MTP steps");
  if (!steps) return std::move(steps).error();
  if (*steps > 64) return bad("too many MTP steps");
  struct SavedMtp {
    std::vector<int64_t> positions;
    std::vector<int32_t> combined;
    std::span<const std::byte> kv;
  };
  std::vector<SavedMtp> mtp;
  for (uint64_t k = 0; k < *steps; ++k) {
    auto entries = r.get<uint64_t>("MTP entries");
    if (!entries) return std::move(entries).error();
    if (*entries > static_cast<uint64_t>(capacity_)) return bad("MTP cache longer than the session's context");
    auto position_bytes = r.take(*entries * sizeof(int64_t), "MTP positions");
    if (!position_bytes) return std::move(position_bytes).error();
    SavedMtp m;
    m.positions.resize(static_cast<size_t>(*entries));
    if (*entries) std::memcpy(m.positions.data(), position_bytes->data(), position_bytes->size());
    for (size_t i = 0; i < m.positions.size(); ++i) {
      if (m.positions[i] < 0 || m.positions[i] >= static_cast<int64_t>(*n) || (i > 0 && m.positions[i] <= m.positions[i - 1])) {
        return bad("MTP entry positions are not increasing positions of the saved tokens");
      }
    }
    auto combined_bytes = r.take(*entries * sizeof(int32_t), "MTP tokens");
    if (!combined_bytes) return std::move(combined_bytes).error();
    m.combined.resize(static_cast<size_t>(*entries));
    if (*entries) std::memcpy(m.combined.data(), combined_bytes->data(), combined_bytes->size());
    if (auto v = validate_tokens(m.combined, "session state MTP tokens"); !v) return bad(v.error().message());
    auto bytes = r.take(*entries ? B::kv_bytes_layers(kv_, 1, static_cast<int64_t>(*entries)) : 0, "MTP cache");
    if (!bytes) return std::move(bytes).error();
    m.kv = *bytes;
    mtp.push_back(std::move(m));
  }
  if (r.remaining() != 0) return bad(std::to_string(r.remaining()) + " unexpected bytes at the end");

  // Everything is validated; allocate what is missing, then commit.
  for (size_t k = 0; k < mtp.size(); ++k) {
    if (!mtp[k].positions.empty()) {
      if (auto s = ensure_mtp(k); !s) return s;
    }
  }
  if (auto s = ensure_logits(static_cast<int64_t>(*logits_rows)); !s) return s;
  if (auto s = ensure_hidden(static_cast<int64_t>(*hidden_rows)); !s) return s;
  detail::ByteReader kv_reader(*kv, what);
  if (auto s = B::kv_load(kv_, static_cast<int64_t>(*n), kv_reader); !s) return s;
  tokens_ = std::move(tokens);
  if (*logits_rows) std::memcpy(logits_host_.data(), logits->data(), logits->size());
  logits_rows_ = static_cast<int64_t>(*logits_rows);
  argmax_ = std::move(argmax);
  top_count_ = static_cast<int32_t>(top_ids.size());
  top_ids_ = std::move(top_ids);
  top_logits_ = std::move(top_logits);
  if (*hidden_rows) {
    detail::ByteReader hr(*hidden, what);
    if (auto s = B::rows_load(hidden_, hr); !s) return s;
  }
  hidden_position_ = size() - static_cast<int64_t>(*hidden_rows);
  for (size_t k = 0; k < mtp_.size(); ++k) {
    mtp_[k].positions = k < mtp.size() ? std::move(mtp[k].positions) : std::vector<int64_t>();
    mtp_[k].combined = k < mtp.size() ? std::move(mtp[k].combined) : std::vector<int32_t>();
    mtp_[k].output.count = 0;
    if (!mtp_[k].positions.empty()) {
      detail::ByteReader mr(mtp[k].kv, what);
      if (auto s = B::kv_load(mtp_[k].kv, static_cast<int64_t>(mtp_[k].positions.size()), mr); !s) return s;
    }
  }
  return ok();
}

template <class B>
Status Session<B>::restore_file(const std::filesystem::path& path) {
  auto file = detail::MappedFile::open(path);
  if (!file) return std::move(file).error();
  auto s = restore(std::span<const std::byte>(file->data(), static_cast<size_t>(file->size())));
  if (!s) return std::move(s).error().with_context(path.string());
  return s;
}

}  // namespace mimo
