#!/usr/bin/env python3
"""Crash soak: SIGKILL `spindle io` at random instants over qcow2 workloads.

Each iteration creates a qcow2 image with a random configuration (cluster
size, compat 0.10/1.1, refcount width, extended L2, lazy refcounts), runs a
random qemu-io script through `spindle io` (allocating writes, zero-writes
with and without -u, discards, compressed writes, growing truncates, flushes)
and kills it with SIGKILL at a uniformly random instant of the run. Then:

- `qemu-img check` must find no corruption (leaks are allowed; exit 0 or 3);
  an image left dirty with lazy refcounts has stale refcounts by design
  (QEMU repairs it at its next read-write open): `qemu-img check -r all`
  must repair it completely (exit 0);
- every slot whose last command came before the last flush that completed
  (each flush is followed by `length`, whose output line proves it finished)
  must read back as written, through qemu-io `read -P`.

Usage: crash-soak.py [--iterations N] [--seed S] [--spindle PATH] [--keep DIR]
Prints one line per failure and a summary: kills, corruptions, lost writes,
verified writes (slots read back) and verified reads.
"""
import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SLOT = 256 << 10
SIZE_LINE = re.compile(r"^\d+(\.\d+)? (bytes|KiB|MiB|GiB|TiB)$")


def image_options(rng):
    cluster = rng.choice([512, 4096, 65536])
    compat = rng.choice(["1.1", "1.1", "0.10"])
    options = [f"cluster_size={cluster}", f"compat={compat}"]
    if compat == "1.1":
        options.append("refcount_bits=" + str(rng.choice([1, 4, 16, 16, 64])))
        if cluster >= 16384 and rng.random() < 0.3:
            options.append("extended_l2=on")
        if rng.random() < 0.3:
            options.append("lazy_refcounts=on")
    return cluster, ",".join(options)


