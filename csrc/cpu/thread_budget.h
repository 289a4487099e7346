// How many threads a CPU parallel region gets: as many as its work pays for, not as many as the machine has.
// A region waits for every one of its threads to be scheduled; on a busy machine (other processes,
// DataLoader workers) that wait is a time slice, milliseconds, per region. A training step's MMD of a
// 64 + 64 batch is well under a millisecond of work: with two threads beside two busy processes it took 40x
// longer than with one (benchmarks/busy_machine.py), idle both took the same.
#pragma once
#include <algorithm>
#include <cstdint>

namespace pytl {

// Work per thread below which one more thread costs more than it saves: about 0.3 ms of pair sweep on one
// core here (pair-features, ~25e9 per second), where scheduling a second thread on an idle machine costs
// tens of microseconds and on a busy one milliseconds.
constexpr double kMinWorkPerThread = static_cast<double>(int64_t{1} << 23);

// Threads for `work` units (pair-features) when up to `max_threads` could run: at least 1.
inline int64_t threads_for_work(double work, int64_t max_threads) {
  const double by_work = work / kMinWorkPerThread;
  return std::max<int64_t>(1, std::min<int64_t>(max_threads, static_cast<int64_t>(by_work)));
}

}  // namespace pytl
