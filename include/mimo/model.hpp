// Model<Backend>: a loaded checkpoint, immutable and shared by any number of sessions on any
// threads. Session<Backend>: one conversation's state (tokens, KV caches, the outputs of its last
// forward pass); a session is used by one thread at a time.
//
//   auto model = mimo::Model<mimo::Cpu>::load("MiMo-7B-RL");          // Expected<Model<Cpu>>
//   if (!model) { log(model.error().describe()); return; }
//   auto session = model->new_session({.context = 4096});               // Expected<Session<Cpu>>
//   auto logits = session->append(prompt_ids);                          // logits of the last row
//   int next = argmax(logits->last());
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mimo/backend/backend.hpp"
#include "mimo/config.hpp"
#include "mimo/detail/aligned_buffer.hpp"
#include "mimo/error.hpp"
#include "mimo/io/checkpoint.hpp"
#include "mimo/transformer.hpp"
#include "mimo/weights.hpp"

namespace mimo {

struct LoadProgress {
  std::string_view stage;  // "reading weights" or "preparing layers"
  uint64_t done = 0;       // bytes read, or layers prepared
  uint64_t total = 0;
  double fraction = 0.0;   // overall, 0..1
};

struct LoadOptions {
  // Called as loading advances; return false to cancel (load() then returns Errc::cancelled).
  std::function<bool(const LoadProgress&)> on_progress{};
  // Read every weight page once while loading, so the first tokens are not slowed by page faults
  // and a file that cannot be read fails here rather than during generation.
  bool preload = true;
  io::SafetensorsLimits limits{};
};

// Memory a model and one session will use, before committing to them.
struct MemoryEstimate {
  uint64_t weights = 0;    // bytes of weights the backend keeps (mapped file pages on the CPU)
  uint64_t kv_cache = 0;   // bytes of the main KV cache at full context
  uint64_t mtp_cache = 0;  // bytes of one MTP step's KV cache at full context
  uint64_t workspace = 0;  // activations and scratch of one forward chunk
  uint64_t total() const { return weights + kv_cache + mtp_cache + workspace; }
};

template <class B>
struct SessionOptions {
  int64_t context = 4096;  // capacity in tokens, at most max_position_embeddings
  int64_t batch = 256;     // rows per forward chunk: a longer append runs in chunks of this many
  typename B::ContextOptions backend{};
};

struct AppendOptions {
  OutputRows logits = OutputRows::last;
  OutputRows hidden = OutputRows::last;       // post-norm hidden states kept for MTP drafting
  const std::atomic<bool>* cancel = nullptr;  // checked between layers; a cancelled append changes nothing
};

// Logits of the rows of one forward pass, row-major [rows, vocab], in host memory. A view into the
// session: valid until its next forward pass. The caller may edit it (bias, masks) before sampling.
struct Logits {
  float* data = nullptr;
  int64_t rows = 0;
  int64_t vocab = 0;
  std::span<float> row(int64_t i) const { return {data + i * vocab, static_cast<size_t>(vocab)}; }
  std::span<float> last() const { return row(rows - 1); }
};

// One batch of a Multi-Token-Prediction step. Step 0 combines the main model's post-norm hidden
// state at position t with the embedding of token x_{t+1} and predicts x_{t+2}; step k > 0 takes
// the output of step k-1 at t with token x_{t+1+k}, through layer min(k, num_nextn_predict_layers-1).
struct MtpBatch {
  int step = 0;
  std::span<const int32_t> source_rows{};  // per row: a kept hidden row of the last append (step 0) or
                                         // an output row of step-1's last batch (step > 0)
  std::span<const int32_t> tokens{};     // per row: the token whose embedding is combined
  std::span<const int64_t> positions{};  // per row: RoPE position t
  OutputRows logits = OutputRows::all;
};

template <class B>
class Session;

template <class B>
class Model {
 public:
  // Loads a Hugging Face checkpoint directory. Weights stay in the mapped files (CPU) or are
  // uploaded once (GPU). Every tensor is validated against config.json first.
  static Expected<Model> load(const std::filesystem::path& dir, const LoadOptions& options = {});

  // Memory a checkpoint and one session would need, from the headers alone.
  static Expected<MemoryEstimate> estimate_memory(const std::filesystem::path& dir, const SessionOptions<B>& options = {});

  const ModelConfig& config() const { return data_->checkpoint.config(); }
  const Checkpoint& checkpoint() const { return data_->checkpoint; }
  const Weights<B>& weights() const { return data_->weights; }
  MemoryEstimate estimate(const SessionOptions<B>& options) const {
    return estimate_for(config(), data_->checkpoint.tensor_bytes(), options);
  }

