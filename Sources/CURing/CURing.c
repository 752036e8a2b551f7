#include "CURing.h"

#include <errno.h>
#include <liburing.h>
#include <sched.h>
#include <stdlib.h>

struct cur_ring {
  struct io_uring ring;
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
  return 0;
}

int cur_prep_fsync(cur_ring *ring, int fd, int datasync, uint64_t user_data) {
  struct io_uring_sqe *sqe = cur_get_sqe(ring);
  if (!sqe) return -EBUSY;
  io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
  io_uring_sqe_set_data64(sqe, user_data);
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

int cur_wait(cur_ring *ring, uint64_t *user_data, int32_t *results, unsigned max) {
  struct io_uring_cqe *cqe;
  int result;
  do {
    result = io_uring_wait_cqe(&ring->ring, &cqe);
  } while (result == -EINTR || result == -EAGAIN);
  if (result < 0) return result;
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
