#define _GNU_SOURCE
#include "CURing.h"

#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

// The shim holds nothing but liburing's ring: every call comes from the one
// thread that owns it (an I/O context's loop), so there is no lock here.
struct cur_ring {
  struct io_uring ring;
};

cur_ring *cur_create(unsigned entries, unsigned cq_entries, int *error) {
  cur_ring *ring = calloc(1, sizeof(*ring));
  if (!ring) {
    *error = -ENOMEM;
    return NULL;
  }
  struct io_uring_params params = {0};
  if (cq_entries > 0) {
    params.flags |= IORING_SETUP_CQSIZE;
    params.cq_entries = cq_entries;
  }
  int result = io_uring_queue_init_params(entries, &ring->ring, &params);
  if (result < 0) {
    free(ring);
    *error = result;
    return NULL;
  }
  *error = 0;
  return ring;
}

void cur_destroy(cur_ring *ring) {
  io_uring_queue_exit(&ring->ring);
  free(ring);
}

unsigned cur_sq_entries(const cur_ring *ring) { return ring->ring.sq.ring_entries; }

unsigned cur_cq_entries(const cur_ring *ring) { return ring->ring.cq.ring_entries; }

unsigned cur_sq_queued(const cur_ring *ring) { return io_uring_sq_ready(&ring->ring); }

int cur_prep_rw(cur_ring *ring, int write, int fd, const struct iovec *vectors,
                unsigned count, int64_t offset, uint64_t user_data) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
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
  struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
  if (!sqe) return -EBUSY;
  io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
  io_uring_sqe_set_data64(sqe, user_data);
  return 0;
}

int cur_prep_poll_in(cur_ring *ring, int fd, uint64_t user_data) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
  if (!sqe) return -EBUSY;
  io_uring_prep_poll_add(sqe, fd, POLLIN);
  io_uring_sqe_set_data64(sqe, user_data);
  return 0;
}

int cur_submit(cur_ring *ring, unsigned wait) {
  for (;;) {
    int result = wait ? io_uring_submit_and_wait(&ring->ring, wait) : io_uring_submit(&ring->ring);
    if (result != -EINTR) return result;
  }
}

unsigned cur_reap(cur_ring *ring, uint64_t *user_data, int32_t *results, unsigned max) {
  struct io_uring_cqe *cqe;
  unsigned head, taken = 0;
  io_uring_for_each_cqe(&ring->ring, head, cqe) {
    if (taken == max) break;
    user_data[taken] = io_uring_cqe_get_data64(cqe);
    results[taken] = cqe->res;
    taken++;
  }
  io_uring_cq_advance(&ring->ring, taken);
  return taken;
}

int cur_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

void cur_eventfd_signal(int fd) {
  uint64_t one = 1;
  ssize_t written;
  do {
    written = write(fd, &one, sizeof(one));
  } while (written < 0 && errno == EINTR);
}

void cur_eventfd_drain(int fd) {
  uint64_t value;
  ssize_t got;
  do {
    got = read(fd, &value, sizeof(value));
  } while (got < 0 && errno == EINTR);
}

void cur_set_thread_name(const char *name) { pthread_setname_np(pthread_self(), name); }