def make_script(rng, cluster, initial_slots, max_slots, count):
    """The commands, each slot's history [(command index, state)], the flushes."""
    commands, history, flushes = [], {}, []
    size_slots = initial_slots
    fresh = list(range(size_slots))
    rng.shuffle(fresh)
    written = []
    pattern = 0
    while len(commands) < count:
        roll = rng.randrange(100)
        if roll < 10:
            flushes.append(len(commands))
            commands += ["flush", "length"]
        elif roll < 13 and size_slots < max_slots:
            new = min(max_slots, size_slots + rng.randint(1, 4))
            commands.append(f"truncate {new * SLOT}")
            added = list(range(size_slots, new))
            rng.shuffle(added)
            fresh = added + fresh
            size_slots = new
        elif roll < 28 and written:
            slot = rng.choice(written)
            base = slot * SLOT
            if roll < 21:
                unmap = "-u " if rng.random() < 0.5 else ""
                command = f"write -z {unmap}{base} {SLOT}"
            else:
                command = f"discard {base} {SLOT}"
            history.setdefault(slot, []).append((len(commands), ("zero",)))
            commands.append(command)
        elif fresh:
            slot = fresh.pop()
            written.append(slot)
            pattern = 1 if pattern == 255 else pattern + 1
            base = slot * SLOT
            if roll < 38:
                clusters = rng.randint(1, max(1, min(4, SLOT // cluster)))
                state = ("pattern", pattern, base, clusters * cluster)
                command = f"write -c -P {pattern} {base} {clusters * cluster}"
            else:
                start = base + rng.randrange(64 << 10)
                length = rng.randint(1, SLOT - (64 << 10))
                state = ("pattern", pattern, start, length)
                command = f"write -P {pattern} {start} {length}"
            history.setdefault(slot, []).append((len(commands), state))
            commands.append(command)
        else:
            break
    return commands, history, flushes


def verification(history, durable):
    reads = []
    for slot in sorted(history):
        events = history[slot]
        if not all(index < durable for index, _ in events):
            continue
        base = slot * SLOT
        state = events[-1][1]
        if state[0] == "zero":
            reads.append(f"read -P 0 {base} {SLOT}")
        else:
            _, byte, offset, length = state
            reads.append(f"read -P {byte} {offset} {length}")
            if offset > base:
                reads.append(f"read -P 0 {base} {offset - base}")
            end = offset + length
            if end < base + SLOT:
                reads.append(f"read -P 0 {end} {base + SLOT - end}")
    return reads


def is_dirty(path):
    """Whether the header's dirty bit (lazy refcounts in use) is set."""
    with open(path, "rb") as image:
        header = image.read(80)
    version = int.from_bytes(header[4:8], "big")
    return version >= 3 and int.from_bytes(header[72:80], "big") & 1 != 0


def run_unlocked(arguments):
    """Runs a QEMU tool, again while a killed process's lock is still held."""
    deadline = time.monotonic() + 10
    while True:
        result = subprocess.run(arguments, capture_output=True, text=True)
        if "Failed to get" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(0.01)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--spindle", default=None)
    parser.add_argument("--keep", default=None, help="copy failing images here")
    parser.add_argument("--commands", type=int, default=160)
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spindle = args.spindle or os.path.join(root, ".build", "debug", "spindle")
    rng = random.Random(args.seed)
    scratch = tempfile.mkdtemp(prefix="crash-soak-")
    kills = corruptions = lost = verified_slots = verified_reads = failures = dirty = 0
    durations = {}
    started = time.monotonic()
    try:
        for iteration in range(args.iterations):
            cluster, options = image_options(rng)
            initial, maximum = 64, 96
            path = os.path.join(scratch, "soak.qcow2")
            if os.path.exists(path):
                os.remove(path)
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-o", options, path, str(initial * SLOT)],
                check=True)
            commands, history, flushes = make_script(rng, cluster, initial, maximum, args.commands)
            arguments = [spindle, "io", "-f", "qcow2"]
            for command in commands:
                arguments += ["-c", command]
            arguments.append(path)
            # The first run of each cluster size measures a run's duration.
            measured = durations.get(cluster)
            delay = None if measured is None else rng.uniform(0, measured)
            begin = time.monotonic()
            process = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            killed = False
            if delay is not None:
                try:
                    process.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
                    killed = True
            output = process.communicate()[0].decode(errors="replace")
            if not killed:
                # The shortest complete run: a kill lands within a run even
                # when the machine's load varies.
                elapsed_run = time.monotonic() - begin
                durations[cluster] = min(elapsed_run, measured or elapsed_run)
            killed = killed and process.returncode == -signal.SIGKILL
            kills += killed
            context = f"iteration {iteration} ({options}, kill after {delay or 0:.3f} s)"
            if "failed" in output:
                failures += 1
                print(f"FAIL {context}: a request failed:\n{output}", flush=True)
            # A kill can cut the buffered output mid-line: only whole lines count.
            whole_lines = output.splitlines()[:-1] if not output.endswith("\n") else output.splitlines()
            completed = sum(1 for line in whole_lines if SIZE_LINE.match(line))
            durable = flushes[completed - 1] if completed else 0
            if is_dirty(path):
                dirty += 1
                check = run_unlocked(["qemu-img", "check", "-r", "all", path])
                consistent = check.returncode == 0
            else:
                check = run_unlocked(["qemu-img", "check", path])
                consistent = check.returncode in (0, 3)
            if not consistent:
                corruptions += 1
                print(f"CORRUPT {context}: {check.stdout}{check.stderr}", flush=True)
                if args.keep:
                    shutil.copy(path, os.path.join(args.keep, f"corrupt-{args.seed}-{iteration}.qcow2"))
                continue
            reads = verification(history, durable)
            if not reads:
                continue
            verify_arguments = ["qemu-io", "-r", "-f", "qcow2"]
            for read in reads:
                verify_arguments += ["-c", read]
            verify = run_unlocked(verify_arguments + [path])
            text = verify.stdout + verify.stderr
            if verify.returncode != 0 or "failed" in text or "Pattern verification" in text:
                lost += 1
                print(f"LOST {context}: flushed data lost\n{text}", flush=True)
                if args.keep:
                    shutil.copy(path, os.path.join(args.keep, f"lost-{args.seed}-{iteration}.qcow2"))
            else:
                verified_slots += sum(
                    1 for events in history.values() if all(i < durable for i, _ in events))
                verified_reads += len(reads)
            if (iteration + 1) % 50 == 0:
                print(f"... {iteration + 1} iterations, {kills} kills, {corruptions} corruptions, "
                      f"{lost} lost, {verified_slots} verified writes", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - started
    print(f"crash soak: {args.iterations} iterations, {kills} kills, {corruptions} corruptions, "
          f"{lost} runs with lost flushed writes, {failures} failed requests, "
          f"{dirty} dirty lazy-refcount images repaired, "
          f"{verified_slots} verified writes ({verified_reads} reads), {elapsed:.0f} s")
    return 0 if corruptions == 0 and lost == 0 and failures == 0 and kills > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
