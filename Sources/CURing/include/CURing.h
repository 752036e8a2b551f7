#ifndef SPINDLE_CURING_H
#define SPINDLE_CURING_H

#include <stdint.h>
#include <sys/uio.h>

/// A small, non-inline interface over liburing for Spindle's I/O contexts.
///
/// liburing's submission helpers are `static inline` functions over a
/// `struct io_uring`; this shim keeps that struct opaque and exposes the few
/// operations an I/O context needs. A ring belongs to one context and every
/// call comes from that context's thread: there is no locking here.

typedef struct cur_ring cur_ring;

/// Sets up a ring with `entries` submission entries and `cq_entries`
/// completion entries (0: the kernel's default, twice `entries`). On failure
/// returns NULL and stores the negative errno in `*error` (ENOSYS without
/// io_uring, EPERM under seccomp or io_uring_disabled, ENOMEM over
/// RLIMIT_MEMLOCK, EINVAL for sizes the kernel refuses).
cur_ring *cur_create(unsigned entries, unsigned cq_entries, int *error);

/// Tears the ring down (the kernel cancels what is still in flight).
void cur_destroy(cur_ring *ring);

/// The number of submission queue entries.
unsigned cur_sq_entries(const cur_ring *ring);

/// The number of completion queue entries.
unsigned cur_cq_entries(const cur_ring *ring);

/// Entries prepared and not yet handed to the kernel.
unsigned cur_sq_queued(const cur_ring *ring);

/// Prepares a readv (`write` 0) or writev (`write` 1) of `count` vectors at
/// `offset`. Returns 0, or -EBUSY when the submission queue is full (submit,
/// then prepare again).
int cur_prep_rw(cur_ring *ring, int write, int fd, const struct iovec *vectors,
                unsigned count, int64_t offset, uint64_t user_data);

/// Prepares an fsync (`datasync` 1: fdatasync). 0 or -EBUSY as `cur_prep_rw`.
int cur_prep_fsync(cur_ring *ring, int fd, int datasync, uint64_t user_data);

/// Prepares a one-shot poll for POLLIN on `fd`. 0 or -EBUSY as `cur_prep_rw`.
int cur_prep_poll_in(cur_ring *ring, int fd, uint64_t user_data);

/// Hands the prepared entries to the kernel in one io_uring_enter and, when
/// `wait` > 0, sleeps until that many completions are posted. EINTR is
/// retried. Returns the number submitted or a negative errno (EAGAIN and
/// EBUSY: the kernel is short of resources; the entries stay queued).
int cur_submit(cur_ring *ring, unsigned wait);

/// Takes up to `max` posted completions: their user data and results (byte
/// counts or negative errnos). Makes no system call. Returns the number taken.
unsigned cur_reap(cur_ring *ring, uint64_t *user_data, int32_t *results, unsigned max);

/// A non-blocking, close-on-exec eventfd (an I/O context's wake-up), or -1.
int cur_eventfd(void);

/// Adds 1 to an eventfd's counter, waking whoever polls it.
void cur_eventfd_signal(int fd);

/// Resets a non-blocking eventfd's counter (nothing when it is 0).
void cur_eventfd_drain(int fd);

/// Names the calling thread (at most 15 bytes are kept).
void cur_set_thread_name(const char *name);

#endif
