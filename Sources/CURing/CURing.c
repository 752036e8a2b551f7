#include "CURing.h"

#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sched.h>
#include <stdlib.h>

struct cur_ring {
  struct io_uring ring;
  // Serialises the two consumers of the completion queue: the completion
  // thread and the submitter's opportunistic `cur_try_reap`.
  pthread_mutex_t cq_lock;
  // Requests prepared and not yet taken from the completion queue.
  _Atomic long pending;
  // The completion thread parks here while nothing is pending, so that
  // requests the submitter reaps itself do not wake it.
  pthread_mutex_t park_lock;
  pthread_cond_t park_cond;
  int parked;
  // Whether the completion thread's last wake-up found nothing to take (the
  // submitter had taken it): only then does it park while nothing is
  // pending. Touched only by the completion thread.
  int idle;
};

cur_ring *cur_create(unsigned entries, int *error) {
  cur_ring *ring = calloc(1, sizeof(*ring));
  if (!ring) {
    *error = -ENOMEM;
    return NULL;
  }
  int result = io_uring_queue_init(entries, &ring->ring, 0);
  if (result < 0) {
    free(ring);
    *error = result;
    return NULL;
  }
  pthread_mutex_init(&ring->cq_lock, NULL);
  pthread_mutex_init(&ring->park_lock, NULL);
  pthread_cond_init(&ring->park_cond, NULL);
  atomic_init(&ring->pending, 0);
  *error = 0;
  return ring;
}

unsigned cur_cq_entries(const cur_ring *ring) { return ring->ring.cq.ring_entries; }

static struct io_uring_sqe *cur_get_sqe(cur_ring *ring) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
  if (sqe) return sqe;
  // Full: hand what is queued to the kernel and try once more.
  if (cur_submit(ring) < 0) return NULL;
  return io_uring_get_sqe(&ring->ring);
}

int cur_prep_rw(cur_ring *ring, int write, int fd, const struct iovec *vectors,
                unsigned count, int64_t offset, uint64_t user_data) {
  struct io_uring_sqe *sqe = cur_get_sqe(ring);
  if (!sqe) return -EBUSY;
  if (write) {
    io_uring_prep_writev(sqe, fd, vectors, count, (__u64)offset);
  } else {
    io_uring_prep_readv(sqe, fd, vectors, count, (__u64)offset);
  }
  io_uring_sqe_set_data64(sqe, user_data);
  atomic_fetch_add(&ring->pending, 1);
  return 0;
}

int cur_prep_fsync(cur_ring *ring, int fd, int datasync, uint64_t user_data) {
  struct io_uring_sqe *sqe = cur_get_sqe(ring);
  if (!sqe) return -EBUSY;
  io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
  io_uring_sqe_set_data64(sqe, user_data);
  atomic_fetch_add(&ring->pending, 1);
  return 0;
}

int cur_submit(cur_ring *ring) {
  for (;;) {
    int result = io_uring_submit(&ring->ring);
    if (result >= 0) return result;
    if (result == -EINTR) continue;
    if (result == -EAGAIN || result == -EBUSY) {
      // The kernel is short of resources or the completion queue must be
      // reaped first (the completion thread does that): try again.
      sched_yield();
      continue;
    }
    return result;
  }
}

// Takes up to `max` ready CQEs; the caller holds cq_lock.
static int cur_take(cur_ring *ring, uint64_t *user_data, int32_t *results, unsigned max) {
  struct io_uring_cqe *cqe;
  unsigned head, taken = 0;
  io_uring_for_each_cqe(&ring->ring, head, cqe) {
    if (taken == max) break;
    user_data[taken] = io_uring_cqe_get_data64(cqe);
    results[taken] = cqe->res;
    taken++;
  }
  io_uring_cq_advance(&ring->ring, taken);
  if (taken) atomic_fetch_sub(&ring->pending, (long)taken);
  return (int)taken;
}

int cur_wait(cur_ring *ring, uint64_t *user_data, int32_t *results, unsigned max) {
  for (;;) {
    if (ring->idle) {
      pthread_mutex_lock(&ring->park_lock);
      while (atomic_load(&ring->pending) == 0) {
        ring->parked = 1;
        pthread_cond_wait(&ring->park_cond, &ring->park_lock);
        ring->parked = 0;
      }
      pthread_mutex_unlock(&ring->park_lock);
    }
    struct io_uring_cqe *cqe;
    int result = io_uring_wait_cqe(&ring->ring, &cqe);
    if (result == -EINTR || result == -EAGAIN) continue;
    if (result < 0) return result;
    pthread_mutex_lock(&ring->cq_lock);
    int taken = cur_take(ring, user_data, results, max);
    pthread_mutex_unlock(&ring->cq_lock);
    // The submitter may have taken them first: wait again.
    ring->idle = taken == 0;
    if (taken > 0) return taken;
  }
}

int cur_try_reap(cur_ring *ring, uint64_t *user_data, int32_t *results, unsigned max) {
  int taken = 0;
  if (io_uring_cq_ready(&ring->ring) != 0 && pthread_mutex_trylock(&ring->cq_lock) == 0) {
    taken = cur_take(ring, user_data, results, max);
    pthread_mutex_unlock(&ring->cq_lock);
  }
  // Requests still pending complete asynchronously: make sure the
  // completion thread is waiting for them.
  if (atomic_load(&ring->pending) > 0) {
    pthread_mutex_lock(&ring->park_lock);
    if (ring->parked) pthread_cond_signal(&ring->park_cond);
    pthread_mutex_unlock(&ring->park_lock);
  }
  return taken;
}
