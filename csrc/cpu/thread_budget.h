// How many threads a CPU parallel region gets: as many as its work pays for, not as many as the machine has.
// A region waits for every one of its threads to be scheduled; on a busy machine (other processes,
// DataLoader workers) that wait is a time slice, milliseconds, per region. A training step's MMD of a
// 64 + 64 batch is well under a millisecond of work: with two threads beside two busy processes it took 40x
// longer than with one (the measurement; benchmarks/busy_machine.py), idle both took the same.
#pragma once
#include <algorithm>
#include <cstdint>

namespace pytl {

// Work per thread below which one more thread costs more than it saves: about 1.3 ms of pair sweep on one
// core here (pair-features, ~25e9 per second). Scheduling a second thread costs tens of microseconds on an
// idle machine and milliseconds on a busy one: at 2^23 a 256 + 256 batch of width 256 (two threads' worth)
// still took 1.7x longer on two threads than on one beside two busy processes; at 2^25 it runs on one.
constexpr double kMinWorkPerThread = static_cast<double>(int64_t{1} << 25);

// Threads for `work` units (pair-features) when up to `max_threads` could run: at least 1.
inline int64_t threads_for_work(double work, int64_t max_threads) {
  const double by_work = work / kMinWorkPerThread;
  return std::max<int64_t>(1, std::min<int64_t>(max_threads, static_cast<int64_t>(by_work)));
}

}  // namespace pytl
