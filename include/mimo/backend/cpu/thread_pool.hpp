// A fixed set of worker threads that run one parallel job at a time. Sized by the caller; idle
// workers sleep on a condition variable (after a short spin that keeps back-to-back jobs of a
// forward pass cheap), so a loaded model costs no CPU while a game renders.
//
// Thread-safety: run() may be called from any thread; concurrent callers are served one after
// another. A pool may be shared by several sessions.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "mimo/error.hpp"

#if !defined(_WIN32)
#include <pthread.h>
#endif

namespace mimo::cpu {

class ThreadPool {
 public:
  // A pool of `threads` threads in all, the calling thread included (0: the hardware threads).
  static Expected<std::shared_ptr<ThreadPool>> create(int threads = 0) {
    if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
    if (threads <= 0) threads = 1;
    if (threads > 1024) return Error(Errc::invalid_argument, "thread pool: " + std::to_string(threads) + " threads requested");
    std::shared_ptr<ThreadPool> pool(new (std::nothrow) ThreadPool(threads));
    if (!pool) return Error(Errc::out_of_memory, "thread pool: allocation failed");
    for (int i = 1; i < threads; ++i) {
      if (!pool->start_worker(i)) {
        return Error(Errc::backend, "thread pool: cannot start thread " + std::to_string(i) + " of " + std::to_string(threads));
      }
    }
    return pool;
  }

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    for (auto& w : workers_) join_worker(w);
  }

  int size() const { return threads_; }

  // Runs fn(thread_index, thread_count) once on each thread (index 0 on the caller) and returns
  // when all have finished. fn must not call run() on the same pool.
  template <class Fn>
  void run(Fn&& fn) {
    std::lock_guard<std::mutex> job_lock(job_mutex_);
    if (threads_ == 1) {
      fn(0, 1);
      return;
    }
    Job<std::remove_reference_t<Fn>> job(fn);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      pending_.store(threads_ - 1, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    fn(0, threads_);
    // Wait for the workers: spin briefly (jobs are short), then sleep.
    for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) {
      if (spin > 20000) {
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
        break;
      }
      cpu_relax();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = nullptr;
  }

  // Splits [0, n) into contiguous ranges, one per thread, and runs fn(begin, end) on each.
  template <class Fn>
  void parallel_for(int64_t n, Fn&& fn) {
    if (n <= 0) return;
    run([&](int t, int nt) {
      const int64_t begin = n * t / nt, end = n * (t + 1) / nt;
      if (begin < end) fn(begin, end);
    });
  }

 private:
  struct JobBase {
    virtual void call(int t, int nt) = 0;
    virtual ~JobBase() = default;
  };
  template <class Fn>
  struct Job final : JobBase {
    explicit Job(Fn& f) : fn(f) {}
    void call(int t, int nt) override { fn(t, nt); }
    Fn& fn;
  };

  struct Worker {
#if defined(_WIN32)
    std::thread thread;
#else
    pthread_t thread{};
#endif
    ThreadPool* pool = nullptr;
    int index = 0;
  };

  explicit ThreadPool(int threads) : threads_(threads) { workers_.reserve(static_cast<size_t>(threads)); }

  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }

  bool start_worker(int index) {
    workers_.push_back(Worker{});
    Worker& w = workers_.back();
    w.pool = this;
    w.index = index;
#if defined(_WIN32)
    w.thread = std::thread([this, index] { worker_loop(index); });
    return true;
#else
    const int rc = pthread_create(
        &w.thread, nullptr,
        [](void* arg) -> void* {
          auto* self = static_cast<Worker*>(arg);
          self->pool->worker_loop(self->index);
          return nullptr;
        },
        &w);
    if (rc != 0) {
      workers_.pop_back();
      return false;
    }
    return true;
#endif
  }

  static void join_worker(Worker& w) {
#if defined(_WIN32)
    if (w.thread.joinable()) w.thread.join();
#else
    pthread_join(w.thread, nullptr);
#endif
  }

  void worker_loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      // Spin a little for the next job of the same forward pass, then sleep.
      uint64_t gen = generation_.load(std::memory_order_acquire);
      for (int spin = 0; gen == seen && spin < 20000; ++spin) {
        cpu_relax();
        gen = generation_.load(std::memory_order_acquire);
      }
      JobBase* job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        seen = generation_.load(std::memory_order_acquire);
        if (stopping_) return;
        job = job_;
      }
      if (job) job->call(index, threads_);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_.notify_one();
      }
    }
  }

  const int threads_;
  std::vector<Worker> workers_;  // reserved up front: worker threads hold pointers into it
  std::mutex job_mutex_;         // one job at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  JobBase* job_ = nullptr;
  bool stopping_ = false;
};

}  // namespace mimo::cpu
