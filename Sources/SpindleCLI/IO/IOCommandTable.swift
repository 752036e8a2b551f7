import BlockCore

/// One qemu-io command (QEMU's `cmdinfo_t`): its names, argument counts, flags,
/// usage and help, and the function that runs it with the command's words
/// (the first being the name as typed). The function returns 0 or a negative
/// errno; any negative result makes the tool exit with status 1.
struct IOCommandInfo: Sendable {
  typealias Run = @BlockActor @Sendable (IOSession, [String]) async -> Int32

  let name: String
  var altName: String?
  var argMin = 0
  var argMax = 0
  /// Runs without a file and is not affected by one (`help`, `quit`).
  var isGlobal = false
  /// May run without a file (`open`, `sleep`).
  var noFileOK = false
  /// Needs write permission (QEMU's `BLK_PERM_WRITE`).
  var needsWrite = false
  var args: String?
  let oneline: String
  var help: String?
  let run: Run

  /// Every command, in registration order (``IOSession`` sorts them by name).
  static let all: [IOCommandInfo] = [
    IOCommandInfo(
      name: "help", altName: "?", argMax: 1, isGlobal: true, args: "[command]",
      oneline: "help for one or all commands", run: { $0.helpCommand($1) }),
    IOCommandInfo(
      name: "quit", altName: "q", argMin: -1, argMax: -1, isGlobal: true,
      oneline: "exit the program", run: { session, _ in session.quitCommand() }),
    IOCommandInfo(
      name: "open", altName: "o", argMin: 1, argMax: -1, noFileOK: true,
      args: "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
      oneline: "open the file specified by path", help: openHelp,
      run: { await $0.openCommand($1) }),
    IOCommandInfo(
      name: "close", altName: "c", oneline: "close the current open file",
      run: { session, _ in await session.closeCommand() }),
    IOCommandInfo(
      name: "read", altName: "r", argMin: 2, argMax: -1,
      args: "[-abCqv] [-P pattern [-s off] [-l len]] off len",
      oneline: "reads a number of bytes at a specified offset", help: readHelp,
      run: { await $0.readCommand($1) }),
    IOCommandInfo(
      name: "readv", argMin: 2, argMax: -1, args: "[-Cqv] [-P pattern] off len [len..]",
      oneline: "reads a number of bytes at a specified offset", help: readvHelp,
      run: { await $0.readvCommand($1) }),
    IOCommandInfo(
      name: "write", altName: "w", argMin: 2, argMax: -1, needsWrite: true,
      args: "[-bcCfnquz] [-P pattern | -s source_file] off len",
      oneline: "writes a number of bytes at a specified offset", help: writeHelp,
      run: { await $0.writeCommand($1) }),
    IOCommandInfo(
      name: "writev", argMin: 2, argMax: -1, needsWrite: true,
      args: "[-Cfq] [-P pattern] off len [len..]",
      oneline: "writes a number of bytes at a specified offset", help: writevHelp,
      run: { await $0.writevCommand($1) }),
    IOCommandInfo(
      name: "aio_read", argMin: 2, argMax: -1, args: "[-Ciqv] [-P pattern] off len [len..]",
      oneline: "asynchronously reads a number of bytes", help: aioReadHelp,
      run: { $0.aioReadCommand($1) }),
    IOCommandInfo(
      name: "aio_write", argMin: 2, argMax: -1, needsWrite: true,
      args: "[-Cfiquz] [-P pattern] off len [len..]",
      oneline: "asynchronously writes a number of bytes", help: aioWriteHelp,
      run: { $0.aioWriteCommand($1) }),
    IOCommandInfo(
      name: "aio_flush", oneline: "completes all outstanding aio requests",
      run: { session, _ in await session.aioFlushCommand() }),
    IOCommandInfo(
      name: "flush", altName: "f", oneline: "flush all in-core file state to disk",
      run: { session, _ in await session.flushCommand() }),
    IOCommandInfo(
      name: "truncate", altName: "t", argMin: 1, argMax: 3, needsWrite: true,
      args: "[-m prealloc_mode] off",
      oneline: "truncates the current file at the given offset",
      run: { await $0.truncateCommand($1) }),
    IOCommandInfo(
      name: "length", altName: "l", oneline: "gets the length of the current file",
      run: { session, _ in session.lengthCommand() }),
    IOCommandInfo(
      name: "info", altName: "i", oneline: "prints information about the current file",
      run: { session, _ in session.infoCommand() }),
    IOCommandInfo(
      name: "discard", altName: "d", argMin: 2, argMax: -1, needsWrite: true,
      args: "[-Cq] off len", oneline: "discards a number of bytes at a specified offset",
      help: discardHelp, run: { await $0.discardCommand($1) }),
    IOCommandInfo(
      name: "alloc", altName: "a", argMin: 1, argMax: 2, args: "offset [count]",
      oneline: "checks if offset is allocated in the file", run: { await $0.allocCommand($1) }),
    IOCommandInfo(
      name: "map", argMin: 0, argMax: 0, args: "", oneline: "prints the allocated areas of a file",
      run: { session, _ in await session.mapCommand() }),
    IOCommandInfo(
      name: "reopen", argMin: 0, argMax: -1, args: "[(-r|-w)] [-c cache] [-o options]",
      oneline: "reopens an image with new options", help: reopenHelp,
      run: { await $0.reopenCommand($1) }),
    IOCommandInfo(
      name: "break", argMin: 2, argMax: 2, args: "event tag",
      oneline: "sets a breakpoint on event and tags the stopped request as tag",
      run: { $0.breakCommand($1) }),
    IOCommandInfo(
      name: "remove_break", argMin: 1, argMax: 1, args: "tag",
      oneline: "remove a breakpoint by tag",
      run: { $0.removeBreakCommand($1) }),
    IOCommandInfo(
      name: "resume", argMin: 1, argMax: 1, args: "tag",
      oneline: "resumes the request tagged as tag",
      run: { await $0.resumeCommand($1) }),
    IOCommandInfo(
      name: "wait_break", argMin: 1, argMax: 1, args: "tag",
      oneline: "waits for the suspension of a request",
      run: { await $0.waitBreakCommand($1) }),
    IOCommandInfo(
      name: "abort", noFileOK: true, oneline: "simulate a program crash using abort(3)",
      run: { session, _ in session.abortProgram() }),
    IOCommandInfo(
      name: "sleep", argMin: 1, argMax: 1, noFileOK: true,
      oneline: "waits for the given value in milliseconds", run: { await $0.sleepCommand($1) }),
    IOCommandInfo(
      name: "sigraise", argMin: 1, argMax: 1, noFileOK: true, args: "signal",
      oneline: "raises a signal", help: sigraiseHelp, run: { $0.sigraiseCommand($1) }),
  ]
}