  Expected<Session<B>> new_session(const SessionOptions<B>& options = {}) const;

  static MemoryEstimate estimate_for(const ModelConfig& c, uint64_t weight_bytes, const SessionOptions<B>& o) {
    MemoryEstimate m;
    m.weights = weight_bytes;
    const uint64_t per_entry_layer = 2ull * c.kv_dim() * sizeof(float);
    m.kv_cache = per_entry_layer * c.num_hidden_layers * o.context;
    m.mtp_cache = c.num_nextn_predict_layers > 0 ? per_entry_layer * o.context : 0;
    const uint64_t rows = static_cast<uint64_t>(std::max<int64_t>(1, o.batch));
    m.workspace = rows * sizeof(float) *
                  (2 * c.hidden_size + 2 * c.q_dim() + 2 * c.kv_dim() + 2 * c.intermediate_size + 2 * c.hidden_size) +
                  sizeof(float) * c.vocab_size;  // one row of logits
    return m;
  }

 private:
  struct Data {
    Checkpoint checkpoint;
    ModelTensors tensors;
    Weights<B> weights;
  };
  std::shared_ptr<const Data> data_;
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
  Status truncate(int64_t length) {
    if (length < 0 || length > size()) {
      return Error(Errc::invalid_argument, "truncate: length " + std::to_string(length) + " is not in [0, " +
                                               std::to_string(size()) + "]");
    }
    tokens_.resize(static_cast<size_t>(length));
    return ok();
  }

  // The logits of the last forward pass (a mutable view).
  Logits logits() { return Logits{logits_host_.data(), logits_rows_, model_.config().vocab_size}; }

  // Post-norm hidden states kept from the last append (rows selected by AppendOptions::hidden).
  Rows hidden() const { return hidden_; }

  // Runs one MTP step; see MtpBatch. New rows are appended to that step's own KV cache.
  Expected<Logits> mtp_forward(const MtpBatch& batch, const std::atomic<bool>* cancel = nullptr);
  // Entries in step's MTP cache, and rolling them back.
  int64_t mtp_size(int step) const {
    return step >= 0 && step < static_cast<int>(mtp_.size()) ? mtp_[step].length : 0;
  }
  Status mtp_truncate(int step, int64_t entries) {
    if (step < 0 || entries < 0 || entries > mtp_size(step)) {
      return Error(Errc::invalid_argument, "mtp_truncate: step " + std::to_string(step) + " has " +
                                               std::to_string(mtp_size(step)) + " entries, asked for " +
                                               std::to_string(entries));
    }
    if (step < static_cast<int>(mtp_.size())) mtp_[step].length = entries;
    return ok();
  }
  // Outputs (post final_layernorm) of step's last batch.
  Rows mtp_output(int step) const {
    return step >= 0 && step < static_cast<int>(mtp_.size()) ? mtp_[step].output : Rows{};
  }

  // A deep copy: KV caches, tokens and the outputs of the last pass (branching a conversation).
  Expected<Session> copy() const;

  typename B::Context& context() { return ctx_; }

 private:
  friend class Model<B>;
  struct MtpState {
    typename B::KvCache kv;
    int64_t length = 0;
    typename B::Buffer output_buf;
    Rows output;
    bool allocated = false;
  };

