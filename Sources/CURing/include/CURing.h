#ifndef SPINDLE_CURING_H
#define SPINDLE_CURING_H

#include <stdint.h>
#include <sys/uio.h>

/// A small, non-inline interface over liburing for Spindle's file driver.
///
/// liburing's submission helpers are `static inline` functions over a
/// `struct io_uring`; this shim keeps that struct opaque and exposes the few
/// operations the driver needs. Submission-side calls (`cur_prep_*`,
/// `cur_submit`) must come from one thread at a time; `cur_wait` may run
/// concurrently on one other thread (the completion thread). The completion
/// queue's two consumers share a mutex.

typedef struct cur_ring cur_ring;

/// Sets up a ring with `entries` submission entries. On failure returns NULL
/// and stores the negative errno in `*error` (ENOSYS without io_uring, EPERM
/// under seccomp or io_uring_disabled, ENOMEM over RLIMIT_MEMLOCK).
cur_ring *cur_create(unsigned entries, int *error);

/// The number of completion queue entries.
unsigned cur_cq_entries(const cur_ring *ring);

/// Prepares a readv (`write` 0) or writev (`write` 1) of `count` vectors at
/// `offset`. Returns 0, or -EBUSY when the submission queue is full even
/// after submitting what it held.
int cur_prep_rw(cur_ring *ring, int write, int fd, const struct iovec *vectors,
                unsigned count, int64_t offset, uint64_t user_data);

/// Prepares an fsync (`datasync` 1: fdatasync). 0 or -EBUSY as `cur_prep_rw`.
int cur_prep_fsync(cur_ring *ring, int fd, int datasync, uint64_t user_data);

/// Hands prepared entries to the kernel (retrying EINTR/EAGAIN/EBUSY), then
/// takes up to `max` completions that are already there, the ones the kernel
/// finished during submission among them: their user data and results go to
/// `user_data` and `results`, their number to `*taken`. The kernel does not
/// wake the completion thread for completions posted during submission.
/// Returns the number submitted or a negative errno.
int cur_submit(cur_ring *ring, uint64_t *user_data, int32_t *results, unsigned max,
               int *taken);

/// Waits for completions (on the ring's eventfd) and takes up to `max` of
/// them: their user data and results (byte counts or negative errnos).
/// Returns the number taken (at least one) or a negative errno.
int cur_wait(cur_ring *ring, uint64_t *user_data, int32_t *results, unsigned max);

#endif
