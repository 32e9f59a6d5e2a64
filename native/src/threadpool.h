// threadpool.h — persistent worker threads for the forward pass.
// run(fn) calls fn(ith, nth) on every thread (the caller is thread 0) and
// returns when all are done. Workers spin briefly between regions (a forward
// pass has hundreds of short regions) and sleep when idle.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace specode {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool &) = delete;
  ThreadPool &operator=(const ThreadPool &) = delete;

  int size() const { return n_threads_; }
  void run(const std::function<void(int ith, int nth)> &fn);

 private:
  void worker(int ith);

  int n_threads_;
  std::vector<std::thread> threads_;
  const std::function<void(int, int)> *job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<int> sleepers_{0};
};

// Number of cores available to this process.
int hardware_threads();

}  // namespace specode