  explicit Session(Model<B> model) : model_(std::move(model)) {}

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
  typename B::Buffer logits_dev_buf_;    // logits rows as the backend computes them
  mimo::detail::AlignedBuffer<float> logits_buf_; // host copy
  std::span<float> logits_host_;
  int64_t logits_rows_ = 0;
  std::vector<MtpState> mtp_;
  typename B::Buffer gather_buf_;
};

// ---------------------------------------------------------------------------------------------

template <class B>
Expected<Model<B>> Model<B>::load(const std::filesystem::path& dir, const LoadOptions& options) {
  auto ck = Checkpoint::open(dir, options.limits);
  if (!ck) return std::move(ck).error();
  auto data = std::make_shared<Data>(Data{std::move(*ck), {}, {}});
  auto tensors = ModelTensors::bind(data->checkpoint);
  if (!tensors) return std::move(tensors).error();
  data->tensors = std::move(*tensors);

  auto report = [&](std::string_view stage, uint64_t done, uint64_t total, double fraction) {
    if (!options.on_progress) return true;
    return options.on_progress(LoadProgress{stage, done, total, fraction});
  };
  const double read_share = options.preload ? 0.9 : 0.0;
  if (options.preload) {
    // Touch one byte per page of every tensor, reporting progress every 64 MiB.
    const uint64_t total = data->checkpoint.tensor_bytes();
    uint64_t done = 0, next_report = 0;
    volatile unsigned char sink = 0;
    for (const auto& file : data->checkpoint.files()) {
      const auto& header = file->header();
      file->mapping().advise_willneed(header.data_offset, header.data_size);
      for (const auto& t : header.tensors) {
        const auto* p = reinterpret_cast<const unsigned char*>(file->data(t));
        const uint64_t n = t.end - t.begin;
        for (uint64_t off = 0; off < n; off += 4096) {
          sink = static_cast<unsigned char>(sink + p[off]);
          if (done + off >= next_report) {
            if (!report("reading weights", done + off, total, read_share * static_cast<double>(done + off) / static_cast<double>(total))) {
              return Error(Errc::cancelled, "model load cancelled");
            }
            next_report += 64ull << 20;
          }
        }
        done += n;
      }
    }
    (void)sink;
  }
  auto weights = prepare_weights<B>(data->tensors, [&](size_t done, size_t total) {
    return report("preparing layers", done, total, read_share + (1.0 - read_share) * static_cast<double>(done) / static_cast<double>(total));
  });
  if (!weights) return std::move(weights).error();
  data->weights = std::move(*weights);
  Model m;
  m.data_ = std::move(data);
  return m;
}

template <class B>
Expected<MemoryEstimate> Model<B>::estimate_memory(const std::filesystem::path& dir, const SessionOptions<B>& options) {
  auto ck = Checkpoint::open(dir);
  if (!ck) return std::move(ck).error();
  return estimate_for(ck->config(), ck->tensor_bytes(), options);
}

template <class B>
Expected<Session<B>> Model<B>::new_session(const SessionOptions<B>& o) const {
  const ModelConfig& c = config();
  if (o.context < 1 || o.context > c.max_position_embeddings) {
    return Error(Errc::invalid_argument, "session context " + std::to_string(o.context) + " is not in [1, " +
                                             std::to_string(c.max_position_embeddings) + "] (max_position_embeddings)");
  }
  if (o.batch < 1 || o.batch > 1 << 16) {
    return Error(Errc::invalid_argument, "session batch " + std::to_string(o.batch) + " is not in [1, 65536]");
  }
  Session<B> s(*this);
  s.capacity_ = o.context;
  s.batch_ = std::min(o.batch, o.context);
  const int64_t max_cols = std::max({c.hidden_size * 2, c.intermediate_size, c.q_dim()});
  auto ctx = B::make_context(o.backend, attention_shape(c), s.capacity_, max_cols);
  if (!ctx) return std::move(ctx).error();
  s.ctx_ = std::move(*ctx);
  if (auto st = B::make_kv_cache(s.kv_, c.num_hidden_layers, attention_shape(c), s.capacity_); !st) {
    return std::move(st).error();
  }
  if (auto st = s.act_.allocate(s.batch_, c); !st) return std::move(st).error();
  auto chunk_hidden = B::rows(s.chunk_hidden_buf_, s.batch_, c.hidden_size, "hidden states");
  if (!chunk_hidden) return std::move(chunk_hidden).error();
  s.mtp_.resize(static_cast<size_t>(c.num_nextn_predict_layers));
  s.tokens_.reserve(static_cast<size_t>(s.capacity_));
  return s;
}

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
  const int64_t logit_rows = options.logits == OutputRows::all ? n : options.logits == OutputRows::last ? std::min<int64_t>(n, 1) : 0;
  const int64_t hidden_rows = options.hidden == OutputRows::all ? n : options.hidden == OutputRows::last ? std::min<int64_t>(n, 1) : 0;
  if (auto st = ensure_logits(logit_rows); !st) return std::move(st).error();
  if (auto st = ensure_hidden(hidden_rows); !st) return std::move(st).error();
  auto logits_dev = B::rows(logits_dev_buf_, std::min(logit_rows, batch_), c.vocab_size, "logits");
  if (!logits_dev) return std::move(logits_dev).error();

