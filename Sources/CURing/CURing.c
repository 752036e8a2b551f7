#include "CURing.h"

#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

// How long the completion thread sleeps at most before looking at the
// completion queue on its own: a bound on the delay should an eventfd wake-up
// ever be lost between the submitter's toggle and the kernel's check.
#define CUR_POLL_TIMEOUT_MS 10

struct cur_ring {
  struct io_uring ring;
  // Registered with the ring: the kernel signals it when it posts a CQE,
  // except while the submitter has notifications switched off around its
  // own io_uring_enter (it reaps what completes then itself).
  int eventfd;
  // Serialises the two consumers of the completion queue: the completion
  // thread and the submitter.
  pthread_mutex_t cq_lock;
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
  ring->eventfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (ring->eventfd < 0) {
    *error = -errno;
    io_uring_queue_exit(&ring->ring);
    free(ring);
    return NULL;
  }
  result = io_uring_register_eventfd(&ring->ring, ring->eventfd);
  if (result < 0) {
    *error = result;
    close(ring->eventfd);
    io_uring_queue_exit(&ring->ring);
    free(ring);
    return NULL;
  }
  pthread_mutex_init(&ring->cq_lock, NULL);
  *error = 0;
  return ring;
}

unsigned cur_cq_entries(const cur_ring *ring) { return ring->ring.cq.ring_entries; }

static int cur_enter(cur_ring *ring) {
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

static struct io_uring_sqe *cur_get_sqe(cur_ring *ring) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
  if (sqe) return sqe;
  // Full: hand what is queued to the kernel and try once more.
  if (cur_enter(ring) < 0) return NULL;
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
  return 0;
}

int cur_prep_fsync(cur_ring *ring, int fd, int datasync, uint64_t user_data) {
  struct io_uring_sqe *sqe = cur_get_sqe(ring);
  if (!sqe) return -EBUSY;
  io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
  io_uring_sqe_set_data64(sqe, user_data);
  return 0;
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
  return (int)taken;
}

int cur_submit(cur_ring *ring, uint64_t *user_data, int32_t *results, unsigned max,
               int *taken) {
  // Whatever completes during io_uring_enter (page cache hits, and
  // completions the kernel runs as task work on the way out) is reaped
  // below, so the kernel need not wake the completion thread for it.
  io_uring_cq_eventfd_toggle(&ring->ring, false);
  int result = cur_enter(ring);
  io_uring_cq_eventfd_toggle(&ring->ring, true);
  // Notifications are on again before the queue is looked at: a CQE posted
  // from here on signals the eventfd, one posted before is seen below.
  atomic_thread_fence(memory_order_seq_cst);
  *taken = 0;
  if (io_uring_cq_ready(&ring->ring) != 0) {
    pthread_mutex_lock(&ring->cq_lock);
    *taken = cur_take(ring, user_data, results, max);
    pthread_mutex_unlock(&ring->cq_lock);
    // More than `max` ready: let the completion thread take the rest.
    if (io_uring_cq_ready(&ring->ring) != 0) eventfd_write(ring->eventfd, 1);
  }
  return result;
}

int cur_wait(cur_ring *ring, uint64_t *user_data, int32_t *results, unsigned max) {
  for (;;) {
    if (io_uring_cq_ready(&ring->ring) == 0) {
      struct pollfd event = {.fd = ring->eventfd, .events = POLLIN};
      int ready = poll(&event, 1, CUR_POLL_TIMEOUT_MS);
      if (ready < 0 && errno != EINTR) return -errno;
      eventfd_t value;
      if (ready > 0) eventfd_read(ring->eventfd, &value);
    }
    pthread_mutex_lock(&ring->cq_lock);
    int taken = cur_take(ring, user_data, results, max);
    pthread_mutex_unlock(&ring->cq_lock);
    if (taken > 0) return taken;
  }
}