  const int64_t start = size();
  for (int64_t first = 0; first < n; first += batch_) {
    const int64_t m = std::min(batch_, n - first);
    const int64_t pos0 = start + first;
    positions_.resize(static_cast<size_t>(m));
    for (int64_t i = 0; i < m; ++i) positions_[i] = pos0 + i;
    Activations<B>& a = act_.with_rows(m);
    const Rows chunk_hidden{chunk_hidden_buf_.data(), m, c.hidden_size, c.hidden_size};
    B::embed(ctx_, w.embed_tokens, tokens.subspan(first, m), a.x);
    if (auto st = main_stack<B>(ctx_, c, w, kv_, pos0, positions_, a, chunk_hidden, options.cancel); !st) {
      tokens_.resize(static_cast<size_t>(start));  // drop earlier chunks too: the session is unchanged
      logits_rows_ = 0;
      return std::move(st).error();
    }
    // Keep the requested hidden rows and compute the requested logits of this chunk.
    const int64_t keep_from = n - hidden_rows, logits_from = n - logit_rows;
    const int64_t h0 = std::max(first, keep_from), h1 = first + m;
    if (h0 < h1) B::copy_rows(ctx_, chunk_hidden.slice(h0 - first, h1 - h0), hidden_.slice(h0 - keep_from, h1 - h0));
    const int64_t l0 = std::max(first, logits_from), l1 = first + m;
    if (l0 < l1) {
      const Rows out{logits_dev->data, l1 - l0, c.vocab_size, c.vocab_size};
      B::linear(ctx_, chunk_hidden.slice(l0 - first, l1 - l0), {{&w.lm_head, nullptr, out}});
      if (auto st = B::to_host(ctx_, out, logits_host_.data() + (l0 - logits_from) * c.vocab_size); !st) {
        tokens_.resize(static_cast<size_t>(start));
        logits_rows_ = 0;
        return std::move(st).error();
      }
    }
    tokens_.insert(tokens_.end(), tokens.begin() + first, tokens.begin() + first + m);
  }
  logits_rows_ = logit_rows;
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
  const Rows source = b.step == 0 ? hidden_ : mtp_output(b.step - 1);
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
  if (static_cast<size_t>(b.step) >= mtp_.size()) mtp_.resize(static_cast<size_t>(b.step) + 1);
  MtpState& st = mtp_[b.step];
  if (!st.allocated) {
    if (auto s = B::make_kv_cache(st.kv, 1, attention_shape(c), capacity_); !s) return std::move(s).error();
    st.allocated = true;
  }
  if (n > capacity_ - st.length) {
    return Error(Errc::context_full, "mtp_forward: step " + std::to_string(b.step) + " cache holds " +
                                         std::to_string(st.length) + " of " + std::to_string(capacity_) + " entries");
  }
  if (cancel && cancel->load(std::memory_order_relaxed)) return Error(Errc::cancelled, "MTP step cancelled");

  auto prev = B::rows(gather_buf_, n, c.hidden_size, "MTP inputs");
  if (!prev) return std::move(prev).error();
  B::gather_rows(ctx_, source, b.source_rows, *prev);
  auto out = B::rows(st.output_buf, n, c.hidden_size, "MTP outputs");
  if (!out) return std::move(out).error();
  const MtpWeights<B>& layer = w.mtp_layers[static_cast<size_t>(std::min(b.step, K - 1))];
  mtp_layer<B>(ctx_, c, w, layer, st.kv, st.length, *prev, b.tokens, b.positions, act_.with_rows(n), *out);
  st.output = *out;
  st.length += n;

  const int64_t logit_rows = b.logits == OutputRows::all ? n : b.logits == OutputRows::last ? std::min<int64_t>(n, 1) : 0;
  if (auto s = ensure_logits(logit_rows); !s) return std::move(s).error();
  if (logit_rows > 0) {
    auto logits_dev = B::rows(logits_dev_buf_, logit_rows, c.vocab_size, "logits");
    if (!logits_dev) return std::move(logits_dev).error();
    B::linear(ctx_, out->slice(n - logit_rows, logit_rows), {{&w.lm_head, nullptr, *logits_dev}});
    if (auto s = B::to_host(ctx_, *logits_dev, logits_host_.data()); !s) return std::move(s).error();
  }
  logits_rows_ = logit_rows;
  return logits();
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
  if (auto st = s.ensure_logits(logits_rows_); !st) return std::move(st).error();
  std::copy(logits_host_.begin(), logits_host_.begin() + logits_rows_ * model_.config().vocab_size, s.logits_host_.begin());
  s.logits_rows_ = logits_rows_;
  s.mtp_.resize(mtp_.size());
  for (size_t k = 0; k < mtp_.size(); ++k) {
    if (!mtp_[k].allocated) continue;
    if (auto st = B::copy_kv_cache(s.mtp_[k].kv, mtp_[k].kv, mtp_[k].length); !st) return std::move(st).error();
    s.mtp_[k].allocated = true;
    s.mtp_[k].length = mtp_[k].length;
    auto out = B::rows(s.mtp_[k].output_buf, mtp_[k].output.count, model_.config().hidden_size, "MTP outputs");
    if (!out) return std::move(out).error();
    B::copy_rows(s.ctx_, mtp_[k].output, *out);
    s.mtp_[k].output = *out;
  }
  return fresh;
}

}  // namespace mimo
